"""Built-in benchmark cases, shared by `python -m normfast bench` and the pytest-benchmark suite in
bench/: normfast against NumPy (and PyTorch when installed) in one process, next to a copy of the same
bytes, the memory-traffic floor."""
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from . import reductions

# (name, shape, dtype, axis)
CASES = [
    ("rows (4096,4096) f32 axis=1", (4096, 4096), np.float32, 1),
    ("cols (4096,4096) f32 axis=0", (4096, 4096), np.float32, 0),
    ("all (4096,4096) f32 axis=None", (4096, 4096), np.float32, None),
    ("all (4096,4096) f64 axis=None", (4096, 4096), np.float64, None),
    ("batch NCHW (32,64,56,56) f32", (32, 64, 56, 56), np.float32, (0, 2, 3)),
    ("batch NHWC (32,56,56,64) f32", (32, 56, 56, 64), np.float32, (0, 1, 2)),
    ("layer (8192,768) f32 axis=-1", (8192, 768), np.float32, -1),
]


def make_input(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)


def peers(x, axis):
    """Callables computing mean and variance of x over axis, by implementation name."""
    out = {
        "normfast": lambda: reductions.moments(x, axis),
        "numpy": lambda: (np.mean(x, axis=axis), np.var(x, axis=axis)),
    }
    try:
        import torch
    except ImportError:
        return out
    t = torch.from_numpy(x)
    dims = tuple(range(x.ndim)) if axis is None else axis
    out["torch"] = lambda: torch.var_mean(t, dim=dims, correction=0)
    return out


def copy_floor(x):
    """A callable copying x's bytes into a preallocated array."""
    dst = np.empty_like(x)
    return lambda: np.copyto(dst, x)


_READERS = {}  # a thread pool per thread count, for read_floor


def read_floor(x, threads):
    """A callable reading x's bytes once, the least a reduction over x must do: the max of its bytes as
    unsigned 32-bit words (NumPy's fastest reduction here, near memory speed; it releases the GIL), split
    over `threads` threads."""
    raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    ints = raw.view(np.uint32) if raw.size % 4 == 0 else raw
    if threads == 1:
        return ints.max
    parts = np.array_split(ints, threads)
    pool = _READERS.setdefault(threads, ThreadPoolExecutor(threads))
    return lambda: list(pool.map(np.max, parts))


class Timing(NamedTuple):
    """Wall times of repeated calls, seconds: the fastest, the median and the slowest, and how many."""

    min: float
    median: float
    max: float
    calls: int


def time_calls(fn, repeat, min_time=0.0, pause=0.05):
    """Timing of fn over `repeat` calls (after one warm-up call), more while under min_time seconds. A
    pause first (seconds) lets another library's spinning worker threads (OpenMP, ORT) go idle, so peers
    do not slow each other."""
    time.sleep(pause)
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(min(times), float(np.median(times)), max(times), len(times))


# --- normalization layers ---------------------------------------------------------------------------
# (name, shape, channels_last, norm) with norm one of "bn-train", "bn-infer", "gn32", "in", "sn"
# (switchable, training).
NORM_SHAPES = [(8, 64, 56, 56), (32, 64, 56, 56)]
NORMS = ["bn-train", "bn-infer", "gn32", "in", "sn"]
NORM_CASES = [(f"{norm} {'NHWC' if last else 'NCHW'} {shape}", shape, last, norm)
              for shape in NORM_SHAPES for last in (False, True) for norm in NORMS]
EPS = 1e-5


