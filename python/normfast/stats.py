"""Streaming statistics: exact mean and variance over data seen in pieces, mergeable across workers.

Each piece is reduced by the moments engine in one pass (float64 results whatever the input dtype) and
folded into the running (count, mean, M2) with Chan's formula, so the result equals the statistics of the
concatenation up to rounding, whatever the sizes of the pieces."""
import math
import warnings

import numpy as np

from . import _checks
from .reductions import data, fold, moments64

__all__ = ["RunningMoments", "RunningCovariance", "precise_batch_norm_stats"]


def _data(x, name):
    """x as a float array and its engine code, integer and bool data as a float64 copy: for users that
    need the whole array in float64 anyway (RunningCovariance, Whitening)."""
    x, code = data(x, name)
    return (x, code) if code is not None else data(x.astype(np.float64), name)


def _axis_spec(axis):
    """The `axis` argument as None or a tuple of ints (resolved against a rank at the first update)."""
    if axis is None:
        return None
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(_checks.integer(a, "axis", "None, an int or a tuple of ints", repr(axis)) for a in items)


class _Mergeable:
    """What both accumulators share: the fold of a part's (n, shift, mean, M2) into (_count, _shift,
    _mean, _m2) with Chan's formula in shifted frames (reductions.fold; M2 the co-moment matrix where
    _outer is np.outer), and a + b (a new accumulator holding both's data) and a += b over the subclass's
    copy() and merge()."""

    _outer = np.multiply
    _shift = 0.0  # _mean is the mean of x - _shift (per statistic; the engine's shifts for RunningMoments)

    def _fold(self, n, mean, m2, shift=0.0):
        if self._count == 0:
            shift, mean, m2 = (np.array(v, np.float64) for v in (shift, mean, m2))
        else:
            shift, mean, m2 = fold(self._count, self._shift, self._mean, self._m2, n, shift, mean, m2, self._outer)
        # The state changes all at once, after everything that can fail.
        self._shift, self._mean, self._m2, self._count = shift, mean, m2, self._count + n

    def __add__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.copy().merge(other)

    def __iadd__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.merge(other)


