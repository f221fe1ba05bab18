"""batch_norm, instance_norm and group_norm against the float64 reference and against PyTorch; their bad
arguments."""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
from normfast import _core, _normc, norms, reference

from helpers import (ACTS, DTYPES, ISAS, assert_close_y, assert_refused, bad_call, case_ids, norm_inputs, read_only,
                     use_isa, use_threads)


def assert_close_running(got, want):
    """Running statistics updated in place against the reference's new values."""
    for g, w in zip(got, want):
        rtol = 1e-12 if g.dtype == np.float64 else 2e-6
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)


def params(c, affine, seed=0):
    if not affine:
        return None, None
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, c), rng.standard_normal(c)


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inp=norm_inputs(), affine=st.booleans(), act=st.sampled_from(ACTS), eps=st.sampled_from([1e-5, 0.1]),
       training=st.booleans())
def test_batch_norm_matches_reference(isa, inp, affine, act, eps, training):
    x, axis, c = inp
    if training and x.size // c < 2:
        return
    w, b = params(c, affine)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    rm, rv = np.linspace(-1, 1, c).astype(pdt), np.linspace(0.5, 2, c).astype(pdt)
    ref_y, ref_rm, ref_rv = reference.batch_norm(x, rm, rv, w, b, training=training, eps=eps, axis=axis,
                                                 activation=act)
    with use_isa(isa):
        y = normfast.batch_norm(x, rm, rv, w, b, training=training, eps=eps, axis=axis, activation=act)
    assert_close_y(y, ref_y, x.dtype)
    assert_close_running((rm, rv), (ref_rm, ref_rv))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inp=norm_inputs(min_spatial=2), affine=st.booleans(), act=st.sampled_from(ACTS),
       use_input_stats=st.booleans())
def test_instance_norm_matches_reference(isa, inp, affine, act, use_input_stats):
    x, axis, c = inp
    if x.ndim < 3 or x.size // (x.shape[0] * c) < 2:
        return
    w, b = params(c, affine)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    rm, rv = np.linspace(-1, 1, c).astype(pdt), np.linspace(0.5, 2, c).astype(pdt)
    ref_y, ref_rm, ref_rv = reference.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats,
                                                    axis=axis, activation=act)
    with use_isa(isa):
        y = normfast.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, axis=axis, activation=act)
    assert_close_y(y, ref_y, x.dtype)
    assert_close_running((rm, rv), (ref_rm, ref_rv))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inp=norm_inputs(), affine=st.booleans(), act=st.sampled_from(ACTS), data=st.data())
def test_group_norm_matches_reference(isa, inp, affine, act, data):
    x, axis, c = inp
    groups = data.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    w, b = params(c, affine)
    if x.size == groups:  # one value per group: refused, as PyTorch does
        with pytest.raises(ValueError, match="x: expected more than 1 value per group"):
            normfast.group_norm(x, groups, w, b, axis=axis, activation=act)
        return
    ref_y = reference.group_norm(x, groups, w, b, axis=axis, activation=act)
    with use_isa(isa):
        y = normfast.group_norm(x, groups, w, b, axis=axis, activation=act)
    assert_close_y(y, ref_y, x.dtype)


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inp=norm_inputs(), affine=st.booleans(), act=st.sampled_from(ACTS), training=st.booleans(),
       using_bn=st.booleans(), data=st.data())
def test_switchable_norm_matches_reference(isa, inp, affine, act, training, using_bn, data):
    x, axis, c = inp
    if using_bn and training and x.size // c < 2:
        return
    w, b = params(c, affine)
    k = 3 if using_bn else 2
    logits = st.lists(st.floats(-3, 3), min_size=k, max_size=k)
    mw, vw = data.draw(logits), data.draw(logits)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    rm, rv = (np.linspace(-1, 1, c).astype(pdt), np.linspace(0.5, 2, c).astype(pdt)) if using_bn else (None, None)
    ref_y, ref_rm, ref_rv = reference.switchable_norm(x, w, b, mw, vw, rm, rv, training=training, axis=axis,
                                                      using_bn=using_bn, activation=act)
    with use_isa(isa):
        y = normfast.switchable_norm(x, w, b, mw, vw, rm, rv, training=training, axis=axis, using_bn=using_bn,
                                     activation=act)
    assert_close_y(y, ref_y, x.dtype)
    if using_bn:
        assert_close_running((rm, rv), (ref_rm, ref_rv))


