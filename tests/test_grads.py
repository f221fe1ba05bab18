"""The backward passes against torch.autograd (float64, on the exact values of the inputs), switchable
norm's logits against finite differences, bit-identical results for any thread count, the forwards'
saved statistics, and the errors."""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast

from api_calls import GRADIENTS
from helpers import (ACTS, ISAS, assert_refused, bad_call, case_ids, norm_inputs, torch_switchable, use_isa,
                     use_threads)

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Gradient tolerance relative to the largest expected value: float64 throughout, float32 computation
# (for float32 and the half types), then rounding to the gradient's dtype.
G_TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4, np.dtype(np.float16): 3e-3,
         np.dtype(ml_dtypes.bfloat16): 2e-2}


def assert_close(got, want, dtype, what):
    assert got.shape == want.shape, what
    tol = G_TOL[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol,
                               atol=tol * max(1.0, np.abs(want).max(initial=0)), err_msg=what)


def tensor(a, axis=None):
    """A float64 leaf tensor of a's exact values (channel axis moved to 1 when given), or None."""
    if a is None:
        return None
    a = np.asarray(a, np.float64)
    return torch.tensor((a if axis is None else np.moveaxis(a, axis, 1)).copy(), requires_grad=True)


def torch_grads(name, grad_out, x, axis, weight, bias, act, **kw):
    """The gradients PyTorch's autograd gives for the same call (float64), in normfast's order."""
    X, W, B = tensor(x, axis), tensor(weight), tensor(bias)
    const = {k: None if kw.get(k) is None else torch.tensor(np.asarray(kw[k], np.float64))
             for k in ("running_mean", "running_var")}
    rm, rv = const["running_mean"], const["running_var"]
    leaves = [X, W, B]
    if name == "batch_norm":
        y = F.batch_norm(X, rm, rv, W, B, training=kw["training"], momentum=0.0, eps=kw["eps"])
    elif name == "instance_norm":
        y = F.instance_norm(X, rm, rv, W, B, use_input_stats=kw["use_input_stats"], momentum=0.0, eps=kw["eps"])
    elif name == "group_norm":
        y = F.group_norm(X, kw["num_groups"], W, B, eps=kw["eps"])
    else:
        mw, vw = tensor(kw["mean_weight"]), tensor(kw["var_weight"])
        leaves += [mw, vw]
        y = torch_switchable(X, W, B, mw, vw, rm, rv, kw["training"], kw["eps"], kw["using_bn"])
    if act == "relu" and (y.detach().abs() < 1e-9).any():
        # ReLU's derivative at a pre-activation of ~0 is decided by rounding (PyTorch's float64 mean of
        # equal values is not always exact): no reference there.
        return None
    if act is not None:
        y = getattr(F, act)(y)
    y.backward(torch.tensor(np.moveaxis(np.asarray(grad_out, np.float64), axis, 1).copy()))
    grads = [None if t is None or t.grad is None else t.grad.numpy() for t in leaves]
    grads[0] = np.moveaxis(grads[0], 1, axis)
    return grads


def grad_like(x, rng, layout):
    """An upstream gradient of x's shape and dtype, in one of several memory layouts."""
    g = (rng.standard_normal(x.shape) * 3).astype(x.dtype)
    if layout == "fortran":
        return np.asfortranarray(g)
    if layout == "reversed":
        return np.ascontiguousarray(g[::-1])[::-1]
    return g


def check_channel(isa, name, x, axis, c, affine, act, eps, layout, rng, **kw):
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    weight, bias = (rng.uniform(0.5, 1.5, c).astype(pdt), rng.standard_normal(c).astype(pdt)) if affine else (None, None)
    if name == "switchable_norm":
        weight, bias = rng.uniform(0.5, 1.5, c).astype(pdt), rng.standard_normal(c).astype(pdt)
    dy = grad_like(x, rng, layout)
    snapshot = {k: v.copy() for k, v in kw.items() if isinstance(v, np.ndarray)}
    with use_isa(isa):
        got = getattr(normfast, name + "_backward")(dy, x, weight=weight, bias=bias, axis=axis, activation=act, eps=eps,
                                                    **kw)
    want = torch_grads(name, dy, x, axis, weight, bias, act, eps=eps, **kw)
    if want is None:
        return
    assert len(got) == len(want)
    assert got[0].dtype == x.dtype
    for what, g, w in zip(("grad_x", "grad_weight", "grad_bias", "grad_mean_weight", "grad_var_weight"), got, want):
        if w is None:
            assert g is None, what
        else:
            assert g.dtype == (x.dtype if what == "grad_x" else pdt), what
            assert_close(g, w, x.dtype if what == "grad_x" else np.float32 if pdt == np.float32 else np.float64, what)
    for k, v in snapshot.items():  # read, never changed
        np.testing.assert_array_equal(kw[k], v)


def running(c, dtype, rng):
    pdt = np.float64 if dtype == np.float64 else np.float32
    return rng.standard_normal(c).astype(pdt), rng.uniform(0.5, 2, c).astype(pdt)


