"""normfast.moments against the float64 two-pass reference, under every ISA level this CPU runs."""
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
from normfast import reference

from helpers import ISAS, assert_refused, bad_call, case_ids, tolerance, use_isa, use_threads

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


@st.composite
def cases(draw):
    """A strided (possibly reversed, transposed) view of random data, an axis spec, ddof, keepdims."""
    ndim = draw(st.integers(0, 4))
    # Mostly small sizes (not multiples of any vector width, 1, 0), sometimes long enough to cross the
    # engine's block and direct-row thresholds.
    size = st.one_of(st.integers(0, 13), st.integers(14, 70), st.sampled_from([255, 256, 2047, 2049, 3001]))
    shape = draw(st.lists(size, min_size=ndim, max_size=ndim).filter(
        lambda s: np.prod([max(n, 1) for n in s]) <= 60_000))
    steps = draw(st.lists(st.sampled_from([1, 1, 2, -1, -3]), min_size=ndim, max_size=ndim))
    perm = draw(st.permutations(range(ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    offset = draw(st.sampled_from([0.0, 3.0, -250.0, 1e3]))
    scale = draw(st.sampled_from([1.0, 1e-2, 30.0]))
    seed = draw(st.integers(0, 2**32 - 1))

    base_shape = [n * abs(s) + 1 for n, s in zip(shape, steps)]
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(base_shape) * scale + offset).astype(dtype)
    view = base[tuple(slice(None, None, s) if s > 0 else slice(None, None, s) for s in steps)]
    view = view[tuple(slice(0, n) for n in shape)].transpose(perm)

    kind = draw(st.sampled_from(["none", "int", "tuple"])) if ndim else "none"
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    else:
        chosen = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
        axis = tuple(a - ndim if draw(st.booleans()) else a for a in chosen)
    ddof = draw(st.sampled_from([0, 1, 2.5]))
    return view, axis, ddof, draw(st.booleans())


def check_against_reference(x, axis, ddof, keepdims):
    mean, var = normfast.moments(x, axis, ddof=ddof, keepdims=keepdims)
    ref_mean, ref_var = reference.moments(x, axis, ddof=ddof, keepdims=keepdims)
    want = np.float64 if x.dtype == np.float64 else np.float32
    assert mean.dtype == want and var.dtype == want
    assert np.shape(mean) == np.shape(ref_mean) and np.shape(var) == np.shape(ref_var)
    if np.ndim(mean) == 0:
        assert isinstance(mean, np.generic) and isinstance(var, np.generic)
    tol = tolerance(x.dtype)
    data = np.asarray(x, dtype=np.float64)
    big = float(np.max(np.abs(data))) if data.size else 1.0
    spread = float(np.nanmax(np.where(np.isfinite(ref_var), ref_var, 0), initial=0.0))
    np.testing.assert_allclose(mean, ref_mean, rtol=tol, atol=tol * big)
    np.testing.assert_allclose(var, ref_var, rtol=tol, atol=tol * spread)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.filterwarnings("ignore:normfast.moments")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_matches_reference(isa, case):
    with use_isa(isa):
        check_against_reference(*case)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape,axis",
    [
        ((4096, 1000), 0),
        ((4096, 1000), 1),
        ((1000, 300), None),
        ((16, 24, 9, 9), (0, 2, 3)),  # batch norm, NCHW
        ((16, 9, 9, 24), (0, 1, 2)),  # batch norm, channels last
        ((16, 24, 9, 9), (1, 2, 3)),  # layer norm
        ((4, 6, 5, 33), (2, 3)),  # instance norm, NCHW
        ((4, 40, 3), (1,)),  # instance norm, channels last, three channels
        ((3, 70001), 1),  # rows longer than a chunk
        ((4, 30, 30, 16, 2), (1, 2, 4)),  # group norm, channels last: short rows as columns
    ],
)
def test_layouts(isa, dtype, shape, axis):
    """The reduction patterns of the normalization layers, at sizes where the threaded paths run."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    with use_isa(isa):
        check_against_reference(x, axis, 0, False)
        check_against_reference(np.asfortranarray(x), axis, 1, True)


@pytest.mark.parametrize("isa", ISAS)
def test_large_offset_accuracy(isa):
    """float32 1e5 + N(0, 1), 4M elements: the naive E[x^2] - E[x]^2 cannot get within 1e-4."""
    rng = np.random.default_rng(0)
    x = (1e5 + rng.standard_normal(4 * 1024 * 1024)).astype(np.float32)
    _, ref_var = reference.moments(x)
    naive = float(np.mean(x * x, dtype=np.float32) - np.mean(x, dtype=np.float32) ** 2)
    assert abs(naive - ref_var) / ref_var > 1e-4  # the test can tell a bad algorithm apart
    with use_isa(isa):
        for axis in (None, 0):
            _, var = normfast.moments(x, axis)
            assert abs(float(var) - ref_var) / ref_var <= 1e-4
        _, var = normfast.moments(x.reshape(2048, 2048), axis=0)
        _, ref_cols = reference.moments(x.reshape(2048, 2048), axis=0)
        assert np.max(np.abs(var - ref_cols) / ref_cols) <= 1e-4


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize(
    "shape,axis",
    [((3000, 700), 0), ((700, 3000), 1), ((1100, 900), None), ((8, 50, 333), (0, 2)), ((5, 300000), 1),
     ((20000, 6), 1), ((4, 3000, 8, 2), (1, 3))],  # the last two: short rows run as columns
)
def test_bit_identical_across_threads(isa, dtype, shape, axis):
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    with use_isa(isa):
        runs = []
        for n in (1, 2, 3, 8):
            with use_threads(n):
                runs.append(normfast.moments(x, axis))
    for mean, var in runs[1:]:
        assert mean.tobytes() == runs[0][0].tobytes()
        assert var.tobytes() == runs[0][1].tobytes()


def test_strided_views_are_not_copied():
    base = np.random.default_rng(3).standard_normal((2048, 2048)).astype(np.float32)
    view = base[::-2, 1::2].T  # reversed, strided and transposed: 4 MiB of data
    tracemalloc.start()
    try:
        mean, var = normfast.moments(view, axis=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < view.nbytes // 8
    ref_mean, ref_var = reference.moments(view, axis=1)
    np.testing.assert_allclose(mean, ref_mean, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(var, ref_var, rtol=2e-5)


def test_edge_values():
    assert normfast.moments(np.float32(3.5)) == (np.float32(3.5), np.float32(0.0))
    mean, var = normfast.moments(np.array([[1.0, np.inf], [2.0, 5.0]]), axis=0)
    assert mean[0] == 1.5 and mean[1] == np.inf and var[0] == 0.25 and np.isnan(var[1])
    mean, var = normfast.moments(np.array([1.0, np.nan, 2.0], np.float32))
    assert np.isnan(mean) and np.isnan(var)
    with pytest.warns(RuntimeWarning, match="empty"):
        mean, var = normfast.moments(np.ones((3, 0, 2)), axis=1)
    assert mean.shape == (3, 2) and np.isnan(mean).all() and np.isnan(var).all()
    with pytest.warns(RuntimeWarning, match="empty"):
        mean, var = normfast.moments(np.ones((3, 0), np.float32), axis=1)
    assert mean.shape == (3,) and np.isnan(mean).all() and np.isnan(var).all()
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        _, var = normfast.moments(np.array([1.0, 2.0]), ddof=2)
    assert var == np.inf
    mean, var = normfast.moments(np.zeros((5, 0)), axis=0)
    assert mean.shape == (0,)
    # big-endian and misaligned inputs are read correctly (through a native copy)
    be = np.arange(10, dtype=">f8")
    assert normfast.moments(be) == reference.moments(be)
    raw = np.zeros(4 * 9 + 1, np.uint8)[1:].view(np.float32)
    raw[:] = np.arange(9)
    np.testing.assert_allclose(normfast.moments(raw), (4.0, 60.0 / 9), rtol=1e-7)


# (call, {argument: value}, exception, message): a call of api_calls.calls() by name with the arguments
# given replaced, or moments with these keyword arguments.
BAD = [
    (normfast.moments, {"x": np.ones(3, complex)}, TypeError,
     "x: expected a float .*, integer or bool array, got dtype complex128"),
    (normfast.moments, {"x": np.array([1, 2, 3], "datetime64[s]")}, TypeError, "x: expected a float .* got dtype datetime64"),
    (normfast.moments, {"x": np.array([1, 2, 3], "timedelta64[s]")}, TypeError, "got dtype timedelta64"),
    (normfast.moments, {"x": np.ones(3, np.longdouble)}, TypeError, "x: expected a float .* got dtype float128"),
    (normfast.moments, {"x": np.array([1.0, "a"], object)}, TypeError, "got dtype object"),
    ("moments", {"axis": 4}, np.exceptions.AxisError, "axis: axis 4 is out of range"),
    (normfast.moments, {"x": np.ones((2, 3)), "axis": -3}, ValueError, "out of range"),
    ("moments", {"axis": (1, -3)}, ValueError, "axis: axis 1 is repeated"),
    ("moments", {"axis": 1.0}, TypeError, "axis: expected None, an int"),
    ("moments", {"ddof": "1"}, TypeError, "ddof: expected a real number"),
    (normfast.moments, {"x": np.ones((2, 3)), "ddof": np.nan}, ValueError, "ddof: expected a finite"),
    ("moments", {"keepdims": 1}, TypeError, "keepdims: expected True or False"),
    (normfast.moments, {"x": np.ones((2, 3)), "keepdims": "yes"}, TypeError, "keepdims: expected True or False"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    assert_refused(*bad_call(call, change), exc, match)


def test_from_python_threads():
    """Concurrent calls (the GIL is released inside) give the same results as serial ones."""
    from concurrent.futures import ThreadPoolExecutor

    xs = [np.random.default_rng(i).standard_normal((512, 777)).astype(np.float32) for i in range(8)]
    serial = [normfast.moments(x, axis=0) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda x: normfast.moments(x, axis=0), xs))
    for (m1, v1), (m2, v2) in zip(serial, parallel):
        assert np.array_equal(m1, m2) and np.array_equal(v1, v2)
