"""The machinery the normalizations share, forward and backward (norms.py, grads.py) and in the layers,
Dask and inference wrappers: the checked channel call, running statistics, per-group statistics, the
apply pass's plan, and the row norms' shape rules. Internal: no public name lives here."""
from typing import NamedTuple

import numpy as np

from . import _checks, _normc
from .reductions import moments64  # biased float64 (mean, var) over the axes not kept


class ChannelCall(NamedTuple):
    """A channel norm's checked arguments, read by name: x (a float ndarray; for channel_args whatever
    array it was given, a Dask array too) and its dtype code (None unread), the channel axis c and its
    length C, the statistics dtype pdt (float64 for float64 data, else float32), the (C,) weight and bias
    (None or of dtype pdt), eps and the activation. A named tuple: immutable, and built in a third of a
    frozen dataclass's 1.5 us, which is a tenth of a small group norm call."""

    x: object
    code: object
    c: int
    C: int
    pdt: type
    weight: object
    bias: object
    eps: float
    activation: object


def layout(ndim, sizes):
    """Shape of x's rank with the given {axis: size} and 1 elsewhere."""
    return [sizes.get(i, 1) for i in range(ndim)]


def apply_plan(ndim, keep, mean, var, eps, weight, bias, pdt):
    """The apply pass's arguments: (reduce flags, s, a, c, wide) with y = (x - s) * a + c equal to
    (x - mean) / sqrt(var + eps) * weight + bias. mean and var: contiguous float64 laid out over the `keep`
    axes of rank-ndim data (size 1 elsewhere), the channel axis the last kept one; weight and bias: None
    or (C,) vectors of dtype pdt. s is the mean rounded to the compute precision pdt and that rounding is
    folded into c in float64, so a large mean costs no accuracy. wide is None, or, where some statistics'
    float32 coefficients do not hold them (a scale past float32's range: subnormal data under a tiny eps;
    data spanning more than its range), (their float64 plan, the mask of those statistics), which run_plan
    applies to their elements of x in float64: each statistic's precision follows from its own values."""
    s, a, c = np.empty(mean.shape, pdt), np.empty(mean.shape, pdt), np.empty(mean.shape, pdt)
    fit = np.empty(mean.shape, bool)
    _normc.coefficients(mean, var, eps, weight, bias, s, a, c, fit)
    flags = tuple(i not in keep for i in range(ndim))
    if fit.all():
        return flags, s, a, c, None
    wide = [None if p is None else p.astype(np.float64) for p in (weight, bias)]
    return flags, s, a, c, (apply_plan(ndim, keep, mean, var, eps, *wide, np.float64), ~fit)


@np.errstate(over="ignore")  # float64 outputs past out's range round to inf there, as the engine's stores do
def run_plan(x, code, plan, out, activation):
    """The apply pass of a plan into out; the statistics its float32 coefficients do not hold take their
    elements from x in float64, rounded once into out. x is read whole before out is written: out may
    be x itself."""
    *coefs, wide = plan
    x64 = None if wide is None else x.astype(np.float64)
    _normc.apply(x, code, *coefs, out, activation)
    if wide is not None:
        plan64, bad = wide
        y = np.empty(x.shape)
        _normc.apply(x64, _checks.F64, *plan64[:4], y, activation)
        where = np.broadcast_to(bad, x.shape)
        out[where] = y[where]
    return out


def apply(call, keep, mean, var, out):
    """y = act((x - mean) / sqrt(var + eps) * weight + bias) into out for a ChannelCall (see apply_plan)."""
    plan = apply_plan(call.x.ndim, keep, mean, var, call.eps, call.weight, call.bias, call.pdt)
    return run_plan(call.x, call.code, plan, out, call.activation)