def _numpy_norm(x, axes, gamma, beta):
    """Normalization as the tutorials write it."""
    mu = np.mean(x, axis=axes, keepdims=True)
    var = np.var(x, axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * gamma + beta


SN_LOGITS = np.array([0.5, -0.3, 0.2])
_SN_W = np.exp(SN_LOGITS) / np.exp(SN_LOGITS).sum()


def _switchable_stats(mean_in, var_in, c, mean):
    """The paper's code from the instance moments on: layer and batch moments through E[x^2] - mean^2,
    blended by SN_LOGITS. `mean(a, axis)` keeps dims (NumPy arrays and torch tensors alike)."""
    sq = var_in + mean_in ** 2
    mean_ln, mean_bn = mean(mean_in, c), mean(mean_in, 0)
    var_ln, var_bn = mean(sq, c) - mean_ln ** 2, mean(sq, 0) - mean_bn ** 2
    return (_SN_W[0] * mean_in + _SN_W[1] * mean_ln + _SN_W[2] * mean_bn,
            _SN_W[0] * var_in + _SN_W[1] * var_ln + _SN_W[2] * var_bn)


def _numpy_switchable(x, c, spatial, g, b):
    """Switchable norm as the paper's code writes it, in NumPy."""
    mean, var = _switchable_stats(np.mean(x, axis=spatial, keepdims=True), np.var(x, axis=spatial, keepdims=True),
                                  c, lambda a, axis: a.mean(axis=axis, keepdims=True))
    return (x - mean) / np.sqrt(var + EPS) * g + b


def _torch_switchable(t, w, b):
    """The same with torch's reductions (t is N, C, ...)."""
    import torch

    xt = t.flatten(2)
    var_in, mean_in = torch.var_mean(xt, dim=2, correction=0, keepdim=True)
    mean, var = _switchable_stats(mean_in, var_in, 1, lambda a, axis: a.mean(axis, keepdim=True))
    return torch.addcmul(b.view(1, -1, 1), (xt - mean) * torch.rsqrt(var + EPS), w.view(1, -1, 1)).view(t.shape)


def _ort_session(op, x_shape, inits, attrs, threads, opset=21):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    names = ["X"] + [n for n, _ in inits]
    if "Y" in names:
        raise ValueError("initializer names must not be X or Y")
    node = helper.make_node(op, names, ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "norm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(x_shape))],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle ORT workers would otherwise spin and steal cores from whatever is timed next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess


def norm_peers(shape, channels_last, norm, threads):
    """Callables for one normalization case by implementation name, plus the copy floor."""
    from . import norms

    nchw = make_input(shape, np.float32)
    x = np.ascontiguousarray(np.moveaxis(nchw, 1, -1)) if channels_last else nchw
    c = x.ndim - 1 if channels_last else 1
    C, N = x.shape[c], x.shape[0]
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    rm, rv = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32)
    bshape = [C if i == c else 1 for i in range(x.ndim)]
    g, b = gamma.reshape(bshape), beta.reshape(bshape)
    out = np.empty_like(x)
    spatial = tuple(i for i in range(1, x.ndim) if i != c)
    fns = {}
    if norm == "bn-train":
        fns["normfast"] = lambda: norms.batch_norm(x, rm.copy(), rv.copy(), gamma, beta, training=True, axis=c, out=out)
        fns["numpy"] = lambda: _numpy_norm(x, (0,) + spatial, g, b)
    elif norm == "bn-infer":
        fns["normfast"] = lambda: norms.batch_norm(x, rm, rv, gamma, beta, axis=c, out=out)
        fns["numpy"] = lambda: (x - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + EPS) * g + b
    elif norm == "gn32":
        fns["normfast"] = lambda: norms.group_norm(x, 32, gamma, beta, axis=c, out=out)
        grouped = list(x.shape)
        grouped[c:c + 1] = [32, C // 32]

        def np_gn():
            xg = x.reshape(grouped)
            axes = tuple(i for i in range(1, xg.ndim) if i != c)
            return _numpy_norm(xg, axes, 1.0, 0.0).reshape(x.shape) * g + b
        fns["numpy"] = np_gn
    elif norm == "in":
        fns["normfast"] = lambda: norms.instance_norm(x, None, None, gamma, beta, axis=c, out=out)
        fns["numpy"] = lambda: _numpy_norm(x, spatial, g, b)
    else:
        fns["normfast"] = lambda: norms.switchable_norm(x, gamma, beta, SN_LOGITS, SN_LOGITS, rm.copy(), rv.copy(),
                                                        training=True, axis=c, out=out)
        fns["numpy"] = lambda: _numpy_switchable(x, c, spatial, g, b)
    try:
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(x)
        t = t.permute(0, x.ndim - 1, *range(1, x.ndim - 1)) if channels_last else t
        tg, tb, trm, trv = (torch.from_numpy(v) for v in (gamma, beta, rm, rv))
        fns["torch"] = {
            "bn-train": lambda: F.batch_norm(t, trm.clone(), trv.clone(), tg, tb, training=True),
            "bn-infer": lambda: F.batch_norm(t, trm, trv, tg, tb),
            "gn32": lambda: F.group_norm(t, 32, tg, tb),
            "in": lambda: F.instance_norm(t, weight=tg, bias=tb),
            "sn": lambda: _torch_switchable(t, tg, tb),
        }[norm]
        tsrc, tdst = torch.from_numpy(x), torch.empty_like(torch.from_numpy(x))
        torch_copy = lambda: tdst.copy_(tsrc)  # noqa: E731
    except ImportError:
        torch_copy = None
    try:
        if not channels_last and norm not in ("bn-train", "sn"):
            op, inits, attrs = {
                "bn-infer": ("BatchNormalization", [("s", gamma), ("b", beta), ("m", rm), ("v", rv)], {}),
                "gn32": ("GroupNormalization", [("s", gamma), ("b", beta)], {"num_groups": 32}),
                "in": ("InstanceNormalization", [("s", gamma), ("b", beta)], {}),
            }[norm]
            sess = _ort_session(op, x.shape, inits, {"epsilon": EPS, **attrs}, threads)
            fns["onnxruntime"] = lambda: sess.run(None, {"X": x})
    except ImportError:
        pass
    floors = [copy_floor(x)] + ([torch_copy] if torch_copy else [])
    return fns, floors


# Layer and RMS norm over the last axis: (name, shape, rms). Short rows (many rows of 16) and one long row
# (a million elements, fewer rows than threads) are the shape classes at the ends.
SHORT_ROWS, LONG_ROW = (200000, 16), (1, 1000000)
ROW_CASES = [(f"{'rms' if rms else 'layer'} {shape}", shape, rms)
             for shape in [(8, 768), (512, 1024), (4096, 4096), SHORT_ROWS, LONG_ROW] for rms in (False, True)]


def row_peers(shape, rms, threads):
    from . import norms

    x = make_input(shape, np.float32)
    L = shape[-1]
    rng = np.random.default_rng(2)
    w, b = rng.uniform(0.5, 1.5, L).astype(np.float32), rng.standard_normal(L).astype(np.float32)
    out = np.empty_like(x)
    fns = {}
    if rms:
        fns["normfast"] = lambda: norms.rms_norm(x, L, w, eps=EPS, out=out)
        fns["numpy"] = lambda: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w
    else:
        fns["normfast"] = lambda: norms.layer_norm(x, L, w, b, eps=EPS, out=out)
        fns["numpy"] = lambda: _numpy_norm(x, -1, w, b)
    floors = [copy_floor(x)]
    try:
        import torch
        import torch.nn.functional as F

        t, tw, tb = (torch.from_numpy(v) for v in (x, w, b))
        fns["torch"] = (lambda: F.rms_norm(t, (L,), tw, EPS)) if rms else (lambda: F.layer_norm(t, (L,), tw, tb, EPS))
        tdst = torch.empty_like(t)
        floors.append(lambda: tdst.copy_(t))
    except ImportError:
        pass
    try:
        if rms:
            sess = _ort_session("RMSNormalization", shape, [("s", w)], {"epsilon": EPS, "axis": -1}, threads, 23)
        else:
            sess = _ort_session("LayerNormalization", shape, [("s", w), ("b", b)], {"epsilon": EPS, "axis": -1},
                                threads)
        fns["onnxruntime"] = lambda: sess.run(None, {"X": x})
    except ImportError:
        pass
    return fns, floors


# Half types: (name, kind, shape, dtype name), kind "layer" (over the last axis) or "gn32" (channels first).
HALF_CASES = [(f"{kind} {shape} {dt}", kind, shape, dt)
              for kind, shape in [("layer", (1024, 4096)), ("gn32", (16, 64, 64, 64))]
              for dt in ("float16", "bfloat16")]


def half_dtype(name):
    """NumPy's float16, or ml_dtypes' bfloat16 (None where ml_dtypes is not installed)."""
    if name == "float16":
        return np.float16
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


def half_peers(kind, shape, dtype_name, threads):
    """Callables for one half-type case (normfast with out=, NumPy computing in float32, PyTorch in the same
    half type), plus the copy floors; None where the dtype is not available."""
    from . import norms

    dt = half_dtype(dtype_name)
    if dt is None:
        return None
    x = make_input(shape, np.float32).astype(dt)
    C = shape[-1] if kind == "layer" else shape[1]
    rng = np.random.default_rng(3)
    w, b = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    out = np.empty_like(x)
    if kind == "layer":
        fns = {"normfast": lambda: norms.layer_norm(x, C, w, b, eps=EPS, out=out),
               "numpy": lambda: _numpy_norm(x.astype(np.float32), -1, w, b).astype(dt)}
    else:
        fns = {"normfast": lambda: norms.group_norm(x, 32, w, b, eps=EPS, out=out)}

        def np_gn():
            g = x.astype(np.float32).reshape(shape[0], 32, -1)
            y = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + EPS)
            return (y.reshape(shape) * w.reshape(C, 1, 1) + b.reshape(C, 1, 1)).astype(dt)

        fns["numpy"] = np_gn
    floors = [copy_floor(x)]
    try:
        import torch
        import torch.nn.functional as F

        tdt = torch.float16 if dtype_name == "float16" else torch.bfloat16
        t = torch.from_numpy(x.view(np.int16)).view(tdt)
        tw, tb = (torch.from_numpy(v).to(tdt) for v in (w, b))
        fns["torch"] = ((lambda: F.layer_norm(t, (C,), tw, tb, EPS)) if kind == "layer"
                        else (lambda: F.group_norm(t, 32, tw, tb, EPS)))
        tdst = torch.empty_like(t)
        floors.append(lambda: tdst.copy_(t))
    except ImportError:
        pass
    return fns, floors


# Inference toolkit and streaming statistics: (name, kind, shape). The matmul case comes last: BLAS
# worker threads spin for ~0.1 s after a call and would slow whatever is timed next.
TOOL_CASES = [
    ("BatchNorm layer, eval (64,512)", "bn-layer", (64, 512)),
    ("BatchNorm layer, eval (1,64,56,56)", "bn-layer", (1, 64, 56, 56)),
    ("weight_norm (4096,4096) axis=0", "weight-norm", (4096, 4096)),
    ("RunningMoments.update (64,64,28,28) axis=(0,2,3)", "running", (64, 64, 28, 28)),
    ("cosine_linear (1024,512) x (256,512)", "cosine", (1024, 512, 256)),
]


def tool_peers(kind, shape, threads):
    """Callables for one toolkit case by implementation name, plus the copy floor of its input."""
    import normfast

    rng = np.random.default_rng(3)
    x = make_input(shape[:2] if kind == "cosine" else shape, np.float32)
    fns, floors = {}, [copy_floor(x)]
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    if kind == "bn-layer":
        C = shape[1]
        state = {"weight": rng.uniform(0.5, 1.5, C), "bias": rng.standard_normal(C),
                 "running_mean": rng.standard_normal(C), "running_var": rng.uniform(0.5, 2, C)}
        layer = normfast.layers.BatchNorm(C).eval()
        layer.load_state_dict(state, strict=False)
        out = np.empty_like(x)
        fns["normfast"] = lambda: layer(x, out=out)
        bshape = [C if i == 1 else 1 for i in range(x.ndim)]
        a = (state["weight"] / np.sqrt(state["running_var"] + EPS)).astype(np.float32).reshape(bshape)
        c = (state["bias"] - state["running_mean"] * a.ravel()).astype(np.float32).reshape(bshape)
        fns["numpy"] = lambda: np.add(np.multiply(x, a, out=out), c, out=out)  # scale and shift precomputed
        if torch:
            module = (torch.nn.BatchNorm1d if x.ndim == 2 else torch.nn.BatchNorm2d)(C).eval()
            module.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}, strict=False)
            t = torch.from_numpy(x)

            def torch_bn():
                with torch.inference_mode():
                    return module(t)
            fns["torch"] = torch_bn
        try:
            sess = _ort_session("BatchNormalization", x.shape, [("s", state["weight"]), ("b", state["bias"]),
                                                                ("m", state["running_mean"]),
                                                                ("v", state["running_var"])], {"epsilon": EPS}, threads)
            fns["onnxruntime"] = lambda: sess.run(None, {"X": x})
        except ImportError:
            pass
    elif kind == "cosine":
        w = make_input((shape[2], shape[1]), np.float32, seed=4)
        fns["normfast"] = lambda: normfast.cosine_linear(x, w)
        fns["numpy"] = lambda: ((x / np.linalg.norm(x, axis=1, keepdims=True))
                                @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T)
        if torch:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            fns["torch"] = lambda: F.linear(F.normalize(tx, dim=1), F.normalize(tw, dim=1))
    elif kind == "weight-norm":
        g = rng.uniform(0.5, 1.5, shape[0]).astype(np.float32)
        fns["normfast"] = lambda: normfast.weight_norm(x, g)
        fns["numpy"] = lambda: x * (g[:, None] / np.linalg.norm(x, axis=1, keepdims=True))
        if torch:
            tv, tg = torch.from_numpy(x), torch.from_numpy(g[:, None])
            fns["torch"] = lambda: torch._weight_norm(tv, tg, 0)
    else:
        axes = (0, 2, 3)
        acc = normfast.RunningMoments(axis=axes)
        fns["normfast"] = lambda: acc.update(x)
        fns["numpy"] = lambda: (np.mean(x, axis=axes), np.var(x, axis=axes))  # the batch's part only
        if torch:
            t = torch.from_numpy(x)
            fns["torch"] = lambda: torch.var_mean(t, dim=axes, correction=0)
    return fns, floors


