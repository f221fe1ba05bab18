"""Every merge of partial statistics against NumPy on the concatenated data (infinities and NaN in some
parts and columns, empty parts), the accumulators' state after a failed update or merge, and integer and
bool data through moments, the accumulators and Dask (reduced in float64 chunks, never copied whole)."""
import contextlib
import pickle
import tracemalloc
import warnings

import dask.array as da
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
import normfast.dask as nd
from normfast import _normc, reductions

from helpers import ISAS, use_isa, use_threads

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16]
INTEGERS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.bool_]
SPECIALS = {"none": [], "+inf": [np.inf], "-inf": [-np.inf], "both": [np.inf, -np.inf], "nan": [np.nan],
            "inf and nan": [np.inf, np.nan], "+inf twice": [np.inf, np.inf]}


def numpy_moments(x, axis, ddof=0, keepdims=False):
    """The truth: numpy.mean and numpy.var of x in float64 (their warnings and inf - inf silenced)."""
    xf = np.asarray(x).astype(np.float64)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return xf.mean(axis, keepdims=keepdims), xf.var(axis, ddof=ddof, keepdims=keepdims)


def rtol_of(dtype):
    """float32 and the half types are summed in float32 blocks by the engine; the rest in float64."""
    return 1e-12 if np.dtype(dtype) == np.float64 or np.dtype(dtype).kind in "biu" else 2e-5


def assert_close(got, want, rtol, scale=1.0):
    """Equal where the truth is inf or NaN (the same sign and kind), close elsewhere."""
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol * scale, equal_nan=True)


@contextlib.contextmanager
def chunk(n):
    """Integer data converted n elements at a time (small n exercises every chunking path on small data)."""
    before = reductions.CHUNK
    reductions.CHUNK = n
    try:
        yield
    finally:
        reductions.CHUNK = before


@contextlib.contextmanager
def no_runtime_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


# --- Infinities and NaN: every merge agrees with the statistics of the concatenation ---------------------

