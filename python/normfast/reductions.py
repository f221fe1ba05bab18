"""Reductions: the public `moments` (NumPy's mean and var in one pass: argument checking, axis
canonicalisation and dtype rules; the work is done in the C engine through _normc), and the pieces every
statistic shares: Chan's merge of partial moments (fold) and the reduction of integer and bool data,
which the engine reads as float64 a bounded chunk at a time."""
import math
import warnings

import numpy as np

from . import _checks, _normc

__all__ = ["moments"]

# Elements of integer or bool data converted to float64 at a time (8 MiB): bounded memory, and the
# conversion and the reduction of a chunk share the cache.
CHUNK = 1 << 20
_ACCEPTED = "a float (float16, bfloat16, float32, float64), integer or bool array"


def data(x, name):
    """(x, code): x as an ndarray the statistics read and the engine's dtype code for it; floats as
    _checks.float_array gives them, integer and bool arrays as they are with code None (reduced in
    float64, see moments_into). Anything else (complex, object, strings, datetimes) is a TypeError
    naming `name`."""
    x = _checks.array(x, name, _ACCEPTED)
    if x.dtype.kind in "biu":
        return x, None
    if _checks.dtype_code(x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")) is None:
        raise TypeError(f"{name}: expected {_ACCEPTED}, got dtype {x.dtype}")
    return _checks.float_array(x, name)


def stats_dtype(x):
    """The statistics' dtype: float64 for float64, integer and bool data, float32 otherwise."""
    return np.float64 if x.dtype.kind in "biu" else _checks.stats_dtype(x)


def _chan_outer(count, mean, m2, n, mean_b, m2_b):
    """Chan et al.'s pairwise update of a mean vector and co-moment matrix: those of the union of a part of
    `count` samples and one of `n` (n > 0). Where the means' difference is not finite the mean is the
    counts-weighted sum of the means, as in nf_merge (which does the per-statistic update)."""
    total = count + n
    wb = n / total
    with np.errstate(invalid="ignore", over="ignore"):
        d = mean_b - mean
        new_mean = mean + d * wb
        new_m2 = m2 + m2_b + np.outer(d, d) * (count * wb)
        bad = ~np.isfinite(d)
        if bad.any():
            new_mean = np.where(bad, mean * (count / total) + mean_b * wb, new_mean)
            new_m2 = np.where(count > 0, new_m2, m2_b)  # an empty part adds nothing, not inf * 0
    return new_mean, new_m2


def _broadcast_shape(*shapes):
    """NumPy's broadcast of the shapes, without np.broadcast's limit of 32 dimensions (NumPy allows 64)."""
    out = []
    for i in range(1, max(map(len, shapes)) + 1):
        sizes = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out[::-1])


def fold(count, shift, mean, m2, n, shift_b, mean_b, m2_b, outer=np.multiply):
    """Chan's update for parts kept in shifted frames, as the engine gives them (the mean being that of
    x - shift, per statistic): (shift, mean, M2) of the union, new arrays, in a's frame where a holds
    data, else b's. b's mean moves into a's frame by the difference of the shifts, exact for nearby data
    (two of its elements), so no mean of the data's magnitude enters a difference: merges keep the digits
    of a tiny spread on a large mean, as the in-memory reduction does. Counts may be arrays (per
    statistic) and 0. Per statistic (outer=np.multiply) this is the engine's merge (nf_merge); with
    outer=np.outer, M2 is a co-moment matrix."""
    if outer is np.multiply:
        parts = [np.asarray(a, np.float64) for a in (count, shift, mean, m2, n, shift_b, mean_b, m2_b)]
        shape = _broadcast_shape(*(a.shape for a in parts))
        na, shift, mean, m2 = (np.array(np.broadcast_to(a, shape), order="C") for a in parts[:4])  # merged in place
        _normc.merge(na, shift, mean, m2, *(np.ascontiguousarray(np.broadcast_to(a, shape)) for a in parts[4:]))
        return shift, mean, m2
    with np.errstate(over="ignore", invalid="ignore"):
        moved = (shift_b - shift) + mean_b
    return (shift, *_chan_outer(count, mean, m2, n, moved, m2_b))  # count > 0: _Mergeable takes a first part


def moments_into(x, code, reduce, mean, var, ddof, shift=None):
    """The engine's moments of x over the axes flagged in `reduce` into mean and var (x's rank, size 1
    on reduced axes); with `shift` (float64, like a float64 mean), each statistic's shift into it and the
    mean of x - shift into mean. Integer and bool data (code None) is reduced in float64 chunks of at most
    CHUNK elements, never converted whole."""
    if code is not None:
        _normc.moments(x, code, reduce, mean, var, ddof, None, None, shift)
    elif x.size <= CHUNK:
        _normc.moments(x.astype(np.float64), _checks.F64, reduce, mean, var, ddof, None, None, shift)
    else:
        k, m, m2 = _chunked(x, reduce, np.empty(CHUNK))
        n = x.size // mean.size
        if shift is None:
            mean[...] = k + m
        else:
            shift[...], mean[...] = k, m
        with np.errstate(divide="ignore", invalid="ignore"):  # as the engine: m2 / 0 is inf or NaN
            var[...] = m2 / max(n - ddof, 0)