# --- backward -----------------------------------------------------------------------------------------
# (name, kind, shape, channels_last): the gradients with respect to x, weight and bias, normfast and
# PyTorch each given the forward's saved statistics where their API takes them (PyTorch's native
# backward ops, without autograd; normfast's group norm recomputes its statistics).
GRAD_CASES = [
    ("bn backward NCHW (32,64,56,56)", "bn", (32, 64, 56, 56), False),
    ("bn backward NHWC (32,64,56,56)", "bn", (32, 64, 56, 56), True),
    ("gn32 backward NCHW (32,64,56,56)", "gn32", (32, 64, 56, 56), False),
    ("in backward NCHW (32,64,56,56)", "in", (32, 64, 56, 56), False),
    ("layer backward (512,1024)", "layer", (512, 1024), False),
    ("layer backward (4096,4096)", "layer", (4096, 4096), False),
]


def _numpy_grad(dy, xhat, rstd, w, axes):
    """The textbook gradient with respect to x of (x - mean) * rstd * w + b over `axes`."""
    n = np.prod([xhat.shape[a] for a in axes])
    g = dy * w
    return rstd / n * (n * g - g.sum(axis=axes, keepdims=True) - xhat * (g * xhat).sum(axis=axes, keepdims=True))


def grad_peers(kind, shape, channels_last, threads):
    """Callables for one backward case by implementation name, plus the memory floors: x + grad_out into
    a preallocated array reads x and grad_out and writes grad_x, the least a backward moves."""
    from . import grads, norms

    nchw = make_input(shape, np.float32)
    rows = kind == "layer"
    x = np.ascontiguousarray(np.moveaxis(nchw, 1, -1)) if channels_last else nchw
    dy = make_input(x.shape, np.float32, seed=7)
    c = x.ndim - 1 if channels_last or rows else 1
    C = x.shape[c]
    rng = np.random.default_rng(5)
    w, b = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    bshape = [C if i == c else 1 for i in range(x.ndim)]
    fns = {}
    if kind == "bn":
        _, mean, rstd = norms.batch_norm(x, weight=w, bias=b, training=True, axis=c, return_stats=True)
        fns["normfast"] = lambda: grads.batch_norm_backward(dy, x, weight=w, bias=b, axis=c, mean=mean, rstd=rstd)
        axes = tuple(i for i in range(x.ndim) if i != c)
        xhat = (x - mean.reshape(bshape).astype(np.float32)) * rstd.reshape(bshape).astype(np.float32)
        fns["numpy"] = lambda: (_numpy_grad(dy, xhat, rstd.reshape(bshape).astype(np.float32), w.reshape(bshape), axes),
                                (dy * xhat).sum(axis=axes), dy.sum(axis=axes))
    elif kind in ("gn32", "in"):
        G = 32 if kind == "gn32" else C
        call = (lambda: grads.group_norm_backward(dy, x, G, w, b)) if kind == "gn32" else \
            (lambda: grads.instance_norm_backward(dy, x, weight=w, bias=b))
        fns["normfast"] = call
        N = x.shape[0]
        xg, dyg = x.reshape(N, G, -1), dy.reshape(N, G, -1)
        mean = xg.mean(axis=2, keepdims=True)
        rstd = 1 / np.sqrt(xg.var(axis=2, keepdims=True) + EPS)
        wg = np.repeat(w.reshape(G, -1), xg.shape[2] // (C // G), axis=1)  # per element of a group's row
        xhat = (xg - mean) * rstd
        fns["numpy"] = lambda: (_numpy_grad(dyg, xhat, rstd, wg, (2,)),
                                (dyg * xhat).reshape(x.shape).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3)))
    else:
        L = shape[-1]
        _, mean, rstd = norms.layer_norm(x, L, w, b, eps=EPS, return_stats=True)
        fns["normfast"] = lambda: grads.layer_norm_backward(dy, x, L, w, b, eps=EPS, mean=mean, rstd=rstd)
        xhat = (x - mean[:, None].astype(np.float32)) * rstd[:, None].astype(np.float32)
        fns["numpy"] = lambda: (_numpy_grad(dy, xhat, rstd[:, None].astype(np.float32), w, (1,)),
                                (dy * xhat).sum(axis=0), dy.sum(axis=0))
    dst = np.empty_like(x)
    floors = [lambda: np.add(x, dy, out=dst)]
    try:
        import torch
    except ImportError:
        return fns, floors
    t, tdy, tw, tb = (torch.from_numpy(v) for v in (x, dy, w, b))
    if channels_last:  # the same bytes, seen as (N, C, H, W) in channels_last memory format
        t, tdy = (v.permute(0, x.ndim - 1, *range(1, x.ndim - 1)) for v in (t, tdy))
    mask = [True, True, True]
    if kind == "bn":
        tm, tr = (torch.from_numpy(v.astype(np.float32)) for v in (mean, rstd))
        fns["torch"] = lambda: torch.ops.aten.native_batch_norm_backward(tdy, t, tw, None, None, tm, tr, True, EPS,
                                                                         mask)
    elif kind in ("gn32", "in"):
        N, HW = x.shape[0], x.size // (x.shape[0] * C)
        _, tm, tr = torch.ops.aten.native_group_norm(t, tw, tb, N, C, HW, G, EPS)
        fns["torch"] = lambda: torch.ops.aten.native_group_norm_backward(tdy, t, tm, tr, tw, N, C, HW, G, mask)
    else:
        tm, tr = (torch.from_numpy(v.astype(np.float32)).reshape(-1, 1) for v in (mean, rstd))
        fns["torch"] = lambda: torch.ops.aten.native_layer_norm_backward(tdy, t, [shape[-1]], tm, tr, tw, tb, mask)
    tdst = torch.empty_like(t)
    floors.append(lambda: torch.add(t, tdy, out=tdst))
    return fns, floors