def torch_switchable_norm(x, w, b, mw, vw, rm, rv, training, momentum, eps=1e-5):
    """Switchable norm written with torch's own reductions (NCHW, running arrays updated in place)."""
    xt = x.flatten(2)
    var_in, mean_in = torch.var_mean(xt, dim=2, unbiased=False, keepdim=True)
    var_ln, mean_ln = torch.var_mean(xt, dim=(1, 2), unbiased=False, keepdim=True)
    if training:
        var_bn, mean_bn = torch.var_mean(xt, dim=(0, 2), unbiased=False, keepdim=True)
        n = xt.shape[0] * xt.shape[2]
        rm.mul_(1 - momentum).add_(momentum * mean_bn.flatten())
        rv.mul_(1 - momentum).add_(momentum * var_bn.flatten() * n / (n - 1))
    else:
        mean_bn, var_bn = rm.view(1, -1, 1), rv.view(1, -1, 1)
    sm, sv = torch.softmax(mw, 0), torch.softmax(vw, 0)
    mean = sm[0] * mean_in + sm[1] * mean_ln + sm[2] * mean_bn
    var = sv[0] * var_in + sv[1] * var_ln + sv[2] * var_bn
    y = (xt - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1) + b.view(1, -1, 1)
    return y.view(x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_switchable_norm_running_statistics_like_torch(dtype, axis):
    """Five training batches, then inference, against the layer written with torch's reductions."""
    rng = np.random.default_rng(11)
    c = 6
    w, b = params(c, True)
    mw, vw = np.array([0.3, -0.2, 0.5]), np.array([-1.0, 0.4, 0.1])
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    trm, trv = torch.zeros(c, dtype=torch.from_numpy(rm).dtype), torch.ones(c, dtype=torch.from_numpy(rv).dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    shape = (4, 5, 7, c) if axis == -1 else (4, c, 5, 7)
    for step in range(6):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        training = step < 5
        y = normfast.switchable_norm(x, w, b, mw, vw, rm, rv, training=training, axis=axis)
        ty = torch_switchable_norm(to_torch_layout(x, axis), *(torch.from_numpy(v.astype(dtype)) for v in (w, b, mw, vw)),
                                   trm, trv, training, 0.1)
        np.testing.assert_allclose(np.moveaxis(y, axis, 1), ty.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=tol, atol=tol)


def to_torch_layout(x, axis):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, axis, 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_running_statistics_like_torch(dtype, axis, momentum):
    """Five training batches, then inference, against torch.nn.functional.batch_norm."""
    rng = np.random.default_rng(5)
    c = 6
    w, b = params(c, True)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    trm, trv = torch.zeros(c, dtype=torch.from_numpy(rm).dtype), torch.ones(c, dtype=torch.from_numpy(rv).dtype)
    tw, tb = torch.from_numpy(w.astype(dtype)), torch.from_numpy(b.astype(dtype))
    nbt = np.zeros(1, np.int64)
    shape = (4, 5, 7, c) if axis == -1 else (4, c, 5, 7)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for step in range(6):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        training = step < 5
        factor = momentum if momentum is not None else 1.0 / (step + 1)
        y = normfast.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum, axis=axis,
                                num_batches_tracked=nbt)
        ty = F.batch_norm(to_torch_layout(x, axis), trm, trv, tw, tb, training=training, momentum=factor)
        np.testing.assert_allclose(np.moveaxis(y, axis, 1), ty.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=tol, atol=tol)
    assert nbt[0] == 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1])
def test_instance_and_group_norm_like_torch(dtype, axis):
    rng = np.random.default_rng(6)
    c = 8
    shape = (3, 9, 11, c) if axis == -1 else (3, c, 9, 11)
    w, b = params(c, True)
    tw, tb = torch.from_numpy(w.astype(dtype)), torch.from_numpy(b.astype(dtype))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    trm, trv = torch.zeros(c, dtype=tw.dtype), torch.ones(c, dtype=tw.dtype)
    for step in range(6):
        x = (rng.standard_normal(shape) * 3 + step).astype(dtype)
        use_input_stats = step < 5
        y = normfast.instance_norm(x, rm, rv, w, b, use_input_stats=use_input_stats, axis=axis)
        ty = F.instance_norm(to_torch_layout(x, axis), trm, trv, tw, tb, use_input_stats=use_input_stats)
        np.testing.assert_allclose(np.moveaxis(y, axis, 1), ty.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=tol, atol=tol)
    for groups in (1, 2, 4, 8):
        y = normfast.group_norm(x, groups, w, b, axis=axis)
        ty = F.group_norm(to_torch_layout(x, axis), groups, tw, tb)
        np.testing.assert_allclose(np.moveaxis(y, axis, 1), ty.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "silu"])
