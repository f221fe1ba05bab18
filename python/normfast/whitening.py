"""Whitening: zero mean, identity covariance, fitted in one pass (or streamed) with RunningCovariance.

Following scikit-learn's estimator conventions: the constructor stores its parameters, `fit` and
`partial_fit` return self, fitted attributes end in an underscore."""
import numpy as np

from . import _checks
from .stats import RunningCovariance, _data

__all__ = ["Whitening"]


class _DataError(TypeError, ValueError):
    """Data of a kind that is not supported: a TypeError, as normfast raises for a wrong dtype, and a
    ValueError, as scikit-learn's estimators raise."""


METHODS = ("zca", "pca", "cholesky")


class Whitening:
    """y = (x - mean_) @ whitening_.T, so that the training data's covariance (ddof=1, as numpy.cov and
    scikit-learn's PCA) becomes the identity; eps is added to the covariance's eigenvalues (or diagonal,
    for cholesky) first, which keeps near-constant directions finite.

    Methods: "zca" (Mahalanobis) whitening, W = C^-1/2, the symmetric solution, whose output stays
    closest to the centred input; "pca", W = diag(1/sqrt(lambda)) U^T, the principal components scaled
    to unit variance in order of decreasing variance (scikit-learn's PCA(whiten=True), up to sign);
    "cholesky", W = L^-1 with C = L L^T, lower triangular.

    Fitted attributes: n_features_in_, n_samples_seen_, mean_, covariance_, whitening_ and its inverse
    dewhitening_ (inverse_transform)."""

    def __init__(self, method="zca", eps=1e-5):
        self.method = method
        self.eps = eps

    def get_params(self, deep=True):
        return {"method": self.method, "eps": self.eps}

    def set_params(self, **params):
        unknown = [k for k in params if k not in ("method", "eps")]
        if unknown:  # checked before any is set
            raise ValueError(f"{unknown[0]}: not a parameter of Whitening (method, eps)")
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def _checked_params(self):
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        eps = _checks.real(self.eps, "eps")
        if eps < 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps}")
        return eps

    def fit(self, X, y=None):
        """Fit to the rows of X (n_samples, n_features), forgetting earlier data; returns self."""
        return self._fit(X, None)

    def partial_fit(self, X, y=None):
        """Add the rows of X to the data fitted so far (streaming); returns self."""
        return self._fit(X, getattr(self, "_acc", None))

    def _fit(self, X, acc):
        """Fold X into acc (None: a new accumulator) and derive the fitted attributes; nothing changes
        when it raises."""
        eps = self._checked_params()
        X = self._rows(X, "X", fitted=acc is not None)
        acc = (RunningCovariance(X.shape[1]) if acc is None else acc.copy()).update(X)
        if acc.count < 2:
            raise ValueError(f"X: expected at least 2 samples to estimate a covariance, got n_samples = {acc.count}")
        C = acc.cov(ddof=1)
        W, Winv = _whitening(C, eps, self.method)
        self._acc, self.n_features_in_, self.n_samples_seen_ = acc, X.shape[1], acc.count
        self.mean_, self.covariance_, self.whitening_, self.dewhitening_ = acc.mean, C, W, Winv
        return self

    def _rows(self, X, name, fitted=True):
        """X checked: a finite 2-D float array (ints and object arrays of numbers as float64) with at
        least one sample and feature, and the fitted number of features. The messages also carry the
        phrases scikit-learn's estimator checks look for."""
        if hasattr(X, "toarray") and not isinstance(X, np.ndarray):
            raise TypeError(f"{name}: sparse data is not supported; dense data is required (X.toarray())")
        X = _checks.array(X, name, "a 2-D array of numbers")
        if X.dtype.kind == "c":
            raise _DataError(f"{name}: Complex data not supported, expected a float array")
        if X.dtype == object:
            try:
                X = X.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise TypeError(f"{name}: expected numbers, got an object array ({e})") from None
        X, _ = _data(X, name)
        if X.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {X.shape}. Reshape "
                             "your data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one sample")
        for size, what in ((X.shape[0], "sample"), (X.shape[1], "feature")):
            if size == 0:
                raise ValueError(f"{name}: found array with 0 {what}(s) (shape={X.shape}) while a minimum of 1 "
                                 "is required.")
        if fitted and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but Whitening is expecting {self.n_features_in_} "
                             "features as input")
        if not np.isfinite(X).all():
            raise ValueError(f"{name}: contains NaN or infinity")
        return X

    def _fitted(self):
        if not hasattr(self, "whitening_"):
            raise ValueError("this Whitening is not fitted yet: call fit or partial_fit first")

    def transform(self, X, out=None):
        """The whitened rows of X: float64 for float64 (and integer) input, float32 otherwise; into `out`
        (an array of that shape and dtype) when given."""
        self._fitted()
        X = self._rows(X, "X")
        return self._apply(X.astype(np.float64, copy=False) - self.mean_, self.whitening_, _checks.stats_dtype(X), out)

    def inverse_transform(self, X, out=None):
        """The rows of X mapped back from the whitened space."""
        self._fitted()
        X = self._rows(X, "X")
        return self._apply(X.astype(np.float64, copy=False) @ self.dewhitening_.T + self.mean_, None,
                           _checks.stats_dtype(X), out)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    @staticmethod
    def _apply(a, M, dt, out):
        """a @ M.T (a itself where M is None), float64, delivered as dt, into out when given."""
        if out is not None:
            _checks.not_masked(out, "out")
            if not isinstance(out, np.ndarray) or out.shape != a.shape or out.dtype != dt:
                raise ValueError(f"out: expected an array of shape {a.shape} and dtype {np.dtype(dt)}, got "
                                 f"{getattr(out, 'shape', type(out).__name__)} "
                                 f"{getattr(out, 'dtype', '')}")
            if not out.flags.writeable:
                raise ValueError("out: the array is read-only")
        y = (a if M is None else a @ M.T).astype(dt, copy=False)
        if out is None:
            return y
        out[...] = y
        return out

    def __repr__(self):
        return f"Whitening(method={self.method!r}, eps={self.eps!r})"

    def __sklearn_tags__(self):
        """scikit-learn's tags for this transformer; only scikit-learn calls this, so it is imported here."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(), input_tags=InputTags())


def _whitening(C, eps, method):
    """(W, W^-1) for covariance C: float64 eigen- or Cholesky decompositions."""
    if method == "cholesky":
        try:
            L = np.linalg.cholesky(C + eps * np.eye(len(C)))
        except np.linalg.LinAlgError:
            raise ValueError("X: its covariance is singular; give eps > 0") from None
        return np.tril(np.linalg.inv(L)), L  # the inverse of a lower triangle is one, but for rounding
    lam, U = np.linalg.eigh(C)
    lam = np.maximum(lam, 0) + eps  # rounding can leave a zero eigenvalue slightly negative
    if not (lam > 0).all():
        raise ValueError("X: its covariance is singular; give eps > 0")
    if method == "pca":
        order = np.argsort(lam)[::-1]
        lam, U = lam[order], U[:, order]
        return U.T / np.sqrt(lam)[:, None], U * np.sqrt(lam)
    return (U / np.sqrt(lam)) @ U.T, (U * np.sqrt(lam)) @ U.T