# (what, kept axes) of a float32 .npy file of STATS_SHAPE (134 MB) in the page cache
STATS_SHAPE = (128, 64, 64, 64)
STATS_CASES = [("per channel, axis=1", 1), ("per channel, axis=-1", -1), ("whole", ())]
_FILES = {}


def _stats_file(shape):
    """A float32 .npy of the shape in a temporary folder removed at exit, written once per process and
    flushed to disk, so its pages sit clean in the page cache (the OS writing dirty pages back in the
    middle of a timing slowed it by half)."""
    if shape not in _FILES:
        import os
        import tempfile
        folder = tempfile.TemporaryDirectory(prefix="normfast-bench-")
        path = f"{folder.name}/x.npy"
        with open(path, "wb") as f:
            np.save(f, make_input(shape, np.float32))
            f.flush()
            os.fsync(f.fileno())
        _FILES[shape] = (folder, path)
    return _FILES[shape][1]


def stats_peers(shape, kept):
    """Count, mean, var, min and max of a .npy file per kept axis, by implementation name; the floor
    reads the file's bytes from the page cache into a reused buffer (aligned as the reader's are)."""
    from . import dataset

    path = _stats_file(shape)
    red = tuple(a for a in range(len(shape)) if a not in [k % len(shape) for k in np.atleast_1d(kept)])

    def textbook():
        x = np.load(path)
        return x.mean(axis=red), x.var(axis=red), x.min(axis=red), x.max(axis=red)

    def read(buf=dataset.read_buffer(dataset.BLOCK_BYTES)):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    fns = {"normfast": lambda: dataset.dataset_stats(path, channel_axis=kept), "numpy": textbook}
    try:
        import torch
    except ImportError:
        return fns, [read]

    def torch_stats():
        t = torch.from_numpy(np.load(path))
        var, mean = torch.var_mean(t, dim=red, correction=0)
        return mean, var, torch.amin(t, dim=red), torch.amax(t, dim=red)

    fns["torch"] = torch_stats
    return fns, [read]


