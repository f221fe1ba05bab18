"""The public functions: argument checking, axis canonicalisation and dtype rules; the work is done in
the C engine through _normc."""
import math
import warnings

import numpy as np

from . import _checks, _normc

__all__ = ["moments"]


def moments(x, axis=None, *, ddof=0, keepdims=False):
    """Mean and variance of `x` over `axis` in one pass over memory.

    Parameters
    ----------
    x : array_like of float16, bfloat16 (ml_dtypes), float32 or float64
        Any rank and any strides; views are read in place.
    axis : None, int or tuple of ints
        Axes to reduce; None reduces all of them. Negative axes count from the end.
    ddof : real
        The variance divisor is ``max(N - ddof, 0)``, N the number of reduced elements.
    keepdims : bool
        Keep reduced axes with size 1, as NumPy does.

    Returns
    -------
    (mean, var) : float64 for float64 input, float32 otherwise; NumPy scalars when every axis is reduced
        and keepdims is False. Empty reductions give NaN (with a RuntimeWarning, as NumPy does).
    """
    x, code = _checks.float_array(x, "x")
    red = _checks.axes(axis, x.ndim)
    ddof = _checks.real(ddof, "ddof")
    keepdims = _checks.flag(keepdims, "keepdims")

    out_dtype = _checks.stats_dtype(x)
    reduce = [False] * x.ndim
    for i in red:
        reduce[i] = True
    kshape = [1 if r else n for r, n in zip(reduce, x.shape)]
    mean = np.empty(kshape, out_dtype)
    var = np.empty(kshape, out_dtype)
    if mean.size:
        count = x.size // mean.size if x.size else math.prod([x.shape[i] for i in red])
        if count == 0:
            warnings.warn("normfast.moments: mean of empty slice", RuntimeWarning, stacklevel=2)
        elif count - ddof <= 0:
            warnings.warn("normfast.moments: degrees of freedom <= 0 for slice", RuntimeWarning,
                          stacklevel=2)
    _normc.moments(x, code, tuple(reduce), mean, var, ddof)
    if mean.ndim == 0 or (not keepdims and red):
        if mean.ndim == len(red):
            return mean[(0,) * mean.ndim], var[(0,) * var.ndim]  # NumPy scalars, as np.mean returns
        shape = [n for r, n in zip(reduce, x.shape) if not r]
        mean, var = mean.reshape(shape), var.reshape(shape)
    return mean, var
