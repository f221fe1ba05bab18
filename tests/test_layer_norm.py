"""layer_norm and rms_norm against the float64 reference and against PyTorch; their bad arguments."""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
from normfast import _normc, norms, reference

from helpers import ISAS, assert_close_y, assert_refused, bad_call, case_ids, read_only, use_isa, use_threads

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


@st.composite
def row_inputs(draw):
    """(x, normalized_shape): rank 1-4, one or two normalized dims, contiguous or strided views."""
    ndim = draw(st.integers(1, 4))
    k = draw(st.integers(1, min(2, ndim)))
    shape = draw(st.lists(st.one_of(st.integers(1, 9), st.sampled_from([31, 64, 257, 2100])),
                          min_size=ndim, max_size=ndim).filter(lambda s: np.prod(s) <= 50_000))
    if np.prod(shape[ndim - k:]) < 2:
        shape[-1] = 2
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 2, -1]), min_size=ndim, max_size=ndim))
    dtype = draw(st.sampled_from(DTYPES))
    offset = draw(st.sampled_from([0.0, 3.0, -100.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = (rng.standard_normal([n * abs(s) for n, s in zip(shape, steps)]) * 2 + offset).astype(dtype)
    return base[tuple(slice(None, None, s) for s in steps)], tuple(shape[ndim - k:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rms", [False, True])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inp=row_inputs(), affine=st.booleans(), with_residual=st.booleans(), eps=st.sampled_from([1e-5, 1e-2]))
def test_matches_reference(isa, rms, inp, affine, with_residual, eps):
    x, nshape = inp
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 1.5, nshape) if affine else None
    b = rng.standard_normal(nshape) if affine and not rms else None
    res = rng.standard_normal(x.shape).astype(x.dtype) if with_residual else None
    res_out = np.empty_like(x) if with_residual else None
    # the residual sum is rounded to x's dtype first, as in the package and PyTorch
    summed = (np.asarray(x, np.float64) + np.asarray(res, np.float64)).astype(x.dtype) if with_residual else x
    ref = reference.layer_norm(summed, nshape, w, b, eps=eps, rms=rms)
    with use_isa(isa):
        if rms:
            y = normfast.rms_norm(x, nshape, w, eps=eps, residual=res, residual_out=res_out)
        else:
            y = normfast.layer_norm(x, nshape, w, b, eps=eps, residual=res, residual_out=res_out)
    assert_close_y(y, ref, x.dtype)
    if with_residual:
        np.testing.assert_array_equal(res_out, summed)


def short_rows(n, dtype, seed):
    """37 rows of n (a part-filled tile at every vector width) mixing ordinary rows with the ones a short-row
    kernel must hand back to the per-row path: zeros, a tiny centre, huge values, constants, NaN, infinity,
    large offsets, and (float32, float64, bfloat16) deviations whose squares summed pass float's range."""
    rng = np.random.default_rng(seed)
    big = 1e4 if dtype == np.float16 else 1e30
    x = rng.standard_normal((37, n)) * 2 + 1
    x[3] = 0
    x[5] = rng.standard_normal(n) * 1e-30
    x[8] = rng.standard_normal(n) * big
    x[11] = 7.5
    x[14, n // 2] = np.nan
    x[17, 0] = np.inf
    x[20] = rng.standard_normal(n) + 1e4
    x[23] = rng.standard_normal(n) * (3e3 if dtype == np.float16 else 1e37)
    return x.astype(dtype)


SHORT_ROW_CALLS = {  # kind: (the call on (x, n, eps), the reference's; both with weight w and bias b)
    "layer": (lambda x, n, w, b, eps: normfast.layer_norm(x, n, w, b, eps=eps, return_stats=True),
              lambda x, n, w, b, eps: reference.layer_norm(x, (n,), w, b, eps=eps)),
    "layer-bare": (lambda x, n, w, b, eps: normfast.layer_norm(x, n, eps=eps, return_stats=True),
                   lambda x, n, w, b, eps: reference.layer_norm(x, (n,), eps=eps)),
    "layer-bias": (lambda x, n, w, b, eps: normfast.layer_norm(x, n, None, b, eps=eps, return_stats=True),
                   lambda x, n, w, b, eps: reference.layer_norm(x, (n,), None, b, eps=eps)),
    "rms": (lambda x, n, w, b, eps: normfast.rms_norm(x, n, w, eps=eps, return_stats=True),
            lambda x, n, w, b, eps: reference.layer_norm(x, (n,), w, eps=eps, rms=True)),
    "rms-bare": (lambda x, n, w, b, eps: normfast.rms_norm(x, n, eps=eps, return_stats=True),
                 lambda x, n, w, b, eps: reference.layer_norm(x, (n,), eps=eps, rms=True)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [2, 5, 8, 12, 16, 32, 33, 64, 65])
@pytest.mark.parametrize("kind", list(SHORT_ROW_CALLS))
@pytest.mark.parametrize("eps", [1e-5, 1e-80])
def test_short_rows_each_as_if_alone(isa, dtype, n, kind, eps):
    """Short rows, whose statistics and outputs are taken several rows at a time (one per vector lane),
    give each row exactly what it gives alone (its outputs and statistics the same bytes, whatever its
    neighbours, at 1, 2 and 3 threads), and the reference's values. eps 1e-80 gives a constant row a scale
    past float's range (the per-row path in double)."""
    call, want = SHORT_ROW_CALLS[kind]
    x = short_rows(n, dtype, n)
    w, b = np.linspace(0.5, 1.5, n), np.linspace(-1, 1, n)
    with np.errstate(all="ignore"):
        ref = want(x, n, w, b, eps)
    for threads in (1, 2, 3):
        with use_threads(threads), np.errstate(divide="ignore"):
            got = call(x, n, w, b, eps)
        for i in range(x.shape[0]):
            with np.errstate(divide="ignore"):
                alone = call(x[i:i + 1], n, w, b, eps)
            for a, g in zip(alone, got):
                assert a.tobytes() == g[i:i + 1].tobytes(), (threads, i)
    y, finite = got[0], np.isfinite(ref)
    assert_close_y(y[finite.all(axis=1)], ref[finite.all(axis=1)], dtype)
    np.testing.assert_array_equal(np.isnan(np.asarray(y, np.float64)), np.isnan(ref))  # e.g. RMS [inf, 1]: [nan, 0]
    assert_close_y(y[finite], ref[finite], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows", [1, 2, 3, 9])
def test_long_rows_shared_by_the_threads(isa, dtype, rows):
    """Rows of several statistics chunks (a chunk is 32768 elements), fewer than the threads can split among
    themselves, so that the threads share each row: against the reference, and the same bytes at 1, 2 and
    3 threads; with a large mean, which a chunk merge that lost digits would show. Group and instance norm
    share the row kernel (each group a row of channel segments)."""
    n = 7 * 14200  # three chunks and a part
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, n)) * 3 + 1000).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, n), rng.standard_normal(n)
    xg = x.reshape(rows, 7, n // 7)
    cases = {
        "layer": (lambda: normfast.layer_norm(x, n, w, b), reference.layer_norm(x, (n,), w, b)),
        "rms": (lambda: normfast.rms_norm(x, n, w), reference.layer_norm(x, (n,), w, rms=True)),
        "group": (lambda: normfast.group_norm(xg, 1, w[:7], b[:7]), reference.group_norm(xg, 1, w[:7], b[:7])),
    }
    for name, (call, ref) in cases.items():
        outs = []
        for threads in (1, 2, 3):
            with use_threads(threads):
                outs.append(call())
            assert_close_y(outs[-1], ref, x.dtype)
        assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,nshape", [((8, 768), (768,)), ((4, 5, 64), (5, 64)), ((3, 4097), (4097,))])
def test_like_torch(dtype, shape, nshape):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, nshape).astype(dtype), rng.standard_normal(nshape).astype(dtype)
    tx, tw, tb = (torch.from_numpy(v) for v in (x, w, b))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(normfast.layer_norm(x, nshape, w, b), F.layer_norm(tx, nshape, tw, tb).numpy(),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(normfast.rms_norm(x, nshape, w), F.rms_norm(tx, nshape, tw).numpy(),
                               rtol=tol, atol=tol)


def test_large_mean_rows():
    x = (1e4 + np.random.default_rng(3).standard_normal((64, 4096))).astype(np.float32)
    y = normfast.layer_norm(x, 4096).astype(np.float64)
    assert np.abs(y.mean(axis=1)).max() < 1e-3 and np.abs(y.var(axis=1) - 1).max() < 1e-3


def test_rms_norm_default_eps_is_machine_epsilon():
    x = np.zeros((2, 4), np.float32)
    x[0, 0] = 1e-4  # mean square 2.5e-9, next to float32 eps 1.19e-7
    y = normfast.rms_norm(x, 4)
    want = 1e-4 / np.sqrt(2.5e-9 + np.finfo(np.float32).eps)
    np.testing.assert_allclose(y[0, 0], want, rtol=1e-5)


# (call, {argument: value or make(kw)}, exception, message): a call of api_calls.calls() by name with the
# arguments given replaced, or layer_norm with these keyword arguments on (2, 3, 4) ones (out of 7s).
BAD = [
    ("layer_norm", {"x": lambda kw: kw["x"][..., 0]}, ValueError, "normalized_shape: expected the trailing"),
    (normfast.layer_norm, {"normalized_shape": (5,)}, ValueError, r"normalized_shape: expected the trailing dimensions"),
    ("rms_norm", {"normalized_shape": (5, 3)}, ValueError, "normalized_shape: expected the trailing"),
    ("rms_norm", {"normalized_shape": ()}, ValueError, "normalized_shape: expected at least one dimension"),
    ("layer_norm", {"normalized_shape": "2"}, TypeError, "normalized_shape: expected an int or a tuple"),
    ("layer_norm", {"normalized_shape": 2.0}, TypeError, "normalized_shape: expected an int"),
    # parameters: shape, dtype, kind
    ("layer_norm", {"weight": lambda kw: kw["weight"][:1]}, ValueError, r"weight: expected shape \(2,\)"),
    ("layer_norm_residual", {"bias": np.ones(2, np.float32)}, ValueError, r"bias: expected shape \(5, 2\)"),
    ("rms_norm", {"weight": np.ones(2, complex)}, TypeError, "weight: expected a float array"),
    # residuals
    ("layer_norm_residual", {"residual": lambda kw: kw["x"][:1]}, ValueError, "residual: expected shape"),
    ("rms_norm_residual", {"residual": lambda kw: kw["x"].astype(int)}, TypeError, "residual: expected a float"),
    ("layer_norm_residual", {"residual_out": lambda kw: read_only(kw["residual_out"])}, ValueError,
     "residual_out: the array is read-only"),
    ("rms_norm", {"residual_out": lambda kw: np.empty_like(kw["x"])}, ValueError, "residual_out: only meaningful"),
    (normfast.layer_norm, {"normalized_shape": 4, "residual_out": np.empty((2, 3, 4), np.float32)}, ValueError,
     "residual_out: only meaningful with residual"),
    # eps out of range or of the wrong type
    *[(c, {"eps": e}, ValueError, "eps: expected a number > 0" if (c, e) == ("layer_norm", 0) else "eps: expected")
      for c in ("layer_norm", "rms_norm") for e in (0, -1e-5, np.nan, np.inf)],
    *[(c, {"eps": "1e-5"}, TypeError, "eps: expected a real") for c in ("layer_norm", "rms_norm")],
    ("layer_norm", {"eps": None}, TypeError, "eps: expected a real"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    if not isinstance(call, str):
        x = np.ones((2, 3, 4), np.float32)
        change = {"x": x, "out": np.full_like(x, 7.0), **change}
    assert_refused(*bad_call(call, change), exc, match)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("where", ["new", "out", "in-place"])
def test_common_call_matches_the_full_path(dtype, rms, affine, where):
    """The binding's fast path for the common call writes the same bytes as the checked Python path."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((3, 5, 300)) + 4).astype(dtype)
    w = rng.uniform(0.5, 1.5, 300).astype(dtype) if affine else None
    b = None if rms or not affine else rng.standard_normal(300).astype(dtype)
    # RMS norm is called below with its default eps, the machine epsilon of the dtype
    eps = (2.0**-23 if dtype == np.float32 else 2.0**-52) if rms else 1e-5
    want = norms._row_norm(x.copy(), 300, w, b, eps, None, None, None, rms)
    xc = x.copy()
    out = {"new": None, "out": np.empty_like(x), "in-place": xc}[where]
    px = x.copy()  # the same call on a copy, to see that the fast path takes it
    probe_out = {"new": None, "out": np.empty_like(x), "in-place": px}[where]
    assert _normc.rownorm_common(px, (300,), w, b, eps, probe_out, rms) is not None
    y = normfast.rms_norm(xc, 300, w, out=out) if rms else normfast.layer_norm(xc, 300, w, b, out=out)
    assert out is None or y is out
    np.testing.assert_array_equal(y, want)


def test_common_call_declines_everything_else():
    x = np.ones((4, 8), np.float32)
    w32 = np.ones(8, np.float32)
    declined = [
        (x.astype(np.float16), 8, None, None, 1e-5, None),   # half types take the full path
        (x[:, ::2], 4, None, None, 1e-5, None),               # not C-contiguous
        (x.astype(">f4"), 8, None, None, 1e-5, None),         # byte-swapped
        (x, (4, 8), None, None, 1e-5, None),                  # more than one normalized dim
        (x, 7, None, None, 1e-5, None),                       # wrong length: the full path reports it
        (x, 8, np.ones(8), None, 1e-5, None),                 # float64 weight for float32 data
        (x, 8, w32[None], None, 1e-5, None),                  # weight of another shape
        (x, 8, None, None, 1, None),                          # an int eps
        (x, 8, None, None, float("nan"), None),
        (x, 8, None, None, 0.0, None),
        (x, 8, None, None, 1e-5, np.empty((4, 8))),           # out of another dtype
        (x, 8, None, None, 1e-5, np.empty((8, 4), np.float32).T),
        (x.tolist(), 8, None, None, 1e-5, None),
    ]
    for args in declined:
        assert _normc.rownorm_common(*args, False) is None, args
    big = np.ones(40, np.float32)
    with pytest.raises(ValueError, match="out: overlaps x"):
        normfast.layer_norm(big[:32].reshape(4, 8), 8, out=big[8:].reshape(4, 8))