def running_pair(call, running_mean, running_var, batch_stats, mode, empty, written=True):
    """The checked running arrays of a ChannelCall (or None, None) and whether to update them:
    `batch_stats` says whether this call normalizes with the batch, `mode` names that switch for the error
    message; an `empty` batch has no statistics and updates nothing (as in PyTorch); a call that is never
    `written` (a backward) only reads them."""
    writable = written and batch_stats and (running_mean is not None or running_var is not None)
    rm = _checks.running(running_mean, call.C, call.pdt, "running_mean", writable)
    rv = _checks.running(running_var, call.C, call.pdt, "running_var", writable)
    if (rm is None) != (rv is None):
        raise ValueError("running_mean, running_var: give both or neither")
    if not batch_stats and rm is None:
        raise ValueError(f"running_mean, running_var: required when {mode}=False")
    return rm, rv, writable and not empty


def running_stats(rm, rv, x, c):
    """Running statistics as float64 arrays shaped along channel axis c of x (inference)."""
    shape = layout(x.ndim, {c: x.shape[c]})
    return rm.astype(np.float64).reshape(shape), rv.astype(np.float64).reshape(shape)


@np.errstate(over="ignore")  # a variance past the running arrays' float32 range is stored as inf, as PyTorch
def update_running(rm, rv, mean, var, f):
    """PyTorch's running update in place, r = (1 - f) * r + f * batch, from the batch's (C,) mean and
    unbiased variance; the last step of a call, after everything that can fail."""
    rm[...] = (1 - f) * rm + f * mean
    rv[...] = (1 - f) * rv + f * var


def written_arrays(out, rm, rv, update, nbt=None):
    """The arrays a channel norm writes, for _checks.disjoint: out, and the running statistics (and the
    batch counter) where they are updated, else read."""
    running = (("running_mean", rm), ("running_var", rv), ("num_batches_tracked", nbt))
    return (("out", out), *running) if update else (("out", out),)


def read_arrays(call, rm, rv, update):
    """The arrays a channel norm only reads (the running statistics unless it updates them)."""
    running = () if update else (("running_mean", rm), ("running_var", rv))
    return (("x", call.x), ("weight", call.weight), ("bias", call.bias), *running)


def channel_call(x, axis, weight, bias, eps, activation, per_sample):
    """The checks every channel norm starts with: x, its channel axis (never the batch axis when
    statistics are per sample), eps, the activation and the (C,) weight and bias in the statistics
    dtype, as a ChannelCall."""
    x, code = _checks.float_array(x, "x")
    return channel_args(x, axis, weight, bias, eps, activation, per_sample, code)


def channel_args(x, axis, weight, bias, eps, activation, per_sample, code=None):
    """channel_call's checks of everything but x's data, for anything with x's shape, ndim and dtype (a
    Dask array too)."""
    c = instance_axis(x, axis) if per_sample else _checks.channel_axis(axis, x.ndim)
    C, pdt = x.shape[c], _checks.stats_dtype(x)
    eps = _checks.positive(eps, "eps")
    activation = _checks.activation(activation)
    return ChannelCall(x, code, c, C, pdt, _checks.param(weight, (C,), "weight", pdt),
                       _checks.param(bias, (C,), "bias", pdt), eps, activation)


def instance_axis(x, axis):
    c = _checks.channel_axis(axis, x.ndim)
    if c == 0:
        raise ValueError("axis: the channel axis cannot be axis 0, the batch axis")
    return c


def groups(num_groups, C, x=None):
    """num_groups checked against the C channels and, where given, the data x: like PyTorch, group norm
    refuses x with a single value per group (batch size x channels per group x spatial size of 1), whose
    result would be the bias alone."""
    G = _checks.integer(num_groups, "num_groups")
    if G < 1 or C % G:
        raise ValueError(f"num_groups: expected a positive divisor of the {C} channels, got {G}")
    if x is not None and x.size == G:
        raise ValueError(f"x: expected more than 1 value per group, got shape {x.shape} with {G} groups")
    return G


