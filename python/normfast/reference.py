"""The executable specification: pure NumPy, float64, two passes. It imports nothing from normfast, so
a bug in the package cannot hide in its own yardstick."""
import numpy as np


def moments(x, axis=None, ddof=0, keepdims=False):
    """(mean, var) of x over axis, computed in float64 as sum(x)/n, then sum((x - mean)^2)/max(n - ddof, 0).

    Empty reductions give NaN. Results are float64 arrays (0-d when every axis is reduced)."""
    x = np.asarray(x).astype(np.float64)
    axes = tuple(range(x.ndim)) if axis is None else _normalize(axis, x.ndim)
    n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(x, axis=axes, keepdims=True) / n
        dev = x - mean
        m2 = np.sum(dev * dev, axis=axes, keepdims=True)
        var = m2 / max(n - ddof, 0)
    if n == 0:
        mean = np.full_like(mean, np.nan)
        var = np.full_like(var, np.nan)
    if not keepdims:
        mean = np.squeeze(mean, axis=axes)
        var = np.squeeze(var, axis=axes)
    return mean, var


def _normalize(axis, ndim):
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(int(a) % ndim for a in items))