LAYOUTS = st.sampled_from(["contiguous", "fortran", "reversed"])


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(inp=norm_inputs(), affine=st.booleans(), act=st.sampled_from(ACTS), eps=st.sampled_from([1e-5, 0.1]),
       training=st.booleans(), layout=LAYOUTS, seed=st.integers(0, 2**32 - 1))
def test_batch_norm_backward(isa, inp, affine, act, eps, training, layout, seed):
    x, axis, c = inp
    if training and x.size // c < 2:
        return
    rng = np.random.default_rng(seed)
    rm, rv = running(c, x.dtype, rng)
    check_channel(isa, "batch_norm", x, axis, c, affine, act, eps, layout, rng, running_mean=rm, running_var=rv,
                  training=training)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(inp=norm_inputs(min_spatial=2), affine=st.booleans(), act=st.sampled_from(ACTS),
       use_input_stats=st.booleans(), tracked=st.booleans(), layout=LAYOUTS, seed=st.integers(0, 2**32 - 1))
def test_instance_norm_backward(isa, inp, affine, act, use_input_stats, tracked, layout, seed):
    x, axis, c = inp
    if use_input_stats and x.size // (x.shape[0] * c) < 2:
        return  # no spatial extent to normalize over: the forward refuses it too
    rng = np.random.default_rng(seed)
    rm, rv = running(c, x.dtype, rng) if tracked or not use_input_stats else (None, None)
    check_channel(isa, "instance_norm", x, axis, c, affine, act, 1e-5, layout, rng, running_mean=rm,
                  running_var=rv, use_input_stats=use_input_stats)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(inp=norm_inputs(), affine=st.booleans(), act=st.sampled_from(ACTS), layout=LAYOUTS, data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_group_norm_backward(isa, inp, affine, act, layout, data, seed):
    x, axis, c = inp
    groups = data.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    if x.size // (x.shape[0] * groups) < 2:
        return  # PyTorch refuses groups of one element
    check_channel(isa, "group_norm", x, axis, c, affine, act, 1e-5, layout, np.random.default_rng(seed),
                  num_groups=groups)


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(inp=norm_inputs(), act=st.sampled_from(ACTS), training=st.booleans(), using_bn=st.booleans(),
       layout=LAYOUTS, seed=st.integers(0, 2**32 - 1))
def test_switchable_norm_backward(isa, inp, act, training, using_bn, layout, seed):
    x, axis, c = inp
    if using_bn and training and x.size // c < 2:
        return
    rng = np.random.default_rng(seed)
    k = 3 if using_bn else 2
    rm, rv = running(c, x.dtype, rng) if using_bn else (None, None)
    check_channel(isa, "switchable_norm", x, axis, c, True, act, 1e-5, layout, rng, mean_weight=rng.standard_normal(k),
                  var_weight=rng.standard_normal(k), running_mean=rm, running_var=rv, training=training,
                  using_bn=using_bn)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name, kw", [("batch_norm", dict(training=True)), ("instance_norm", dict(use_input_stats=True)),
                                      ("group_norm", dict(num_groups=4)), ("group_norm", dict(num_groups=1))],
                         ids=["batch", "instance", "group4", "group1"])
