"""Magnitudes and exactness: statistics and norms of data whose squares leave the accumulation type's range
while the results fit, constant data at any magnitude (variance exactly 0), precision along columns, and
scales 1 / sqrt(var + eps) or 1 / max(norm, eps) that the accumulation type cannot hold. Every expectation
is float64 NumPy on the exact input values, PyTorch in float64, or a closed form."""
import dask.array as da
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
from normfast import dask as nf_dask

from helpers import torch_switchable, use_threads

HALF_RANGE = [np.float32, ml_dtypes.bfloat16]  # float32's exponent range, accumulated in float
FLOAT_DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
TINY32 = float(np.finfo(np.float32).smallest_subnormal)

# Layouts of one statistic per kept index, each (shape, axis, view): row mode (contiguous, strided,
# gathered short rows), column mode (contiguous, strided, transposed) and short rows merged as columns.
LAYOUTS = {
    "rows": ((6, 3000), 1, lambda a: a),
    "rows-strided": ((6, 6000), 1, lambda a: a[:, ::2]),
    "rows-short": ((200, 40), 1, lambda a: a),
    "whole": ((5000,), None, lambda a: a),
    "cols": ((3000, 6), 0, lambda a: a),
    "cols-strided": ((3000, 12), 0, lambda a: a[:, ::2]),
    "cols-transposed": ((6, 3000), 0, lambda a: a.T),
    "short-rows-as-cols": ((4, 700, 8, 2), (1, 3), lambda a: a),
}


def dname(dtype):
    return np.dtype(dtype).name


def exact_moments(x, axis):
    """float64 mean and variance of x's exact values; the variance of x - x.flat[0] (exact in float64 for
    values of one magnitude), so that a large mean costs it no digits."""
    x64 = np.asarray(x, np.float64)
    shift = x64.reshape(-1)[0]
    return x64.mean(axis), np.var(x64 - shift, axis)


def data(layout, dtype, scale, offset, seed=0):
    shape, axis, view = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    x = view((rng.standard_normal(shape) * scale + offset * scale).astype(dtype))
    return x, axis


def assert_stat_close(got, want, rtol, atol=0.0):
    """got (float32) against the float64 value rounded to float32: relative, with float32's subnormal
    spacing (or atol) as the floor."""
    want32 = np.asarray(want).astype(np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float64), want32.astype(np.float64), rtol=rtol,
                               atol=max(atol, 4 * TINY32))


def mean_atol(x):
    """A mean's rounding is relative to the data, not to the mean (which may cancel to near 0)."""
    return 2e-6 * float(np.max(np.abs(np.asarray(x, np.float64))))


# --- 1. squares outside the accumulation type's range, results inside -------------------------------

def test_reported_cases():
    x = np.tile(np.float32([1e19, 2e19]), 256)
    mean, var = normfast.moments(x)
    assert_stat_close(mean, np.mean(x.astype(np.float64)), 1e-7)
    assert_stat_close(var, np.var(x.astype(np.float64)), 1e-7)
    np.testing.assert_array_equal(normfast.rms_norm(np.full((1, 512), 1e18, np.float32), 512), 1.0)
    assert normfast.moments(np.full(1000, 1e200)) == (1e200, 0.0)
    assert np.all(normfast.moments(np.full((100, 3), 1e-10), axis=0)[1] == 0)
    y = normfast.cosine_linear(np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32), eps=1e-45)
    np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scale,offset", [(1e19, 1.0), (3e18, -4.0), (1e-25, 2.0), (1e-30, 0.0),
                                          (1e-19, 0.0), (2e-38, 1.0)])
def test_float_range_moments(isa, dtype, layout, scale, offset):
    """Squares overflow (1e19: 1e38 each, summed past float's range) or underflow (1e-25 and below) in
    float: the float32 statistics are the float64 ones rounded, the float64 ones (RunningMoments) exact
    to float's rounding."""
    x, axis = data(layout, dtype, scale, offset)
    want_mean, want_var = exact_moments(x, axis)
    for threads in (1, 2, 3):
        with use_threads(threads):
            mean, var = normfast.moments(x, axis)
        assert_stat_close(mean, want_mean, 2e-6, mean_atol(x))
        assert_stat_close(var, want_var, 2e-5)
    if axis is None or isinstance(axis, int):
        rm = normfast.RunningMoments(axis=axis)
        rm.update(x)
        np.testing.assert_allclose(rm.mean, want_mean, rtol=2e-6, atol=1e-6 * scale)
        np.testing.assert_allclose(rm.var(), want_var, rtol=2e-5)
        assert np.all(rm.var() > 0)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=dname)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(exp=st.integers(-44, 18), offset=st.sampled_from([0.0, 1.0, -30.0]),
       n=st.sampled_from([1, 7, 300, 2049, 5000]), cols=st.integers(1, 11), seed=st.integers(0, 99))
def test_float_range_moments_sweep(isa, dtype, exp, offset, n, cols, seed):
    """Any float32 magnitude whose variance fits: both reduction modes against float64."""
    scale = 10.0 ** exp
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, cols)) * scale + offset * scale).astype(dtype)
    for axis in (0, 1):
        mean, var = normfast.moments(x, axis)
        want_mean, want_var = exact_moments(x, axis)
        assert_stat_close(mean, want_mean, 2e-6, mean_atol(x))
        assert_stat_close(var, want_var, 2e-5)