def test_activations_like_torch(act):
    x = np.random.default_rng(7).standard_normal((4, 6, 10)).astype(np.float32)
    y = normfast.group_norm(x, 3, activation=act)
    ty = getattr(F, act)(F.group_norm(torch.from_numpy(x), 3))
    np.testing.assert_allclose(y, ty.numpy(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_large_mean_normalizes(isa, channels_last):
    """float32 1e4 + N(0, 1): every norm gives mean 0 and variance 1 within 1e-3."""
    x = (1e4 + np.random.default_rng(8).standard_normal((8, 16, 24, 24))).astype(np.float32)
    axis = 1
    if channels_last:
        x, axis = np.moveaxis(x, 1, -1), -1
    spatial = (1, 2) if channels_last else (2, 3)
    c = x.ndim - 1 if channels_last else 1
    with use_isa(isa):
        cases = [
            (normfast.batch_norm(x, training=True, axis=axis), tuple(i for i in range(4) if i != c)),
            (normfast.instance_norm(x, axis=axis), spatial),
        ]
        # switchable norm with its layer, then its batch statistics dominant: both are Chan merges
        for logits, axes in (([0.0, 60.0, 0.0], (1, 2, 3)), ([0.0, 0.0, 60.0], tuple(i for i in range(4) if i != c))):
            cases.append((normfast.switchable_norm(x, None, None, logits, logits, training=True, axis=axis), axes))
        g = normfast.group_norm(x, 4, axis=axis)
    for y, axes in cases:
        y = y.astype(np.float64)
        assert np.abs(y.mean(axis=axes)).max() < 1e-3
        assert np.abs(y.var(axis=axes) - 1).max() < 1e-3
    grouped = np.moveaxis(g.astype(np.float64), c, 1).reshape(8, 4, -1)
    assert np.abs(grouped.mean(axis=2)).max() < 1e-3
    assert np.abs(grouped.var(axis=2) - 1).max() < 1e-3


def test_in_place_and_out():
    x = np.random.default_rng(9).standard_normal((4, 3, 5)).astype(np.float32)
    want = normfast.group_norm(x, 3)
    out = np.empty_like(x)
    assert normfast.group_norm(x, 3, out=out) is out
    np.testing.assert_array_equal(out, want)
    xc = x.copy()
    assert normfast.group_norm(xc, 3, out=xc) is xc
    np.testing.assert_array_equal(xc, want)


def test_nan_stays_in_its_group():
    x = np.random.default_rng(10).standard_normal((2, 4, 6)).astype(np.float32)
    x[1, 2, 3] = np.nan
    y = normfast.group_norm(x, 2)
    assert np.isnan(y[1, 2:]).all()
    assert not np.isnan(y[0]).any() and not np.isnan(y[1, :2]).any()
    y = normfast.instance_norm(x)
    assert np.isnan(y[1, 2]).all() and np.isnan(y).sum() == 6
    y = normfast.batch_norm(x, training=True)
    assert np.isnan(y[:, 2]).all() and np.isnan(y).sum() == 12


# --- bad arguments ---------------------------------------------------------------------------------

X = np.ones((2, 4, 3), np.float32)
RM, RV = np.zeros(4, np.float32), np.ones(4, np.float32)
SN = {"weight": None, "bias": None, "mean_weight": [0.0, 0.0, 0.0], "var_weight": [0.0, 0.0, 0.0], "training": True}

NORMS = ("batch_norm", "instance_norm", "group_norm", "switchable_norm")
UPDATED = ("batch_norm", "instance_norm", "switchable_norm")  # they update their running statistics
# Out-of-range eps whose case names the bound in full.
EPS_BOUND = {("batch_norm", 0): "eps: expected a number > 0", ("instance_norm", -1e-5): "eps: expected a number > 0"}

# (call, {argument: value or make(kw)}, exception, message): a call of api_calls.calls() by name with the
# arguments given replaced, or a norm function with these keyword arguments on X (out of 7s unless given).
BAD = [
    # ranks and shapes
    *[(c, {"x": lambda kw: kw["x"][0, 0, 0]}, ValueError, "x: expected an array of rank >= 2") for c in NORMS],
    # parameters: shape, dtype, kind
    ("batch_norm", {"weight": lambda kw: kw["weight"][:3]}, ValueError, r"weight: expected shape \(4,\)"),
    ("batch_norm", {"bias": lambda kw: kw["bias"].reshape(4, 1)}, ValueError, r"bias: expected shape \(4,\)"),
    ("instance_norm", {"weight": np.arange(4)}, TypeError, "weight: expected a float array"),
    ("group_norm", {"bias": ["a"] * 4}, TypeError, "bias: expected a float array"),
    ("switchable_norm", {"mean_weight": np.ones(2)}, ValueError, r"mean_weight: expected shape \(3,\)"),
    ("switchable_norm", {"var_weight": [0.0, np.inf, 1.0]}, ValueError, "var_weight: expected finite"),
    (normfast.switchable_norm, {**SN, "var_weight": [0.0, np.nan, 1.0]}, ValueError, "var_weight: expected finite"),
    ("switchable_norm", {"var_weight": None}, TypeError, "var_weight: expected an array of 3"),
    # scalars out of range or of the wrong type
    *[(c, {"eps": e}, ValueError, EPS_BOUND.get((c, e), "eps: expected")) for c in NORMS
      for e in (0, -1e-5, np.nan, np.inf)],
    ("batch_norm", {"eps": "1e-5"}, TypeError, "eps: expected a real"),
    *[(c, {"momentum": m}, ValueError, r"momentum: expected a number in \[0, 1\]") for c in UPDATED for m in (1.5, -0.1)],
    *[(c, {"momentum": np.nan}, ValueError, "momentum: expected a finite number") for c in UPDATED],
    ("instance_norm", {"momentum": None}, TypeError, "momentum: expected a real"),
    ("batch_norm", {"momentum": None}, ValueError, "num_batches_tracked: required"),
    ("batch_norm", {"momentum": None, "num_batches_tracked": np.array(1.0)}, TypeError, "num_batches_tracked"),
    ("batch_norm", {"momentum": None, "num_batches_tracked": 3}, TypeError, "num_batches_tracked"),
    ("batch_norm", {"momentum": None, "num_batches_tracked": lambda kw: read_only(np.array(3))}, TypeError,
     "num_batches_tracked: expected a writeable"),
    *[("group_norm", {"num_groups": g}, ValueError, "num_groups: expected a positive divisor of the 4")
      for g in (0, -2, 3, 8)],
    *[("group_norm", {"num_groups": g}, TypeError, "num_groups: expected an int") for g in (2.0, "2", None)],
    *[(c, {"axis": 4}, np.exceptions.AxisError, "axis: axis 4 is out of range") for c in NORMS],
    ("batch_norm", {"axis": 1.0}, TypeError, "axis: expected"),
    *[(c, {"axis": 0}, ValueError, "axis: the channel axis cannot be axis 0")
      for c in ("instance_norm", "group_norm", "switchable_norm")],
    *[(c, {"activation": a}, ValueError, "activation: expected None") for c in NORMS for a in ("tanh", "RELU", 1)],
    ("batch_norm", {"training": "yes"}, TypeError, "training: expected True or False"),
    ("batch_norm", {"unbiased": 1}, TypeError, "unbiased: expected True or False"),
    ("instance_norm", {"use_input_stats": None}, TypeError, "use_input_stats: expected True or False"),
    ("switchable_norm", {"using_bn": "no"}, TypeError, "using_bn: expected True or False"),
    # running statistics
    *[(c, {"running_mean": lambda kw: read_only(kw["running_mean"])}, ValueError,
       "running_mean: the array is read-only") for c in UPDATED],
    *[(c, {"running_var": lambda kw: kw["running_var"].astype(np.float64)}, TypeError,
       "running_var: expected dtype float32") for c in UPDATED],
    (normfast.batch_norm, {"running_mean": RM.astype(np.float64), "running_var": RV, "training": True},
     TypeError, "running_mean: expected dtype float32"),
    (normfast.switchable_norm, {**SN, "running_mean": RM, "running_var": RV.astype(np.float16)}, TypeError,
     "running_var: expected dtype float32"),
    *[(c, {"running_mean": np.zeros(5, np.float32)}, ValueError, r"running_mean: expected shape \(4,\)")
      for c in ("batch_norm", "batch_norm_eval", "instance_norm", "switchable_norm")],
    (normfast.batch_norm, {"running_mean": np.zeros(8, np.float32)[::2][::-1], "running_var": RV[:3],
                           "training": True}, ValueError, r"running_var: expected shape \(4,\)"),
    *[(c, {"running_var": [1.0] * 4}, TypeError, "running_var: expected a numpy array updated in place")
      for c in UPDATED],
    ("batch_norm", {"running_mean": None}, ValueError, "running_mean, running_var: give both or neither"),
    (normfast.batch_norm, {"running_mean": RM, "running_var": np.ones(4, np.float32).setflags(write=False)
                           or None, "training": True}, ValueError, "give both or neither"),
    ("batch_norm_eval", {"running_mean": None, "running_var": None}, ValueError, "required when training=False"),
    (normfast.switchable_norm, {**SN, "training": False}, ValueError, "required when training=False"),
    ("batch_norm_eval", {"running_var": np.ones(4, int)}, TypeError, "running_var: expected a float array"),
    ("switchable_norm", {"using_bn": False, "mean_weight": [0.0, 1.0], "var_weight": [0.0, 1.0]}, ValueError,
     "running_mean, running_var: only used with using_bn=True"),
    # statistics that cannot exist
    ("batch_norm", {"out": None, "x": lambda kw: kw["x"][:1, :, :1, :1]}, ValueError,
     "x: expected more than 1 value per channel"),
    ("instance_norm", {"out": None, "x": lambda kw: kw["x"][:, :, :1, :1]}, ValueError,
     "x: expected more than 1 spatial"),
    ("switchable_norm", {"out": None, "x": lambda kw: kw["x"][:1, :, :1, :1]}, ValueError,
     "x: expected more than 1 value"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    if not isinstance(call, str):
        change = {"x": X.copy(), "out": np.full_like(X, 7.0), **change}
    assert_refused(*bad_call(call, change), exc, match)


@pytest.mark.parametrize("counter, exc, match", [
    (np.array(-1), ValueError, r"num_batches_tracked: expected a count in \[0, 2\*\*63 - 1\), got -1"),
    (np.array(np.iinfo(np.int64).max), ValueError, "num_batches_tracked: expected a count"),
    (np.array(3, np.int8), TypeError, "num_batches_tracked: expected dtype int64"),
    (np.array(3, np.int32), TypeError, "num_batches_tracked: expected dtype int64"),
    (np.array(3, np.uint64), TypeError, "num_batches_tracked: expected dtype int64"),
    (np.ma.masked_array(np.array(3)), TypeError, "num_batches_tracked: masked arrays"),
])
@pytest.mark.parametrize("momentum", [None, 0.1])
def test_bad_counter(counter, exc, match, momentum):
    assert_refused(*bad_call("batch_norm", {"num_batches_tracked": counter, "momentum": momentum}), exc, match)


def test_read_only_running_stats_are_refused_in_training():
    rv = np.ones(4, np.float32)
    rv.setflags(write=False)
    rm = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="running_var: the array is read-only"):
        normfast.batch_norm(X, rm, rv, training=True)
    assert (rm == 0).all()
    # inference only reads them
    normfast.batch_norm(X, rm, rv)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_fused_instance_and_group_norm(isa, dtype, act):
    """Channels-first contiguous data takes the fused path (statistics and output per group in one
    visit); it agrees with the reference, and a strided view of the same data (the two-pass path) too."""
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((4, 16, 40, 41)) * 3 + 50).astype(dtype)
    w, b = params(16, True)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    probe = np.empty_like(x)
    call = _core.channel_call(x, 1, None, None, 1e-5, None, per_sample=True)
    assert norms._fused_groups(call, 4, probe, False) is not None  # the fused path is taken
    strided = np.empty((4, 16, 40, 82), x.dtype)[..., ::2]
    strided[...] = x
    for groups in (4, 16):
        ref = reference.group_norm(x, groups, w, b, activation=act)
        with use_isa(isa):
            for xi in (x, strided):
                assert_close_y(normfast.group_norm(xi, groups, w, b, activation=act), ref, dtype)
    rm, rv = np.zeros(16, pdt), np.ones(16, pdt)
    ref_y, ref_rm, ref_rv = reference.instance_norm(x, rm, rv, w, b, activation=act)
    with use_isa(isa):
        y = normfast.instance_norm(x, rm, rv, w, b, activation=act)
    assert_close_y(y, ref_y, dtype)
    assert_close_running((rm, rv), (ref_rm, ref_rv))


def _two_pass(x, groups, w, b, act):
    """Group norm of channels-last x by the moments engine and the apply pass, without the fused kernel."""
    call = _core.channel_call(x, x.ndim - 1, w, b, 1e-5, act, per_sample=True)
    mean, var = _core.group_moments(x, call.code, call.c, groups)
    return _core.apply(call, (0, call.c), mean, var, np.empty_like(x)), mean, var


# (shape, groups): channels per group 1 (instance norm), 2, 3 (a column tile's end inside a group), 4
# and 16, the most the fused kernel takes; 300 channels (two column tiles); 1640 and 1100 rows (several
# row chunks); 1, 2, 3 and 9 samples (a team per sample, or samples handed out); rank 3 and 5.
CHANNELS_LAST = [((9, 7, 5, 64), 32), ((3, 40, 41, 64), 64), ((1, 33, 32, 48), 3), ((3, 70, 300), 100),
                 ((2, 3, 4, 5, 6), 3), ((2, 1100, 256), 64)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", CHANNELS_LAST)
def test_channels_last_fused_is_the_two_pass_bytes(isa, dtype, shape, groups):
    """C-contiguous channels-last data takes the fused kernel (each sample's statistics and output in one
    visit); its output and statistics are the two-pass path's bytes at 1, 2 and 3 threads, and near the
    reference."""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
    C = shape[-1]
    w, b = params(C, True)
    pdt = np.float64 if x.dtype == np.float64 else np.float32
    w, b = w.astype(pdt), b.astype(pdt)
    with use_isa(isa):
        for act in (None, "relu", "silu"):
            want, mean, var = _two_pass(x, groups, w, b, act)
            for n in (1, 2, 3):
                with use_threads(n):
                    y = np.empty_like(x)
                    m, v = np.empty(shape[0] * groups), np.empty(shape[0] * groups)
                    done = _normc.channels_last_norm(x, y, dtype=_core.channel_call(x, -1, None, None, 1e-5, None,
                                                                                    True).code,
                                                     groups=groups, eps=1e-5, weight=w, bias=b, activation=act,
                                                     mean=m, var=v)
                    assert done is not None and done.all()
                    assert y.tobytes() == want.tobytes()
                    assert m.tobytes() == mean.reshape(shape[0], -1)[:, ::C // groups].tobytes()
                    assert v.tobytes() == var.reshape(shape[0], -1)[:, ::C // groups].tobytes()
                    assert normfast.group_norm(x, groups, w, b, axis=-1, activation=act).tobytes() == want.tobytes()
                    inplace = x.copy()  # the team's rows overwrite x while the others may still read it
                    normfast.group_norm(inplace, groups, w, b, axis=-1, activation=act, out=inplace)
                    assert inplace.tobytes() == want.tobytes()
            assert_close_y(want, reference.group_norm(x, groups, w, b, axis=-1, activation=act), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_channels_last_fused_hands_unfit_samples_back(dtype):
    """A sample whose float coefficients cannot hold it (subnormal data under a tiny eps: a scale past
    float32's range; data spanning past its range) is left unwritten by the kernel and takes the two-pass
    path's float64 step; the others keep the kernel's bytes. Together: the two-pass bytes, near the
    reference."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 5, 6, 8))
    x[1] *= 1e-41  # subnormal in float32 and bfloat16, 0 in float16: rstd ~ 1e41 under eps 1e-82
    if dtype == np.float32:
        x[2, 0, 0] = 3e38  # var past 2^200
    x = x.astype(dtype)
    w, b = params(8, True)
    w, b = w.astype(np.float32), b.astype(np.float32)
    code = _core.channel_call(x, -1, None, None, 1e-5, None, True).code
    done = _normc.channels_last_norm(x, np.empty_like(x), dtype=code, groups=4, eps=1e-82, weight=w, bias=b)
    assert done.tolist() == [True, False, dtype != np.float32, True]
    call = _core.channel_call(x, 3, w, b, 1e-82, None, per_sample=True)
    want = _core.apply(call, (0, 3), *_core.group_moments(x, code, 3, 4), np.empty_like(x))
    y = normfast.group_norm(x, 4, w, b, eps=1e-82, axis=-1)
    assert y.tobytes() == want.tobytes()
    ref = reference.group_norm(x, 4, w, b, eps=1e-82, axis=-1)
    assert_close_y(y, ref, dtype)
