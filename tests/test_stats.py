"""RunningMoments and precise_batch_norm_stats against the float64 reference on random splits."""
import multiprocessing
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
from normfast import reference

from helpers import ISAS, assert_refused, bad_call, case_ids, use_isa

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_stats(acc, data, axis, rtol):
    mean, var = reference.moments(data, axis=axis)
    _, var1 = reference.moments(data, axis=axis, ddof=1)
    n = data.size // max(np.asarray(mean).size, 1)
    assert acc.count == n
    scale = max(1.0, float(np.abs(mean).max(initial=0)))
    np.testing.assert_allclose(acc.mean, mean, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(acc.var(), var, rtol=rtol, atol=rtol * scale**2 * 1e-6)
    with warnings.catch_warnings():  # one sample: no unbiased variance, NaN as in numpy
        warnings.simplefilter("ignore" if n <= 1 else "error", RuntimeWarning)
        np.testing.assert_allclose(acc.std(ddof=1), np.sqrt(var1), rtol=rtol, atol=rtol * scale * 1e-3)
    assert np.asarray(acc.mean).dtype == np.float64


@st.composite
def split_data(draw):
    """(data, axis, pieces): data of rank 1-4, the reduced axes, and data cut into consecutive pieces
    (sizes from 1 up) along one reduced axis, each piece possibly a strided view."""
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 100.0, -1e4]))
    data = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    reduced = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    axis = None if len(reduced) == ndim and draw(st.booleans()) else tuple(reduced)
    along = draw(st.sampled_from(reduced))
    cuts = sorted(draw(st.lists(st.integers(0, shape[along]), max_size=4)))
    pieces = np.split(data, cuts, axis=along)
    if draw(st.booleans()):  # the same values through strided views
        pieces = [np.flip(np.repeat(p, 2, axis=0)[::2], axis=0)[::-1] for p in pieces]
    return data, axis, pieces


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=split_data())
def test_updates_equal_moments_of_the_concatenation(isa, case):
    data, axis, pieces = case
    acc = normfast.RunningMoments(axis=axis)
    with use_isa(isa):
        for p in pieces:
            assert acc.update(p) is acc
    # float64 data: the bound; narrower dtypes are exact in float64 too, the engine sums float32
    # blocks in float32.
    assert_stats(acc, data, axis, 1e-6 if data.dtype in (np.float64, np.int32) else 2e-5)


@SETTINGS
@given(case=split_data(), order=st.randoms(use_true_random=False))
def test_merging_shards_in_any_order(case, order):
    data, axis, pieces = case
    shards = [normfast.RunningMoments(axis=axis).update(p) for p in pieces]
    while len(shards) > 1:  # merge random pairs, some with + (new accumulator), some in place
        i, j = sorted(order.sample(range(len(shards)), 2))
        b = shards.pop(j)
        a = shards.pop(i)
        before = (a.count, b.count)
        merged = a + b if order.random() < 0.5 else a.merge(b)
        assert b.count == before[1]
        shards.append(merged)
    assert_stats(shards[0], data, axis, 1e-6 if data.dtype in (np.float64, np.int32) else 2e-5)


def test_batches_of_one_sample():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((257, 5)) + 7
    acc = normfast.RunningMoments(axis=0)
    for row in x:
        acc.update(row[None])
    assert_stats(acc, x, 0, 1e-6)