@pytest.mark.parametrize("scale", [1e19, 1e-25])
def test_dask_moments_at_float_range(scale):
    """The Dask moments merge the engine's float64 per-chunk statistics: right at float's range edges."""
    import dask
    import dask.array as da

    import normfast.dask as nfd

    x = (np.random.default_rng(7).standard_normal((3000, 5)) * scale + scale).astype(np.float32)
    with dask.config.set(scheduler="synchronous"):
        mean, var = dask.compute(*nfd.moments(da.from_array(x, chunks=(700, 5)), axis=0))
    want_mean, want_var = exact_moments(x, 0)
    assert_stat_close(mean, want_mean, 2e-6, mean_atol(x))
    assert_stat_close(var, want_var, 2e-5)


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("rows", [5, 64, 300, 5000])
def test_mixed_magnitudes_side_by_side(isa, dtype, rows):
    """Zero, tiny, ordinary and huge columns in one block (each kept, redone scaled or in double on its
    own), along columns and, transposed, along rows."""
    rng = np.random.default_rng(6)
    scales = [0.0, 1e-30, 1e-20, 1.0, 1e19, 3e-41, 1e-30, 1.0, 0.0]
    x = np.stack([rng.standard_normal(rows) * sc + 2 * sc for sc in scales], axis=1).astype(dtype)
    x[:, -1] = 1e19  # constant, exactly
    for view, axis in ((x, 0), (np.ascontiguousarray(x.T), 1), (x.T, 1)):
        want_mean = np.asarray(view, np.float64).mean(axis)
        want_var = np.array([np.var(np.asarray(c, np.float64) - np.asarray(c, np.float64)[0])
                             for c in np.moveaxis(np.asarray(view), 1 - axis, 0)])  # each shifted by its own first
        for threads in (1, 3):
            with use_threads(threads):
                mean, var = normfast.moments(view, axis)
            assert_stat_close(var, want_var, 2e-5)
            np.testing.assert_allclose(np.asarray(mean, np.float64), np.asarray(want_mean).astype(np.float32),
                                       rtol=2e-6, atol=4 * TINY32)
            assert var[-1] == 0 and var[0] == 0


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("scale", [1e19, 1e-25])
def test_channel_norms_at_float_range(isa, dtype, scale):
    """batch, instance and group norm (moments + apply, fused segment rows) against float64."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 6, 5, 7)) * scale + scale).astype(dtype)
    x64 = np.asarray(x, np.float64)
    eps = 1e-5 * scale * scale  # keeps the float64 expectation's eps in proportion to the data

    def ref(axes, groups=None):
        z = x64.reshape(4, groups, -1) if groups else x64
        a = (0, 2) if groups else axes
        mu = z.mean(a, keepdims=True) if not groups else z.mean(2, keepdims=True)
        va = np.var(z - z.reshape(-1)[0], a if not groups else 2, keepdims=True)
        return ((z - mu) / np.sqrt(va + eps)).reshape(x.shape)

    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 2e-4
    for threads in (1, 3):
        with use_threads(threads):
            y_bn = normfast.batch_norm(x, training=True, eps=eps)
            y_in = normfast.instance_norm(x, eps=eps)
            y_gn = normfast.group_norm(x, 3, eps=eps)
        np.testing.assert_allclose(np.asarray(y_bn, np.float64), ref((0, 2, 3)), atol=tol)
        np.testing.assert_allclose(np.asarray(y_in, np.float64), ref((2, 3)), atol=tol)
        np.testing.assert_allclose(np.asarray(y_gn, np.float64), ref(None, 3), atol=tol)


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("scale", [1e18, 1e19, 1e-25, 1e-30, 1e-40])
@pytest.mark.parametrize("n", [7, 512, 5000])
def test_row_norms_at_float_range(isa, dtype, scale, n):
    """layer and RMS norm rows (and their return_stats) whose squares leave float's range."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, n)) * scale + 0.5 * scale).astype(dtype)
    x64 = np.asarray(x, np.float64)
    eps = 1e-6 * scale * scale
    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 2e-4
    mu, var = exact_moments(x, 1)
    want_ln = (x64 - mu[:, None]) / np.sqrt(var[:, None] + eps)
    ms = np.mean(x64 * x64, 1)
    want_rms = x64 / np.sqrt(ms[:, None] + eps)
    y, mean, rstd = normfast.layer_norm(x, n, eps=eps, return_stats=True)
    np.testing.assert_allclose(np.asarray(y, np.float64), want_ln, atol=tol)
    np.testing.assert_allclose(mean, mu, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(var + eps), rtol=1e-5)
    y, rstd = normfast.rms_norm(x, n, eps=eps, return_stats=True)
    np.testing.assert_allclose(np.asarray(y, np.float64), want_rms, atol=tol)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(ms + eps), rtol=1e-5)


@pytest.mark.parametrize("scale", [1e20, 1e-25, 1e-40])
def test_l2_rows_at_float_range(isa, scale):
    """weight_norm and cosine_linear of vectors whose squared norms leave float's range."""
    rng = np.random.default_rng(3)
    v = (rng.standard_normal((8, 300)) * scale).astype(np.float32)
    v64 = v.astype(np.float64)
    unit = v64 / np.linalg.norm(v64, axis=1, keepdims=True)
    g = np.full((8, 1), 2.0, np.float32)
    np.testing.assert_allclose(normfast.weight_norm(v, g), 2 * unit, atol=1e-5)
    x = (rng.standard_normal((5, 300)) * scale).astype(np.float32)
    x64 = x.astype(np.float64)
    want = (x64 / np.linalg.norm(x64, axis=1, keepdims=True)) @ unit.T
    np.testing.assert_allclose(normfast.cosine_linear(x, v, eps=1e-45), want, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("scale,eps_scaled", [(1e19, False), (1e19, True), (1e-25, False), (1e-25, True),
                                              (1e-40, False), (1e-30, True), (1e25, False), (1e36, False)])
def test_backward_at_float_range(isa, dtype, scale, eps_scaled, channels_last):
    """The backward passes against PyTorch in float64. Channels-first groups of 72 elements run the fused
    segment kernel (statistics computed in it), channels-last data the two-pass kernels (their float
    coefficients), layer and RMS norm the fused rows; eps in proportion to the data makes
    1 / sqrt(var + eps) and its square leave float's range (1e-25, 1e-30) in those kernels."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 8, 8, 9)) * scale + scale).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    if channels_last:  # the same values, channels on the last axis of memory: a transposed view
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) for a in (x, dy))
    eps = 1e-5 * scale * scale if eps_scaled else 1e-5
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    dyt = torch.tensor(np.asarray(dy, np.float64))
    tol = 5e-2 if dtype == ml_dtypes.bfloat16 else 1e-3
    F = torch.nn.functional
    cases = [
        (lambda: normfast.layer_norm_backward(dy, x, 9, eps=eps), lambda t: F.layer_norm(t, (9,), eps=eps)),
        (lambda: normfast.rms_norm_backward(dy, x, 9, eps=eps), lambda t: F.rms_norm(t, (9,), eps=eps)),
        (lambda: normfast.group_norm_backward(dy, x, 4, eps=eps), lambda t: F.group_norm(t, 4, eps=eps)),
        (lambda: normfast.batch_norm_backward(dy, x, eps=eps),
         lambda t: F.batch_norm(t, None, None, training=True, eps=eps)),
        (lambda: normfast.instance_norm_backward(dy, x, eps=eps), lambda t: F.instance_norm(t, eps=eps)),
    ]
    for ours, theirs in cases:
        got = ours()
        gx = np.asarray(got[0] if isinstance(got, tuple) else got, np.float64)
        xt.grad = None
        theirs(xt).backward(dyt)
        want = xt.grad.numpy()
        assert np.all(np.isfinite(gx))
        np.testing.assert_allclose(gx, want, atol=tol * np.max(np.abs(want)))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32], ids=dname)
@pytest.mark.parametrize("scale,eps", [(1e-40, 1e-90), (1e-30, 1e-70), (1e-20, 1e-50)])
def test_apply_scales_past_float_range(isa, dtype, scale, eps, channels_last):
    """Non-constant channels whose 1 / sqrt(var + eps) does not fit float (tiny data, tinier eps): the
    batch, instance, group and switchable norms and BatchNorm in eval, against float64 NumPy."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 6, 5, 7)) * scale).astype(dtype)
    if channels_last:  # the two-pass paths, never the fused rows
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    x64 = np.asarray(x, np.float64)

    def norm(axes):
        m, v = x64.mean(axes, keepdims=True), x64.var(axes, keepdims=True)
        return (x64 - m) / np.sqrt(v + eps)

    groups = x64.reshape(4, 3, 2, 5, 7)
    gm, gv = groups.mean((2, 3, 4), keepdims=True), groups.var((2, 3, 4), keepdims=True)
    bn = normfast.layers.BatchNorm(6, eps=eps).eval()  # float32 running statistics, as loaded
    rm, rv = (v.astype(np.float32) for v in (x64.mean((0, 2, 3)), x64.var((0, 2, 3))))
    bn.load_state_dict({"running_mean": rm, "running_var": rv}, strict=False)
    cases = [
        (normfast.batch_norm(x, training=True, eps=eps), norm((0, 2, 3))),
        (normfast.instance_norm(x, eps=eps), norm((2, 3))),
        (normfast.group_norm(x, 3, eps=eps), ((groups - gm) / np.sqrt(gv + eps)).reshape(x.shape)),
        (bn(x), (x64 - rm.astype(np.float64).reshape(1, 6, 1, 1)) / np.sqrt(
            rv.astype(np.float64).reshape(1, 6, 1, 1) + eps)),
    ]
    tol = {np.float16: 2e-3, ml_dtypes.bfloat16: 2e-2, np.float32: 1e-5}[dtype]
    for got, want in cases:
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def _rms_backward(x, g, eps):
    """RMS norm's gradient in float64, through xhat = x * r so that nothing over- or underflows."""
    r = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    xh = x * r
    return r * g - r * xh * (g * xh).mean(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(16, 4, 5), (4, 8, 9, 9)], ids=["two-pass", "segments"])
