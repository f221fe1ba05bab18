"""normfast on Dask arrays (the `dask` extra): statistics of arrays larger than memory or spread over a
cluster, and the norms applied block by block.

Statistics are one `dask.array.reduction`: each block's (count, mean, M2) comes from the moments engine
(one task per block), and the partials are merged in a tree with Chan's formula, so the result equals the
in-memory one up to rounding for any chunking, including chunks split along the reduced axes. The norms
run the in-memory functions on each block, with the whole array's statistics where they need them;
a normalized axis split across chunks is rechunked to one chunk first."""
import dask
import dask.array as da
import numpy as np

from . import _checks, _core, norms
from .reductions import data, fold, moments64, stats_dtype
from .stats import RunningCovariance

__all__ = ["moments", "batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm",
           "precise_batch_norm_stats", "covariance"]

# The partial statistics of a block: count, mean and M2 of every kept element (float64).
# A block's record per kept element: count, shift, mean of x - shift (merged in shifted frames,
# reductions.fold; the aggregate's mean is the whole one, shift 0) and M2.
_PARTIAL = np.dtype([("n", np.float64), ("shift", np.float64), ("mean", np.float64), ("m2", np.float64)])


def _array(x, name="x", integers=False):
    """x as a dask array of floats (or, for the statistics, also of integers and bools) with known chunk
    sizes."""
    if not isinstance(x, da.Array):
        raise TypeError(f"{name}: expected a dask array, got {type(x).__name__}")
    if any(np.isnan(n) for c in x.chunks for n in c):
        raise ValueError(f"{name}: the dask array has unknown chunk sizes ({x.chunks}); call "
                         f"{name}.compute_chunk_sizes() first")
    if integers:
        data(np.empty(0, x.dtype), name)  # the in-memory statistics' dtype rule and message
    elif _checks.dtype_code(x.dtype) is None:
        raise TypeError(f"{name}: expected a float16, bfloat16, float32 or float64 array, got dtype {x.dtype}")
    return x


def _block_partial(b, axis, keepdims, computing_meta=False):
    if computing_meta:
        return np.empty((0,) * b.ndim, _PARTIAL)
    keep = tuple(i for i in range(b.ndim) if i not in axis)
    shape = tuple(1 if i in axis else n for i, n in enumerate(b.shape))
    out = np.zeros(shape, _PARTIAL)
    n = int(np.prod([b.shape[i] for i in axis]))
    if n and b.size:
        b, code = data(b, "x")
        shift, mean, var = moments64(b, code, keep, shifted=True)
        out["n"], out["shift"], out["mean"], out["m2"] = n, shift, mean, var * n
    return out


def _merge_partials(parts, axis, keepdims, computing_meta=False):
    """The partials of a tree node's children (nested lists along the reduced axes), merged in order."""
    if computing_meta:
        return parts
    flat = []

    def walk(p):
        for q in p if isinstance(p, list) else [p]:
            (walk if isinstance(q, list) else flat.append)(q)

    walk(parts)
    # A block's count is the same for each of its kept elements; empty blocks add nothing.
    live = [p for p in flat if p.size and p["n"].flat[0] > 0] or flat[:1]
    acc = live[0].copy()
    for p in live[1:]:
        acc["shift"], acc["mean"], acc["m2"] = fold(acc["n"], acc["shift"], acc["mean"], acc["m2"], p["n"], p["shift"],
                                                    p["mean"], p["m2"])
        acc["n"] += p["n"]
    return acc


def _aggregate(parts, axis, keepdims, computing_meta=False):
    acc = _merge_partials(parts, axis, keepdims, computing_meta)
    if computing_meta:
        return np.empty((0,) * (acc.ndim if keepdims else acc.ndim - len(axis)), _PARTIAL)
    acc["mean"] += acc["shift"]
    acc["shift"] = 0
    return acc if keepdims else acc.reshape([n for i, n in enumerate(acc.shape) if i not in axis])


def _partials(x, red, keepdims=False, split_every=None):
    """The (n, mean, m2) record of every kept element, lazily, float64."""
    meta = np.empty((0,) * (x.ndim if keepdims else x.ndim - len(red)), _PARTIAL)
    return da.reduction(x, _block_partial, _aggregate, combine=_merge_partials, axis=red, keepdims=keepdims,
                        dtype=_PARTIAL, concatenate=False, split_every=split_every, meta=meta)