def test_channels_first_groups_in_cache(isa, dtype, act, name, kw):
    """Channels-first contiguous data long enough per channel runs group by group (nf_seg_grad)."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((8, 16, 10, 10)) * 2 + 3).astype(dtype)
    g = normfast.grads
    groups_of = {"batch_norm": g._batch_segments, "instance_norm": g._instance_segments,
                 "group_norm": g._group_segments(kw.get("num_groups", 1))}[name]
    assert g._segments(x, 1, groups_of) is not None
    check_channel(isa, name, x, 1, 16, True, act, 1e-5, "contiguous", rng, **kw)


def test_saved_statistics_give_the_same_gradients():
    rng = np.random.default_rng(12)
    for shape, axis in [((4, 16, 10, 10), 1), ((4, 10, 10, 16), -1)]:
        x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
        w, b = rng.uniform(0.5, 1.5, 16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
        _, mean, rstd = normfast.batch_norm(x, weight=w, bias=b, training=True, axis=axis, return_stats=True)
        got = normfast.batch_norm_backward(dy, x, weight=w, bias=b, axis=axis, mean=mean, rstd=rstd)
        want = normfast.batch_norm_backward(dy, x, weight=w, bias=b, axis=axis)
        for g, wt in zip(got, want):
            np.testing.assert_allclose(g, wt, rtol=2e-5, atol=2e-6)


@st.composite
def row_inputs(draw):
    """(x, normalized_shape): a strided view of rank 1-4, normalized over its last 1 or 2 axes."""
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    k = draw(st.integers(1, min(2, ndim)))
    steps = draw(st.lists(st.sampled_from([1, 1, 2, -1]), min_size=ndim, max_size=ndim))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, ml_dtypes.bfloat16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 5.0, -300.0]))
    base = (rng.standard_normal([s * abs(t) for s, t in zip(shape, steps)]) * 2 + offset).astype(dtype)
    return base[tuple(slice(None, None, t) for t in steps)], tuple(shape[ndim - k:])


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(inp=row_inputs(), affine=st.sampled_from(["none", "weight", "both"]), saved=st.booleans(), rms=st.booleans(),
       layout=LAYOUTS, seed=st.integers(0, 2**32 - 1))
def test_layer_and_rms_norm_backward(isa, inp, affine, saved, rms, layout, seed):
    x, ns = inp
    rng = np.random.default_rng(seed)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    weight = rng.uniform(0.5, 1.5, ns).astype(pdt) if affine != "none" else None
    bias = rng.standard_normal(ns).astype(pdt) if affine == "both" and not rms else None
    dy = grad_like(x, rng, layout)
    X, W, B = tensor(x), tensor(weight), tensor(bias)
    eps = 1e-5
    with use_isa(isa):
        if rms:
            stats = dict(rstd=normfast.rms_norm(x, ns, weight, eps=eps, return_stats=True)[1]) if saved else {}
            got = normfast.rms_norm_backward(dy, x, ns, weight, eps=eps, **stats)
            y = F.rms_norm(X, ns, W, eps=eps)
        else:
            stats = dict(zip(("mean", "rstd"), normfast.layer_norm(x, ns, weight, bias, return_stats=True)[1:]))
            got = normfast.layer_norm_backward(dy, x, ns, weight, bias, eps=eps, **(stats if saved else {}))
            y = F.layer_norm(X, ns, W, B, eps=eps)
    y.backward(torch.tensor(np.asarray(dy, np.float64).copy()))
    want = [X.grad.numpy()] + [None if t is None else t.grad.numpy() for t in ((W,) if rms else (W, B))]
    assert len(got) == len(want)
    for what, g, w in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        if w is None:
            assert g is None, what
        else:
            assert_close(g, w, x.dtype if what == "grad_x" else pdt, what)


def test_forward_stats_are_the_normalizing_ones():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 5)) * 2 + 1
    y, mean, rstd = normfast.batch_norm(x, training=True, return_stats=True)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-5), rtol=1e-13)
    rm, rv = np.zeros(3), np.full(3, 4.0)
    _, mean, rstd = normfast.batch_norm(x, rm, rv, training=False, return_stats=True)
    np.testing.assert_array_equal(mean, rm)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(4 + 1e-5), rtol=1e-15)
    for view in (x, x.transpose(2, 0, 1), x[:, ::2]):  # the leading axes in C order, whatever the layout
        _, mean, rstd = normfast.layer_norm(view, view.shape[-1], return_stats=True)
        np.testing.assert_allclose(mean, view.mean(axis=-1), rtol=1e-13)
        np.testing.assert_allclose(rstd, 1 / np.sqrt(view.var(axis=-1) + 1e-5), rtol=1e-13)
        _, rstd = normfast.rms_norm(view, view.shape[-1], eps=1e-6, return_stats=True)
        np.testing.assert_allclose(rstd, 1 / np.sqrt((view * view).mean(axis=-1) + 1e-6), rtol=1e-13)


@pytest.mark.parametrize("using_bn, training", [(True, True), (True, False), (False, True)])
def test_switchable_logits_match_finite_differences(using_bn, training):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    k = 3 if using_bn else 2
    mw, vw = rng.standard_normal(k), rng.standard_normal(k)
    rm, rv = (rng.standard_normal(4), rng.uniform(0.5, 2, 4)) if using_bn else (None, None)
    kw = dict(training=training, using_bn=using_bn, activation="silu")
    got = normfast.switchable_norm_backward(dy, x, w, b, mw, vw, rm, rv, **kw)

    def loss(mw, vw):
        r = (rm.copy(), rv.copy()) if using_bn else (None, None)  # a training call updates them
        return np.sum(dy * normfast.switchable_norm(x, w, b, mw, vw, *r, **kw))

    h = 1e-6
    for i in range(k):
        e = np.eye(k)[i] * h
        np.testing.assert_allclose(got[3][i], (loss(mw + e, vw) - loss(mw - e, vw)) / (2 * h), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[4][i], (loss(mw, vw + e) - loss(mw, vw - e)) / (2 * h), rtol=1e-6, atol=1e-7)


def large_calls(dtype):
    """Backward calls over shapes that use several chunks, tiles, vector paths and threads."""
    rng = np.random.default_rng(5)

    def data(shape):
        return (rng.standard_normal(shape) * 2 + 1).astype(dtype), (rng.standard_normal(shape)).astype(dtype)

    pdt = np.float64 if dtype == np.float64 else np.float32
    w, b = rng.uniform(0.5, 1.5, 300).astype(pdt), rng.standard_normal(300).astype(pdt)
    x1, d1 = data((32, 4, 4096))      # row mode, two chunks per channel
    x2, d2 = data((20000, 300))       # column mode, two tiles, many chunks
    x3, d3 = data((2, 6, 8, 50, 3))   # channels last, group norm and switchable
    x4, d4 = data((300, 5000))        # layer rows
    x5, d5 = data((16, 16, 1024))     # channels first, each group whole in cache
    return {
        "batch_norm rows": lambda: normfast.batch_norm_backward(d1, x1, weight=w[:4], bias=b[:4], activation="relu"),
        "batch_norm cols": lambda: normfast.batch_norm_backward(d2, x2, weight=w, bias=b, activation="silu"),
        "batch_norm groups": lambda: normfast.batch_norm_backward(d5, x5, weight=w[:16], bias=b[:16],
                                                                  activation="sigmoid"),
        "group_norm groups": lambda: normfast.group_norm_backward(d5, x5, 4, w[:16], b[:16], activation="relu"),
        "instance_norm": lambda: normfast.instance_norm_backward(d1, x1, weight=w[:4], bias=b[:4]),
        "group_norm": lambda: normfast.group_norm_backward(d3, x3, 3, w[:3], b[:3], axis=-1, activation="relu"),
        "switchable_norm": lambda: normfast.switchable_norm_backward(d3, x3, w[:3], b[:3], w[:3], b[:3], axis=-1),
        "layer_norm": lambda: normfast.layer_norm_backward(d4, x4, 5000, np.resize(w, 5000), np.resize(b, 5000)),
        "rms_norm": lambda: normfast.rms_norm_backward(d4, x4, 5000, np.resize(w, 5000)),
    }


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_gradients_do_not_depend_on_the_thread_count(isa, dtype):
    with use_isa(isa):
        for name, call in large_calls(dtype).items():
            with use_threads(1):
                want = call()
            for n in (2, 3, 4):
                with use_threads(n):
                    got = call()
                for g, w in zip(got, want):
                    assert g.tobytes() == w.tobytes(), f"{name}: {n} threads differ from 1"


def test_large_gradients_match_pytorch():
    """The chunked, tiled and vector paths (float32) against autograd on the same float32 values: rows
    of two chunks per channel, and 300 columns in two tiles over many chunks."""
    rng = np.random.default_rng(8)
    for shape, act in (((32, 4, 4096), "relu"), ((20000, 300), "sigmoid")):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        w, b = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
        got = normfast.batch_norm_backward(dy, x, weight=w, bias=b, activation=act)
        want = torch_grads("batch_norm", dy, x, 1, w, b, act, training=True, eps=1e-5)
        for g, wt in zip(got, want):
            assert_close(g, wt, np.float32, f"batch_norm {shape}")


def test_empty_batch_gives_zero_parameter_gradients():
    x = np.zeros((0, 3, 4), np.float32)
    gx, gw, gb = normfast.batch_norm_backward(x, x, weight=np.ones(3, np.float32), bias=np.zeros(3, np.float32))
    assert gx.shape == x.shape and gw.tolist() == [0, 0, 0] and gb.tolist() == [0, 0, 0]
    gx, gw, gb = normfast.layer_norm_backward(x, x, 4, np.ones(4, np.float32), np.ones(4, np.float32))
    assert gx.shape == x.shape and gw.tolist() == [0] * 4 and gb.tolist() == [0] * 4


# --- layers: backward after a training-mode call, gradients accumulated in layer.grads --------------

def layer_pairs():
    """(normfast layer, the same PyTorch module, input shape, names of the parameters)."""
    return [
        (normfast.layers.BatchNorm(4, activation="relu", dtype=np.float64),
         torch.nn.Sequential(torch.nn.BatchNorm2d(4, dtype=torch.float64), torch.nn.ReLU()), (3, 4, 5, 2)),
        (normfast.layers.InstanceNorm(4, affine=True, dtype=np.float64),
         torch.nn.InstanceNorm2d(4, affine=True, dtype=torch.float64), (3, 4, 5, 2)),
        (normfast.layers.GroupNorm(2, 4, dtype=np.float64), torch.nn.GroupNorm(2, 4, dtype=torch.float64),
         (3, 4, 5, 2)),
        (normfast.layers.LayerNorm((5, 2), dtype=np.float64), torch.nn.LayerNorm((5, 2), dtype=torch.float64),
         (3, 4, 5, 2)),
        (normfast.layers.RMSNorm(2, eps=1e-6, dtype=np.float64), torch.nn.RMSNorm(2, eps=1e-6, dtype=torch.float64),
         (3, 4, 5, 2)),
    ]


@pytest.mark.parametrize("index", range(5), ids=["BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm", "RMSNorm"])
def test_layer_backward_accumulates_like_pytorch(index):
    layer, module, shape = layer_pairs()[index]
    rng = np.random.default_rng(index)
    params = {k: rng.uniform(0.5, 1.5, v.shape) for k, v in module.named_parameters()}
    params = {k[2:] if k.startswith("0.") else k: v for k, v in params.items()}
    layer.load_state_dict(params, strict=False)
    with torch.no_grad():
        for k, p in module.named_parameters():
            p.copy_(torch.tensor(params[k[2:] if k.startswith("0.") else k]))
    for step in range(2):  # two calls: the gradients add up
        x, dy = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
        X = torch.tensor(x, requires_grad=True)
        module(X).backward(torch.tensor(dy))
        layer(x, out=x if step else None)  # in place the second time: backward still sees the input
        np.testing.assert_allclose(layer.backward(dy), X.grad.numpy(), rtol=1e-10, atol=1e-12)
    named = {k[2:] if k.startswith("0.") else k: p.grad.numpy() for k, p in module.named_parameters()}
    assert layer.grads.keys() == named.keys()
    for k, g in named.items():
        np.testing.assert_allclose(layer.grads[k], g, rtol=1e-10, atol=1e-12)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


def test_switchable_layer_backward_matches_the_functional():
    layer = normfast.layers.SwitchableNorm(4, activation="silu", dtype=np.float64)
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((3, 4, 6)), rng.standard_normal((3, 4, 6))
    layer(x)
    gx = layer.backward(dy)
    want = normfast.switchable_norm_backward(dy, x, layer.weight, layer.bias, layer.mean_weight, layer.var_weight,
                                             training=True, activation="silu")
    np.testing.assert_array_equal(gx, want[0])
    for k, w in zip(("weight", "bias", "mean_weight", "var_weight"), want[1:]):
        np.testing.assert_array_equal(layer.grads[k], w)


def test_layer_residual_backward_is_the_sums():
    rng = np.random.default_rng(4)
    x, r, dy = (rng.standard_normal((5, 8)) for _ in range(3))
    layer = normfast.layers.LayerNorm(8, dtype=np.float64)
    summed = np.empty_like(x)
    layer(x, residual=r, residual_out=summed)
    np.testing.assert_array_equal(summed, x + r)
    # The layer's saved statistics come from the row kernel, the functional's from the moments engine.
    np.testing.assert_allclose(layer.backward(dy), normfast.layer_norm_backward(dy, x + r, 8)[0], rtol=1e-13)


def test_layer_backward_needs_a_training_call():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    for layer in (normfast.layers.BatchNorm(3), normfast.layers.LayerNorm(2), normfast.layers.GroupNorm(1, 3)):
        layer.eval()
        layer(x)
        with pytest.raises(ValueError, match="backward: this .* has no training-mode call"):
            layer.backward(x)
        assert all(not g.any() for g in layer.grads.values())
    layer = normfast.layers.BatchNorm(3)
    layer(x)
    saved = layer.backward(np.ones_like(x))
    layer.eval()(x * 5)  # an evaluation call does not replace what backward differentiates
    np.testing.assert_array_equal(layer.train().backward(np.ones_like(x)), saved)
    with pytest.raises(ValueError, match=r"grad_out: expected the shape of x \(4, 3, 2\)"):
        layer.backward(np.ones((4, 3)))


# --- bad arguments ---------------------------------------------------------------------------------

# (call of api_calls.calls(), {argument: value or make(kw)}, exception, message).
BAD = [
    *[(c, {"x": lambda kw: kw["x"][0, 0, 0]}, ValueError, "x: expected an array of rank >= 2")
      for c in ("batch_norm_backward", "instance_norm_backward", "group_norm_backward", "switchable_norm_backward")],
    # the upstream gradient and the saved statistics
    *[(c, {"grad_out": lambda kw: kw["grad_out"][:1]}, ValueError, r"grad_out: expected the shape of x \(3, 4, 5, 2\)")
      for c in sorted(GRADIENTS)],
    *[(c, {"grad_out": lambda kw: kw["grad_out"].astype(np.float64)}, TypeError,
       r"grad_out: expected the dtype of x \(float32\), got float64") for c in sorted(GRADIENTS)],
    ("batch_norm_backward", {"grad_out": "a"}, TypeError, "grad_out: expected a float"),
    ("layer_norm_backward", {"grad_out": None}, TypeError, "grad_out: expected a float"),
    ("batch_norm_backward_saved", {"mean": lambda kw: kw["mean"][:2]}, ValueError, r"mean: expected shape \(4,\)"),
    ("batch_norm_backward_saved", {"rstd": np.ones((1, 4))}, ValueError, r"rstd: expected shape \(4,\)"),
    ("batch_norm_backward_saved", {"rstd": None}, ValueError, "mean, rstd: give both or neither"),
    ("batch_norm_backward", {"training": False, "running_mean": None, "running_var": None}, ValueError,
     "running_mean, running_var: required when training=False"),
    ("layer_norm_backward", {"mean": lambda kw: kw["mean"][..., :1]}, ValueError, r"mean: expected shape \(3, 4, 5\)"),
    ("layer_norm_backward", {"rstd": np.ones(3, complex)}, TypeError, "rstd: expected a float array"),
    ("layer_norm_backward", {"mean": None}, ValueError, "mean, rstd: give both or neither"),
    ("rms_norm_backward", {"rstd": np.ones(3)}, ValueError, r"rstd: expected shape \(3, 4, 5\)"),
    ("group_norm_backward", {"num_groups": 3}, ValueError, "num_groups: expected a positive divisor"),
    ("switchable_norm_backward", {"mean_weight": lambda kw: kw["mean_weight"][:2]}, ValueError,
     r"mean_weight: expected shape \(3,\)"),
    ("BatchNorm_backward", {"layer": lambda kw: normfast.layers.BatchNorm(4)}, ValueError,
     "backward: this BatchNorm has no training-mode call"),
    ("LayerNorm_backward", {"layer": lambda kw: normfast.layers.LayerNorm(2).eval()}, ValueError,
     "backward: this LayerNorm has no training-mode call"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    assert_refused(*bad_call(call, change), exc, match)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("n", [1, 8, 300, 70000])
def test_rms_backward_takes_the_forwards_rstd(isa, dtype, n):
    """rms_norm_backward without rstd uses rms_norm's own statistic: the same bytes as given the rstd
    rms_norm returned. A row holding +inf has rstd 0 (PyTorch's), so its grad_x is NaN but the weight
    gradient stays finite in every other column; the moments' var + mean^2 gave NaN (inf - inf) and a
    NaN weight gradient everywhere."""
    rng = np.random.default_rng(n)
    x, dy = (rng.standard_normal((5, n)).astype(dtype) for _ in range(2))
    w = rng.uniform(0.5, 1.5, n).astype(np.float64 if dtype == np.float64 else np.float32)
    with use_isa(isa):
        _, r = normfast.rms_norm(x, n, w, return_stats=True)
        got = normfast.rms_norm_backward(dy, x, n, w)
        given = normfast.rms_norm_backward(dy, x, n, w, rstd=r)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, given))
        x[2, n // 2] = np.inf
        gx, gw = normfast.rms_norm_backward(dy, x, n, w)
    t = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    tw = torch.from_numpy(w.astype(np.float64)).requires_grad_()
    eps = float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps)
    F.rms_norm(t, (n,), tw, eps=eps).backward(torch.from_numpy(np.asarray(dy, np.float64)))
    want_gx, want_gw = t.grad.numpy(), tw.grad.numpy()
    assert np.isnan(np.asarray(gx[2], np.float64)).all() and np.isnan(want_gx[2]).all()
    assert np.array_equal(np.isnan(gw), np.isnan(want_gw)) and np.isfinite(np.delete(gw, n // 2)).all()
    tol = {np.float64: 1e-10, np.float32: 1e-4}.get(dtype, 3e-2)
    np.testing.assert_allclose(np.delete(gw, n // 2), np.delete(want_gw, n // 2), rtol=tol, atol=tol * np.sqrt(5))
    np.testing.assert_allclose(np.asarray(np.delete(gx, 2, 0), np.float64), np.delete(want_gx, 2, 0), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_gradient_passes_at_nan_as_pytorch(isa, dtype, channels_last):
    """A NaN in x makes its group's pre-activation NaN; ReLU's derivative there is PyTorch's (the
    gradient passes: threshold_backward zeroes only z <= 0), so grad_bias of that channel is the sum of
    grad_out, not 0 (which it was). Batch, group, instance and switchable norm, against PyTorch on the
    same values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6))
    x[0, 1, 2, 3] = np.nan
    dy = rng.standard_normal(x.shape)
    x, dy = x.astype(dtype), dy.astype(dtype)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    pdt = np.float64 if dtype == np.float64 else np.float32
    t = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    tdy = torch.from_numpy(np.asarray(dy, np.float64))
    ax = 1
    if channels_last:
        x, dy, ax = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1
    cases = [(lambda: normfast.batch_norm_backward(dy, x, None, None, w.astype(pdt), b.astype(pdt),
                                                   activation="relu", axis=ax),
              lambda tw, tb: F.batch_norm(t, None, None, tw, tb, training=True)),
             (lambda: normfast.group_norm_backward(dy, x, 2, w.astype(pdt), b.astype(pdt), activation="relu", axis=ax),
              lambda tw, tb: F.group_norm(t, 2, tw, tb)),
             (lambda: normfast.instance_norm_backward(dy, x, None, None, w.astype(pdt), b.astype(pdt),
                                                      activation="relu", axis=ax),
              lambda tw, tb: F.instance_norm(t, weight=tw, bias=tb))]
    mw, vw = np.array([0.3, -0.2, 0.1]), np.array([-0.4, 0.2, 0.5])
    cases.append((lambda: normfast.switchable_norm_backward(dy, x, w.astype(pdt), b.astype(pdt), mw, vw,
                                                            activation="relu", axis=ax)[:3],
                  lambda tw, tb: torch_switchable(t, tw, tb, torch.tensor(mw), torch.tensor(vw), None, None, True,
                                                  1e-5, True)))
    tol = {np.float64: 1e-10, np.float32: 1e-4}.get(dtype, 3e-2)
    for ours, theirs in cases:
        with use_isa(isa):
            gx, gw, gb = ours()
        t.grad = None
        tw, tb = (torch.from_numpy(v).requires_grad_() for v in (w, b))
        torch.relu(theirs(tw, tb)).backward(tdy)
        want_gx = t.grad.numpy()
        if channels_last:
            want_gx = np.moveaxis(want_gx, 1, -1)
        np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(np.asarray(gx, np.float64), want_gx, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_backward_of_non_finite_x_as_pytorch(isa, dtype, channels_last):
    """Eval mode treats the running statistics as constants: grad_x is grad_out * act'(z) * w * rstd,
    finite where x is +-inf (it was 0 * inf = NaN), and NaN only where PyTorch's is (but for SiLU at
    +-inf, where its derivative's limits replace PyTorch's NaN). Batch norm and instance norm with
    use_input_stats=False, every activation, against PyTorch's autograd."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5))
    x[0, 0, :4] = [np.inf, -np.inf, np.nan, 1.0]
    x[1, 2, 1] = -np.inf
    dy = rng.standard_normal(x.shape)
    x, dy = x.astype(dtype), dy.astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    rm, rv = rng.standard_normal(3).astype(pdt), rng.uniform(0.5, 2, 3).astype(pdt)
    w, b = rng.uniform(0.5, 1.5, 3).astype(pdt), rng.standard_normal(3).astype(pdt)
    t = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    tdy = torch.from_numpy(np.asarray(dy, np.float64))
    ax = 1
    if channels_last:
        x, dy, ax = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1
    tol = {np.float64: 1e-10, np.float32: 1e-5}.get(dtype, 1e-2)
    torch_act = {None: lambda v: v, "relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu}
    for act in ACTS:
        t.grad = None
        y = F.batch_norm(t, *(torch.from_numpy(v.astype(np.float64)) for v in (rm, rv, w, b)), training=False)
        torch_act[act](y).backward(tdy)
        want = t.grad.numpy().copy()
        if act == "silu":  # SiLU's derivative at z = +-inf is its limit, 1 and 0 (PyTorch: inf * 0 = NaN)
            xi = t.detach().numpy()  # channels first, as want
            scale = (w * (1 / np.sqrt(rv.astype(np.float64) + 1e-5))).reshape(1, 3, 1)
            want = np.where(np.isinf(xi), np.where(xi > 0, tdy.numpy() * scale, 0.0), want)
        if channels_last:
            want = np.moveaxis(want, 1, -1)
        with use_isa(isa):
            got = [normfast.batch_norm_backward(dy, x, rm, rv, w, b, training=False, axis=ax, activation=act)[0],
                   normfast.instance_norm_backward(dy, x, rm, rv, w, b, use_input_stats=False, axis=ax,
                                                   activation=act)[0]]
        for gx in got:
            np.testing.assert_allclose(np.asarray(gx, np.float64), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_silu_at_an_overflowed_pre_activation(isa, dtype, channels_last):
    """A pre-activation past float's range (eval mode, x near its largest value) is +-inf: SiLU gives its
    limits, -0 at -inf (it gave -inf / inf = NaN), and its derivative 0 and 1 (it gave inf * 0 = NaN,
    which made the channel's parameter gradients NaN). Forward and backward against PyTorch in float64,
    where nothing overflows."""
    x = np.array([-3.3e38, 1, 2, 3, 3.3e38, -1]).reshape(2, 1, 3).astype(dtype)
    dy = np.array([1, 2, 3, 4, 5, 6]).reshape(2, 1, 3).astype(dtype)
    rm, rv = np.zeros(1, np.float32), np.ones(1, np.float32)
    w, b = np.array([1.5], np.float32), np.array([0.25], np.float32)
    t = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    tw, tb = (torch.from_numpy(v.astype(np.float64)).requires_grad_() for v in (w, b))
    y = F.silu(F.batch_norm(t, *(torch.from_numpy(v.astype(np.float64)) for v in (rm, rv)), tw, tb, training=False))
    y.backward(torch.from_numpy(np.asarray(dy, np.float64)))
    want = [y.detach().numpy(), t.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()]
    ax = 1
    if channels_last:
        x, dy, ax = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1
        want[:2] = [np.moveaxis(v, 1, -1) for v in want[:2]]
    with use_isa(isa):
        got = [normfast.batch_norm(x, rm, rv, w, b, axis=ax, activation="silu"),
               *normfast.batch_norm_backward(dy, x, rm, rv, w, b, training=False, axis=ax, activation="silu")]
    tol = 1e-5 if dtype == np.float32 else 1e-2
    for g, v in zip(got, want):
        with np.errstate(over="ignore"):  # exact values past float32's range are inf in it
            v = v.astype(np.float32).astype(np.float64)
        assert not np.isnan(np.asarray(g, np.float64)).any()
        np.testing.assert_allclose(np.asarray(g, np.float64), v, rtol=tol, atol=tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("spatial", [5, 100])
def test_relu_drops_a_non_finite_grad_out_where_it_is_off(isa, dtype, channels_last, spatial):
    """ReLU's gradient is a select (PyTorch's threshold_backward): an inf or NaN grad_out where z <= 0
    gives 0 there, and the group's gradients stay finite (the scalar paths multiplied: inf * 0, a NaN
    group; found by a new user). Batch (training and eval), instance, group and switchable norm, the fused
    segments (100 per channel, channels first) and the two-pass kernels (5; channels last), vector and
    scalar lanes; against PyTorch in float64 on the same values."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, spatial))
    dy = rng.standard_normal(x.shape)
    # places where every norm's pre-activation is off (x far under any mean; weight 1, bias 0), at the
    # starts and ends of rows: vector lanes and scalar tails
    at = ([0, 0, 0, 1, 1, 1], [0, 1, 2, 8, 7, 6], [0, 1, 2, spatial - 1, spatial - 2, spatial - 3])
    x[at] = -10
    off = np.zeros(x.shape, bool)
    off[at] = True
    dy[at] = [np.inf, np.nan, -np.inf, np.nan, np.inf, -np.inf]
    x, dy = x.astype(dtype), dy.astype(dtype)
    x64, dy64 = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    assert np.all(np.isnan(dy64) | np.isinf(dy64) <= off)
    pdt = np.float64 if dtype == np.float64 else np.float32
    w, b = np.ones(9, pdt), np.zeros(9, pdt)
    rm, rv = np.asarray(x64.mean(axis=(0, 2)), pdt), np.asarray(x64.var(axis=(0, 2)), pdt)
    mw = vw = np.array([-20.0, -20.0, 20.0])  # switchable: all but entirely the batch statistics
    t = torch.from_numpy(x64).requires_grad_()
    ax = 1
    if channels_last:
        x, dy, ax = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1
    tw, tb = (torch.ones(9, dtype=torch.float64), torch.zeros(9, dtype=torch.float64))
    cases = [(lambda: normfast.batch_norm_backward(dy, x, None, None, w, b, activation="relu", axis=ax),
              lambda: F.batch_norm(t, None, None, tw, tb, training=True)),
             (lambda: normfast.batch_norm_backward(dy, x, rm, rv, w, b, training=False, activation="relu", axis=ax),
              lambda: F.batch_norm(t, torch.from_numpy(rm.astype(np.float64)), torch.from_numpy(rv.astype(np.float64)),
                                   tw, tb, training=False)),
             (lambda: normfast.instance_norm_backward(dy, x, None, None, w, b, activation="relu", axis=ax),
              lambda: F.instance_norm(t, weight=tw, bias=tb)),
             (lambda: normfast.group_norm_backward(dy, x, 3, w, b, activation="relu", axis=ax),
              lambda: F.group_norm(t, 3, tw, tb)),
             (lambda: normfast.switchable_norm_backward(dy, x, w, b, mw, vw, activation="relu", axis=ax)[0],
              lambda: torch_switchable(t, tw, tb, torch.tensor(mw), torch.tensor(vw), None, None, True, 1e-5, True))]
    tol = {np.float64: 1e-9, np.float32: 1e-4}.get(dtype, 3e-2)
    for ours, theirs in cases:
        with use_isa(isa):
            got = ours()
        gx = np.asarray(got[0] if isinstance(got, tuple) else got, np.float64)
        t.grad = None
        torch.relu(theirs()).backward(torch.from_numpy(dy64))
        want = np.moveaxis(t.grad.numpy(), 1, -1) if channels_last else t.grad.numpy()
        assert np.isfinite(want).all()
        assert np.isfinite(gx).all()
        np.testing.assert_allclose(gx, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (8, 3, 100)], ids=["two-pass", "segments"])
