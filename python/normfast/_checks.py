"""Argument checking shared by the public functions: every error names the argument, what was expected
and what came, and is raised before anything is written."""
import numbers
import operator

import numpy as np

from . import _normc


_CODES = {np.dtype(name): code for name, code in _normc.DTYPE_CODES.items() if name != "bfloat16"}


def dtype_code(dt):
    """The engine's code for a supported floating dtype, else None."""
    code = _CODES.get(dt)
    if code is None and dt.name == "bfloat16" and dt.itemsize == 2:  # ml_dtypes.bfloat16
        code = _CODES[dt] = _normc.DTYPE_CODES["bfloat16"]
    return code


def float_array(x, name):
    """x as an ndarray the engine can read in place, plus its dtype code.

    Views of any strides are used as they are; only byte-swapped or misaligned data (which C cannot
    address as typed elements) is copied into a native array first. For these dtypes NumPy's `aligned`
    flag also means every stride is a multiple of the item size."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: expected an array-like of floats, got {type(x).__name__} ({e})") from None
    code = dtype_code(x.dtype)
    if code is None:
        if x.dtype.kind == "f" and not x.dtype.isnative:
            return float_array(x.astype(x.dtype.newbyteorder("=")), name)
        raise TypeError(
            f"{name}: expected a float16, bfloat16, float32 or float64 array, got dtype {x.dtype}")
    if not x.flags.aligned:
        x = np.array(x, order="K")
    return x, code


def axes(axis, ndim, name="axis"):
    """Normalise an int, a tuple of ints or None to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if type(axis) is int and -ndim <= axis < ndim:  # the common case
        return (axis % ndim,)
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        try:
            i = operator.index(a)
        except TypeError:
            raise TypeError(f"{name}: expected None, an int or a tuple of ints, got {axis!r}") from None
        if not -ndim <= i < ndim:
            raise np.exceptions.AxisError(
                f"{name}: axis {i} is out of range for an array of {ndim} dimension(s)")
        i %= ndim if ndim else 1
        if i in out:
            raise ValueError(f"{name}: axis {i} is repeated in {axis!r}")
        out.append(i)
    return tuple(sorted(out))


def real(value, name):
    """A finite real number (bools count as 0 and 1, as in NumPy)."""
    if type(value) is int or type(value) is float:  # the common case, without the ABC check
        value = float(value)
        if value - value == 0:
            return value
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def flag(value, name):
    if value is True or value is False:
        return value
    if not isinstance(value, np.bool_):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)