# --- under load ---------------------------------------------------------------------------------------
# (name, kind, shape): normfast on a machine where one other process is busy, as users run it: at the
# benchmark's threads against its own single thread, in the same conditions.
LOAD_CASES = [
    ("moments (4096,4096) axis=0", "moments", (4096, 4096)),
    ("bn-train NCHW (32,64,56,56)", "bn-train", (32, 64, 56, 56)),
    ("layer (4096,4096)", "layer", (4096, 4096)),
    ("dataset_stats, folder of 200 PNG (256,256,3)", "images", (200, 256, 256, 3)),
]


# A Python loop on one core that ends when its stdin closes, which the OS does when the benchmark ends
# in any way (a kill or a timeout skips the finally below and would leave it spinning).
_SPIN = ("import os, sys, threading\n"
         "threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()\n"
         "while True: pass")


@contextlib.contextmanager
def busy_process():
    """One other process spinning on a core (a Python loop) while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN], stdin=subprocess.PIPE)
    try:
        time.sleep(0.2)  # let it start and take its core
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _image_folder(shape):
    """A temporary folder (removed at exit, made once per process) of shape[0] random RGB PNG images of
    shape[1:]; None without Pillow."""
    if shape not in _FILES:
        try:
            from PIL import Image
        except ImportError:
            return None
        import tempfile
        folder = tempfile.TemporaryDirectory(prefix="normfast-bench-")
        rng = np.random.default_rng(5)
        for i in range(shape[0]):
            Image.fromarray(rng.integers(0, 256, shape[1:], dtype=np.uint8)).save(f"{folder.name}/{i:04d}.png")
        _FILES[shape] = (folder, folder.name)
    return _FILES[shape][1]


def load_call(kind, shape):
    """The normfast call of one under-load case (output given where the call takes one); None where it
    needs what is not installed (Pillow for the image folder)."""
    from . import dataset, norms

    if kind == "images":
        folder = _image_folder(shape)
        return folder and (lambda: dataset.dataset_stats(folder))
    x = make_input(shape, np.float32)
    out = np.empty_like(x)
    if kind == "moments":
        return lambda: reductions.moments(x, 0)
    if kind == "bn-train":
        return lambda: norms.batch_norm(x, training=True, eps=EPS, out=out)
    return lambda: norms.layer_norm(x, shape[-1], eps=EPS, out=out)


# --- runs saved (--json) and compared (--compare) ----------------------------------------------------
RUN_FORMAT = 1  # the version of the --json layout


class RunFileError(ValueError):
    """An earlier run's file (--compare) that cannot be read or is not a run."""