@pytest.mark.parametrize("scale,eps", [(0.0, 1e-300), (1e-120, 1e-300), (1e-160, 1e-310), (1e140, 1e-5),
                                       (1e150, 1e-5)])
def test_float64_backward_at_the_ends_of_its_range(isa, shape, scale, eps):
    """rstd^3 over- or underflows float64 here (zeros or tiny data with a tiny eps; data at 1e140): the
    gradients still match torch's float64 autograd (RMS norm: the closed form, where torch's own
    rstd^3 underflows)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape) * scale
    g = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    F = torch.nn.functional
    n = shape[-1]
    cases = [
        (normfast.batch_norm_backward(g, x, eps=eps), lambda t: F.batch_norm(t, None, None, training=True, eps=eps)),
        (normfast.instance_norm_backward(g, x, eps=eps), lambda t: F.instance_norm(t, eps=eps)),
        (normfast.group_norm_backward(g, x, 2, eps=eps), lambda t: F.group_norm(t, 2, eps=eps)),
        (normfast.layer_norm_backward(g, x, n, eps=eps), lambda t: F.layer_norm(t, (n,), eps=eps)),
        (normfast.switchable_norm_backward(g, x, None, None, [0.0, 1.0, 2.0], [1.0, 0.0, 0.5], training=True, eps=eps),
         None),
    ]
    for got, theirs in cases:
        gx = got[0]
        assert np.all(np.isfinite(gx))
        if theirs is not None:
            xt.grad = None
            theirs(xt).backward(torch.tensor(g))
            want = xt.grad.numpy()
            np.testing.assert_allclose(gx, want, rtol=0, atol=1e-13 * np.max(np.abs(want)))
    want = _rms_backward(x, g, eps)
    got = normfast.rms_norm_backward(g, x, n, eps=eps)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * np.max(np.abs(want)))


SWITCHABLE_CONSTANTS = [(dt, v) for dt in FLOAT_DTYPES for v in (0.1, -3.0, 6e4, 1e20, 3e38, 1e90)
                        if v < {np.float16: 6.5e4, np.float64: 1e300}.get(dt, 3.3e38)]


@pytest.mark.parametrize("dtype,value", SWITCHABLE_CONSTANTS, ids=lambda v: dname(v) if isinstance(v, type) else str(v))
def test_switchable_norm_of_constants_is_the_bias(isa, dtype, value):
    """Equal instance, layer and batch means blend to exactly that mean (the softmax weights' rounding
    would otherwise leave a few ulps, magnified by 1 / sqrt(eps)); the gradients are then 0."""
    x = np.full((2, 3, 4), value).astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    w, b = np.full(3, 2.0, pdt), np.arange(3, dtype=pdt)
    for training, eps in ((True, 1e-5), (True, 1e-40), (False, 1e-5)):
        rm, rv = np.full(3, np.float64(x.flat[0]), pdt), np.zeros(3, pdt)  # the data's value exactly
        y = normfast.switchable_norm(x, w, b, [0.0, 1.0, 2.0], [0.5, 3.0, 2.0], rm, rv, training=training, eps=eps)
        np.testing.assert_array_equal(np.asarray(y, np.float64), np.broadcast_to(b.reshape(1, 3, 1), x.shape))
    gx, gw, gb, *_ = normfast.switchable_norm_backward(np.ones_like(x), x, w, b, [0.0, 1.0, 2.0], [0.5, 3.0, 2.0],
                                                       training=True)
    np.testing.assert_array_equal(gw, 0)
    assert np.max(np.abs(np.asarray(gx, np.float64))) < 1e-6


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("pair", [(1e308, 9e307), (1.79e308, 1e308), (-1.7e308, -1.5e308), (-1e308, 5e307)])
def test_float64_sums_past_its_range(isa, layout, pair):
    """Data near DBL_MAX whose sums pass it while its range and mean fit: the mean as NumPy's of the data
    scaled down (NumPy's own sums overflow), the variance inf where it is past DBL_MAX. (Data whose range
    itself passes DBL_MAX has an infinite variance and may get an infinite mean: each statistic is
    reduced as x minus one of its elements, and that difference overflows.)"""
    shape, axis, view = LAYOUTS[layout]
    x = view(np.random.default_rng(9).choice(np.array(pair), shape))  # both values in every statistic
    mean, var = normfast.moments(x, axis)
    scaled = np.asarray(x) / 2**20  # exact; NumPy's own sums of x would overflow too
    want_mean = np.mean(scaled, axis) * 2**20
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-12 * np.abs(pair).max())
    with np.errstate(over="ignore"):
        want_var = np.var(scaled, axis) * 2**40
    np.testing.assert_array_equal(np.isinf(var), np.isinf(want_var))
    finite = np.isfinite(want_var)
    np.testing.assert_allclose(np.asarray(var)[finite], np.asarray(want_var)[finite], rtol=1e-12)


# --- 2, 3. constant data: variance exactly 0, normalized output exactly 0 (or the bias) ---------------

CONSTANTS = {
    np.float16: [0.0, 6e-8, -1e-3, 0.1, 3.0, 65000.0],
    ml_dtypes.bfloat16: [0.0, 1e-38, -1e-20, 0.1, 1e19, 3e38],
    np.float32: [0.0, 1e-45, 1e-38, -1e-25, 1e-10, 0.1, 1.0 + 2**-23, -7e19, 1e37, 3.4e38],
    np.float64: [0.0, 5e-324, 1e-300, 1e-150, -1e-10, 0.1, 1.0 + 2**-52, 1e150, -1e200, 1e300, 5e307, -1.7e308],
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dname)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_constant_variance_is_exactly_zero(isa, dtype, layout):
    shape, axis, view = LAYOUTS[layout]
    for c in CONSTANTS[dtype]:
        x = view(np.full(shape, c, dtype))
        value = float(np.asarray(c, dtype))
        for threads in (1, 2, 3):
            with use_threads(threads):
                mean, var = normfast.moments(x, axis)
            assert np.all(np.asarray(var) == 0), (c, var)
            assert np.all(np.asarray(mean, np.float64) == np.float64(np.asarray(value, mean.dtype))), (c, mean)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dname)
def test_constant_norm_outputs_are_exactly_the_bias(isa, dtype):
    stats = np.float64 if dtype == np.float64 else np.float32
    for c in CONSTANTS[dtype]:
        x = np.full((3, 4, 5, 6), c, dtype)
        bias = np.arange(1, 5, dtype=stats)
        want = np.ones(x.shape) * bias[:, None, None]
        np.testing.assert_array_equal(normfast.batch_norm(x, training=True, bias=bias), want)
        np.testing.assert_array_equal(normfast.instance_norm(x, bias=bias), want)
        np.testing.assert_array_equal(normfast.group_norm(x, 2, bias=bias), want)
        lbias = np.arange(6, dtype=stats)
        np.testing.assert_array_equal(normfast.layer_norm(x, 6, bias=lbias), np.ones(x.shape) * lbias)
        np.testing.assert_array_equal(normfast.layer_norm(x.reshape(3, -1), 120), 0)


def test_constant_columns_channels_last(isa):
    """Column mode for the channel norms (channels-last) and the short-row merge: exactly 0."""
    for c in (1e-10, 1e200, -3.5):
        x = np.full((8, 5, 5, 3), c)
        np.testing.assert_array_equal(normfast.batch_norm(x, training=True, axis=-1), 0)
        np.testing.assert_array_equal(normfast.group_norm(x, 3, axis=-1), 0)
        assert np.all(normfast.moments(np.full((100, 3), c), axis=0)[1] == 0)


# --- 4. precision along columns -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype,spread", [(np.float64, 1e-10), (np.float64, 1e-6), (np.float32, 1e-3)],
                         ids=["f64-1e-10", "f64-1e-6", "f32-1e-3"])
def test_columns_as_exact_as_rows(isa, dtype, spread):
    """Mean 1, tiny spread: column mode (and its merge across chunks) as exact as row mode."""
    rng = np.random.default_rng(5)
    x = (1 + spread * rng.standard_normal((100000, 4))).astype(dtype)
    _, want = exact_moments(x, 0)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for threads in (1, 2, 3):
        with use_threads(threads):
            _, cols = normfast.moments(x, 0)
            _, rows = normfast.moments(np.ascontiguousarray(x.T), 1)
        np.testing.assert_allclose(cols, want, rtol=tol)
        np.testing.assert_allclose(rows, want, rtol=tol)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_float64_large_offset(isa, layout):
    """float64 data at 1e150 with a spread of 1e140: every layout exact against the shifted float64 var."""
    x, axis = data(layout, np.float64, 1e140, 1e10)
    want_mean, want_var = exact_moments(x, axis)
    mean, var = normfast.moments(x, axis)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-13)
    np.testing.assert_allclose(var, want_var, rtol=1e-10)


# --- 5. scales the accumulation type cannot hold -----------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32], ids=dname)
@pytest.mark.parametrize("eps", [1e-45, 1e-80, 1e-300])
def test_zero_rows_with_tiny_eps(isa, dtype, eps):
    """1 / sqrt(0 + eps) or 1 / max(0, eps) past float's range: zeros stay 0 (0 * inf would be NaN), and
    nonzero rows come out right."""
    x = np.zeros((3, 8), dtype)
    np.testing.assert_array_equal(normfast.layer_norm(x, 8, eps=eps), 0)
    np.testing.assert_array_equal(normfast.rms_norm(x, 8, eps=eps), 0)
    np.testing.assert_array_equal(normfast.group_norm(x.reshape(3, 2, 4), 2, eps=eps), 0)
    if dtype == np.float32:
        w = np.ones((2, 8), np.float32)
        np.testing.assert_array_equal(normfast.cosine_linear(x, w, eps=eps), 0)
        t = torch.nn.functional.normalize(torch.zeros(1, 4), eps=1e-45)
        assert torch.all(t == 0)  # PyTorch's answer for the reported case
    tiny = np.zeros((1, 8), dtype)
    tiny[0, 0] = np.finfo(np.float16).smallest_subnormal if dtype == np.float16 else 1e-38
    v = float(np.asarray(tiny[0, 0], np.float64))
    want_rms = np.sqrt(8.0) * np.sign(v) if eps < v * v / 8 * 1e-6 else None
    y = np.asarray(normfast.rms_norm(tiny, 8, eps=eps), np.float64)
    assert np.all(np.isfinite(y))
    if want_rms is not None:
        np.testing.assert_allclose(y[0, 0], want_rms, rtol=1e-2)
        np.testing.assert_array_equal(y[0, 1:], 0)


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
def test_channels_spanning_past_float_max_stay_finite(isa, dtype):
    """A channel whose values span more than float's largest value has deviations from its mean that float
    cannot hold: the apply pass runs in float64 (it gave inf), for batch norm in both layouts, instance norm
    and group norm, their layers and Dask's batch norm. Expected: float64 NumPy on the same values."""
    x = np.full((4, 3, 25), -1e38)
    x[0, :, 0] = 3.3e38
    x = x.astype(dtype)
    x64 = np.asarray(x, np.float64)

    def ref(axes):
        m, v = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
        return (x64 - m) / np.sqrt(v + 1e-5)

    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 1e-5
    cases = [(normfast.batch_norm(x, training=True), ref((0, 2))),
             (normfast.batch_norm(np.moveaxis(x, 1, -1), training=True, axis=-1), np.moveaxis(ref((0, 2)), 1, -1)),
             (normfast.instance_norm(x), ref(2)), (normfast.group_norm(x, 1), ref((1, 2))),
             (normfast.layers.InstanceNorm(3)(x), ref(2)), (normfast.layers.GroupNorm(1, 3)(x), ref((1, 2)))]
    with np.errstate(over="ignore"):  # the running variance (float32, as x) overflows, as PyTorch's would
        cases.append((normfast.layers.BatchNorm(3)(x), ref((0, 2))))
    cases.append((nf_dask.batch_norm(da.from_array(x, chunks=(2, 3, 25)), training=True).compute(), ref((0, 2))))
    for y, want in cases:
        y = np.asarray(y, np.float64)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