class RunningMoments(_Mergeable):
    """Count, mean and sum of squared deviations (M2) of a stream of arrays, reduced over `axis`.

    ``axis`` has NumPy's meaning: the axes reduced (None: all of them, so pieces may have any shape).
    Otherwise the first piece fixes the rank and the shape of the axes kept, and every later piece must
    agree; the reduced axes may differ in size from piece to piece. Statistics are float64.

    ``update(x)`` adds a piece; ``merge(other)`` (or ``a + b``, a new accumulator) adds another
    accumulator's data, e.g. one filled in another process (accumulators pickle). Both return the
    accumulator, leave it unchanged when they raise, and cost one pass over x or nothing over data.
    """

    def __init__(self, axis=None):
        self._axis = _axis_spec(axis)
        self._count = 0
        # The rank, fixed by the first piece (never when every axis is reduced), and the statistics'
        # shape (None while unknown).
        self._ndim = None
        self._shape = () if self._axis is None else None
        self._mean = self._m2 = None

    def _reduced(self):
        """The reduced axes, once the rank is known."""
        return _checks.axes(self._axis, self._ndim)

    def _resolve(self, ndim, name):
        """The axes reduced in data of rank ndim."""
        if self._axis is None:
            return tuple(range(ndim))
        if self._ndim is not None and ndim != self._ndim:
            raise ValueError(f"{name}: expected an array of rank {self._ndim} (as the first piece), got rank {ndim}")
        return _checks.axes(self._axis, ndim, "axis")

    def update(self, x):
        """Add the data of x to the statistics: a float16, bfloat16, float32, float64, integer or bool
        array of any strides (integers and bools reduced in float64, a chunk at a time, as
        normfast.moments does). Raises TypeError for other dtypes, ValueError (AxisError) for a rank or
        kept shape that does not match."""
        return self._update(x, "x")

    def _update(self, x, name):
        x, code = data(x, name)
        red = self._resolve(x.ndim, name)
        shape = tuple(n for i, n in enumerate(x.shape) if i not in red)
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"{name}: expected the kept axes to have shape {self._shape}, got {shape} "
                             f"(x has shape {x.shape}, axis={self._axis})")
        n = math.prod(x.shape[i] for i in red)
        if n:
            shift, mean, var = moments64(x, code, tuple(i for i in range(x.ndim) if i not in red), shifted=True)
            self._fold(n, mean.reshape(shape), var.reshape(shape) * n, shift.reshape(shape))
        if self._axis is not None:  # the rank and shape are bound only by a piece that went in
            self._ndim, self._shape = x.ndim, shape
        return self

    def merge(self, other):
        """Add the data of another accumulator over the same axes (and, once both have data, with the
        same statistics shape); returns self."""
        if not isinstance(other, RunningMoments):
            raise TypeError(f"other: expected a RunningMoments, got {type(other).__name__}")
        self._check_compatible(other)
        if other._count:
            self._fold(other._count, other._mean, other._m2, other._shift)
        if self._shape is None:
            self._ndim, self._shape = other._ndim, other._shape
        return self

    def _check_compatible(self, other):
        a, b = (self, other) if self._ndim is not None or other._ndim is None else (other, self)
        if (a._axis is None) != (b._axis is None):
            ok = False
        elif a._axis is None:
            ok = True
        elif a._ndim is None:  # neither has data: the axes as given must agree
            ok = sorted(a._axis) == sorted(b._axis)
        elif b._ndim is None:  # b's axes, resolved for a's rank
            try:
                ok = _checks.axes(b._axis, a._ndim) == a._reduced()
            except (ValueError, np.exceptions.AxisError):
                ok = False
        else:
            ok = (a._ndim, a._reduced(), a._shape) == (b._ndim, b._reduced(), b._shape)
        if not ok:
            raise ValueError(f"other: expected an accumulator over axis={self.axis} with statistics of shape "
                             f"{self._shape} (rank {self._ndim} data), got axis={other.axis}, shape "
                             f"{other._shape} (rank {other._ndim} data)")

    def copy(self):
        new = RunningMoments.__new__(RunningMoments)
        new.__dict__.update(self.__dict__)
        if self._mean is not None:
            new._shift, new._mean, new._m2 = np.copy(self._shift), self._mean.copy(), self._m2.copy()
        return new

    @property
    def axis(self):
        return self._axis if self._axis is None or len(self._axis) != 1 else self._axis[0]

    @property
    def count(self):
        """Samples behind each statistic (an int)."""
        return self._count

    def _result(self, values, what):
        if self._shape is None:
            raise ValueError(f"RunningMoments(axis={self.axis}): no data yet, so the shape of the statistics "
                             "is unknown")
        if self._count == 0:
            warnings.warn(f"RunningMoments: {what} of empty data", RuntimeWarning, stacklevel=3)
            values = np.full(self._shape, np.nan)
        return values[()] if values.ndim == 0 else values

    @property
    def mean(self):
        """Mean of each statistic: float64, a NumPy scalar when every axis is reduced, NaN before data."""
        return self._result(None if self._mean is None else self._shift + self._mean, "mean")

    def var(self, ddof=0):
        """Variance M2 / (count - ddof), as numpy.var: inf or NaN with a RuntimeWarning when
        count - ddof <= 0."""
        ddof = _checks.real(ddof, "ddof")
        if self._count == 0:
            return self._result(None, "variance")
        dof = self._count - ddof
        if dof <= 0:
            warnings.warn("RunningMoments: degrees of freedom <= 0", RuntimeWarning, stacklevel=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._result(self._m2 / max(dof, 0), "variance")

    def std(self, ddof=0):
        """Standard deviation, the square root of var(ddof)."""
        return np.sqrt(self.var(ddof))

    def __repr__(self):
        return f"RunningMoments(axis={self.axis!r}, count={self._count}, shape={self._shape})"


class RunningCovariance(_Mergeable):
    """Count, mean and co-moment matrix (the sum of the outer products of the deviations from the mean)
    of a stream of samples of `n_features` variables: the covariance of all the data seen, exact up to
    rounding whatever the sizes of the pieces.

    ``update(x)`` adds the rows of x, shape (n_samples, n_features) (a single sample may be 1-D): the
    batch's mean and, through BLAS, its co-moment from the batch centred in float64, folded in with
    Chan's formula. ``merge(other)`` (or ``a + b``, a new accumulator) adds another
    accumulator's data, e.g. one filled in another process (accumulators pickle). Both return the
    accumulator and leave it unchanged when they raise."""

    _outer = staticmethod(np.outer)  # the co-moment matrix

    def __init__(self, n_features):
        self.n_features = _checks.positive_int(n_features, "n_features")
        self._count = 0
        try:
            self._mean = np.zeros(self.n_features)
            self._m2 = np.zeros((self.n_features, self.n_features))
        except (ValueError, MemoryError):  # past NumPy's index range or this machine's memory
            raise ValueError(f"n_features: {self.n_features} features need a co-moment matrix too large to "
                             f"allocate") from None

    def update(self, x):
        """Add the samples (rows) of x: any float, integer or bool array of shape (n_samples, n_features)
        or (n_features,)."""
        x, _ = _data(x, "x")
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x: expected shape (n_samples, {self.n_features}) or ({self.n_features},), "
                             f"got {x.shape}")
        n = x.shape[0]
        if n == 0:
            return self
        # The batch in float64 (its co-moment needs a float64 copy anyway), so the mean is float64-exact
        # for every input dtype; BLAS's O(n d^2) product dominates the cost.
        xf = x.astype(np.float64, copy=False)
        mean = xf.mean(axis=0)
        centred = xf - mean
        self._fold(n, mean, centred.T @ centred)  # A.T @ A: NumPy's symmetric BLAS product
        return self

    def merge(self, other):
        """Add the data of another accumulator of the same number of features; returns self."""
        if not isinstance(other, RunningCovariance):
            raise TypeError(f"other: expected a RunningCovariance, got {type(other).__name__}")
        if other.n_features != self.n_features:
            raise ValueError(f"other: expected an accumulator of {self.n_features} features, got {other.n_features}")
        if other._count:
            self._fold(other._count, other._mean, other._m2, other._shift)
        return self

    def copy(self):
        new = RunningCovariance(self.n_features)
        new._count, new._mean, new._m2 = self._count, self._mean.copy(), self._m2.copy()
        return new

    @property
    def count(self):
        """Samples seen (an int)."""
        return self._count

    @property
    def mean(self):
        """The mean of each feature, float64 (NaN before any data, with a RuntimeWarning)."""
        if self._count == 0:
            warnings.warn("RunningCovariance: mean of empty data", RuntimeWarning, stacklevel=2)
            return np.full(self.n_features, np.nan)
        return self._mean.copy()

    def cov(self, ddof=1):
        """The covariance matrix, co-moment / (count - ddof), float64; ddof=1 by default, as numpy.cov.
        inf or NaN with a RuntimeWarning when count - ddof <= 0."""
        ddof = _checks.real(ddof, "ddof")
        dof = self._count - ddof
        if dof <= 0:
            warnings.warn("RunningCovariance: degrees of freedom <= 0", RuntimeWarning, stacklevel=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.full_like(self._m2, np.nan) if self._count == 0 else self._m2 / max(dof, 0)

    def corr(self):
        """The correlation matrix (as numpy.corrcoef): NaN in the rows and columns of a constant feature,
        with a RuntimeWarning."""
        d = np.sqrt(np.diag(self._m2))
        if self._count == 0 or not d.all():
            warnings.warn("RunningCovariance: correlation of a constant feature or of no data", RuntimeWarning,
                          stacklevel=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.clip(self._m2 / np.outer(d, d), -1, 1) if self._count else np.full_like(self._m2, np.nan)
        r[np.diag_indices_from(r)] = np.where(d > 0, 1.0, np.nan)  # exactly 1, not d^2 / (d * d)
        return r

    def __repr__(self):
        return f"RunningCovariance(n_features={self.n_features}, count={self._count})"


def precise_batch_norm_stats(batches, *, channel_axis=1, unbiased=True):
    """Exact per-channel mean and variance over every batch of an iterable, for inference with the whole
    data set's statistics instead of moving averages (one pass over each batch; float64 accumulation).

    Batches (float, integer or bool arrays of rank >= 2) may differ in every size but the channel axis
    `channel_axis` (the axis kept, as in dataset_stats; the norms name their channel axis `axis`, as
    Keras does). Returns float64 (mean, var), shape (C,), the variance unbiased unless unbiased=False:
    the running variance PyTorch's BatchNorm keeps and normalizes with in eval mode is the unbiased one."""
    unbiased = _checks.flag(unbiased, "unbiased")
    try:
        it = iter(batches)
    except TypeError:
        raise TypeError(f"batches: expected an iterable of arrays, got {type(batches).__name__}") from None
    acc = None
    for i, b in enumerate(it):
        name = f"batches[{i}]"
        b, _ = data(b, name)
        c = _checks.channel_axis(channel_axis, b.ndim, "channel_axis")
        if acc is None:
            acc = RunningMoments(axis=tuple(j for j in range(b.ndim) if j != c))
        acc._update(b, name)
    if acc is None:
        raise ValueError("batches: expected at least one batch, got none")
    n = acc.count
    if n < 1 + unbiased:
        raise ValueError(f"batches: expected more than {int(unbiased)} value(s) per channel, got {n}")
    return acc.mean, acc.var(ddof=int(unbiased))