@st.composite
def parts_with_specials(draw):
    """(parts, dtype): 1-4 arrays of shape (rows_i, C) (some rows_i 0), each column holding none or some of
    +inf, -inf and NaN at random rows of random parts; parts maybe Fortran-ordered or strided views."""
    dtype = draw(st.sampled_from(FLOATS))
    C = draw(st.integers(1, 5))
    rows = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4).filter(lambda r: sum(r) > 0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.standard_normal((sum(rows), C)) * 3 + draw(st.sampled_from([0.0, 100.0]))
    for c in range(C):
        values = SPECIALS[draw(st.sampled_from(sorted(SPECIALS)))]
        where = draw(st.lists(st.integers(0, len(data) - 1), min_size=len(values), max_size=len(values),
                              unique=True)) if len(values) <= len(data) else []
        data[where, c] = values[:len(where)]
    parts = np.split(data.astype(dtype), np.cumsum(rows)[:-1])
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        parts = [np.asfortranarray(p) for p in parts]
    elif layout == "strided":
        parts = [np.repeat(p, 2, axis=1)[:, ::2] for p in parts]
    return parts, dtype


def check_columns(got_mean, got_var, cat, dtype, ddof=0):
    want_mean, want_var = numpy_moments(cat, 0, ddof)
    assert_close(got_mean, want_mean, rtol_of(dtype), 100.0)
    assert_close(got_var, want_var, rtol_of(dtype) * 10, 1e4)


@SETTINGS
@given(case=parts_with_specials(), order=st.randoms(use_true_random=False))
def test_running_moments_updates_and_merges_follow_numpy_on_infinities(case, order):
    parts, dtype = case
    cat = np.concatenate(parts)
    with no_runtime_warnings():
        acc = normfast.RunningMoments(axis=0)
        for p in parts:
            acc.update(p)
        check_columns(acc.mean, acc.var(), cat, dtype)
        shards = [normfast.RunningMoments(axis=0).update(p) for p in parts]
        while len(shards) > 1:  # in a random order, some with +, some in place
            i, j = sorted(order.sample(range(len(shards)), 2))
            b, a = shards.pop(j), shards.pop(i)
            shards.append(a + b if order.random() < 0.5 else a.merge(b))
        check_columns(shards[0].mean, shards[0].var(), cat, dtype)
        check_columns(*normfast.precise_batch_norm_stats(parts, channel_axis=1, unbiased=False), cat, dtype)
        r = normfast.dataset_stats(parts, channel_axis=1)
        check_columns(r.mean, r.var, cat, dtype)
    # The in-memory engine on the concatenation, the reference every merge must agree with.
    check_columns(*normfast.moments(cat, axis=0), cat, dtype)


@SETTINGS
@given(case=parts_with_specials(), split_every=st.sampled_from([None, 2, 3]), ddof=st.integers(0, 1))
def test_dask_tree_merge_follows_numpy_on_infinities(case, split_every, ddof):
    parts, dtype = case
    cat = np.concatenate(parts)
    # One chunk per part along the reduced axis, empty parts as empty chunks.
    d = da.concatenate([da.from_array(np.ascontiguousarray(p), chunks=(max(len(p), 1), 2)) for p in parts])
    with no_runtime_warnings():
        mean, var = nd.moments(d, 0, ddof=ddof, split_every=split_every)
        got = da.compute(mean, var, scheduler="sync")
    if len(cat) > ddof:
        check_columns(*got, cat, dtype, ddof)
    pm, pv = nd.precise_batch_norm_stats(d, unbiased=False)
    check_columns(pm, pv, cat, dtype)


@SETTINGS
@given(case=parts_with_specials())
def test_running_covariance_follows_numpy_on_infinities(case):
    parts, dtype = case
    cat = np.concatenate(parts).astype(np.float64)
    acc = normfast.RunningCovariance(cat.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a batch's own inf - inf, which numpy.cov warns of too
        for p in parts:
            acc.update(p)
        mean, cov = acc.mean, acc.cov(ddof=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want_cov = np.atleast_2d(np.cov(cat.T, ddof=0))
    assert_close(mean, numpy_moments(cat, 0)[0], 1e-12, 100.0)
    assert_close(cov, want_cov, 1e-9, 1e4)


@pytest.mark.parametrize("dtype", FLOATS)
def test_an_infinity_in_one_part_after_finite_ones_and_before(dtype):
    """The issue's case: +inf in one part, finite data in others, in either order and in several parts."""
    a, b = np.array([1.0, 2.0, 3.0], dtype), np.array([np.inf], dtype)
    for parts in ([a, b], [b, a], [a, b, a], [b, a, b], [a, b, np.array([-np.inf], dtype)], [a, np.array([], dtype)]):
        cat = np.concatenate(parts)
        want_mean, want_var = numpy_moments(cat, None)
        acc = normfast.RunningMoments()
        for p in parts:
            acc.update(p)
        r = normfast.dataset_stats(parts)
        got = nd.moments(da.concatenate([da.from_array(p, chunks=max(len(p), 1)) for p in parts]))
        for mean, var in [(acc.mean, acc.var()), (r.mean, r.var), da.compute(*got, scheduler="sync")]:
            assert_close(mean, want_mean, rtol_of(dtype), 3.0)
            assert_close(var, want_var, rtol_of(dtype), 3.0)


def test_dataset_stats_counts_per_element_with_infinities_in_kept_blocks(tmp_path):
    """Blocks along a kept axis land in disjoint slots (some with infinities, some not): each element's
    statistics as numpy's."""
    x = np.random.default_rng(5).standard_normal((64, 40, 3))
    x[3, 5, 0], x[60, 5, 0], x[10, 30, 2], x[11, 31, 1] = np.inf, -np.inf, np.inf, np.nan
    np.save(tmp_path / "x.npy", x)
    with no_runtime_warnings():
        r = normfast.dataset_stats([str(tmp_path / "x.npy"), x[:7]], channel_axis=(1, 2), block_bytes=1 << 10)
    check_columns(r.mean, r.var, np.concatenate([x, x[:7]]), np.float64)


# --- A failed update or merge changes nothing, and later updates work ------------------------------------

def state(acc):
    return pickle.dumps(acc.__dict__)


@contextlib.contextmanager
def failing(monkeypatch, module, name, at=1):
    """module.name raises MemoryError on its at-th call, then works again."""
    real, calls = getattr(module, name), [0]

    def fn(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            raise MemoryError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, fn)
    yield
    monkeypatch.setattr(module, name, real)


@pytest.mark.parametrize("dtype, small_chunk, at", [(np.float32, None, 1), (np.float64, None, 1),
                                                    (np.uint8, None, 1), (np.int32, 5, 3)])
@pytest.mark.parametrize("axis", [None, (0, 2), 1])
def test_failed_update_changes_nothing(monkeypatch, dtype, small_chunk, at, axis):
    rng = np.random.default_rng(0)
    first = (rng.standard_normal((2, 3, 4)) * 50).astype(dtype)
    second = (rng.standard_normal((3, 3 if axis == 1 else 5, 2)) * 50).astype(dtype)
    with chunk(small_chunk or reductions.CHUNK):
        for held in ([], [second]):  # a fresh accumulator, and one with data
            acc = normfast.RunningMoments(axis=axis)
            for p in held:
                acc.update(p)
            before = state(acc)
            with failing(monkeypatch, _normc, "moments", at), pytest.raises(MemoryError):
                acc.update(second[::-1] if held else first)
            assert state(acc) == before
            acc.update(second)  # a piece of another kept shape than the failed one is still welcome
            along = 1 if axis == 1 else 0  # a reduced axis
            want = numpy_moments(np.concatenate(held + [second], axis=along), axis)
            assert_close(acc.mean, want[0], rtol_of(dtype), 100.0)
            assert_close(acc.var(), want[1], rtol_of(dtype), 1e4)


def test_failed_merge_and_covariance_update_change_nothing(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 2
    from normfast import stats
    a, b = normfast.RunningMoments(axis=0).update(x), normfast.RunningMoments(axis=0).update(y)
    before = state(a), state(b)
    for call in (lambda: a.merge(b), lambda: a + b, lambda: a.update(y)):
        with failing(monkeypatch, stats, "fold"), pytest.raises(MemoryError):
            call()
        assert (state(a), state(b)) == before
    assert_close((a + b).mean, numpy_moments(np.concatenate([x, y]), 0)[0], 1e-12)
    empty = normfast.RunningMoments(axis=0)
    with failing(monkeypatch, _normc, "moments"), pytest.raises(MemoryError):
        empty.merge(normfast.RunningMoments(axis=0)).update(x)  # merging no data binds nothing either
    assert empty.merge(normfast.RunningMoments(axis=0).update(np.ones((2, 7)))).mean.shape == (7,)

    c, d = normfast.RunningCovariance(3).update(x), normfast.RunningCovariance(3).update(y)
    before = state(c), state(d)
    for call in (lambda: c.update(y), lambda: c.merge(d), lambda: c + d):
        with failing(monkeypatch, stats, "fold"), pytest.raises(MemoryError):
            call()
        assert (state(c), state(d)) == before
    np.testing.assert_allclose(c.update(y).cov(), np.cov(np.concatenate([x, y]).T), rtol=1e-12)


# --- Integer and bool data -------------------------------------------------------------------------------

@st.composite
def integer_views(draw):
    """(x, axis, ddof, keepdims): integer or bool data of rank 0-4 (sizes 0-6) over the dtype's whole
    range, as a contiguous, transposed, strided, reversed or byte-swapped array."""
    dtype = np.dtype(draw(st.sampled_from(INTEGERS)))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.bool_:
        x = rng.random(shape) < 0.3
    else:
        info = np.iinfo(dtype)
        lo, hi = draw(st.sampled_from([(info.min, info.max), (0, min(info.max, 255))]))
        x = rng.integers(lo, hi, shape, dtype=dtype, endpoint=True)
    layout = draw(st.sampled_from(["C", "T", "strided", "reversed", "swapped"]))
    if layout == "T":
        x = x.T
    elif layout == "strided" and ndim:
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout == "reversed" and ndim:
        x = x[::-1]
    elif layout == "swapped":
        x = x.astype(dtype.newbyteorder(">" if dtype.byteorder != ">" else "<"))
    kind = draw(st.sampled_from(["none", "int", "tuple", "empty"])) if ndim else "none"
    if kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    elif kind == "tuple":
        axis = tuple(draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)))
    else:
        axis = () if kind == "empty" else None
    return x, axis, draw(st.integers(0, 2)), draw(st.booleans())


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=integer_views(), size=st.sampled_from([1, 3, 7, 50, 1 << 20]))
def test_integer_moments_equal_numpy_in_float64(isa, case, size):
    x, axis, ddof, keepdims = case
    want = numpy_moments(x, axis, ddof, keepdims)
    with chunk(size), use_isa(isa), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty slices and ddof >= N: NaN or inf as numpy
        got = normfast.moments(x, axis, ddof=ddof, keepdims=keepdims)
    scale = float(np.abs(x.astype(np.float64)).max(initial=1.0))
    for g, w, s in zip(got, want, (scale, scale * scale)):
        assert np.shape(g) == np.shape(w) and np.asarray(g).dtype == np.float64
        assert isinstance(g, np.ndarray) == isinstance(w, np.ndarray)  # NumPy scalars where numpy gives them
        assert_close(g, w, 1e-12, s)


@SETTINGS
@given(case=integer_views(), size=st.sampled_from([1, 5, 1 << 20]))
def test_integer_pieces_through_the_accumulators_and_dask(case, size):
    x, axis, _, _ = case
    if x.ndim == 0 or x.shape[0] == 0 or axis == ():
        return
    red = tuple(range(x.ndim)) if axis is None else tuple(sorted(a % x.ndim for a in np.atleast_1d(axis)))
    if 0 not in red:
        red = red + (0,)
    want = numpy_moments(x, red)
    scale = float(np.abs(x.astype(np.float64)).max(initial=1.0))
    with chunk(size):
        acc = normfast.RunningMoments(axis=red)
        for p in np.array_split(x, 3):
            acc.update(p)
        d = da.from_array(x, chunks=tuple(max(1, n // 2) for n in x.shape))
        got = da.compute(*nd.moments(d, red), scheduler="sync")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no data (a reduced axis of size 0): NaN as numpy
        results = [(acc.mean, acc.var()), got]
    for mean, var in results:
        assert np.asarray(mean).dtype == np.float64
        assert_close(mean, want[0], 1e-12, scale)
        assert_close(var, want[1], 1e-12, scale * scale)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_integer_chunks_give_the_same_for_any_thread_count(threads):
    x = np.random.default_rng(4).integers(-1000, 1000, (37, 5, 29), np.int32).transpose(2, 0, 1)[:, ::2]
    for axis in [None, (0, 2), 1, (1, 2)]:
        want = numpy_moments(x, axis, 1)
        with chunk(40), use_threads(threads):
            got = normfast.moments(x, axis, ddof=1)
        for g, w in zip(got, want):
            assert_close(g, w, 1e-12, 1e6)


def test_integers_empty_reductions_warn_and_give_nan():
    with pytest.warns(RuntimeWarning, match="empty"):
        mean, var = normfast.moments(np.zeros((0, 3), np.uint8), axis=0)
    assert mean.dtype == np.float64 and np.isnan(mean).all() and np.isnan(var).all()
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        assert np.isinf(normfast.moments(np.array([1, 2], np.int16), ddof=2)[1])  # 1 / 0, as numpy.var
    assert normfast.moments(np.int64(5)) == (5.0, 0.0)
    assert normfast.moments([1, 2, 3, 4]) == (2.5, 1.25)
    assert normfast.moments(np.array([True, False, True, True])) == (0.75, 0.1875)


def test_large_integers_are_converted_as_numpy_converts_them():
    x = np.array([2**63 - 1, 2**63 - 2, 2**62], np.int64)
    np.testing.assert_array_equal(normfast.moments(x), numpy_moments(x, None))
    u = np.array([2**64 - 1, 0, 2**53 + 1], np.uint64)
    np.testing.assert_array_equal(normfast.moments(u)[0], numpy_moments(u, None)[0])


@pytest.mark.parametrize("bad", [np.ones(3, complex), np.array([2**70, 1], object), np.array(["a", "b"]),
                                 np.array([1, 2, 3], "datetime64[D]")])
def test_other_kinds_are_refused_everywhere(bad):
    match = "x: expected a float .*integer or bool array, got dtype"
    for call in (normfast.moments, normfast.RunningMoments().update,
                 lambda b: nd.moments(da.from_array(b, chunks=2))):
        with pytest.raises(TypeError, match=match):
            call(bad)


def test_dataset_stats_takes_bool_data():
    x = np.random.default_rng(2).random((50, 4)) < 0.4
    r = normfast.dataset_stats([x, x[:3]], channel_axis=1)
    want = numpy_moments(np.concatenate([x, x[:3]]), 0)
    assert_close(r.mean, want[0], 1e-12)
    assert_close(r.var, want[1], 1e-12)
    np.testing.assert_array_equal(r.max, x.max(axis=0))


def test_a_large_uint8_batch_is_never_converted_whole():
    """(500, 3, 224, 224) uint8 is 75 MB, 602 MB in float64: the extra memory stays near one chunk."""
    x = np.random.default_rng(3).integers(0, 256, (500, 3, 224, 224), dtype=np.uint8)
    bound = 3 * reductions.CHUNK * 8
    for call in (lambda: normfast.moments(x, axis=(0, 2, 3)), lambda: normfast.moments(x[:, :, ::-1].T),
                 lambda: normfast.RunningMoments(axis=(0, 2, 3)).update(x).var(),
                 lambda: normfast.moments(x, (0, 1))):
        tracemalloc.start()
        try:
            call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < bound, f"{peak / 2**20:.0f} MiB"
    small = x[:20]
    mean, var = normfast.moments(small, axis=(0, 2, 3))
    want = numpy_moments(small, (0, 2, 3))
    assert_close(mean, want[0], 1e-12, 255.0)
    assert_close(var, want[1], 1e-12, 255.0**2)


# --- merges keep the digits of a tiny spread on a large mean (the engine's shifted frames) ---------------

def _exact(x, axis):
    """float64 mean and variance of x's exact values, the variance about the first element (exact for
    values of one magnitude), so that the mean's size costs no digits."""
    x = np.asarray(x, np.float64)
    first = x.take([0], axis=axis) if axis is not None else x.reshape(-1)[0]
    d = x - first
    return first.squeeze(axis) if axis is not None else first, np.var(d, axis=axis), np.mean(d, axis=axis)


@pytest.mark.parametrize("mean,std", [(1.0, 1e-10), (-3e5, 1e-9), (1e100, 1e90), (7.0, 1.0)])
@pytest.mark.parametrize("parts", [1, 2, 7])
def test_merges_keep_a_tiny_spread(mean, std, parts):
    """RunningMoments (update, merge, +), precise_batch_norm_stats, dataset_stats and normfast.dask
    agree with the exact variance to float64 rounding, where merging absolute means lost ~1e-8."""
    rng = np.random.default_rng(parts)
    x = mean + std * rng.standard_normal((3000, 3))
    first, var, dmean = _exact(x, 0)
    pieces = np.array_split(x, parts)
    acc = normfast.RunningMoments(0)
    for p in pieces:
        acc.update(p)
    merged = normfast.RunningMoments(0)
    for p in pieces:
        merged = merged + normfast.RunningMoments(0).update(p)
    got = {
        "update": acc.var(),
        "merge": merged.var(),
        "precise": normfast.precise_batch_norm_stats([p.T[None] for p in pieces], channel_axis=1, unbiased=False)[1],
        "dataset": normfast.dataset_stats(pieces, channel_axis=1).var,
        "dask": nd.moments(da.from_array(x, chunks=(len(x) // parts + 1, 2)), 0)[1].compute(),
    }
    for name, v in got.items():
        np.testing.assert_allclose(v, var, rtol=1e-13, err_msg=name)
    np.testing.assert_allclose(acc.mean - first, dmean, rtol=1e-9, atol=4 * np.spacing(np.abs(first)).max())
