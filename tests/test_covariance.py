"""RunningCovariance against the float64 two-pass reference and NumPy, over random splits and merges."""
import pickle

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
from normfast import reference

from helpers import assert_refused


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 300), d=st.integers(1, 12), parts=st.integers(1, 6), far=st.booleans(),
       dtype=st.sampled_from([np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int32]),
       seed=st.integers(0, 2**32 - 1))
def test_pieces_and_merges_give_the_covariance_of_the_whole(n, d, parts, far, dtype, seed):
    offset = (1e6 if np.dtype(dtype).itemsize > 2 else 300.0) if far else 0.0  # halves overflow at 65504
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    x = (rng.standard_normal((n, d)) @ mix * 3 + offset).astype(dtype)
    cuts = np.sort(rng.integers(0, n + 1, parts - 1))
    pieces = np.split(x, cuts)
    one = normfast.RunningCovariance(d)
    for p in pieces:
        one.update(p)
    merged = sum((normfast.RunningCovariance(d).update(p) for p in pieces), normfast.RunningCovariance(d))
    want = reference.covariance(x)
    scale = np.abs(want).max()
    for acc in (one, merged):
        assert acc.count == n
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(acc.mean, x64.mean(axis=0), rtol=1e-12, atol=1e-12 * max(1.0, np.abs(x64).max()))
        np.testing.assert_allclose(acc.cov(), want, rtol=1e-9, atol=1e-9 * scale)
        np.testing.assert_allclose(acc.cov(ddof=0), want * (n - 1) / n, rtol=1e-9, atol=1e-9 * scale)
        assert np.array_equal(acc.cov(), acc.cov().T)


def test_matches_numpy_and_keeps_precision_far_from_zero():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 4)) * 0.5 + 1e9  # E[xy] - E[x]E[y] loses every digit here
    acc = normfast.RunningCovariance(4)
    for p in np.array_split(x, 13):
        acc.update(p)
    want = np.cov(x, rowvar=False)
    np.testing.assert_allclose(acc.cov(), want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
    np.testing.assert_allclose(acc.corr(), np.corrcoef(x, rowvar=False), rtol=1e-6, atol=1e-7)
    assert np.all(np.diag(acc.corr()) == 1)


def test_single_samples_pickling_and_copies():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 3))
    acc = normfast.RunningCovariance(3)
    for row in x:
        acc.update(row)
    np.testing.assert_allclose(acc.cov(), np.cov(x, rowvar=False), rtol=1e-12)
    back = pickle.loads(pickle.dumps(acc))
    assert back.count == 20 and np.array_equal(back.cov(), acc.cov())
    total = acc + back
    assert total.count == 40 and acc.count == 20  # + makes a new accumulator
    acc += back
    assert acc.count == 40


def test_empty_and_degenerate():
    acc = normfast.RunningCovariance(2)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(acc.mean).all()
    with pytest.warns(RuntimeWarning):
        assert np.isnan(acc.cov()).all()
    acc.update(np.zeros((0, 2)))
    assert acc.count == 0
    acc.update([[1.0, 5.0]])
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        acc.cov()
    acc.update([[2.0, 5.0]])
    with pytest.warns(RuntimeWarning, match="constant feature"):
        r = acc.corr()
    assert r[0, 0] == 1 and np.isnan(r[1]).all()


@pytest.mark.parametrize("call, exc, match", [
    (lambda a: a.update(np.ones((3, 4))), ValueError, r"x: expected shape \(n_samples, 3\)"),
    (lambda a: a.update(np.ones((2, 3, 1))), ValueError, r"x: expected shape \(n_samples, 3\)"),
    (lambda a: a.update(["a", "b", "c"]), TypeError, "x: expected a float"),
    (lambda a: a.update(np.ones((2, 3), complex)), TypeError, "x: expected a float"),
    (lambda a: a.merge(normfast.RunningCovariance(4)), ValueError, "other: expected an accumulator of 3 features"),
    (lambda a: a.merge(normfast.RunningMoments()), TypeError, "other: expected a RunningCovariance"),
    (lambda a: a.cov(ddof="1"), TypeError, "ddof: expected a real"),
])
def test_bad_input_changes_nothing(call, exc, match):
    acc = normfast.RunningCovariance(3).update(np.arange(12.0).reshape(4, 3) ** 2)
    assert_refused(call, {"a": acc}, exc, match)
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises((TypeError, ValueError), match="n_features"):
            normfast.RunningCovariance(bad)


def test_running_covariance_too_many_features_is_named():
    with pytest.raises(ValueError, match="n_features: "):
        normfast.RunningCovariance(10**400)
    with pytest.raises(ValueError, match="n_features: "):
        normfast.RunningCovariance(2**40)
