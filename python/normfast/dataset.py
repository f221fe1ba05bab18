"""Statistics of whole data sets: count, mean, variance, min and max over `.npy` files (memory-mapped,
read in blocks), `.npz` members (streamed), images (Pillow) and arrays, as if they were one array
concatenated along the reduced axes.

Every input is cut into blocks of whole rows of its C-order layout, so a block is a contiguous run of
its bytes; a small thread pool reads (pages in, inflates, decodes) the next blocks while the caller's
thread reduces the current one with the moments engine. Block statistics are folded per kept element
with Chan's formula in float64, so the result does not depend on the block size beyond rounding."""
import glob
import math
import mmap
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

from . import _checks, _normc, norms
from .functional import fold

__all__ = ["dataset_stats", "DatasetStats", "DatasetError"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
BLOCK_BYTES = 1 << 22  # a block stays in cache for the min/max pass that follows the moments pass
_SEQUENTIAL = getattr(mmap, "MADV_SEQUENTIAL", None)  # not on Windows

# Pillow modes read as they are, and the mode the others are converted to (palettes and colour spaces
# to RGB, bilevel to grey); 16-bit grey ("I;16*") stays 16-bit.
_KEPT_MODES = {"L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L"}
_CONVERT = {"1": "L", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB"}
_SCALES = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535}


class DatasetError(ValueError):
    """Input that cannot be read as data; the message names the file (or argument) and what is wrong."""


class DatasetStats:
    """The statistics of a data set: `count` (samples behind each statistic), float64 `mean`, `var`,
    `std`, `min`, `max` of the kept axes' shape (NumPy scalars when every axis is reduced), `ddof`,
    `files` (inputs read) and `nbytes` (bytes of data read)."""

    STATISTICS = ("mean", "var", "std", "min", "max")  # the arrays, in the order they are shown

    def __init__(self, count, mean, m2, lo, hi, ddof, files, nbytes):
        self.count, self.ddof, self.files, self.nbytes = count, ddof, files, nbytes
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
             "nbytes": self.nbytes}
        d.update({k: np.asarray(getattr(self, k)).tolist() for k in self.STATISTICS})
        return d

    def __repr__(self):
        return f"DatasetStats(count={self.count}, shape={self.shape}, files={self.files}, ddof={self.ddof})"


def _out(a):
    return a[()] if a.ndim == 0 else a


class _Acc:
    """Per kept element: count, shift and the mean of x - shift, M2 (float64, folded with Chan's formula
    in shifted frames), min and max."""

    def __init__(self, shape):
        self.count = np.zeros(shape, np.int64)
        self.shift, self.mean, self.m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.min, self.max = np.full(shape, np.inf), np.full(shape, -np.inf)

    def fold(self, index, n, shift, mean, m2, lo, hi):
        c = self.count[index]
        self.shift[index], self.mean[index], self.m2[index] = fold(
            c, self.shift[index], self.mean[index], self.m2[index], n, shift, mean, m2)
        self.count[index] = c + n
        self.min[index] = np.minimum(self.min[index], lo)  # a NaN anywhere gives NaN, as numpy.min
        self.max[index] = np.maximum(self.max[index], hi)