def test_a_statistic_past_float_range_leaves_the_others_bits(isa, dtype):
    """One statistic that float cannot apply (values spanning past its largest value, or a zero variance
    under eps 1e-80, whose scale passes its range) is applied in float64 alone: every other statistic's
    outputs keep their bytes (the whole call went to float64, moving them by an ulp), in each norm, layer
    and Dask's batch norm, at 1, 2 and 3 threads. Each case: (call, x, the index of the other statistics'
    elements)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 25)).astype(dtype)
    spans = np.full(25, -1e38)
    spans[0] = 3.3e38

    def changed(where):
        y = np.array(x)
        y[where] = spans[: y[where].shape[-1]].astype(dtype) if y[where].ndim else dtype(3.3e38)
        return y

    rv = np.ones(6, np.float32)
    rv0 = np.array(rv)
    rv0[0] = 0
    cl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    gn_rows = np.ascontiguousarray(x[:, :4, 0])  # (N, C): spatial size 1, two channels per group
    big_row = np.array(gn_rows)
    big_row[0, :2] = [3.3e38, -1e38]
    cases = [  # (call, x, x with one statistic past float's range, the other statistics' elements)
        (lambda a: normfast.batch_norm(a, training=True), x, changed((slice(None), 0)), np.s_[:, 1:]),
        (lambda a: normfast.batch_norm(a, training=True, axis=-1), cl,
         np.ascontiguousarray(np.moveaxis(changed((slice(None), 0)), 1, -1)),
         np.s_[..., 1:]),
        (lambda a: normfast.instance_norm(a), x, changed((0, 0)), np.s_[1:]),
        (lambda a: normfast.group_norm(a, 3), x, changed((0, 0)), np.s_[1:]),
        (lambda a: normfast.group_norm(a, 2), gn_rows, big_row, np.s_[1:]),
        (lambda a: normfast.layers.GroupNorm(3, 6)(a), x, changed((0, 0)), np.s_[1:]),
        (lambda a: normfast.layers.InstanceNorm(6)(a), x, changed((0, 0)), np.s_[1:]),
        (lambda a: nf_dask.batch_norm(da.from_array(a, chunks=(2, 6, 25)), training=True).compute(), x,
         changed((slice(None), 0)), np.s_[:, 1:]),
    ]
    for threads in (1, 2, 3):
        with use_threads(threads), np.errstate(over="ignore"):
            for i, (call, before, after, others) in enumerate(cases):
                y0, y1 = call(before), call(after)
                assert np.isfinite(np.asarray(y1, np.float64)).all(), (threads, i)
                assert y1[others].tobytes() == y0[others].tobytes(), (threads, i)
            # eval mode: a zero running variance under eps 1e-80 (scale 1e40, past float's range)
            y0 = normfast.batch_norm(x, np.zeros(6, np.float32), rv, eps=1e-80)
            y1 = normfast.batch_norm(x, np.zeros(6, np.float32), rv0, eps=1e-80)
            assert y1[:, 1:].tobytes() == y0[:, 1:].tobytes()


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_group_past_float_range_leaves_the_others_gradients(isa, dtype, channels_last):
    """The backward's counterpart (the two-pass path: spatial size under 64, or channels last): a group
    whose float coefficients do not hold it (values spanning past float's largest value; values at 1e-30
    under eps 1e-80, whose scale squared passes float's range) takes its gradient in float64 alone, and every other group's grad_x keeps
    its bytes (the whole call went to float64), in batch, instance and group norm backward, at 1, 2 and 3
    threads."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6, 25)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    spans = np.full(25, -1e38)
    spans[0] = 3.3e38
    big, tiny = np.array(x), np.array(x)
    big[:, 0], tiny[:, 0] = spans.astype(dtype), (np.asarray(x[:, 0], np.float64) * 1e-30).astype(dtype)
    lay = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if channels_last else (lambda a: a)
    axis = -1 if channels_last else 1
    calls = [  # (gradient of x, the other groups' channels)
        (lambda a, eps: normfast.batch_norm_backward(lay(dy), lay(a), eps=eps, axis=axis)[0], slice(1, None)),
        (lambda a, eps: normfast.instance_norm_backward(lay(dy), lay(a), eps=eps, axis=axis)[0], slice(1, None)),
        (lambda a, eps: normfast.group_norm_backward(lay(dy), lay(a), 3, eps=eps, axis=axis)[0], slice(2, None)),
    ]
    for threads in (1, 2, 3):
        with use_threads(threads), np.errstate(over="ignore"):
            for i, (call, others) in enumerate(calls):
                for eps, changed in ((1e-5, big), (1e-80, tiny)):
                    g0, g1 = (np.moveaxis(call(a, eps), axis, 1) for a in (x, changed))
                    assert np.isfinite(np.asarray(g1, np.float64)).all(), (threads, i, eps)
                    assert g1[:, others].tobytes() == g0[:, others].tobytes(), (threads, i, eps)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_of_infinite_data_is_quiet_and_leaves_the_others(isa, dtype, channels_last):
    """Infinite values in a channel (+inf; +inf and -inf in two samples) give the non-finite gradients
    PyTorch gives (float64 autograd), without NumPy warnings (inf - inf in the float64 helpers raised
    under warnings-as-errors), and every other group's grad_x keeps its bytes: batch, instance and group
    norm backward."""
    import warnings

    import torch.nn.functional as F
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 9)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    lay = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if channels_last else (lambda a: a)
    axis = -1 if channels_last else 1
    calls = [  # (normfast's grad_x, PyTorch's forward, the other groups' channels)
        (lambda a: normfast.batch_norm_backward(lay(dy), lay(a), axis=axis)[0],
         lambda t: F.batch_norm(t, None, None, training=True), slice(1, None)),
        (lambda a: normfast.instance_norm_backward(lay(dy), lay(a), axis=axis)[0], F.instance_norm, slice(1, None)),
        (lambda a: normfast.group_norm_backward(lay(dy), lay(a), 3, axis=axis)[0],
         lambda t: F.group_norm(t, 3), slice(2, None)),
    ]
    one, two = np.array(x), np.array(x)
    one[1, 0, 4] = np.inf
    two[1, 0, 4], two[2, 0, 7] = np.inf, -np.inf
    for changed in (one, two):
        t = torch.tensor(np.asarray(changed, np.float64), requires_grad=True)
        for i, (call, forward, others) in enumerate(calls):
            t.grad = None
            forward(t).backward(torch.tensor(np.asarray(dy, np.float64)))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                g0, g1 = (np.moveaxis(call(a), axis, 1) for a in (x, changed))
            assert (np.isfinite(np.asarray(g1, np.float64)) == np.isfinite(t.grad.numpy())).all(), i
            assert g1[:, others].tobytes() == g0[:, others].tobytes(), i


