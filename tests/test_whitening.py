"""Whitening against a float64 eigendecomposition reference and scikit-learn's PCA(whiten=True)."""
import pickle

import numpy as np
import pytest
from sklearn.decomposition import PCA

import normfast

from helpers import assert_refused

METHODS = ["zca", "pca", "cholesky"]


def data(n=2000, d=6, seed=0, dtype=np.float64):
    """Correlated features with very different scales, far from 0."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.logspace(0, 2, d)
    return (rng.standard_normal((n, d)) @ mix + 50).astype(dtype)


@pytest.mark.parametrize("method", METHODS)
def test_training_data_becomes_white(method):
    x = data()
    y = normfast.Whitening(method, eps=0).fit_transform(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-6)


def test_zca_is_the_symmetric_inverse_square_root_and_closest_to_the_input():
    x = data(seed=1)
    w = normfast.Whitening("zca", eps=1e-5).fit(x)
    c = np.cov(x, rowvar=False)
    lam, u = np.linalg.eigh(c)  # the float64 reference
    np.testing.assert_allclose(w.whitening_, (u / np.sqrt(lam + 1e-5)) @ u.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(w.whitening_, w.whitening_.T, rtol=0, atol=1e-15)
    centred = x - x.mean(axis=0)
    dist = {m: np.linalg.norm(normfast.Whitening(m, eps=1e-5).fit_transform(x) - centred) for m in METHODS}
    assert dist["zca"] < min(dist["pca"], dist["cholesky"])


def test_pca_matches_scikit_learn_up_to_sign():
    x = data(seed=2)
    ours = normfast.Whitening("pca", eps=0).fit_transform(x)
    theirs = PCA(whiten=True).fit_transform(x)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-7, atol=1e-9)


def test_cholesky_is_lower_triangular():
    w = normfast.Whitening("cholesky").fit(data(seed=3))
    assert np.array_equal(np.tril(w.whitening_), w.whitening_)


@pytest.mark.parametrize("method", METHODS)
def test_partial_fit_equals_fit_and_inverse_transform_inverts(method):
    x = data(seed=4)
    whole = normfast.Whitening(method).fit(x)
    streamed = normfast.Whitening(method)
    for piece in np.array_split(x, 7):
        assert streamed.partial_fit(piece) is streamed
    assert streamed.n_samples_seen_ == len(x)
    for attr in ("mean_", "covariance_", "whitening_", "dewhitening_"):
        np.testing.assert_allclose(getattr(streamed, attr), getattr(whole, attr), rtol=1e-9, atol=1e-9)
    y = whole.transform(x)
    np.testing.assert_allclose(whole.inverse_transform(y), x, rtol=1e-9, atol=1e-9)


def test_dtypes_out_and_pickling():
    x = data(seed=5)
    w = normfast.Whitening().fit(x)
    assert w.transform(x).dtype == np.float64
    x32 = x.astype(np.float32)
    y32 = w.transform(x32)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, w.transform(x), rtol=1e-4, atol=1e-4)
    out = np.empty_like(y32)
    assert w.transform(x32, out=out) is out and np.array_equal(out, y32)
    assert w.transform(x.astype(np.int64)).dtype == np.float64
    back = pickle.loads(pickle.dumps(w))
    assert np.array_equal(back.transform(x), w.transform(x))
    assert w.get_params() == {"method": "zca", "eps": 1e-5}
    assert w.set_params(method="pca").method == "pca"
    with pytest.raises(ValueError, match="bogus: not a parameter"):
        w.set_params(method="zca", bogus=1)
    assert w.method == "pca"  # nothing set


@pytest.mark.parametrize("make, call, exc, match", [
    (lambda: normfast.Whitening("svd"), lambda w, x: w.fit(x), ValueError, "method: expected one of zca"),
    (lambda: normfast.Whitening(eps=-1), lambda w, x: w.fit(x), ValueError, "eps: expected a number >= 0"),
    (lambda: normfast.Whitening(eps="a"), lambda w, x: w.fit(x), TypeError, "eps: expected a real"),
    (normfast.Whitening, lambda w, x: w.fit(x[:, 0]), ValueError, "X: expected a 2-D array"),
    (normfast.Whitening, lambda w, x: w.fit(x[:1]), ValueError, "X: expected at least 2 samples"),
    (normfast.Whitening, lambda w, x: w.fit(np.where(x > 60, np.nan, x)), ValueError, "X: contains NaN"),
    (normfast.Whitening, lambda w, x: w.fit(x.astype(complex)), TypeError, "X: Complex data not supported"),
    (normfast.Whitening, lambda w, x: w.fit(np.array([["a", "b"], ["c", "d"]], object)), TypeError,
     "X: expected numbers"),
    (normfast.Whitening, lambda w, x: w.fit(x[:, :0]), ValueError, "X: found array with 0 feature"),
    (normfast.Whitening, lambda w, x: w.transform(x), ValueError, "not fitted yet"),
    (lambda: normfast.Whitening(eps=0), lambda w, x: w.fit(np.ones((5, 3))), ValueError, "singular"),
    (lambda: normfast.Whitening("cholesky", eps=0), lambda w, x: w.fit(np.ones((5, 3))), ValueError, "singular"),
])
def test_bad_input(make, call, exc, match):
    assert_refused(call, {"w": make(), "x": data(n=50)}, exc, match)


def test_errors_after_fit_change_nothing():
    x = data(n=100)
    w = normfast.Whitening().fit(x)
    before = w.whitening_.copy()
    with pytest.raises(ValueError, match="X has 5 features, but Whitening is expecting 6 features as input"):
        w.partial_fit(x[:, :5])
    with pytest.raises(ValueError, match="X has 5 features"):
        w.transform(x[:, :5])
    with pytest.raises(ValueError, match="out: expected an array of shape"):
        w.transform(x, out=np.empty((100, 6), np.float32))
    assert np.array_equal(w.whitening_, before) and w.n_samples_seen_ == 100


def test_passes_scikit_learn_estimator_checks():
    """scikit-learn's own checks of the estimator conventions (scikit-learn is a test dependency only)."""
    from sklearn.utils.estimator_checks import check_estimator

    failed = [r["check_name"] for r in check_estimator(normfast.Whitening(), on_fail=None) if r["status"] == "failed"]
    assert failed == []
