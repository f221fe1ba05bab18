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


def integer(value, name, expected="an int", shown=None):
    """value as an int (anything with __index__), else a TypeError naming `name`; `shown` is what the
    message says came (default: value's type)."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {expected}, got "
                        f"{type(value).__name__ if shown is None else shown}") from None


def axes(axis, ndim, name="axis"):
    """Normalise an int, a tuple of ints or None to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if type(axis) is int and -ndim <= axis < ndim:  # the common case
        return (axis % ndim,)
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        i = integer(a, name, "None, an int or a tuple of ints", repr(axis))
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


def axis_index(axis, ndim, name="axis"):
    """One axis of an array of rank ndim, as a non-negative int."""
    a = integer(axis, name)
    if not -ndim <= a < ndim:
        raise np.exceptions.AxisError(f"{name}: axis {a} is out of range for an array of rank {ndim}")
    return a % ndim


def channel_axis(axis, ndim, name="axis"):
    """The channel axis of an input of rank >= 2, as a non-negative int."""
    if ndim < 2:
        raise ValueError(f"x: expected an array of rank >= 2 (batch and channels), got rank {ndim}")
    return axis_index(axis, ndim, name)


def positive_int(value, name):
    n = integer(value, name, "a positive int")
    if n < 1:
        raise ValueError(f"{name}: expected a positive int, got {n}")
    return n


def positive(value, name):
    value = real(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a number > 0, got {value}")
    return value


def fraction(value, name, allow_none=False):
    """A number in [0, 1] (or None where allowed)."""
    if value is None and allow_none:
        return None
    value = real(value, name)
    if not 0 <= value <= 1:
        raise ValueError(f"{name}: expected a number in [0, 1]{' or None' if allow_none else ''}, got {value}")
    return value


def activation(value):
    if value not in _normc.ACTIVATIONS:
        raise ValueError(f"activation: expected None, 'relu', 'sigmoid' or 'silu', got {value!r}")
    return value


def stats_dtype(x):
    """Statistics and parameters are float64 for float64 data, float32 otherwise."""
    return np.float64 if x.dtype == np.float64 else np.float32


def param(v, shape, name, dtype=np.float64):
    """An optional affine parameter (weight, bias) of the given shape, as a contiguous `dtype` array."""
    if v is None:
        return None
    arr = v if isinstance(v, np.ndarray) else np.asarray(v)
    if arr.dtype.kind != "f" and dtype_code(arr.dtype) is None:
        raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    return np.require(arr, dtype, "CA")  # contiguous, aligned and native, copied only if it is not


def running(v, length, dtype, name, written):
    """A running-statistics array: shape (length,), the statistics dtype; if it will be updated, also a
    writeable contiguous ndarray (it is updated in place)."""
    if v is None:
        return None
    if written:
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array updated in place, got {type(v).__name__}")
        if v.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {v.dtype}")
        if not v.flags.writeable:
            raise ValueError(f"{name}: the array is read-only but is updated in training")
        if not v.flags.c_contiguous:
            raise ValueError(f"{name}: expected a contiguous array, got strides {v.strides}")
    arr = v if isinstance(v, np.ndarray) else np.asarray(v)
    if arr.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return arr


def output(out, x, name="out"):
    """A fresh output like x, or the caller's `out` after checking it (x itself is allowed)."""
    if out is None:
        return np.empty_like(x)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"{name}: expected shape {x.shape} and dtype {x.dtype}, got {out.shape} and {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: the array is read-only")
    if not out.flags.aligned:
        raise ValueError(f"{name}: the array is misaligned")
    if out is not x and np.may_share_memory(out, x) and not (
            out.__array_interface__["data"][0] == x.__array_interface__["data"][0] and out.strides == x.strides):
        raise ValueError(f"{name}: overlaps x without being x itself")
    return out