@pytest.mark.parametrize("case", ["batch backward eps", "instance backward eps", "running var", "rms float64",
                                  "forward fallback", "weight gradient", "switchable logits"])
def test_results_past_a_dtypes_range_are_quiet(isa, case):
    """Float64 steps in Python whose results pass the output's range (a gradient past float32's under eps
    1e-80; a running variance past float32's; squares of float64 data near its largest value; the forward's
    float64 fallback for a scale past float32's, under a weight near its largest value; an eval-mode weight
    gradient past float32's, under a zero running variance and eps 1e-80; switchable norm's logit gradients
    under a grad_out near float32's largest value) round to
    inf as the engine's stores do, without NumPy's 'overflow' warning (an error under -W error); the
    results are those of the same call with warnings ignored."""
    import warnings
    x = np.zeros((3, 2, 4), np.float32)
    x[:, 0] = np.arange(12).reshape(3, 4)
    big = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
    big[:, 0] *= 1e36
    x64 = np.full((2, 4), 1.7e308)
    tiny = np.random.default_rng(0).standard_normal((64, 2, 5)).astype(np.float32)
    tiny[:, 0] *= 1e-30  # a scale past float32's range: applied in float64, outputs past it round to inf
    dy = np.arange(24, dtype=np.float32).reshape(x.shape)
    spread = (np.random.default_rng(3).standard_normal((4, 6, 25)) * 50 + 3).astype(np.float32)
    call = {
        "batch backward eps": lambda: normfast.batch_norm_backward(dy, x, eps=1e-80)[0],
        "instance backward eps": lambda: normfast.instance_norm_backward(dy, x, eps=1e-80)[0],
        "running var": lambda: normfast.batch_norm(big, np.zeros(2, np.float32), rv := np.ones(2, np.float32),
                                                   training=True) is not None and rv,
        "rms float64": lambda: normfast.rms_norm_backward(np.arange(8.0).reshape(2, 4), x64, 4)[0],
        "forward fallback": lambda: normfast.batch_norm(tiny, weight=np.array([3.4e38, 1], np.float32),
                                                        training=True, eps=1e-80),
        "weight gradient": lambda: normfast.batch_norm_backward(
            dy, x + 1e30, np.zeros(2, np.float32), np.array([0, 1], np.float32), np.ones(2, np.float32),
            training=False, eps=1e-80)[1],
        "switchable logits": lambda: normfast.switchable_norm_backward(
            np.full(spread.shape, 3e38, np.float32), spread, np.full(6, 0.1, np.float32), np.zeros(6, np.float32),
            np.zeros(3), np.zeros(3), np.zeros(6, np.float32), np.full(6, 2000, np.float32), training=False)[3],
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = call()
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
    if case == "running var":
        assert got[0] == np.inf and np.isfinite(got[1])
    if case == "forward fallback":
        assert np.isinf(got[:, 0]).any() and np.isfinite(got[:, 1]).all()
    if case == "weight gradient":
        assert got[0] == np.inf and np.isfinite(got[1])
    if case == "switchable logits":
        assert np.isinf(got).any() and np.isfinite(got).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_switchable_norm_of_infinite_data_is_quiet(isa, dtype, channels_last, training):
    """Switchable norm merges and blends moments in Python (chan_merge, blend), where infinite means gave
    inf - inf and NumPy's 'invalid value' warning (an error under -W error): forward and backward are
    quiet, and the forward's non-finite outputs are the reference's."""
    import warnings

    from normfast import reference
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 9)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    x[1, 0, 4], x[2, 0, 7] = np.inf, -np.inf
    pdt = np.float64 if dtype == np.float64 else np.float32
    w, b, logits = np.ones(6, pdt), np.zeros(6, pdt), np.array([0.1, 0.2, 0.3])
    rm, rv = np.zeros(6, pdt), np.ones(6, pdt)
    lay = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if channels_last else (lambda a: a)
    axis = -1 if channels_last else 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = normfast.switchable_norm(lay(x), w, b, logits, logits, rm.copy(), rv.copy(), training=training,
                                     axis=axis)
        normfast.switchable_norm_backward(lay(dy), lay(x), w, b, logits, logits, rm, rv, training=training,
                                          axis=axis)
    with np.errstate(invalid="ignore"):  # the reference's own inf - inf
        want = reference.switchable_norm(np.asarray(x, np.float64), w, b, logits, logits, rm.copy(), rv.copy(),
                                         training=training)[0]
    assert (np.isfinite(np.moveaxis(np.asarray(y, np.float64), axis, 1)) == np.isfinite(want)).all()


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_backward_of_data_spanning_past_float_max(isa, dtype, activation):
    """Channels and rows whose values span more than float's largest value (x - mean overflows float) in
    the fused backward kernels (channels-first segments of 100, layer and RMS rows): finite gradients, the
    float64 values PyTorch gives (they were inf or NaN)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6, 100)).astype(dtype)
    x[:, 0] = np.where(np.arange(100) == 0, 3.3e38, -1e38).astype(dtype)
    x[1, 3] = np.where(np.arange(100) == 5, -3.3e38, 1e38).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    act = (lambda t: t) if activation is None else torch.relu
    F = torch.nn.functional
    cases = [
        (normfast.batch_norm_backward(dy, x, activation=activation),
         lambda t: act(F.batch_norm(t, None, None, training=True))),
        (normfast.instance_norm_backward(dy, x, activation=activation), lambda t: act(F.instance_norm(t))),
        (normfast.group_norm_backward(dy, x, 3, activation=activation), lambda t: act(F.group_norm(t, 3))),
    ]
    if activation is None:
        cases += [(normfast.layer_norm_backward(dy, x, 100), lambda t: F.layer_norm(t, (100,))),
                  (normfast.rms_norm_backward(dy, x, 100, eps=1e-6), lambda t: F.rms_norm(t, (100,), eps=1e-6))]
    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 1e-5
    for got, theirs in cases:
        gx = np.asarray(got[0] if isinstance(got, tuple) else got, np.float64)
        xt.grad = None
        theirs(xt).backward(torch.tensor(np.asarray(dy, np.float64)))
        want = xt.grad.numpy()
        assert np.isfinite(gx).all()
        scale = np.abs(want).max(axis=-1, keepdims=True)  # each row's own magnitude: 1e-38 for the spans
        # ... whose gradients are subnormal in float: two of its subnormal steps on top
        bound = tol * scale + 2 * float(ml_dtypes.finfo(dtype).smallest_subnormal)
        np.testing.assert_array_less(np.abs(gx - want), np.broadcast_to(bound, gx.shape))


def test_l2_of_zero_matches_torch(isa):
    x = np.zeros((2, 4), np.float32)
    w = np.ones((3, 4), np.float32)
    for eps in (1e-45, 1e-12):
        want = torch.nn.functional.linear(torch.nn.functional.normalize(torch.tensor(x), eps=eps),
                                          torch.nn.functional.normalize(torch.tensor(w), eps=eps))
        np.testing.assert_array_equal(normfast.cosine_linear(x, w, eps=eps), want.numpy())


# --- 6. NaN and infinity semantics unchanged ---------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dname)
@pytest.mark.parametrize("layout", ["rows", "cols", "whole"])
def test_non_finite_semantics(isa, dtype, layout):
    x, axis = data(layout, dtype, 1.0, 0.0)
    for bad, want_mean in ((np.nan, np.nan), (np.inf, np.inf), (-np.inf, -np.inf)):
        for where in (0, -1):
            y = np.array(x)
            idx = np.unravel_index(where % y.size, y.shape)
            y[idx] = bad
            mean, var = normfast.moments(y, axis)
            ref_mean = np.asarray(y, np.float64).mean(axis)
            assert np.array_equal(np.isnan(np.asarray(mean, np.float64)), np.isnan(ref_mean))
            assert np.array_equal(np.isinf(np.asarray(mean, np.float64)), np.isinf(ref_mean))
            assert np.all(np.isnan(np.asarray(var)[np.isnan(ref_mean) | np.isinf(ref_mean)]))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_float64_range_past_its_largest_value_never_gives_a_wrong_finite_mean(isa, layout):
    """Data whose range passes DBL_MAX (each statistic reduced as x minus one of its elements, which then
    overflows): the mean is NumPy's of the data scaled down, or infinite, never a wrong finite value (means
    too far apart to subtract were added, not averaged, when merged)."""
    shape, axis, view = LAYOUTS[layout]
    x = view(np.random.default_rng(11).uniform(-1, 1, shape) * 1.7e308)
    mean, _ = normfast.moments(x, axis)
    want = np.mean(np.asarray(x) / 2**20, axis) * 2**20
    mean, want = np.atleast_1d(mean), np.atleast_1d(want)
    finite = np.isfinite(mean)
    np.testing.assert_allclose(mean[finite], want[finite], rtol=1e-10, atol=1e-10 * 1.7e308)
    for seed, rows in ((1, (9, 11)), (2, (2, 4)), (3, (3, 40))):  # short rows, run as columns
        with np.errstate(over="ignore"):
            r = np.random.default_rng(seed).standard_normal(rows) * 1e308
        m = normfast.moments(r, axis=1)[0]
        ok = np.isfinite(m) & np.isfinite(r).all(axis=1)
        np.testing.assert_allclose(m[ok], (np.mean(r / 2**20, axis=1) * 2**20)[ok], rtol=1e-10, atol=1e-10 * 1.7e308)


# --- 7. rounding to the half types on store ----------------------------------------------------------

def float32_cases():
    """float32 values of every class a half store meets: random bit patterns (NaN with payloads, infinity,
    overflow, underflow), values spread over float16's range with random low bits, and exact ties (half
    values plus half an ulp, subnormal ones included)."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32).view(np.float32)
    spread = (np.exp2(rng.uniform(-27, 17, 4096)) * rng.choice([-1, 1], 4096)).astype(np.float32)
    halves = rng.integers(0, 0x7bff, 2048, dtype=np.uint16).view(np.float16).astype(np.float32)
    ulp = np.spacing(halves.astype(np.float16)).astype(np.float32)
    edges = np.array([65504, 65519.99, 65520, 2**-14, 2**-24, 2**-25, 3 * 2**-26, 1e-45, 0, -0.0], np.float32)
    return np.concatenate([bits, spread, halves + ulp / 2, -(halves + ulp / 2), edges])