def _chunked(x, reduce, buf):
    """(shift, mean of x - shift, M2) of non-empty integer data x, float64 laid out as x's statistics,
    through the float64 buffer `buf`: x cut along its largest axis into slabs of at most CHUNK elements
    (recursively, where one index of that axis is more), each converted into buf and reduced by the
    engine; slabs along a kept axis fill disjoint parts of the result, slabs along a reduced axis are
    merged with Chan's formula in their frames (fold)."""
    kshape = tuple(1 if r else n for r, n in zip(reduce, x.shape))
    if x.size <= buf.size:
        xf = buf[:x.size].reshape(x.shape)
        np.copyto(xf, x)  # exact up to 2**53 in magnitude; bool as 0 and 1, as NumPy converts
        k, mean, var = np.empty(kshape), np.empty(kshape), np.empty(kshape)
        _normc.moments(xf, _checks.F64, reduce, mean, var, 0.0, None, None, k)
        return k, mean, var * (x.size // mean.size)
    a = int(np.argmax(x.shape))
    step = max(1, buf.size // (x.size // x.shape[a]))
    slabs = [(slice(None),) * a + (slice(i, i + step),) for i in range(0, x.shape[a], step)]
    if not reduce[a]:
        k, mean, m2 = np.empty(kshape), np.empty(kshape), np.empty(kshape)
        for s in slabs:
            k[s], mean[s], m2[s] = _chunked(x[s], reduce, buf)
        return k, mean, m2
    count = 0
    for s in slabs:
        part = _chunked(x[s], reduce, buf)
        n = x[s].size // part[1].size
        k, mean, m2 = part if count == 0 else fold(count, k, mean, m2, n, *part)
        count += n
    return k, mean, m2


def moments64(x, code, keep, shifted=False):
    """Biased float64 (mean, var) of x (from `data`) over every axis not in `keep`, in x's rank; with
    `shifted`, (shift, mean of x - shift, var), the parts that merge exactly (fold)."""
    shape = [x.shape[i] if i in keep else 1 for i in range(x.ndim)]
    mean, var = np.empty(shape), np.empty(shape)
    shift = np.empty(shape) if shifted else None
    moments_into(x, code, tuple(i not in keep for i in range(x.ndim)), mean, var, 0.0, shift)
    return (shift, mean, var) if shifted else (mean, var)


def moments(x, axis=None, *, ddof=0, keepdims=False):
    """Mean and variance of `x` over `axis` in one pass over memory.

    Parameters
    ----------
    x : array_like of float16, bfloat16 (ml_dtypes), float32, float64, any integer dtype or bool
        Any rank and any strides; float views are read in place. Integer and bool data (a uint8 image
        batch) is reduced in float64, as numpy.mean and numpy.var do, converted a chunk of about a
        million elements at a time (never copied whole).
    axis : None, int or tuple of ints
        Axes to reduce; None reduces all of them. Negative axes count from the end.
    ddof : real
        The variance divisor is ``max(N - ddof, 0)``, N the number of reduced elements.
    keepdims : bool
        Keep reduced axes with size 1, as NumPy does.

    Returns
    -------
    (mean, var) : float64 for float64, integer and bool input, float32 otherwise; NumPy scalars when
        every axis is reduced and keepdims is False. Empty reductions give NaN (with a RuntimeWarning,
        as NumPy does).

    Raises
    ------
    TypeError
        x is not an array of those dtypes (complex, object, strings, datetimes), or a bad argument type.
    ValueError
        An axis out of range (numpy.exceptions.AxisError) or repeated, or a non-finite ddof.
    """
    x, code = data(x, "x")
    red = _checks.axes(axis, x.ndim)
    ddof = _checks.real(ddof, "ddof")
    keepdims = _checks.flag(keepdims, "keepdims")

    out_dtype = stats_dtype(x)
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
    moments_into(x, code, tuple(reduce), mean, var, ddof)
    if mean.ndim == 0 or (not keepdims and red):
        if mean.ndim == len(red):
            return mean[(0,) * mean.ndim], var[(0,) * var.ndim]  # NumPy scalars, as np.mean returns
        shape = [n for r, n in zip(reduce, x.shape) if not r]
        mean, var = mean.reshape(shape), var.reshape(shape)
    return mean, var
