"""Aliasing between the arrays of a call: whatever a call writes (out, residual_out, running statistics,
the batch counter) shares no element with another of its arrays, except the documented in-place uses
(out is x; residual_out is x or residual); anything else is refused, naming both, before anything is
written. Views that interleave without sharing an element are not overlaps (as in NumPy). Masked arrays
are refused; other ndarray subclasses are read as plain arrays."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normfast
from normfast import layers

from api_calls import calls
from helpers import assert_refused

RNG = np.random.default_rng(0)


def buffer_with(a, *others):
    """One float32 buffer holding a's values followed by room for others' shapes; views of it."""
    sizes = [a.size] + [int(np.prod(s)) for s in others]
    buf = np.zeros(sum(sizes), np.float32)
    views, at = [], 0
    for size, shape in zip(sizes, [a.shape, *others]):
        views.append(buf[at:at + size].reshape(shape))
        at += size
    views[0][...] = a
    return buf, views


# (call, the written argument, the argument it overlaps)
OVERLAPS = [(c, "out", k) for c in ("batch_norm", "batch_norm_eval", "instance_norm", "group_norm",
                                    "switchable_norm", "layer_norm", "rms_norm")
            for k in ("weight", "bias", "running_mean", "running_var") if k in calls()[c][1]]
OVERLAPS += [("batch_norm", "running_mean", "running_var"), ("batch_norm", "running_var", "weight"),
             ("batch_norm", "running_mean", "x"), ("instance_norm", "running_var", "bias"),
             ("switchable_norm", "running_mean", "weight"),
             ("layer_norm_residual", "residual_out", "out"), ("layer_norm_residual", "residual_out", "weight"),
             ("layer_norm_residual", "out", "residual"), ("layer_norm_residual", "residual_out", "bias")]


def _overlap(kw, written, other):
    """Put `written` over `other`'s memory: a view sharing its first element (partial overlap), or where
    that view would be `other` itself (an allowed in-place use), one shifted by an element."""
    o, w = kw[other], kw[written]
    if o.shape == w.shape and o.dtype == w.dtype:
        buf = np.zeros(o.size + 1, o.dtype)
        buf[:o.size] = o.reshape(-1)
        kw[other], kw[written] = buf[:o.size].reshape(o.shape), buf[1:].reshape(w.shape)
        return
    if o.size >= w.size:
        view = o.reshape(-1)[:w.size] if o.flags.c_contiguous else None
        kw[written] = view.reshape(w.shape).view(w.dtype) if view is not None and o.dtype == w.dtype else None
        return
    buf = np.zeros(w.size, w.dtype)
    buf[:o.size] = o.reshape(-1).astype(w.dtype)
    kw[other] = buf[:o.size].reshape(o.shape)
    kw[written] = buf.reshape(w.shape)
    if written.startswith("running"):
        kw[written][...] = 1.0


@pytest.mark.parametrize("call, written, other", OVERLAPS)
def test_written_array_overlapping_another_is_refused(call, written, other):
    fn, kw = calls()[call]
    _overlap(kw, written, other)
    assert kw[written] is not None and np.shares_memory(kw[written], kw[other])
    assert_refused(fn, kw, ValueError, rf"({written}: overlaps {other}|{other}: overlaps {written})")


@pytest.mark.parametrize("layer", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("training", [True, False])
def test_layer_residual_out_overlapping_out_is_refused(layer, training):
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    buf = np.zeros(3 * 8 + 4, np.float32)
    out, res_out = buf[:24].reshape(3, 8), buf[4:].reshape(3, 8)
    m = getattr(layers, layer)(8).train(training)
    with pytest.raises(ValueError, match="(out: overlaps residual_out|residual_out: overlaps out)"):
        m(x, out, residual=x[::-1].copy(), residual_out=res_out)
    assert not buf.any() and m._saved is None


WITH_OUT = ["batch_norm", "batch_norm_eval", "instance_norm", "group_norm", "switchable_norm", "layer_norm",
            "rms_norm", "layer_norm_residual", "BatchNorm", "BatchNorm_eval", "InstanceNorm", "GroupNorm",
            "LayerNorm", "RMSNorm", "SwitchableNorm"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("call", WITH_OUT)
def test_out_interleaved_with_x_is_accepted(call, threads):
    """x = a[..., ::2], out = a[..., 1::2]: no element shared, so the result is the plain call's."""
    fn, kw = calls()[call]
    want = fn(**calls()[call][1])
    want = want[0] if isinstance(want, tuple) else want
    fn, kw = calls()[call]
    a = np.zeros(kw["x"].shape[:-1] + (2 * kw["x"].shape[-1],), np.float32)
    a[..., ::2] = kw["x"]
    kw["x"], kw["out"] = a[..., ::2], a[..., 1::2]
    if "residual" in kw:
        kw["residual"] = kw["residual"].copy()
    old = normfast.get_num_threads()
    normfast.set_num_threads(threads)
    try:
        got = fn(**kw)
    finally:
        normfast.set_num_threads(old)
    assert got is kw["out"] or (isinstance(got, tuple) and got[0] is kw["out"])
    np.testing.assert_allclose(kw["out"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call", ["layer_norm_residual", "rms_norm_residual"])
@pytest.mark.parametrize("same_as", ["x", "residual"])
def test_residual_out_may_be_x_or_residual_itself(call, same_as):
    """residual_out=x or residual: the sum is stored over one of its operands, element by element."""
    fn, kw = calls()[call]
    x, res = kw["x"].copy(), kw["residual"].copy()
    kw.pop("out", None)
    want = fn(**dict(kw, x=x.copy(), residual=res.copy(), residual_out=None))
    kw["residual_out"] = kw[same_as]
    got = fn(**kw)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kw[same_as], x + res, rtol=1e-6)


def test_layer_out_overlapping_weight_cannot_happen_and_running_stats_stay():
    """A layer's parameters are its own copies: out over the array they were loaded from is fine."""
    w = np.ones(8, np.float32)
    ln = layers.LayerNorm(8)
    ln.load_state_dict({"weight": w, "bias": np.zeros(8, np.float32)})
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    out = np.zeros((2, 8), np.float32)
    want = F.layer_norm(torch.from_numpy(x), (8,)).numpy()
    np.testing.assert_allclose(ln(x, out), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call", sorted(set(calls()) - {"RunningMoments", "RunningMoments_merge",
                                                        "precise_batch_norm_stats"}))