def half_bits(v, dtype):
    """The bits float32 v rounds to in dtype: NumPy's and ml_dtypes' round to nearest even; NaN quiet with
    its payload's top bits kept (as F16C's conversion does), for every kernel and ISA alike."""
    u = v.view(np.uint32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = v.astype(dtype).view(np.uint16).copy()
    nan = np.isnan(v)
    if dtype == np.float16:
        payload = ((u >> 16) & 0x8000) | 0x7e00 | ((u >> 13) & 0x3ff)
    else:
        payload = (u >> 16) | 0x40
    want[nan] = payload[nan].astype(np.uint16)
    return want


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=dname)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_half_stores_round_to_nearest_even_in_vectors_and_tails(isa, dtype, threads):
    """Each float32 result is stored as the half type's nearest value, ties to even, whether it leaves in a
    vector or in a row's scalar tail (37 elements: a tail at every vector width). Inference batch norm
    (apply pass) with running var 0.75 and eps 0.25 gives y = weight for x = 1; layer norm (row norm) of a
    constant row gives y = bias."""
    v = float32_cases()
    n = 37
    v = v[: v.size // n * n]
    want = half_bits(v, dtype)
    C = v.size
    with use_threads(threads):
        y = normfast.batch_norm(np.ones((1, C, n), dtype), np.zeros(C, np.float32), np.full(C, 0.75, np.float32),
                                weight=v, bias=np.zeros(C, np.float32), training=False, eps=0.25)
        np.testing.assert_array_equal(y[0].view(np.uint16), np.repeat(want[:, None], n, axis=1))
        rows = v.reshape(-1, n)
        for r, b in enumerate(rows):
            got = normfast.layer_norm(np.full((2, n), 3, dtype), n, bias=b)
            np.testing.assert_array_equal(got.view(np.uint16), np.tile(want[r * n:(r + 1) * n], (2, 1)))


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
def test_running_statistics_far_from_x(isa, dtype, channels_last):
    """Evaluation mode with running statistics far from x (a running mean of 3e38, x of -3e38): x - s
    leaves float's range while the normalized value (x - mean) / sqrt(var + eps) fits, so the statistic
    is applied, and differentiated, in float64 (it gave -inf, and a NaN gradient). Batch norm forward and
    backward, its layer, instance norm with use_input_stats=False and switchable norm in eval mode.
    Expected: float64 NumPy on the same values, PyTorch in float64 for switchable norm."""
    x = np.array([-3e38, 3e38, 1.0, 0.0, -1e38, 2.0]).reshape(1, 2, 3).astype(dtype)
    rm, rv = np.array([3e38, -2e38], np.float32), np.array([3e38, 1e30], np.float32)
    w, b = np.array([0.5, 2.0], np.float32), np.array([0.25, -1.0], np.float32)
    dy = np.ones_like(x)
    ax = 1
    if channels_last:
        x, dy, ax = np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ones_like(np.moveaxis(x, 1, -1)), -1
    shape = [1, 1, 1]
    shape[ax] = 2
    x64, rs = np.asarray(x, np.float64), 1 / np.sqrt(rv.astype(np.float64) + 1e-5).reshape(shape)
    xhat = (x64 - rm.astype(np.float64).reshape(shape)) * rs
    want = xhat * w.reshape(shape) + b.reshape(shape)
    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 1e-6
    layer = normfast.layers.BatchNorm(2, axis=ax)
    layer.load_state_dict({**layer.state_dict(), "running_mean": rm, "running_var": rv, "weight": w, "bias": b})
    layer.eval()
    for y in (normfast.batch_norm(x, rm, rv, w, b, axis=ax), layer(x),
              normfast.instance_norm(x, rm, rv, w, b, use_input_stats=False, axis=ax)):
        y = np.asarray(y, np.float64)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y, want, rtol=tol)
    # Switchable norm in eval mode, its blend all but entirely the running statistics; against PyTorch in
    # float64 (channels first), forward and backward.
    logits = np.array([-30.0, -30.0, 30.0])
    xt = torch.tensor(np.moveaxis(np.asarray(x, np.float64), ax, 1), requires_grad=True)
    tw, tb = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (w, b))
    ty = torch_switchable(xt, tw, tb, *(torch.tensor(logits),) * 2, *(torch.tensor(v.astype(np.float64)) for v in (rm, rv)),
                          False, 1e-5, True)
    ty.backward(torch.ones_like(ty))
    y = np.asarray(normfast.switchable_norm(x, w, b, logits, logits, rm, rv, axis=ax), np.float64)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(np.moveaxis(y, ax, 1), ty.detach().numpy(), rtol=tol)
    sgx, sgw, sgb = normfast.switchable_norm_backward(dy, x, w, b, logits, logits, rm, rv, training=False, axis=ax)[:3]
    assert np.isfinite(np.asarray(sgx, np.float64)).all()
    np.testing.assert_allclose(np.moveaxis(np.asarray(sgx, np.float64), ax, 1), xt.grad.numpy(), rtol=tol)
    np.testing.assert_allclose(sgw, tw.grad.numpy(), rtol=tol)
    np.testing.assert_allclose(sgb, tb.grad.numpy(), rtol=tol)
    red = (0, 1) if channels_last else (0, 2)
    for gx, gw, gb in (normfast.batch_norm_backward(dy, x, rm, rv, w, b, training=False, axis=ax),
                       normfast.instance_norm_backward(dy, x, rm, rv, w, b, use_input_stats=False, axis=ax)):
        np.testing.assert_allclose(np.asarray(gx, np.float64), np.broadcast_to(w.reshape(shape) * rs, x.shape),
                                   rtol=tol)
        np.testing.assert_allclose(gw, xhat.sum(axis=red), rtol=tol)
        np.testing.assert_allclose(gb, np.full(2, 3.0))


