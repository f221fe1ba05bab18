"""Argument checking shared by the public functions: every error names the argument, what was expected
and what came, and is raised before anything is written."""
import math
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


# The engine's code for float64, the dtype of every wide path (integers, scales past float32).
F64 = dtype_code(np.dtype(np.float64))


def not_masked(a, name):
    if isinstance(a, np.ma.MaskedArray):  # its mask would be ignored, and the result look mask-aware
        raise TypeError(f"{name}: masked arrays are not supported (the mask would be ignored); pass "
                        f"{name}.filled(np.nan) to mark the masked values, or np.asarray({name}) to drop the mask")


def array(a, name, expected="an array-like of floats"):
    """a as a plain ndarray (a subclass is viewed as the base class, so it never becomes a result's
    type); a masked array, or anything NumPy cannot convert, is a TypeError naming `name`."""
    if type(a) is np.ndarray:
        return a
    not_masked(a, name)
    if isinstance(a, np.ndarray):
        return a.view(np.ndarray)
    try:
        return np.asarray(a)
    except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: a tensor that requires grad
        hint = "; call .detach() on it first" if hasattr(a, "detach") else ""
        raise TypeError(f"{name}: expected {expected}, got {type(a).__name__} ({e}){hint}") from None


def is_float(dt):
    """Whether dt is a floating dtype (ml_dtypes' bfloat16 has kind 'V')."""
    return dt.kind == "f" or dtype_code(dt) is not None


def float_array(x, name):
    """x as an ndarray the engine can read in place, plus its dtype code.

    Views of any strides are used as they are; only byte-swapped or misaligned data (which C cannot
    address as typed elements) is copied into a native array first. For these dtypes NumPy's `aligned`
    flag also means every stride is a multiple of the item size."""
    x = array(x, name)
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
    """value as an int (anything with __index__ but a bool: True is not a count, and NumPy refuses it as an
    axis), else a TypeError naming `name`; `shown` is what the message says came (default: value's
    type)."""
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
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
    """A finite real number: a Python or NumPy real (bools count as 0 and 1, as in NumPy) or a 0-d array
    of a real dtype (bfloat16 too)."""
    if type(value) is float and value - value == 0:  # the common case, without the ABC check
        return value
    if not isinstance(value, numbers.Real):
        dt = getattr(value, "dtype", None)
        if not (getattr(value, "shape", None) == () and isinstance(dt, np.dtype) and (dt.kind in "biu" or is_float(dt))):
            raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    try:
        f = float(value)
    except OverflowError:  # an int beyond the float range
        f = math.inf
    if not math.isfinite(f):
        big_int = isinstance(value, numbers.Integral) and not isinstance(value, np.integer)
        shown = f"an int of {len(str(abs(int(value))))} digits" if big_int else repr(value)
        raise ValueError(f"{name}: expected a finite number, got {shown}")
    return f


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
    arr = array(v, name, "a float array")
    if not is_float(arr.dtype):
        raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    if arr.dtype == dtype and arr.flags.c_contiguous and arr.flags.aligned:
        return arr  # what np.require gives, without its 5 us a call
    return np.require(arr, dtype, "CA")  # contiguous, aligned and native, copied only if it is not


def running(v, length, dtype, name, written):
    """A running-statistics array: shape (length,), the statistics dtype; if it will be updated, also a
    writeable ndarray of any strides (it is updated in place, as PyTorch updates a strided buffer)."""
    if v is None:
        return None
    not_masked(v, name)
    if written:
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array updated in place, got {type(v).__name__}")
        if v.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {v.dtype}")
        if not v.flags.writeable:
            raise ValueError(f"{name}: the array is read-only but is updated in training")
    arr = array(v, name, "a float array")
    if arr.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {arr.shape}")
    if not is_float(arr.dtype):
        raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return arr


def counter(n, name, written=True):
    """A batch counter (num_batches_tracked) as PyTorch keeps it: a count in [0, 2**63 - 1) (so one more
    batch still counts), given as an array of one element. One updated in place (`written`) must be a
    writeable int64 array, PyTorch's dtype: a narrower one would wrap after a few hundred batches and turn
    the cumulative average's factor negative."""
    if n is None:
        return None
    not_masked(n, name)
    if written:
        if not (isinstance(n, np.ndarray) and n.size == 1 and n.dtype.kind in "iu" and n.flags.writeable):
            raise TypeError(f"{name}: expected a writeable integer array of one element, got {type(n).__name__}"
                            + (f" of dtype {n.dtype} and shape {n.shape}" if isinstance(n, np.ndarray) else ""))
        if n.dtype != np.int64:
            raise TypeError(f"{name}: expected dtype int64 (as PyTorch's), got {n.dtype}, which would wrap")
    value = int(n.flat[0])
    if not 0 <= value < np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected a count in [0, 2**63 - 1), got {value}")
    return n


def output(out, x, name="out"):
    """A fresh output like x, or the caller's `out` after checking it (what it may overlap: disjoint)."""
    if out is None:
        return np.empty_like(x)
    not_masked(out, name)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(out).__name__}")
    if out.shape == x.shape and out.dtype != x.dtype and out.dtype.newbyteorder("=") == x.dtype:
        # C writes native values only; byte-swapped x is read through a native copy for the same reason.
        raise ValueError(f"{name}: expected a native byte order array (dtype {x.dtype}), got the byte-swapped "
                         f"{out.dtype}; pass out=None and convert the result if needed")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"{name}: expected shape {x.shape} and dtype {x.dtype}, got {out.shape} and {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: the array is read-only")
    if not out.flags.aligned:
        raise ValueError(f"{name}: the array is misaligned")
    return out


# The in-place uses that are allowed: (written, read) pairs that may be one and the same array (same
# data, strides, shape and dtype), each element then read before it is written.
_IN_PLACE = {("out", "x"), ("out", "residual"), ("residual_out", "x"), ("residual_out", "residual")}

# Bound on the exact overlap test's work: strided views that interleave are told apart in a few steps;
# a case past the bound is refused as overlapping.
_MAX_WORK = 1 << 16


def overlaps(a, b):
    """Whether arrays a and b share an element (exact; True where the exact test would cost too much)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=_MAX_WORK)
    except np.exceptions.TooHardError:
        return True


def _identical(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides
            and a.shape == b.shape and a.dtype == b.dtype)


def disjoint(written, read=()):
    """Refuse aliasing before anything is written: each array a call writes ((name, array) pairs in
    `written`; None skipped) must share no element with any other array of the call (the rest of
    `written`, and `read`), except for the in-place uses in _IN_PLACE."""
    named = [(n, a) for n, a in written if a is not None]
    n_written = len(named)
    named += [(n, a) for n, a in read if a is not None]
    # Bounds first, for every pair at once in C; the exact test only where spans meet.
    for i, j in _normc.extents_meet([a for _, a in named], n_written):
        (wn, w), (on, o) = named[i], named[j]
        if (wn, on) in _IN_PLACE and _identical(w, o):
            continue
        if overlaps(w, o):
            itself = f" without being {on} itself" if (wn, on) in _IN_PLACE else ""
            raise ValueError(f"{wn}: overlaps {on}{itself}")