def group_moments(x, code, c, G):
    """Group norm's (mean, var), float64, laid out per sample and channel (each group's repeated over its
    channels)."""
    # Axes of size 1 (but the batch and channel axes) dropped first, so that the split below stays within
    # NumPy's 64 dimensions; then the channel axis split into (G, C/G). Both are views of x.
    drop = tuple(i for i in range(x.ndim) if x.shape[i] == 1 and i not in (0, c))
    cs = c - sum(i < c for i in drop)
    xs = x.squeeze(drop)
    cg = x.shape[c] // G
    xs = xs.reshape(xs.shape[:cs] + (G, cg) + xs.shape[cs + 1:])
    mean, var = moments64(xs, code, (0, cs))
    # Per group -> per channel: repeat along the group axis; then x's rank (the other axes are all 1).
    shape = layout(x.ndim, {0: x.shape[0], c: x.shape[c]})
    return np.repeat(mean, cg, axis=cs).reshape(shape), np.repeat(var, cg, axis=cs).reshape(shape)


def softmax(logits, n, name):
    """Softmax of a checked vector of n importance logits, in float64."""
    w = _checks.param(logits, (n,), name)
    if w is None:
        raise TypeError(f"{name}: expected an array of {n} logits, got None")
    if not np.isfinite(w).all():
        raise ValueError(f"{name}: expected finite logits, got {w}")
    e = np.exp(w - w.max())
    return e / e.sum()


# Infinite moments (data holding +inf and -inf) give inf - inf: NaN is the defined result, not a warning.
@np.errstate(invalid="ignore")
def chan_merge(mean, var, axis):
    """Exact moments of the union of equal-count groups laid along `axis` (Chan's formula for equal
    counts): mean of the means, and mean of the variances plus the spread of the means about it. The
    means are averaged shifted by the first, so equal means give that mean exactly and no spread."""
    first = mean.take([0], axis=axis) if mean.shape[axis] else 0.0
    m = first + (mean - first).mean(axis=axis, keepdims=True)
    d = mean - m
    return m, var.mean(axis=axis, keepdims=True) + (d * d).mean(axis=axis, keepdims=True)


@np.errstate(invalid="ignore")  # as chan_merge: infinite means blend to NaN
def blend(weights, means):
    """sum(w_i * mean_i) for softmax weights (summing to 1), as means[0] + sum(w_i * (mean_i - means[0])):
    equal means give exactly that mean, where the weights' rounding would leave a few ulps that
    1 / sqrt(var + eps) of constant data magnifies."""
    return means[0] + sum(w * (m - means[0]) for w, m in zip(weights[1:], means[1:]))


def normalized_dims(x, normalized_shape):
    """normalized_shape as a tuple, checked to be x's trailing dimensions."""
    if type(normalized_shape) is int:
        nshape = (normalized_shape,)
    else:
        items = normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        nshape = tuple(_checks.integer(n, "normalized_shape", "an int or a tuple of ints", repr(normalized_shape))
                       for n in items)
    k = len(nshape)
    if k == 0:  # as PyTorch: at least one normalized dimension
        raise ValueError("normalized_shape: expected at least one dimension, got ()")
    if k > x.ndim or x.shape[x.ndim - k:] != nshape:
        raise ValueError(f"normalized_shape: expected the trailing dimensions of x {x.shape}, got {nshape}")
    return nshape


_MACHINE_EPS = {}


def machine_eps(x):
    """RMS norm's default eps, as PyTorch's: the machine epsilon of the dtype x is computed in (float32
    for the half types, float64 for float64). None when x has no float dtype (the checks then say what
    is wrong, or x is converted to one first)."""
    dt = getattr(x, "dtype", None)
    if isinstance(dt, np.dtype) and not dt.isnative:
        dt = dt.newbyteorder("=")
    if dt not in _MACHINE_EPS:
        if not isinstance(dt, np.dtype) or _checks.dtype_code(dt) is None:
            return None
        _MACHINE_EPS[dt] = float(np.finfo(_checks.stats_dtype(np.empty(0, dt))).eps)
    return _MACHINE_EPS[dt]