def test_large_offset_is_exact():
    """E[x^2] - E[x]^2 would lose every digit here; Chan's merge of shifted moments loses none."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1000, 3)) + 1e8
    acc = normfast.RunningMoments(axis=0)
    for piece in np.array_split(x, 37):
        acc.update(piece)
    assert_stats(acc, x, 0, 1e-6)


def test_plus_returns_a_new_accumulator():
    a = normfast.RunningMoments(axis=0).update(np.ones((3, 2)))
    b = normfast.RunningMoments(axis=0).update(np.zeros((1, 2)))
    c = a + b
    assert (a.count, b.count, c.count) == (3, 1, 4)
    np.testing.assert_allclose(c.mean, [0.75, 0.75])
    a += b
    assert a.count == 4
    assert (normfast.RunningMoments(axis=0) + a).count == 4  # an empty accumulator takes the other's shape


def _shard_stats(shard):
    """Runs in a worker process: the accumulator of one shard, sent back pickled."""
    import normfast as nf

    return pickle.dumps(nf.RunningMoments(axis=(0, 2)).update(shard))


def test_shards_from_separate_processes():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((40, 3, 50)) * 2 - 5).astype(np.float32)
    shards = np.array_split(x, [5, 6, 25])
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = [pickle.loads(p) for p in pool.map(_shard_stats, shards)]
    total = normfast.RunningMoments(axis=(0, 2))
    for p in parts:
        total.merge(p)
    assert_stats(total, x, (0, 2), 2e-5)
    again = pickle.loads(pickle.dumps(total))
    np.testing.assert_array_equal(again.var(), total.var())


def test_integer_and_boolean_data():
    img = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    acc = normfast.RunningMoments(axis=(0, 2, 3)).update(img).update(img > 40)
    data = np.concatenate([img, (img > 40).astype(np.uint8)])
    assert_stats(acc, data, (0, 2, 3), 1e-12)


def test_empty_and_degenerate():
    acc = normfast.RunningMoments()
    with pytest.warns(RuntimeWarning, match="empty"):
        assert np.isnan(acc.mean)
    acc.update(np.empty((0, 3)))
    assert acc.count == 0
    acc.update([2.0])
    assert acc.mean == 2.0 and acc.var() == 0.0
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        assert np.isnan(acc.var(ddof=1))  # 0 / 0, as numpy.var
    with pytest.raises(ValueError, match="no data yet"):
        normfast.RunningMoments(axis=1).mean
    shaped = normfast.RunningMoments(axis=0).update(np.empty((0, 3)))
    with pytest.warns(RuntimeWarning, match="empty"):
        assert np.isnan(shaped.mean).all() and shaped.mean.shape == (3,)


@pytest.mark.parametrize("call, error, match", [
    (lambda a: a.update(np.ones((2, 4))), ValueError, "x: expected the kept axes to have shape"),
    (lambda a: a.update(np.ones((2, 3, 1))), ValueError, "x: expected an array of rank 2"),
    (lambda a: a.update(np.array(["a", "b"])), TypeError, "x: expected a float"),
    (lambda a: a.update(np.ones(3, complex)), TypeError, "x: expected a float"),
    (lambda a: a.merge(normfast.RunningMoments(axis=1).update(np.ones((2, 3)))), ValueError, "other: expected"),
    (lambda a: a.merge(normfast.RunningMoments(axis=0).update(np.ones((2, 4)))), ValueError, "other: expected"),
    (lambda a: a.merge(normfast.RunningMoments(axis=(0, 1))), ValueError, "other: expected"),
    (lambda a: a.merge(normfast.RunningMoments()), ValueError, "other: expected"),
    (lambda a: a.merge(np.ones(3)), TypeError, "other: expected a RunningMoments"),
    (lambda a: a.var(ddof="1"), TypeError, "ddof"),
])
def test_bad_input_changes_nothing(call, error, match):
    acc = normfast.RunningMoments(axis=-2).update(np.arange(6.0).reshape(2, 3))
    assert_refused(call, {"a": acc}, error, match)


def test_bad_axis():
    with pytest.raises(TypeError, match="axis"):
        normfast.RunningMoments(axis=1.5)
    with pytest.raises(np.exceptions.AxisError, match="axis"):
        normfast.RunningMoments(axis=2).update(np.ones((2, 2)))
    with pytest.raises(ValueError, match="repeated"):
        normfast.RunningMoments(axis=(0, -2)).update(np.ones((2, 2)))


@st.composite
def batch_lists(draw):
    """Batches of rank 2-4 that agree on the channel count along `axis` and differ in every other size."""
    ndim = draw(st.integers(2, 4))
    axis = draw(st.sampled_from([1, -1] if ndim > 2 else [1]))
    C = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        shape = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
        shape[axis] = C
        batches.append((rng.standard_normal(shape) + 3).astype(draw(st.sampled_from([np.float32, np.float64]))))
    return batches, axis


@SETTINGS
@given(case=batch_lists(), unbiased=st.booleans())
def test_precise_batch_norm_stats(case, unbiased):
    batches, axis = case
    # The reference: every value of each channel in one column, then the two-pass moments.
    cols = np.concatenate([np.moveaxis(b, axis, -1).reshape(-1, b.shape[axis]).astype(np.float64) for b in batches])
    if cols.shape[0] <= unbiased:
        with pytest.raises(ValueError, match="batches: expected more than"):
            normfast.precise_batch_norm_stats(iter(batches), channel_axis=axis, unbiased=unbiased)
        return
    mean, var = normfast.precise_batch_norm_stats(iter(batches), channel_axis=axis, unbiased=unbiased)
    ref_mean, ref_var = reference.moments(cols, axis=0, ddof=int(unbiased))
    assert mean.dtype == var.dtype == np.float64 and mean.shape == (batches[0].shape[axis],)
    np.testing.assert_allclose(mean, ref_mean, rtol=2e-6)
    np.testing.assert_allclose(var, ref_var, rtol=2e-5)


def test_precise_stats_match_torch_batch_norm_statistics():
    """One whole-set batch through PyTorch's BatchNorm with momentum=None (cumulative average of one batch)
    gives the exact mean and unbiased variance."""
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((n, 6, 5, 5)).astype(np.float32) + 2 for n in (4, 9, 1, 7)]
    bn = torch.nn.BatchNorm2d(6, momentum=None)
    bn(torch.from_numpy(np.concatenate(batches)))
    mean, var = normfast.precise_batch_norm_stats(batches)
    np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-5)


# (call, {argument: value or make(kw)}, exception, message): a call of api_calls.calls() by name with the
# arguments given replaced, or precise_batch_norm_stats with these keyword arguments.
PRECISE = normfast.precise_batch_norm_stats
BAD = [
    (PRECISE, {"batches": []}, ValueError, "batches: expected at least one batch"),
    (PRECISE, {"batches": 5}, TypeError, "batches: expected an iterable"),
    (PRECISE, {"batches": [np.ones((2, 3)), np.ones((2, 4))]}, ValueError, r"batches\[1\]: expected the kept axes"),
    (PRECISE, {"batches": [np.ones((2, 3)), np.ones((2, 3, 1))]}, ValueError,
     r"batches\[1\]: expected an array of rank 2"),
    (PRECISE, {"batches": [np.ones(3)]}, ValueError, "rank >= 2"),
    ("precise_batch_norm_stats", {"x": lambda kw: kw["x"][0, 0, 0]}, ValueError, "rank >= 2"),
    ("RunningMoments", {"axis": 4}, np.exceptions.AxisError, "axis: axis 4 is out of range"),
    ("precise_batch_norm_stats", {"channel_axis": 4}, np.exceptions.AxisError, "channel_axis: axis 4 is out of range"),
    ("RunningMoments", {"axis": 1.0}, TypeError, "axis: expected"),
    ("precise_batch_norm_stats", {"channel_axis": 1.0}, TypeError, "channel_axis: expected"),
    ("precise_batch_norm_stats", {"unbiased": 1}, TypeError, "unbiased: expected True or False"),
    (PRECISE, {"batches": [np.ones((1, 3))]}, ValueError, "more than 1 value"),
    ("precise_batch_norm_stats", {"x": lambda kw: kw["x"][:0]}, ValueError, "batches: expected more than 1 value"),
    ("RunningMoments", {"more": lambda kw: kw["x"][:, :2]}, ValueError, "x: expected the kept axes to have shape"),
    ("RunningMoments", {"more": lambda kw: kw["x"][0]}, ValueError, "x: expected an array of rank 4"),
    ("RunningMoments", {"more": np.ones(3, complex)}, TypeError, "x: expected a float"),
    ("RunningMoments_merge", {"other_axis": (0, 1)}, ValueError, "other: expected an accumulator over axis"),
    ("RunningMoments_merge", {"other_axis": None}, ValueError, "other: expected an accumulator over axis"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    assert_refused(*bad_call(call, change), exc, match)