class _Piece:
    """One block ready to reduce: its values (a float dtype the engine reads), the block axes kept, the
    slot of the accumulator it lands in, a scale applied to its statistics, and its source's bytes."""

    __slots__ = ("values", "keep", "index", "flip", "scale", "nbytes", "last")

    def __init__(self, values, keep, index, flip, scale, nbytes, last):
        self.values, self.keep, self.index, self.flip, self.scale, self.nbytes, self.last = \
            values, keep, index, flip, scale, nbytes, last


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
    pooled = True  # jobs run on the pool (reading, inflating, decoding), not in the reducing thread

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
            kept = () if spec == () else _checks.axes(spec, ndim)
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{self.name}: {e} (shape {self.shape[::-1] if self.reversed else self.shape})") \
                from None
        if self.reversed:
            kept = tuple(sorted(ndim - 1 - a for a in kept))
        self.kept = kept
        shape = tuple(self.shape[a] for a in kept)
        return shape[::-1] if self.reversed else shape

    def jobs(self, block_bytes):
        """Zero-argument callables, in order, each returning the next _Piece."""
        shape, kept, item = self.shape, self.kept, max(self.dtype.itemsize, self.fdtype.itemsize)
        if 0 in shape:
            return []
        if not shape:  # a 0-d array
            return [lambda: self._piece((), 0, 1, 0, True)]
        # The outermost axis d whose rows (its trailing axes) fit a block; blocks are runs of them.
        d = next((d for d in range(len(shape)) if math.prod(shape[d + 1:]) * item <= block_bytes), len(shape) - 1)
        per = max(1, block_bytes // (math.prod(shape[d + 1:]) * item))
        starts = [(outer, i) for outer in np.ndindex(*shape[:d]) for i in range(0, shape[d], per)]
        return [lambda o=o, i=i, j=j: self._piece(o, i, min(per, shape[d] - i), d, j == len(starts) - 1)
                for j, (o, i) in enumerate(starts)]

    def _piece(self, outer, i, k, d, last):
        values = self.block(outer, i, k, d)
        if values.dtype != self.fdtype:
            values = values.astype(self.fdtype)
        kept = self.kept
        index = tuple(outer[a] for a in kept if a < d) + ((slice(i, i + k),) if d in kept else ()) \
            + (slice(None),) * sum(a > d for a in kept)
        if self.reversed:  # the accumulator is in the user's axis order
            index = index[::-1]
        return _Piece(values, tuple(a - d for a in kept if a >= d), index, self.reversed, self.scale,
                      values.size * self.dtype.itemsize, last)


class _ArraySource(_Source):
    pooled = False  # blocks are views

    def __init__(self, x, name):
        super().__init__(name, x.shape, x.dtype)
        self.x = x

    def block(self, outer, i, k, d):
        x = self.array()
        return x[outer][i:i + k] if d < x.ndim else x

    def array(self):
        return self.x


def _npy_header(f, name):
    """(shape, fortran_order, dtype) of the .npy stream f, left at the start of the data."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read[version](f)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"{name}: not a readable .npy array ({e})") from None
    if any(n < 0 for n in shape):
        raise DatasetError(f"{name}: corrupt header: negative dimension in shape {shape}")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise DatasetError(f"{name}: expected float, integer or bool data, got dtype {dtype}")
    return shape, fortran, dtype


class _NpySource(_ArraySource):
    """A .npy file, memory-mapped (by its first block) and marked as read in order (MADV_SEQUENTIAL), so
    the OS reads a cold file ahead while earlier blocks are reduced. A block is a view: its job runs in
    the reducing thread, as handing it to the pool costs more than it does (measured)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            shape, fortran, dtype = _npy_header(f, path)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
        _Source.__init__(self, path, shape, dtype, fortran)
        if size < offset + self.nbytes:
            raise DatasetError(f"{path}: truncated: its header says {self.nbytes} bytes of data, the file holds "
                               f"{max(size - offset, 0)}")
        self.path, self.offset = path, offset
        self.x, self._lock = None, threading.Lock()

    def array(self):
        with self._lock:
            if self.x is None:
                with open(self.path, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                if _SEQUENTIAL is not None:
                    mapped.madvise(_SEQUENTIAL)
                self.x = np.frombuffer(mapped, self.dtype, math.prod(self.shape), self.offset).reshape(self.shape)
        return self.x


class _NpzSource(_Source):
    """A member of a .npz archive, inflated as a stream: each job reads the next block's bytes, in turn."""

    def __init__(self, path, archive, member):
        name = f"{path}:{member[:-4]}"
        try:
            self.stream = archive.open(member)
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:  # a damaged local header
            raise DatasetError(f"{name}: unreadable ({e})") from None
        shape, fortran, dtype = _npy_header(self.stream, name)
        super().__init__(name, shape, dtype, fortran)
        self._turn, self._cv = 0, threading.Condition()

    def jobs(self, block_bytes):
        # Jobs start in order on the pool; each waits for the one before it to have read its bytes.
        return [lambda job=job, t=t: self._in_turn(t, job) for t, job in enumerate(super().jobs(block_bytes))]

    def _in_turn(self, t, job):
        with self._cv:
            self._cv.wait_for(lambda: self._turn == t)
            try:
                return job()
            finally:
                self._turn += 1
                self._cv.notify_all()

    def block(self, outer, i, k, d):
        shape = (k,) + self.shape[d + 1:] if d < len(self.shape) else ()
        buf = np.empty(shape, self.dtype)
        try:
            got = self.stream.readinto(buf.reshape(-1).view(np.uint8)) if buf.size else 0
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:  # bad CRC, corrupt deflate stream
            raise DatasetError(f"{self.name}: unreadable ({e})") from None
        if got != buf.nbytes:
            raise DatasetError(f"{self.name}: truncated: its header says {self.nbytes} bytes of data, the "
                               "member holds fewer")
        return buf


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install 'normfast[stats]'") from None
    return Image


class _ImageSource(_Source):
    """An image as an (H, W, C) array (C = 1 for grey), decoded on a pool thread; 8- and 16-bit values
    scaled to [0, 1] unless scale=False."""

    def __init__(self, path, scale):
        Image = _pillow()
        try:
            with Image.open(path) as im:  # the header only; decoding waits for the job
                mode, (w, h) = self._mode(im), im.size
                bits16 = mode == "I" and self._sixteen_bit(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{path}: not a readable image ({e})") from None
        probe = np.asarray(Image.new(mode, (1, 1)))
        super().__init__(path, (h, w, 1 if probe.ndim == 2 else probe.shape[-1]), probe.dtype.newbyteorder("="))
        self.path, self.mode = path, mode
        # By the image's bit depth, whatever the container: 16-bit grey decodes as uint16 from PNG and as
        # 32-bit "I" from PGM (Pillow stretches any PGM maxval to 65535).
        self.scale = (1 / 65535 if bits16 else _SCALES.get(self.dtype, 1.0)) if scale else 1.0

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

    def jobs(self, block_bytes):
        return [lambda: self._piece((), 0, self.shape[0], 0, True)]

    def block(self, outer, i, k, d):
        Image = _pillow()
        try:
            with Image.open(self.path) as im:
                a = np.asarray(im if im.mode == self.mode else im.convert(self.mode))
        except (OSError, ValueError, SyntaxError) as e:  # SyntaxError: Pillow's word for a broken file
            raise DatasetError(f"{self.path}: not a readable image ({e})") from None
        if a.shape[:2] != self.shape[:2]:
            raise DatasetError(f"{self.path}: decoded as shape {a.shape}, its header said {self.shape}")
        return a.reshape(self.shape)


def _split_member(path):
    """'file.npz:key' as ('file.npz', 'key'); anything else as (path, None)."""
    head, sep, key = path.rpartition(":")
    if sep and head.lower().endswith(".npz") and key:
        return head, key
    return path, None


def _open_npz(path, key):
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{path}: not a readable .npz archive ({e})") from None
    members = [m for m in archive.namelist() if m.endswith(".npy")]
    if key is not None:
        if key + ".npy" not in members:
            raise DatasetError(f"{path}: no member {key!r} (it has {', '.join(m[:-4] for m in members) or 'none'})")
        members = [key + ".npy"]
    if not members:
        raise DatasetError(f"{path}: an .npz archive with no arrays")
    return [_NpzSource(path, archive, m) for m in members]


def _regular(paths):
    """The paths, each checked to be a regular file (through links): a FIFO, socket or device would
    block or never end, so one is refused, naming it."""
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise DatasetError(f"{p}: cannot be read ({e.strerror or e})") from None
        if not stat.S_ISREG(mode):
            raise DatasetError(f"{p}: not a regular file (a FIFO, socket or device); name the files to read")
    return paths


def _expand(item):
    """The input paths an argument names: a file, a folder (its images, sorted, recursively) or a glob;
    every one a regular file."""
    s = os.fspath(item)
    file, key = _split_member(s)
    if key is not None:
        _regular([file])
        return [s]
    if os.path.isdir(s):
        found = sorted(os.path.join(root, f) for root, _, files in os.walk(s) for f in files
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise DatasetError(f"{s}: a folder with no images ({', '.join(IMAGE_EXTENSIONS)})")
        return _regular(found)
    if os.path.lexists(s):
        return _regular([s])
    if glob.has_magic(s):
        found = sorted(p for p in glob.glob(s, recursive=True) if not os.path.isdir(p))
        if not found:
            raise DatasetError(f"{s}: no file matches")
        return _regular(found)
    raise DatasetError(f"{s}: no such file or folder")


def _sources(inputs, scale):
    if isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "__array__"):  # one input (a DataFrame too)
        inputs = [inputs]
    try:
        items = list(inputs)
    except TypeError:
        raise TypeError(f"paths_or_arrays: expected a path, an array or a list of them, got "
                        f"{type(inputs).__name__}") from None
    if not items:
        raise DatasetError("paths_or_arrays: expected at least one input, got none")
    out, seen = [], set()
    for n, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            for p in _expand(item):
                file, key = _split_member(p)
                st = os.stat(file)
                # One file once (the same device and inode, whatever the links: a glob through a symlinked
                # folder loop names it many times); .npz members count by member.
                if (st.st_dev, st.st_ino, key) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino, key))
                out += _open_path(p, scale)
        else:
            name = f"paths_or_arrays[{n}]"
            out.append(_ArraySource(_checks.array(item, name, "a path or an array"), name))
    return out


def _open_path(p, scale):
    file, key = _split_member(p)
    low = file.lower()
    try:
        if low.endswith(".npy"):
            return [_NpySource(p)]
        if low.endswith(".npz"):
            return _open_npz(file, key)
        if low.endswith(IMAGE_EXTENSIONS):
            return [_ImageSource(p, scale)]
    except OSError as e:
        raise DatasetError(f"{p}: cannot be read ({e.strerror or e})") from None
    raise DatasetError(f"{p}: unknown kind of file (expected .npy, .npz, .npz:key or an image: "
                       f"{', '.join(IMAGE_EXTENSIONS)})")


def _prefetched(jobs, workers):
    """The results of (job, pooled) pairs in order: pooled jobs computed on `workers` threads up to
    2 * workers ahead, the others called when their turn comes."""
    def result(job):
        return job.result() if isinstance(job, Future) else job()

    with ThreadPoolExecutor(workers, thread_name_prefix="normfast-read") as pool:
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


def _progress_bar(total, files, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'normfast[stats]'") from None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, dynamic_ncols=True,
                desc=f"{files} file(s)" if files != 1 else "1 file", leave=False)


def dataset_stats(paths_or_arrays, axis=None, *, ddof=0, scale=True, progress=False, workers=2,
                  block_bytes=BLOCK_BYTES):
    """Count, mean, variance, std, min and max of a whole data set, as one concatenated array.

    Parameters
    ----------
    paths_or_arrays : a path, an array, or a list of them
        ``.npy`` files (memory-mapped and read in blocks, never whole), ``.npz`` archives (every member)
        or members (``"file.npz:key"``), images or folders of images (Pillow; read as (H, W, C)
        arrays), globs (``"data/**/*.npy"``) and arrays of float, integer or bool data.
    axis : None, () , int or tuple of ints
        The axes **kept** (as ``channel`` in the norms); every other axis is reduced, so inputs may differ
        in the sizes of reduced axes. None keeps the channel axis of images (the last) and reduces every
        axis of arrays; () reduces every axis.
    ddof : int
        The variance divisor is count - ddof.
    scale : bool
        Scale 8- and 16-bit images to [0, 1] (divide by 255 or 65535); arrays are never scaled.
    progress : bool
        A progress bar on stderr (tqdm, from the ``stats`` extra).
    workers : int
        Threads that read, inflate and decode ahead of the reduction.

    Returns a DatasetStats. Every input is checked (headers, dtypes, the kept shape) before any data is
    read; a file that turns out unreadable or truncated later raises DatasetError naming it.
    """
    ddof = _checks.real(ddof, "ddof")
    ddof = int(ddof) if ddof.is_integer() else ddof
    scale, progress = _checks.flag(scale, "scale"), _checks.flag(progress, "progress")
    workers = _checks.positive_int(workers, "workers")
    block_bytes = _checks.positive_int(block_bytes, "block_bytes")
    if axis is not None and not (isinstance(axis, tuple) and not axis):
        axis = tuple(_checks.integer(a, "axis", "None, () , an int or a tuple of ints", repr(axis))
                     for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
    sources = _sources(paths_or_arrays, scale)
    shape = first = None
    for s in sources:
        kept = s.resolve(axis, (-1,) if isinstance(s, _ImageSource) else ())
        if shape is None:
            shape, first = kept, s.name
        elif kept != shape:
            what = "channels" if isinstance(s, _ImageSource) else "kept axes of shape"
            raise DatasetError(f"{s.name}: {what} {kept}, expected {shape} as in {first} (axis={axis})")
    acc = _Acc(shape)
    nbytes = sum(s.nbytes for s in sources)
    bar = _progress_bar(nbytes, len(sources), progress)
    jobs = ((job, s.pooled) for s in sources for job in s.jobs(block_bytes))
    done = 0
    try:
        for piece in _prefetched(jobs, workers):
            _fold(acc, piece)
            done += piece.last
            if bar is not None:
                bar.update(piece.nbytes)
                bar.set_postfix_str(f"{done}/{len(sources)} files", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    counts = np.unique(acc.count)
    count = int(counts[0]) if counts.size else 0
    if count == 0:
        warnings.warn("dataset_stats: no data", RuntimeWarning, stacklevel=2)
        acc.mean[...] = acc.min[...] = acc.max[...] = np.nan
    elif count - ddof <= 0:
        warnings.warn("dataset_stats: degrees of freedom <= 0", RuntimeWarning, stacklevel=2)
    return DatasetStats(count, acc.shift + acc.mean, acc.m2, acc.min, acc.max, ddof, len(sources), nbytes)


def _fold(acc, piece):
    """The block's moments, and its min and max (the engine reads each work item again while it is in
    cache), folded into acc."""
    v, keep = piece.values, piece.keep
    layout = norms._layout(v.ndim, {a: v.shape[a] for a in keep})  # v's rank: no room for a fifth axis at 64
    stats = np.empty(5 * math.prod(layout)).reshape(5, -1)  # one allocation
    shift, mean, var, lo, hi = (a.reshape(layout) for a in stats)
    _normc.moments(v, _checks.dtype_code(v.dtype), tuple(a not in keep for a in range(v.ndim)), mean, var, 0.0, lo, hi,
                   shift)
    n = v.size // max(mean.size, 1)
    shape = tuple(v.shape[a] for a in keep)
    shift, mean, var, lo, hi = (a.reshape(shape) for a in (shift, mean, var, lo, hi))
    if piece.flip:  # the statistics of a Fortran-order input, in the user's axis order
        shift, mean, var, lo, hi = shift.T, mean.T, var.T, lo.T, hi.T
    s = piece.scale
    acc.fold(piece.index, n, shift * s, mean * s, var * (n * s * s), lo * s, hi * s)