def _finish(p, ddof, dtype):
    with np.errstate(divide="ignore", invalid="ignore"):
        var = p["m2"] / np.maximum(p["n"] - ddof, 0)
    mean = np.where(p["n"] > 0, p["mean"], np.nan)
    return mean.astype(dtype), np.where(p["n"] > 0, var, np.nan).astype(dtype)


def moments(x, axis=None, *, ddof=0, keepdims=False, split_every=None):
    """Lazy mean and variance of a dask array of floats, integers or bools over `axis` (as
    normfast.moments: float64 for float64, integer and bool data, float32 otherwise; NaN where nothing
    is reduced). split_every: the tree's fan-in."""
    x = _array(x, integers=True)
    red = _checks.axes(axis, x.ndim)
    ddof = _checks.real(ddof, "ddof")
    keepdims = _checks.flag(keepdims, "keepdims")
    dtype = stats_dtype(x)
    p = _partials(x, red, keepdims, split_every)
    both = p.map_blocks(lambda b: np.stack(_finish(b, ddof, dtype)), new_axis=0, dtype=dtype,
                        chunks=((2,),) + p.chunks)
    return both[0], both[1]


def _slice(v, loc):
    return None if v is None else v[loc[0]:loc[1]]


def _per_channel(x, c, fn, *stats):
    """fn(block, channel range, *stats slices) over x's blocks, stats (C,) dask or numpy arrays laid along
    the channel axis."""
    shape = [1] * x.ndim
    shape[c] = x.shape[c]
    chunks = [(1,)] * x.ndim
    chunks[c] = x.chunks[c]
    lazy = [da.asarray(s).reshape(shape).rechunk(tuple(chunks)) for s in stats]

    def block(b, *s, block_info=None):
        loc = block_info[0]["array-location"][c]
        return fn(b, loc, *(v.reshape(-1) for v in s))

    return da.map_blocks(block, x, *lazy, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, training=False,
               momentum=0.1, eps=1e-5, axis=1, unbiased=True, activation=None):
    """normfast.batch_norm over a dask array: training statistics over the whole array (one reduction),
    then a blockwise apply. Training with running arrays computes the statistics right away to update
    them in place (as the in-memory function does); the result stays lazy."""
    x = _array(x)
    call = _core.channel_args(x, axis, weight, bias, eps, activation, False)
    training, unbiased = _checks.flag(training, "training"), _checks.flag(unbiased, "unbiased")
    momentum = _checks.fraction(momentum, "momentum")
    rm, rv, update = _core.running_pair(call, running_mean, running_var, training, "training", x.size == 0)
    count = x.size // max(call.C, 1)
    if training:
        if count <= 1 and x.size:
            raise ValueError(f"x: expected more than 1 value per channel when training, got {count}")
        p = _partials(x, tuple(i for i in range(x.ndim) if i != call.c))
        mean, var = p["mean"], p["m2"] / count
        if update:
            mean, var = dask.compute(mean, var)
            _core.update_running(rm, rv, mean, var * (count / (count - 1) if unbiased else 1.0), momentum)
    else:
        mean, var = rm, rv

    def block(b, loc, m, v):
        return norms.batch_norm(b, m, v, _slice(call.weight, loc), _slice(call.bias, loc), eps=call.eps, axis=call.c,
                                activation=call.activation)

    return _per_channel(x, call.c, block, mean, var)


def _whole(x, axes):
    """x with each of `axes` in one chunk (rechunked only where one is split)."""
    if all(len(x.chunks[a]) == 1 for a in axes):
        return x
    return x.rechunk({a: -1 for a in axes})


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, use_input_stats=True,
                  eps=1e-5, axis=1, activation=None):
    """normfast.instance_norm over a dask array, blockwise (the spatial axes in one chunk). Running
    statistics are read (use_input_stats=False), never updated here."""
    x = _array(x)
    call = _core.channel_args(x, axis, weight, bias, eps, activation, True)
    use_input_stats = _checks.flag(use_input_stats, "use_input_stats")
    if use_input_stats and (running_mean is not None or running_var is not None):
        raise ValueError("running_mean, running_var: normfast.dask.instance_norm does not update them; give "
                         "them with use_input_stats=False, or none")
    rm, rv, _ = _core.running_pair(call, running_mean, running_var, use_input_stats, "use_input_stats", True,
                                   written=False)
    count = x.size // max(x.shape[0] * call.C, 1)
    if use_input_stats and count <= 1 and x.size:
        raise ValueError(f"x: expected more than 1 spatial element when use_input_stats=True, got {count}")
    x = _whole(x, [i for i in range(x.ndim) if i not in (0, call.c)])

    def block(b, loc, m=None, v=None):
        return norms.instance_norm(b, m, v, _slice(call.weight, loc), _slice(call.bias, loc),
                                   use_input_stats=use_input_stats, eps=call.eps, axis=call.c,
                                   activation=call.activation)

    return _per_channel(x, call.c, block, *(() if use_input_stats else (rm, rv)))