def test_masked_arrays_are_refused(call):
    """Every array argument: a masked array is a TypeError saying what to pass instead."""
    for name, value in calls()[call][1].items():
        if not isinstance(value, np.ndarray):
            continue
        fn, kw = calls()[call]
        kw[name] = np.ma.masked_array(kw[name], mask=np.zeros(kw[name].shape, bool))
        assert_refused(fn, kw, TypeError, rf"{name}: masked arrays are not supported.*filled\(np.nan\)")


@pytest.mark.parametrize("call", ["batch_norm", "group_norm", "layer_norm", "rms_norm", "cosine_linear",
                                  "weight_norm", "batch_norm_backward", "layer_norm_backward", "BatchNorm"])
def test_subclasses_do_not_leak_into_results(call):
    fn, kw = calls()[call]
    data = "v" if call == "weight_norm" else "x"
    kw.pop("out", None)
    kw[data] = kw[data].view(type("Sub", (np.ndarray,), {}))
    for r in (fn(**kw) if isinstance(fn(**kw), tuple) else (fn(**kw),)):
        assert r is None or type(r) is np.ndarray


def test_matrix_input_gives_plain_arrays():
    x = np.asmatrix(RNG.standard_normal((4, 6)).astype(np.float32))
    want = F.layer_norm(torch.from_numpy(np.asarray(x)), (6,)).numpy()
    for y in (normfast.layer_norm(x, 6), normfast.rms_norm(x, 6, eps=1e-5), normfast.batch_norm(x, training=True)):
        assert type(y) is np.ndarray and y.shape == (4, 6)
    np.testing.assert_allclose(normfast.layer_norm(x, 6), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn, extra", [(normfast.batch_norm_backward, {}), (normfast.instance_norm_backward, {}),
                                       (normfast.group_norm_backward, {"num_groups": 2})])
def test_backward_with_grad_out_aliasing_x(fn, extra):
    """grad_out and x the same array, or views of one buffer: read only, so the result is torch's."""
    x = RNG.standard_normal((3, 4, 70))
    w, b = np.linspace(0.5, 2, 4), np.linspace(-1, 1, 4)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    tfn = {normfast.batch_norm_backward: lambda t: F.batch_norm(t, None, None, torch.from_numpy(w),
                                                                torch.from_numpy(b), training=True),
           normfast.instance_norm_backward: lambda t: F.instance_norm(t, weight=torch.from_numpy(w),
                                                                      bias=torch.from_numpy(b)),
           normfast.group_norm_backward: lambda t: F.group_norm(t, 2, torch.from_numpy(w), torch.from_numpy(b))}[fn]
    tfn(tx).backward(torch.from_numpy(x.copy()))
    got = fn(x, x, weight=w, bias=b, **extra)
    np.testing.assert_allclose(got[0], tx.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("layer", ["BatchNorm", "LayerNorm", "GroupNorm"])
def test_layer_backward_after_in_place_forward(layer):
    """out=x overwrites x: the layer keeps the x it differentiates, and grad_out may be that output."""
    x = RNG.standard_normal((4, 6)).astype(np.float64)
    m = {"BatchNorm": lambda: layers.BatchNorm(6, dtype=np.float64),
         "LayerNorm": lambda: layers.LayerNorm(6, dtype=np.float64),
         "GroupNorm": lambda: layers.GroupNorm(3, 6, dtype=np.float64)}[layer]()
    t = {"BatchNorm": lambda: torch.nn.BatchNorm1d(6, dtype=torch.float64),
         "LayerNorm": lambda: torch.nn.LayerNorm(6, dtype=torch.float64),
         "GroupNorm": lambda: torch.nn.GroupNorm(3, 6, dtype=torch.float64)}[layer]()
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = t(tx)
    ty.backward(ty.detach().clone())
    y = m(x, x)
    gx = m.backward(y)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("call", ["layer_norm_residual", "rms_norm_residual"])
@pytest.mark.parametrize("out_is", ["x", "residual"])
def test_out_may_be_x_or_residual_itself(call, out_is):
    """out=x or out=residual (the sum is formed first, then normalized over the operand): in place,
    as x + residual normalized into a fresh array."""
    fn, kw = calls()[call]
    kw.pop("residual_out", None)
    x, res = kw["x"].copy(), kw["residual"].copy()
    want = fn(**dict(kw, x=x.copy(), residual=res.copy(), out=None))
    kw["x"], kw["residual"] = x, res
    kw["out"] = kw[out_is]
    got = fn(**kw)
    assert got is kw[out_is]
    np.testing.assert_array_equal(got, want)