@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_fallback_in_place(isa, dtype, channels_last):
    """Statistics applied in float64 (a 1e32 outlier: data spanning past float's range; running
    statistics far from x) read x before anything is written: in place (out=x) gives the bytes of a new
    output. The float64 step read x after the float pass had overwritten it (found by a new user). Batch,
    instance, group and switchable norm (training, and eval mode weighted to its far running
    statistics) and the BatchNorm layer."""
    x = np.zeros((2, 3, 4), np.float64)
    x[0, 1, 2], x[1, 0, 0] = 1e32, 3e38
    x = x.astype(dtype)
    ax = 1
    if channels_last:
        x, ax = np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1
    rm, rv = np.array([3e38, 2e38, -3e38], np.float32), np.array([3e38, 1.0, 0.0], np.float32)
    w, b = np.array([1.0, 1e-30, 2.0], np.float32), np.array([0.5, 1.0, 5.0], np.float32)
    layer = normfast.layers.BatchNorm(3, axis=ax)
    layer.load_state_dict({**layer.state_dict(), "running_mean": rm, "running_var": rv, "weight": w, "bias": b})
    layer.eval()
    calls = [lambda a, **o: normfast.instance_norm(a, axis=ax, **o),
             lambda a, **o: normfast.group_norm(a, 1, w, b, axis=ax, **o),
             lambda a, **o: normfast.batch_norm(a, training=True, axis=ax, **o),
             lambda a, **o: normfast.batch_norm(a, rm, rv, w, b, axis=ax, **o),
             lambda a, **o: normfast.instance_norm(a, rm, rv, w, b, use_input_stats=False, axis=ax, **o),
             lambda a, **o: layer(a, **o),
             lambda a, **o: normfast.switchable_norm(a, w, b, np.zeros(3), np.zeros(3), training=True, axis=ax, **o),
             lambda a, **o: normfast.switchable_norm(a, w, b, np.array([-9.0, -9.0, 9.0]), np.array([-9.0, -9.0, 9.0]),
                                                     rm, rv, axis=ax, **o)]
    for f in calls:
        with np.errstate(over="ignore"):
            want = f(x)
            inplace = x.copy()
            f(inplace, out=inplace)
        assert inplace.tobytes() == want.tobytes()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_of_grad_out_near_float_max(isa, dtype, channels_last, threads):
    """grad_out holding values near float's largest ([3e38, 3e38, -3e38] in one channel of one sample and in
    one row) while every exact gradient fits float: the float partial sums of g and g * (x - s) and the
    step g - M of grad_x overflowed (a NaN grad_x, an infinite grad_bias; PyTorch's float32 does too). The
    fused channels-first segments, the two-pass kernels (eval mode: row mode channels first, column mode
    channels last; training channels last; switchable norm) and the layer and RMS rows. Expected: PyTorch in float64 on
    the same values, rounded to float (an exact sum past float's range is inf there too)."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 6, 100)) * 100).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy[1, 2, 10:13] = np.array([3e38, 3e38, -3e38]).astype(dtype)
    rm, rv = rng.standard_normal(6).astype(np.float32), (rng.uniform(1, 2, 6) * 1e4).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    mw, vw = np.array([0.3, -0.2, 0.1]), np.array([-0.4, 0.2, 0.5])
    ax = 1
    if channels_last:
        x, dy = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, dy))
        ax = -1
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    tw, tb = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (w, b))
    trm, trv = (torch.tensor(v.astype(np.float64)) for v in (rm, rv))
    F = torch.nn.functional

    def chan(f):  # PyTorch's channel norms take channels first
        return lambda t: f(t.movedim(-1, 1)).movedim(1, -1) if channels_last else f(t)

    L = x.shape[-1]
    cases = [
        (normfast.batch_norm_backward(dy, x, None, None, w, b, axis=ax),
         chan(lambda t: F.batch_norm(t, None, None, tw, tb, training=True))),
        (normfast.batch_norm_backward(dy, x, rm, rv, w, b, training=False, axis=ax),
         chan(lambda t: F.batch_norm(t, trm, trv, tw, tb, training=False))),
        (normfast.instance_norm_backward(dy, x, None, None, w, b, axis=ax),
         chan(lambda t: F.instance_norm(t, weight=tw, bias=tb))),
        (normfast.group_norm_backward(dy, x, 3, w, b, axis=ax), chan(lambda t: F.group_norm(t, 3, tw, tb))),
        (normfast.switchable_norm_backward(dy, x, w, b, mw, vw, axis=ax),
         chan(lambda t: torch_switchable(t, tw, tb, torch.tensor(mw), torch.tensor(vw), None, None, True, 1e-5, True))),
    ]
    w2, b2 = rng.uniform(0.5, 1.5, L).astype(np.float32), rng.standard_normal(L).astype(np.float32)
    tw2, tb2 = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (w2, b2))
    rows = [(normfast.layer_norm_backward(dy, x, L, w2, b2), lambda t: F.layer_norm(t, (L,), tw2, tb2)),
            (normfast.rms_norm_backward(dy, x, L, w2, eps=1e-6), lambda t: F.rms_norm(t, (L,), tw2, eps=1e-6))]
    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 1e-5
    spatial = 1 if channels_last else -1
    with use_threads(threads):
        for i, (got, theirs) in enumerate(cases + rows):
            params = (tw2, tb2) if i >= len(cases) else (tw, tb)
            for t in (xt, *params):
                t.grad = None
            theirs(xt).backward(torch.tensor(np.asarray(dy, np.float64)))
            want = [xt.grad.numpy()] + [None if t.grad is None else t.grad.numpy() for t in params]
            for g, wv in zip(got, want):
                if g is None:
                    continue
                g = np.asarray(g, np.float64)
                with np.errstate(over="ignore"):  # an exact sum past float's range: inf
                    wf = np.asarray(wv.astype(np.float32), np.float64)
                if g.ndim == 1:
                    np.testing.assert_allclose(g, wf, rtol=tol)
                    continue
                assert np.isfinite(wf).all()
                # each statistic's own magnitude (a sample's channel; a row), as grad_x's terms cancel there
                scale = np.abs(wf).max(axis=-1 if i >= len(cases) else spatial, keepdims=True)
                np.testing.assert_array_less(np.abs(g - wf), np.broadcast_to(tol * scale + 1e-30, g.shape))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", HALF_RANGE, ids=dname)
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_where_the_mean_of_g_passes_float_max(isa, dtype, channels_last, threads):
    """The part M of g taken off before scaling (its mean, or for a group norm channel -R / P) passing
    float's range while the gradient fits: a layer norm weight of 2 over a grad_out near float's largest
    value (found by a new user: all-NaN rows), and a group norm channel of weight 1e-30 beside channels of
    large grad_out (M = the group's sum over that tiny P). Those rows and groups take float64 coefficients.
    Expected: PyTorch in float64 on the same values, each row's or channel's own magnitude."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((4, 6, 100)) * 50).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy[1, 2] = np.where(np.arange(100) == 7, -3e38, 3e38).astype(dtype)
    wl = np.full(100, 2.0, np.float32)
    wg = np.array([1.0, 0.5, 1e-30, 1.5, 1.0, 2.0], np.float32)
    ax = 1
    if channels_last:
        x, dy = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, dy))
        ax = -1
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    F = torch.nn.functional
    L = x.shape[-1]
    tl = torch.tensor(np.full(L, 2.0))
    tg = torch.tensor(wg.astype(np.float64))
    gn = (lambda t: F.group_norm(t.movedim(-1, 1), 3, tg).movedim(1, -1)) if channels_last else (
        lambda t: F.group_norm(t, 3, tg))
    with use_threads(threads):
        cases = [(normfast.layer_norm_backward(dy, x, L, np.full(L, 2.0, np.float32))[0],
                  lambda t: F.layer_norm(t, (L,), tl), -1),
                 (normfast.group_norm_backward(dy, x, 3, wg, axis=ax)[0], gn, 1 if channels_last else -1)]
    tol = 2e-2 if dtype == ml_dtypes.bfloat16 else 1e-5
    for got, theirs, along in cases:
        xt.grad = None
        theirs(xt).backward(torch.tensor(np.asarray(dy, np.float64)))
        want = xt.grad.numpy()
        gx = np.asarray(got, np.float64)
        assert np.isfinite(want).all() and np.isfinite(gx).all()
        scale = np.abs(want).max(axis=along, keepdims=True)
        np.testing.assert_array_less(np.abs(gx - want), np.broadcast_to(tol * scale + 1e-30, gx.shape))