def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, activation=None):
    """normfast.group_norm over a dask array, blockwise: the spatial axes in one chunk, the channel axis
    rechunked only where a chunk boundary falls inside a group."""
    x = _array(x)
    call = _core.channel_args(x, axis, weight, bias, eps, activation, True)
    G = _core.groups(num_groups, call.C, x)  # the whole array's one-value-per-group rule, not each block's
    split = [i for i in range(x.ndim) if i not in (0, call.c)]
    if any(n % (call.C // G) for n in x.chunks[call.c]):
        split.append(call.c)
    x = _whole(x, split)

    def block(b, loc):  # a block may hold one value per group where the whole array (checked) holds more
        return norms._group_norm(b, (loc[1] - loc[0]) // (call.C // G), _slice(call.weight, loc),
                                 _slice(call.bias, loc), call.eps, call.c, call.activation, None, False)

    return _per_channel(x, call.c, block)


def _row_call(x, normalized_shape, fn, *params):
    """fn on each block, the normalized trailing axes in one chunk; params (weight, bias) checked now."""
    x = _array(x)
    nshape = _core.normalized_dims(x, normalized_shape)
    for name, v in zip(("weight", "bias"), params):
        _checks.param(v, nshape, name)
    x = _whole(x, range(x.ndim - len(nshape), x.ndim))
    return x.map_blocks(fn, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5):
    """normfast.layer_norm over a dask array, blockwise (the normalized trailing axes in one chunk)."""
    return _row_call(x, normalized_shape, lambda b: norms.layer_norm(b, normalized_shape, weight, bias, eps=eps),
                     weight, bias)


def rms_norm(x, normalized_shape, weight=None, *, eps=None):
    """normfast.rms_norm over a dask array, blockwise (the normalized trailing axes in one chunk)."""
    return _row_call(x, normalized_shape, lambda b: norms.rms_norm(b, normalized_shape, weight, eps=eps), weight)


def precise_batch_norm_stats(x, channel_axis=1, *, unbiased=True):
    """The exact per-channel (mean, var) of a whole dask array (floats, integers or bools), computed now:
    float64 NumPy arrays, shape (C,), the variance unbiased unless unbiased=False (as
    normfast.precise_batch_norm_stats, whose channel_axis this is)."""
    x = _array(x, integers=True)
    c = _checks.channel_axis(channel_axis, x.ndim, "channel_axis")
    unbiased = _checks.flag(unbiased, "unbiased")
    count = x.size // max(x.shape[c], 1)
    if count < 1 + unbiased:
        raise ValueError(f"x: expected more than {int(unbiased)} value(s) per channel, got {count}")
    p = _partials(x, tuple(i for i in range(x.ndim) if i != c)).compute()
    return p["mean"], p["m2"] / (count - unbiased)


def covariance(x, ddof=1, *, split_every=8):
    """The (n_features, n_features) covariance of the rows of a 2-D dask array (floats, integers or
    bools), lazily: one RunningCovariance per block of rows, merged in a tree (the columns in one chunk)."""
    x = _array(x, integers=True)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D array (n_samples, n_features), got shape {x.shape}")
    ddof = _checks.real(ddof, "ddof")
    split_every = _checks.positive_int(split_every, "split_every")
    d = x.shape[1]
    parts = [dask.delayed(_cov_block)(b, d) for b in _whole(x, [1]).to_delayed().ravel()]
    while len(parts) > 1:
        parts = [dask.delayed(_cov_merge)(*parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    return da.from_delayed(dask.delayed(lambda acc: acc.cov(ddof))(parts[0]), (d, d), np.float64)


def _cov_block(b, d):
    return RunningCovariance(d).update(b)


def _cov_merge(*accs):
    acc = accs[0].copy()
    for a in accs[1:]:
        acc.merge(a)
    return acc
