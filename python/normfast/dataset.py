"""Statistics of whole data sets: count, mean, variance, min and max over `.npy` files and `.npz`
members (read in blocks, never memory-mapped), images (Pillow) and arrays, as if they were one array
concatenated along the reduced axes.

Every input is cut into blocks of whole rows of its C-order layout, so a block is a contiguous run of
its bytes. A thread pool reads (inflates, decodes) each block and reduces it with the moments engine on
the same thread, while it is in that core's cache; the caller's thread merges the block statistics per
kept element with Chan's formula in float64, in block order, so the result does not depend on the pool's
size at all, nor on the block size beyond rounding. Array inputs, already in memory, are reduced by the
caller's thread with the engine's own threads."""
import functools
import glob
import math
import os
import stat
import sys
import threading
import warnings
import zipfile
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from . import _checks, _core, _normc

__all__ = ["dataset_stats", "DatasetStats", "DatasetError"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
DATA_EXTENSIONS = (".npy", ".npz") + IMAGE_EXTENSIONS  # what a folder is read for
BLOCK_BYTES = 1 << 22  # read and reduced while in cache (8 MB measured no faster, 1 MB slower)

# Pillow modes read as they are, and the mode the others are converted to (palettes and colour spaces
# to RGB, bilevel to grey); 16-bit grey ("I;16*") stays 16-bit.
_KEPT_MODES = {"L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L"}
_CONVERT = {"1": "L", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB"}


try:
    from lzma import LZMAError
except ImportError:  # a Python without lzma, whose zipfile cannot read such members either
    LZMAError = zlib.error

# What reading a damaged or unsupported archive raises: a bad CRC, a damaged header or deflate, bzip2 or
# LZMA stream, an encrypted member (RuntimeError) or an unknown compression method (NotImplementedError).
_ARCHIVE_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, LZMAError, RuntimeError, NotImplementedError)


class DatasetError(ValueError):
    """Input that cannot be read as data; the message names the file (or argument) and what is wrong."""


class DatasetStats:
    """The statistics of a data set: `count` (samples behind each statistic), float64 `mean`, `var`,
    `std`, `min`, `max` of the kept axes' shape (NumPy scalars when every axis is reduced), `ddof`,
    `files` (inputs read), `nbytes` (bytes of data read) and `skipped` (the paths of files in folders that
    are not data, not read)."""

    STATISTICS = ("mean", "var", "std", "min", "max")  # the arrays, in the order they are shown

    def __init__(self, count, mean, m2, lo, hi, ddof, files, nbytes, skipped=()):
        self.count, self.ddof, self.files, self.nbytes, self.skipped = count, ddof, files, nbytes, skipped
        with np.errstate(divide="ignore", invalid="ignore"):
            var = m2 / max(count - ddof, 0) if count else np.full_like(mean, np.nan)
        self.mean, self.var, self.std = _out(mean), _out(var), _out(np.sqrt(var))
        self.min, self.max = _out(lo), _out(hi)

    @property
    def shape(self):
        return np.shape(self.mean)

    def to_dict(self):
        """Plain Python values (lists for arrays), ready for json.dumps."""
        d = {"count": self.count, "ddof": self.ddof, "shape": list(self.shape), "files": self.files,
             "nbytes": self.nbytes, "skipped": list(self.skipped)}
        d.update({k: np.asarray(getattr(self, k)).tolist() for k in self.STATISTICS})
        return d

    def __repr__(self):
        return f"DatasetStats(count={self.count}, shape={self.shape}, files={self.files}, ddof={self.ddof})"


def _out(a):
    return a[()] if a.ndim == 0 else a


class _Acc:
    """Per kept element: count, shift and the mean of x - shift, M2 (float64, merged with Chan's formula
    in shifted frames by the engine's nf_merge, as reductions.fold does), min and max."""

    def __init__(self, shape):
        self.count, self.shift, self.mean, self.m2 = (np.zeros(shape) for _ in range(4))  # exact counts to 2**53
        self.min, self.max = np.full(shape, np.inf), np.full(shape, -np.inf)

    def fold(self, index, n, shift, mean, m2, lo, hi):
        """A block's statistics into the slots at index, in place (a Fortran-order input's slots, not
        contiguous, through copies)."""
        slots = (self.count, self.shift, self.mean, self.m2)
        a = [np.asarray(v[index], order="C") for v in slots]
        _normc.merge(*a, np.full(a[0].shape, float(n)), *(np.asarray(v, order="C") for v in (shift, mean, m2)))
        a[0] += n
        for v, part in zip(slots, a):
            v[index] = part
        self.min[index] = np.minimum(self.min[index], lo)  # a NaN anywhere gives NaN, as numpy.min
        self.max[index] = np.maximum(self.max[index], hi)


class _Piece:
    """One block ready to reduce: its values (a float dtype the engine reads), the block axes kept, the
    slot of the accumulator it lands in, a scale applied to its statistics, its source's bytes, and
    whether it is its source's last."""

    __slots__ = ("values", "keep", "index", "flip", "scale", "nbytes", "last")

    def __init__(self, values, keep, index, flip, scale, nbytes, last):
        self.values, self.keep, self.index, self.flip, self.scale, self.nbytes, self.last = \
            values, keep, index, flip, scale, nbytes, last

    def reduce(self, buffers):
        """The block's (index, count, shift, mean of x - shift, M2, min, max), scaled and in the user's
        axis order, for _Acc.fold; its buffer goes back to buffers. The engine finds each work item's min
        and max right after its moments, while it is in cache."""
        v, keep = self.values, self.keep
        shape = tuple(v.shape[a] for a in keep)
        layout = _core.layout(v.ndim, dict(zip(keep, shape)))  # v's rank, so five arrays: one more axis
        shift, mean, m2, lo, hi = (a.reshape(layout) for a in np.empty((5, math.prod(shape))))  # may pass 64
        _normc.moments(v, _checks.dtype_code(v.dtype), tuple(a not in keep for a in range(v.ndim)), mean, m2, 0.0,
                       lo, hi, shift)
        buffers.give(v)
        n = v.size // max(math.prod(shape), 1)
        m2 *= n  # var -> M2
        s = self.scale
        stats = [a.reshape(shape).T if self.flip else a.reshape(shape) for a in  # flip: Fortran order
                 ((shift, mean, m2, lo, hi) if s == 1 else (shift * s, mean * s, m2 * (s * s), lo * s, hi * s))]
        return (self.index, n, *stats)


def _compute_dtype(dtype, name):
    """The float dtype blocks are reduced in: floats as they are (the engine accumulates float32 in
    float32, see the design's numerics), integers (pixels, counts) and bools in float64, exactly for up
    to 53 bits."""
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    if dtype.kind == "f" and not dtype.isnative:  # big-endian files and arrays: swapped block by block
        dtype = dtype.newbyteorder("=")
    if _checks.dtype_code(dtype) is None:
        raise DatasetError(f"{name}: expected float, integer or bool data, got dtype {dtype}")
    return dtype


class _Source:
    """One input of shape `shape` (`fortran`: stored in Fortran order, read as the C order of the reversed
    shape): its kept axes, blocks and their pieces. Subclasses give `block(outer, i, k, d)`, the values
    of rows i:i+k of axis d at the leading index `outer`, in order."""

    scale = 1.0
    pooled = True  # jobs (read, inflate or decode, then reduce) run on the pool

    def __init__(self, name, shape, dtype, fortran=False):
        self.reversed = fortran
        self.name, self.shape, self.dtype = name, tuple(shape)[::-1] if fortran else tuple(shape), np.dtype(dtype)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.fdtype = _compute_dtype(self.dtype, name)

    def resolve(self, axis, default_kept):
        """The kept axes (sorted, of the C-order shape) and their shape, for the user's `axis`."""
        ndim = len(self.shape)
        spec = default_kept if axis is None else axis
        try:
            kept = () if spec == () else _checks.axes(spec, ndim, "channel_axis")
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{self.name}: {e} (shape {self.shape[::-1] if self.reversed else self.shape})") \
                from None
        if self.reversed:
            kept = tuple(sorted(ndim - 1 - a for a in kept))
        self.kept = kept
        shape = tuple(self.shape[a] for a in kept)
        return shape[::-1] if self.reversed else shape

    def jobs(self, buffers):
        """Zero-argument callables, in order, each returning the next _Piece (of at most buffers.size
        bytes where a row fits)."""
        block_bytes = buffers.size
        shape, kept, item = self.shape, self.kept, max(self.dtype.itemsize, self.fdtype.itemsize)
        if 0 in shape:
            return []
        if not shape:  # a 0-d array
            return [lambda: self._piece(buffers, (), 0, 1, 0, True)]
        # The outermost axis d whose rows (its trailing axes) fit a block; blocks are runs of them.
        d = next((d for d in range(len(shape)) if math.prod(shape[d + 1:]) * item <= block_bytes), len(shape) - 1)
        per = max(1, block_bytes // (math.prod(shape[d + 1:]) * item))
        starts = [(outer, i) for outer in np.ndindex(*shape[:d]) for i in range(0, shape[d], per)]
        return [lambda o=o, i=i, j=j: self._piece(buffers, o, i, min(per, shape[d] - i), d, j == len(starts) - 1)
                for j, (o, i) in enumerate(starts)]

    def _block_shape(self, k, d):
        """The shape of k rows of axis d (a 0-d input's one element where d is past its axes)."""
        return (k,) + self.shape[d + 1:] if d < len(self.shape) else ()

    def _piece(self, buffers, outer, i, k, d, last):
        values = self.block(buffers, outer, i, k, d)
        if values.dtype != self.fdtype:
            read, values = values, values.astype(self.fdtype)
            buffers.give(read)
        kept = self.kept
        index = tuple(outer[a] for a in kept if a < d) + ((slice(i, i + k),) if d in kept else ()) \
            + (slice(None),) * sum(a > d for a in kept)
        if self.reversed:  # the accumulator is in the user's axis order
            index = index[::-1]
        return _Piece(values, tuple(a - d for a in kept if a >= d), index, self.reversed, self.scale,
                      values.size * self.dtype.itemsize, last)


class _ArraySource(_Source):
    pooled = False  # blocks are views, reduced by the caller's thread with the engine's threads

    def __init__(self, x, name):
        super().__init__(name, x.shape, x.dtype)
        self.x = x

    def block(self, buffers, outer, i, k, d):
        x = self.array()
        return x[outer][i:i + k] if d < x.ndim else x

    def array(self):
        return self.x


def _npy_header(f, name):
    """(shape, dtype, fortran_order) of the .npy stream f, left at the start of the data."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read[version](f)
    except Exception as e:  # NumPy's parser of the user's bytes: any failure (a TokenError too) is damage
        raise DatasetError(f"{name}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if any(n < 0 for n in shape):
        raise DatasetError(f"{name}: corrupt header: negative dimension in shape {shape}")
    if len(shape) > 64:
        raise DatasetError(f"{name}: corrupt header: {len(shape)} dimensions, NumPy's most is 64")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise DatasetError(f"{name}: expected float, integer or bool data, got dtype {dtype}")
    return shape, dtype, fortran


def read_buffer(nbytes):
    """An empty uint8 array of nbytes for a read() to fill, starting on a cache line: the kernel's copy
    from the page cache into a buffer 16 bytes past a 32-byte boundary (where NumPy's large allocations
    start) ran at a fifth of the speed on an AMD EPYC (52 vs 10 ms for 134 MB)."""
    raw = np.empty(nbytes + 63, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes]


class _Buffers:
    """The read buffers of one call, `size` bytes each, reused: a fresh 4 MB buffer page-faults on every
    block, which made a read of a cached file twice as slow (measured). `take` gives an array of a block's
    shape and dtype; `give` returns its memory once the block is reduced."""

    def __init__(self, size):
        self.size, self._free, self._mine = size, [], {}  # _mine: id of the allocation -> its buffer

    def take(self, shape, dtype):
        n = math.prod(shape) * dtype.itemsize
        if n > self.size:  # one row larger than a block
            return read_buffer(n).view(dtype).reshape(shape)
        try:
            buf = self._free.pop()
        except IndexError:
            buf = read_buffer(self.size)
            self._mine[id(buf.base)] = buf
        return buf[:n].view(dtype).reshape(shape)

    def give(self, values):
        buf = self._mine.get(id(values.base))
        if buf is not None and buf.base is values.base:
            self._free.append(buf)


def _read_into(f, buf, name, total):
    """Fills buf (an array) from the binary stream f; a short read (the input ended early, say shortened
    while being read) or a read error raises DatasetError naming the input."""
    view, got = memoryview(buf.reshape(-1).view(np.uint8)), 0
    try:
        while got < len(view):  # one read() returns at most about 2 GiB
            n = f.readinto(view[got:])
            if not n:
                raise DatasetError(f"{name}: truncated: its header says {total} bytes of data, it ended before "
                                   "them (shortened while being read?)")
            got += n
    except _ARCHIVE_ERRORS as e:
        raise DatasetError(f"{name}: unreadable ({e.strerror if isinstance(e, OSError) and e.strerror else e})") \
            from None
    return buf


def _version(f):
    """What identifies the file f holds open as the one first read: device, inode, size and time of the
    last write. A file replaced, shortened or rewritten in place (np.save again) changes it."""
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _same_version(f, version, name):
    if _version(f) != version:
        raise DatasetError(f"{name}: changed while being read (replaced or written to by another process)")


class _NpySource(_Source):
    """A .npy file. Each block is read by a job of its own (open, check, seek, read, close): blocks are
    read in parallel, only the blocks in flight hold a descriptor (10,000 files under `ulimit -n 1024`),
    and a file that changes while it is read is an error naming it: shortened, a short read (a
    memory-mapped file would raise SIGBUS); replaced or rewritten, a new version (_version)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            shape, dtype, fortran = _npy_header(f, path)
            offset = f.tell()
            self.version = _version(f)
        super().__init__(path, shape, dtype, fortran)
        size = self.version[2]
        if size < offset + self.nbytes:
            raise DatasetError(f"{path}: truncated: its header says {self.nbytes} bytes of data, the file holds "
                               f"{max(size - offset, 0)}")
        self.path, self.offset = path, offset

    def block(self, buffers, outer, i, k, d):
        shape = self.shape
        first = 0  # the block's first element, in C order
        for o, n in zip(outer, shape):
            first = first * n + o
        if d < len(shape):
            first = (first * shape[d] + i) * math.prod(shape[d + 1:])
        buf = buffers.take(self._block_shape(k, d), self.dtype)
        try:
            f = open(self.path, "rb", buffering=0)
        except OSError as e:  # removed (or its permissions changed) since its header was read
            raise DatasetError(f"{self.name}: changed while being read ({e.strerror or e})") from None
        with f:
            _same_version(f, self.version, self.name)
            f.seek(self.offset + first * self.dtype.itemsize)
            return _read_into(f, buf, self.name, self.nbytes)


class _NpzSource(_Source):
    """A member of a .npz archive, inflated as a stream: job t waits for job t - 1 to have read its bytes.
    The stream opens at the first block and closes after the last (or at close()), so only the members
    being read hold a descriptor; the archive must be the version whose header was read (_version)."""

    def __init__(self, path, member):
        self.path, self.member, self._file, self._stream = path, member, None, None
        name = f"{path}:{member[:-4]}"
        try:
            self._open(name)
            self.header, self.version = _npy_header(self._stream, name), _version(self._file)
        finally:
            self.close()
        super().__init__(name, *self.header)
        self._failed, self._turn, self._cv = None, 0, threading.Condition()

    def _open(self, name):
        """Opens the archive and the member's stream (self._file, self._stream)."""
        try:
            self._file = open(self.path, "rb")
            self._stream = zipfile.ZipFile(self._file).open(self.member)
        except KeyError:  # the member is gone: the archive was replaced
            raise DatasetError(f"{name}: changed while being read (the member is gone)") from None
        except _ARCHIVE_ERRORS as e:
            raise DatasetError(f"{name}: unreadable ({e})") from None

    def jobs(self, buffers):
        jobs = super().jobs(buffers)
        return [lambda job=job, t=t: self._in_turn(t, job, t == len(jobs) - 1) for t, job in enumerate(jobs)]

    def _in_turn(self, t, job, last):
        with self._cv:
            self._cv.wait_for(lambda: self._turn == t)
            try:
                if self._failed is not None:
                    raise self._failed
                if self._stream is None:
                    self._open(self.name)
                    _same_version(self._file, self.version, self.name)
                    _npy_header(self._stream, self.name)  # to the data
                return job()
            except Exception as e:  # the stream's place is lost: later blocks fail too
                self._failed = e
                raise
            finally:
                if last or self._failed is not None:
                    self.close()
                self._turn += 1
                self._cv.notify_all()

    def close(self):
        for f in (self._stream, self._file):
            if f is not None:
                f.close()
        self._stream = self._file = None

    def block(self, buffers, outer, i, k, d):
        return _read_into(self._stream, buffers.take(self._block_shape(k, d), self.dtype), self.name, self.nbytes)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'normfast[stats]'") from None
    return Image


class _ImageSource(_Source):
    """An image as an (H, W, C) array (C = 1 for grey), decoded on a pool thread, in Pillow mode `mode`
    (None: its own, palettes and colour spaces as RGB or RGBA, bilevel as grey); values scaled to [0, 1]
    by their bit depth unless scale=False."""

    def __init__(self, path, scale, mode):
        Image = _pillow()
        try:
            with open(path, "rb") as f, Image.open(f) as im:  # the header only; decoding waits for the job
                self.version = _version(f)
                self.source_mode, (w, h) = im.mode, im.size
                self.mode = mode or self._mode(im)
                bits = 16 if im.mode.startswith("I;16") or (im.mode == "I" and self._sixteen_bit(im)) else \
                    None if im.mode in ("I", "F") else 8
                frames = getattr(im, "n_frames", 1)
        except MemoryError:
            raise
        except Exception as e:  # Pillow's parsers of the user's bytes: any failure (IndexError too) is damage
            raise DatasetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        if frames > 1:
            warnings.warn(f"{path}: {frames} frames; only the first is read", UserWarning, stacklevel=2)
        try:  # the target mode's channels and dtype, and whether Pillow converts to it, before any read
            probe = np.asarray(Image.new("L" if bits == 16 and mode else self.source_mode, (1, 1)).convert(self.mode))
        except ValueError:
            raise DatasetError(f"{path}: Pillow cannot convert its mode {self.source_mode} to mode={self.mode!r}") \
                from None
        super().__init__(path, (h, w, 1 if probe.ndim == 2 else probe.shape[-1]), probe.dtype.newbyteorder("="))
        self.path = path
        # Pillow clips 16-bit grey converted to an 8-bit mode at 255: such images are taken to 8 bits first.
        self.narrow = bits == 16 and probe.dtype.itemsize == 1
        # By the values' bit depth, whatever the container (16-bit grey decodes as uint16 from PNG and as
        # 32-bit "I" from PGM, Pillow stretching any PGM maxval to 65535) or the mode asked for: 8-bit
        # modes hold 0..255 (bilevel, as bool, 0 and 1), wider ones the source's values.
        depth = {8: 1 / 255, 16: 1 / 65535, None: 1.0}
        self.scale = (1.0 if probe.dtype == bool else depth[8] if probe.dtype.itemsize == 1 else depth[bits]) \
            if scale else 1.0

    @staticmethod
    def _sixteen_bit(im):
        """Whether a mode "I" image holds 16-bit samples (a 16-bit PGM, or a raw 16-bit tile)."""
        return im.format == "PPM" or any(str(t.args).startswith("I;16") for t in im.tile)

    @staticmethod
    def _mode(im):
        if im.mode in _KEPT_MODES:
            return im.mode
        if im.mode == "P":
            return "RGBA" if "transparency" in im.info else "RGB"
        return _CONVERT.get(im.mode, "RGB")

    def jobs(self, buffers):
        return [lambda: self._piece(buffers, (), 0, self.shape[0], 0, True)]

    def block(self, buffers, outer, i, k, d):
        Image = _pillow()
        try:
            with open(self.path, "rb") as f, Image.open(f) as im:
                _same_version(f, self.version, self.path)
                if self.narrow:  # round(v / 257): 65535 -> 255
                    im = Image.fromarray(((np.asarray(im, np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
                a = np.asarray(im if im.mode == self.mode else im.convert(self.mode))
        except (MemoryError, DatasetError):
            raise
        except Exception as e:  # as in __init__ (SyntaxError is Pillow's word for a broken file)
            raise DatasetError(f"{self.path}: not a readable image ({type(e).__name__}: {e})") from None
        if a.shape[:2] != self.shape[:2]:
            raise DatasetError(f"{self.path}: decoded as shape {a.shape}, its header said {self.shape}")
        return a.reshape(self.shape)


def _check_mode(mode):
    """mode (None or a Pillow mode name), checked: a ValueError or TypeError naming the argument."""
    if mode is None:
        return None
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected None or a Pillow mode name such as 'RGB', 'L' or 'RGBA', got "
                        f"{type(mode).__name__}")
    try:
        _pillow().new(mode, (1, 1))
    except ValueError:
        raise ValueError(f"mode: expected a Pillow mode name such as 'RGB', 'L' or 'RGBA', got {mode!r}") from None
    return mode


def _split_member(path):
    """'file.npz:key' as ('file.npz', 'key'); anything else as (path, None)."""
    head, sep, key = path.rpartition(":")
    if sep and head.lower().endswith(".npz") and key and not os.path.lexists(path):  # a file so named wins
        return head, key
    return path, None


def _npz_members(path, key):
    """The .npy members of the archive at path that `key` names (None: all of them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".npy")]
    except _ARCHIVE_ERRORS as e:
        raise DatasetError(f"{path}: not a readable .npz archive ({e})") from None
    if key is not None:
        if key + ".npy" not in members:
            raise DatasetError(f"{path}: no member {key!r} (it has {', '.join(m[:-4] for m in members) or 'none'})")
        members = [key + ".npy"]
    if not members:
        raise DatasetError(f"{path}: an .npz archive with no arrays")
    return members


def _regular(paths):
    """The paths, each checked to be a regular file (through links): a FIFO, socket or device would
    block or never end, so one is refused, naming it."""
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise DatasetError(f"{p}: cannot be read ({e.strerror or e})") from None
        if not stat.S_ISREG(mode):
            raise DatasetError(f"{p}: not a regular file (a FIFO, socket or device), which could block or never end")
    return paths


def _expand(item):
    """(paths, skipped) of an argument: a file; a folder, as its data files (.npy, .npz, images, sorted,
    recursively through linked folders too), the others and hidden entries skipped; or a glob. Every path
    a regular file."""
    s = os.fspath(item)
    file, key = _split_member(s)
    if key is not None:
        _regular([file])
        return [s], []
    if os.path.isdir(s):
        found, skipped, walked = [], [], set()
        for root, dirs, files in os.walk(s, onerror=_unreadable_folder, followlinks=True):
            st = os.stat(root)  # linked folders are followed, each folder once (a link loop ends here)
            if (st.st_dev, st.st_ino) in walked:
                dirs[:] = files[:] = []
                continue
            walked.add((st.st_dev, st.st_ino))
            # Hidden entries are not data (.DS_Store, macOS's ._photo.png, .git/): skipped, and listed.
            skipped += [os.path.join(root, d) + os.sep for d in dirs if d.startswith(".")]
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                data = f.lower().endswith(DATA_EXTENSIONS) and not f.startswith(".")
                (found if data else skipped).append(os.path.join(root, f))
        if not found:
            raise DatasetError(f"{s}: a folder with no data files (.npy, .npz or images: "
                               f"{', '.join(IMAGE_EXTENSIONS)})" + (f"; {_few(skipped)}" if skipped else ""))
        return _regular(sorted(found)), sorted(skipped)
    if os.path.lexists(s):
        return _regular([s]), []
    if glob.has_magic(s):
        found = sorted(p for p in glob.glob(s, recursive=True) if not os.path.isdir(p))
        if not found:
            raise DatasetError(f"{s}: no file matches")
        return _regular(found), []
    raise DatasetError(f"{s}: no such file or folder")


def _unreadable_folder(e):
    """os.walk's error handler: a folder it cannot list is an error naming it, not a silent gap."""
    raise DatasetError(f"{e.filename}: cannot be read ({e.strerror or e})")


def _few(paths, shown=3):
    """'N file(s) that are not data: a, b, c and M more'."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"{len(paths)} file(s) that are not data: {', '.join(paths[:shown])}{more}"


def _sources(inputs, scale, mode):
    """(sources, skipped): the inputs' sources, each file once, and the files folders held that are not
    data."""
    if isinstance(inputs, (str, bytes, os.PathLike)) or hasattr(inputs, "__array__"):  # one input (a DataFrame too)
        inputs = [inputs]
    try:
        items = list(inputs)
    except TypeError:
        raise TypeError(f"paths_or_arrays: expected a path, an array or a list of them, got "
                        f"{type(inputs).__name__}") from None
    if not items:
        raise DatasetError("paths_or_arrays: expected at least one input, got none")
    out, seen, skipped = [], set(), []
    for n, item in enumerate(items):
        if isinstance(item, (str, bytes, os.PathLike)):
            paths, skip = _expand(os.fsdecode(item))
            skipped += skip
            for p in paths:
                st = os.stat(_split_member(p)[0])

                def fresh(member, at=(st.st_dev, st.st_ino)):
                    # One file once (the same device and inode, whatever the links: a glob through a
                    # symlinked folder loop names it many times); .npz members once each, named alone or
                    # with their archive.
                    if (at, member) in seen:
                        return False
                    seen.add((at, member))
                    return True

                out += _open_path(p, scale, mode, fresh)
        else:
            name = f"paths_or_arrays[{n}]"
            out.append(_ArraySource(_checks.array(item, name, "a path or an array"), name))
    return out, skipped


def _open_path(p, scale, mode, fresh):
    """The sources of path p that fresh(member) accepts (member: an .npz member's name, None for a file)."""
    file, key = _split_member(p)
    low = file.lower()
    try:
        if low.endswith(".npz"):
            return [_NpzSource(file, m) for m in _npz_members(file, key) if fresh(m)]
        if not low.endswith(DATA_EXTENSIONS):
            raise DatasetError(f"{p}: unknown kind of file (expected .npy, .npz, .npz:key or an image: "
                               f"{', '.join(IMAGE_EXTENSIONS)})")
        if not fresh(None):
            return []
        return [_NpySource(p)] if low.endswith(".npy") else [_ImageSource(p, scale, mode)]
    except OSError as e:
        raise DatasetError(f"{p}: cannot be read ({e.strerror or e})") from None


def _prefetched(jobs, workers):
    """The results of (job, pooled) pairs in order: pooled jobs computed on `workers` threads up to
    2 * workers ahead, the others called when their turn comes. A pool thread's kernels run on it alone:
    the pool is the parallelism (OpenMP teams on every pool thread would oversubscribe the cores, and
    reading and reducing a block on one core finds it in that core's cache)."""
    def result(job):
        return job.result() if isinstance(job, Future) else job()

    with ThreadPoolExecutor(workers, thread_name_prefix="normfast-data", initializer=_normc.cap_threads_here,
                            initargs=(1,)) as pool:
        pending = deque()
        try:
            for job, pooled in jobs:
                pending.append(pool.submit(job) if pooled else job)
                while pending and (len(pending) > 2 * workers or not isinstance(pending[0], Future)):
                    yield result(pending.popleft())
            while pending:
                yield result(pending.popleft())
        finally:
            for f in pending:
                if isinstance(f, Future):
                    f.cancel()


def _reduced(job, buffers):
    piece = job()
    return piece.reduce(buffers), piece.nbytes, piece.last


def _progress_bar(total, files, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'normfast[stats]'") from None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, dynamic_ncols=True,
                desc=f"{files} file(s)" if files != 1 else "1 file", leave=False)


def dataset_stats(paths_or_arrays, channel_axis=None, *, ddof=0, scale=True, mode=None, progress=False, workers=None,
                  block_bytes=BLOCK_BYTES):
    """Count, mean, variance, std, min and max of a whole data set, as one concatenated array.

    Parameters
    ----------
    paths_or_arrays : a path, an array, or a list of them
        ``.npy`` files and ``.npz`` archives (every member) or members (``"file.npz:key"``), read in
        blocks, never whole; images (Pillow; read as (H, W, C) arrays); folders, read for every data file
        in them (.npy, .npz and images, recursively; other files are skipped, see Returns); globs
        (``"data/**/*.npy"``); and arrays of float, integer or bool data (anything with ``__array__``).
    channel_axis : None, () , int or tuple of ints
        The axes **kept**, one statistic per index of them (scikit-image's name; ``axis`` in normfast's
        reductions names the axes reduced, as in NumPy); every other axis is reduced, so inputs may differ
        in the sizes of reduced axes. None keeps the channel axis of images (the last) and reduces every
        axis of arrays; () reduces every axis.
    ddof : int
        The variance divisor is count - ddof; 0 (the population variance, NumPy's default) as for any
        description of data, where ``precise_batch_norm_stats`` is unbiased as BatchNorm's running
        variance.
    scale : bool
        Scale images to [0, 1] by their bit depth (8-bit values divided by 255, 16-bit by 65535); arrays
        are never scaled.
    mode : None or str
        A Pillow mode ("RGB", "L", "RGBA", ...) every image is converted to, for folders that mix grey,
        palette, CMYK or RGBA images with RGB ones. None: each image as it is (palettes and colour spaces
        as RGB, bilevel as grey), which must then agree in channels. 16-bit grey images converted to an
        8-bit mode are rounded to 8 bits (Pillow would clip them at 255).
    progress : bool
        A progress bar on stderr (tqdm, from the ``stats`` extra).
    workers : None or int
        Threads that read, inflate, decode and reduce blocks (each reducing on its own thread); None: the
        kernels' thread count, normfast.get_num_threads().

    Returns a DatasetStats; its ``skipped`` lists the files folders held that are not data, also
    reported by a UserWarning. Every input is checked (headers, dtypes, the kept shape) before any data is
    read; a file that turns out unreadable or truncated later (shortened while being read, say) raises
    DatasetError naming it.
    """
    ddof = _checks.real(ddof, "ddof")
    ddof = int(ddof) if ddof.is_integer() else ddof
    scale, progress = _checks.flag(scale, "scale"), _checks.flag(progress, "progress")
    workers = _normc.get_num_threads() if workers is None else _checks.positive_int(workers, "workers")
    block_bytes = _checks.positive_int(block_bytes, "block_bytes")
    mode = _check_mode(mode)
    axis = channel_axis
    if axis is not None and not (isinstance(axis, tuple) and not axis):
        axis = tuple(_checks.integer(a, "channel_axis", "None, () , an int or a tuple of ints", repr(axis))
                     for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
    sources, skipped = _sources(paths_or_arrays, scale, mode)
    shape = first = None
    for s in sources:
        kept = s.resolve(axis, (-1,) if isinstance(s, _ImageSource) else ())
        if shape is None:
            shape, first = kept, s
        elif kept != shape:
            if isinstance(s, _ImageSource) and isinstance(first, _ImageSource) and mode is None:
                wide = max((s, first), key=lambda i: i.shape[-1]).mode  # the one that loses nothing
                raise DatasetError(f"{s.name}: channels {kept} (mode {s.source_mode}), expected {shape} as in "
                                   f"{first.name} (mode {first.source_mode}): pass mode={wide!r} "
                                   f"(--mode {wide}) to convert every image to one mode")
            what = "channels" if isinstance(s, _ImageSource) and axis is None else "kept axes of shape"
            raise DatasetError(f"{s.name}: {what} {kept}, expected {shape} as in {first.name} "
                               f"(channel_axis={axis})")
    if skipped:
        warnings.warn(f"dataset_stats: skipped {_few(skipped)}", UserWarning, stacklevel=2)
    acc = _Acc(shape)
    nbytes = sum(s.nbytes for s in sources)
    bar = _progress_bar(nbytes, len(sources), progress)
    buffers = _Buffers(block_bytes)
    jobs = ((functools.partial(_reduced, job, buffers), s.pooled) for s in sources for job in s.jobs(buffers))
    done = 0
    try:
        for stats, size, last in _prefetched(jobs, workers):
            acc.fold(*stats)
            done += last
            if bar is not None:
                bar.update(size)
                bar.set_postfix_str(f"{done}/{len(sources)} files", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        for s in sources:  # an error left some open
            if isinstance(s, _NpzSource):
                s.close()
    counts = np.unique(acc.count)
    count = int(counts[0]) if counts.size else 0
    if count == 0:
        warnings.warn("dataset_stats: no data", RuntimeWarning, stacklevel=2)
        acc.mean[...] = acc.min[...] = acc.max[...] = np.nan
    elif count - ddof <= 0:
        warnings.warn("dataset_stats: degrees of freedom <= 0", RuntimeWarning, stacklevel=2)
    return DatasetStats(count, acc.shift + acc.mean, acc.m2, acc.min, acc.max, ddof, len(sources), nbytes,
                        tuple(skipped))