def test_float64_channel_weight_near_zero(isa, shape):
    """A float64 channel weight near 0 (1e-310, or 1e-30 under a grad_out of 1e290): the part M = -R / P
    taken off g before scaling passed float64's range (inf - inf: a NaN channel in switchable norm, found
    by a new user). M is then 0 and R keeps all of it. Switchable, group (one group of three channels:
    M per channel) and batch norm, the two-pass kernels and the fused segments, against PyTorch in
    float64 (grad_out scaled by 2^-600 there, so its sums never overflow)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    z = np.zeros(3)
    for w0, scale in ((1e-310, 1.0), (1e-300, 1e10), (1e-30, 1e290)):
        w, b, dy = np.array([w0, 1.0, 1.5]), np.zeros(3), g * scale
        cases = [(lambda: normfast.switchable_norm_backward(dy, x, w, b, z, z, training=True)[0],
                  lambda t, tw, tb: torch_switchable(t, tw, tb, torch.tensor(z), torch.tensor(z), None, None, True,
                                                     1e-5, True)),
                 (lambda: normfast.group_norm_backward(dy, x, 1, w, b)[0], lambda t, tw, tb: F.group_norm(t, 1, tw, tb)),
                 (lambda: normfast.batch_norm_backward(dy, x, None, None, w, b)[0],
                  lambda t, tw, tb: F.batch_norm(t, None, None, tw, tb, training=True))]
        for ours, theirs in cases:
            with use_isa(isa):
                gx = ours()
            t = torch.tensor(x, requires_grad=True)
            theirs(t, torch.tensor(w), torch.tensor(b)).backward(torch.tensor(dy * 2.0**-600))
            want = t.grad.numpy() * 2.0**600
            assert np.isfinite(gx).all(), (w0, scale)
            np.testing.assert_allclose(gx, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