def record(table, case, timing, ratio, **extra):
    """One row of a run: normfast's times (seconds) and `ratio`, its time over the floor measured in the
    same run (under load: N threads over 1 thread), by which rows are compared across runs."""
    return {"table": table, "case": case, "median": timing.median, "min": timing.min, "max": timing.max,
            "calls": timing.calls, "ratio": ratio, **extra}


def machine(threads, quick, repeat):
    """What a run ran on: the CPU, its vector extensions, the ISA normfast chose, threads, versions."""
    import platform

    from . import __version__, show_config

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu in ("", platform.machine(), platform.processor()):
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    versions = {"normfast": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for name in ("torch", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {"format": RUN_FORMAT, "cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "cpu_flags": sorted(flags & {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_fp16",
                                         "avx512_bf16", "neon", "asimd"}),
            "isa": show_config(mode="dicts")["isa"], "threads": threads, "quick": quick, "repeat": repeat,
            "versions": versions, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_run(path, option):
    """An earlier run written by --json, checked: a RunFileError naming `option` and the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except OSError as e:
        raise RunFileError(f"{option}: {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # RecursionError: nested past the parser's depth
        raise RunFileError(f"{option}: {path}: not JSON ({str(e)[:80]})") from None

    def row_ok(r):  # as record() writes it: names, and a ratio > 0 (a bool is not one)
        q = r.get("ratio") if isinstance(r, dict) else None
        return (isinstance(r.get("table"), str) and isinstance(r.get("case"), str) and isinstance(q, (int, float))
                and not isinstance(q, bool) and math.isfinite(q) and q > 0) if isinstance(r, dict) else False

    ok = (isinstance(run, dict) and isinstance(run.get("machine"), dict) and isinstance(run.get("rows"), list)
          and all(row_ok(r) for r in run["rows"]))
    if not ok:
        raise RunFileError(f"{option}: {path}: not a run written by `normfast bench --json`")
    if run["machine"].get("format") != RUN_FORMAT:
        raise RunFileError(f"{option}: {path}: run format {run['machine'].get('format')!r}, expected {RUN_FORMAT}")
    return run


def compare_runs(before, now):
    """Per (table, case), in this run's order then the rows gone: {table, case, before, now} with each
    run's ratio (None where the row is not in that run)."""
    def ratios(rows):  # read_run has checked them
        return {(r["table"], r["case"]): r["ratio"] for r in rows}

    old, new = ratios(before), ratios(now)
    keys = list(new) + [k for k in old if k not in new]
    return [{"table": t, "case": c, "before": old.get((t, c)), "now": new.get((t, c))} for t, c in keys]


def machine_differences(before, now):
    """Lines saying what differs between two runs' machines and settings, which the ratios do not cancel."""
    keys = ("cpu", "cpus", "isa", "threads", "quick", "repeat")
    return [f"{k} was {before.get(k)!r}, now {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]
