"""The normalization family, forward (the backward is grads.py, the machinery both share _core.py).
Batch, instance and group norm reduce with the moments engine, turn the float64 statistics into a shift,
scale and offset per group in the statistics dtype (nf_coefficients) and write y = act((x - s) * a + c)
with the apply pass; layer and RMS norm run the fused row kernel. Everything is checked before anything
is written; running statistics are updated last."""
import math

import numpy as np

from . import _checks, _core, _normc

__all__ = ["batch_norm", "instance_norm", "group_norm", "switchable_norm", "layer_norm", "rms_norm"]


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, training=False,
               momentum=0.1, eps=1e-5, axis=1, unbiased=True, activation=None, out=None,
               num_batches_tracked=None, return_stats=False):
    """Batch normalization over every axis but the channel axis `axis` (PyTorch semantics).

    training=True normalizes with the batch statistics and, when running_mean/running_var are given,
    updates them in place: r = (1 - momentum) * r + momentum * batch, with the variance unbiased unless
    unbiased=False. momentum=None is the cumulative average, which counts batches in
    `num_batches_tracked` (an integer array of one element, incremented in place). training=False
    normalizes with the running statistics. An empty batch changes no running statistic or counter.
    Returns `out` (a new array like x unless given; x itself is allowed), or with return_stats=True
    (out, mean, rstd): the (C,) float64 mean and 1 / sqrt(var + eps) that normalized x, for
    batch_norm_backward."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, False)
    x, code, c = call.x, call.code, call.c
    training = _checks.flag(training, "training")
    unbiased = _checks.flag(unbiased, "unbiased")
    momentum = _checks.fraction(momentum, "momentum", allow_none=True)
    return_stats = _checks.flag(return_stats, "return_stats")
    rm, rv, update = _core.running_pair(call, running_mean, running_var, training, "training", x.size == 0)
    nbt = _checks.counter(num_batches_tracked, "num_batches_tracked")
    if training and rm is not None and momentum is None and nbt is None:
        raise ValueError("num_batches_tracked: required for momentum=None (the cumulative average)")
    out = _checks.output(out, x)
    _checks.disjoint(_core.written_arrays(out, rm, rv, update, nbt), _core.read_arrays(call, rm, rv, update))
    count = math.prod(n for i, n in enumerate(x.shape) if i != c)
    if training:
        if count <= 1 and x.size:
            raise ValueError(f"x: expected more than 1 value per channel when training, got {count}")
        mean, var = _core.moments64(x, code, (c,))
    else:
        mean, var = _core.running_stats(rm, rv, x, c)
    _core.apply(call, (c,), mean, var, out)
    if update:
        f = momentum if momentum is not None else 1.0 / (int(nbt.flat[0]) + 1)
        _core.update_running(rm, rv, mean.ravel(), var.ravel() * (count / (count - 1) if unbiased else 1.0), f)
        if nbt is not None:
            nbt += 1
    return (out, mean.ravel(), 1 / np.sqrt(var.ravel() + call.eps)) if return_stats else out


# Rows (sample, group) below which the fused kernel, one thread per row, would leave threads idle. A
# constant, not a function of the thread count, so that the path, and so every output bit, depends on the
# shape alone. At 8 rows one fused read beats the two-pass path's two on up to ~16 threads (on 2 cores the
# fused path was 1.3-1.7x faster at 8 rows).
_FUSED_MIN_ROWS = 8


def _fused_groups(call, groups, out, stats):
    """Instance or group norm in one visit of each (sample, group) while it is in cache, for C-contiguous
    x with channels first (_channels_first) or last (_channels_last). Returns None (nothing done) where
    the kernel does not take the layout or shape; else (mean, var), the (sample, group) float64
    statistics when `stats`, otherwise (None, None). An `out` of another layout gets the same bytes
    through a contiguous buffer."""
    x, c = call.x, call.c
    if not (x.flags.c_contiguous and (c == 1 or c == x.ndim - 1)):
        return None
    rows = x.shape[0] * groups
    mean, var = (np.empty(rows), np.empty(rows)) if stats else (None, None)
    y = out if out.flags.c_contiguous else np.empty_like(x)
    if not (_channels_first if c == 1 else _channels_last)(call, groups, y, mean, var):
        return None
    if y is not out:
        out[...] = y
    return mean, var


def _channels_first(call, groups, y, mean, var):
    """Each (sample, group) is one contiguous row of one segment per channel: nf_rownorm with seg > 1,
    where rows are enough to share among threads and short enough to stay in cache. False, nothing
    written, otherwise."""
    x = call.x
    rows = x.shape[0] * groups
    length = x.size // rows if rows else 0
    seg = length * groups // x.shape[1] if length else 0
    if not (seg >= 2 and rows >= _FUSED_MIN_ROWS and length <= 1 << 18):
        return False
    # False also for rows the kernel does not walk: nothing written, the two-pass path runs
    return _normc.rownorm(x.reshape(rows, length), y.reshape(rows, length), dtype=call.code, kind=_normc.ROW_LAYER,
                          eps=call.eps, weight=call.weight, bias=call.bias, seg=seg, period=groups,
                          activation=call.activation, mean=mean, var=var)


def _channels_last(call, groups, y, mean, var):
    """Each sample's statistics and output in one visit (nf_channels_last_norm), the same bytes as the
    two-pass path. A sample that a float coefficient does not hold takes the two-pass path's float64 step
    alone. False, nothing written, where the kernel takes another layout."""
    x = call.x
    done = _normc.channels_last_norm(x, y, dtype=call.code, groups=groups, eps=call.eps, weight=call.weight,
                                     bias=call.bias, activation=call.activation, mean=mean, var=var)
    if done is None:
        return False
    for i in np.flatnonzero(~done):
        one = call._replace(x=x[i:i + 1])
        _core.apply(one, (0, call.c), *_core.group_moments(one.x, call.code, call.c, groups), y[i:i + 1])
    return True


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, *, use_input_stats=True,
                  momentum=0.1, eps=1e-5, axis=1, activation=None, out=None):
    """Instance normalization: statistics per sample and channel over the other axes (PyTorch semantics).

    With use_input_stats and running arrays, they are updated in place with the batch average of the
    instance means and unbiased variances; use_input_stats=False normalizes with them instead."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, True)
    x, code, c = call.x, call.code, call.c
    use_input_stats = _checks.flag(use_input_stats, "use_input_stats")
    momentum = _checks.fraction(momentum, "momentum")
    rm, rv, update = _core.running_pair(call, running_mean, running_var, use_input_stats, "use_input_stats",
                                        x.size == 0)
    out = _checks.output(out, x)
    _checks.disjoint(_core.written_arrays(out, rm, rv, update), _core.read_arrays(call, rm, rv, update))
    count = math.prod(n for i, n in enumerate(x.shape) if i not in (0, c))
    if use_input_stats:
        if count <= 1 and x.size:
            raise ValueError(f"x: expected more than 1 spatial element when use_input_stats=True, got {count}")
        fused = _fused_groups(call, call.C, out, update)
        if fused is None:
            mean, var = _core.moments64(x, code, (0, c))
            _core.apply(call, (0, c), mean, var, out)
        else:
            mean, var = fused
    else:
        _core.apply(call, (c,), *_core.running_stats(rm, rv, x, c), out)
    if update:  # the batch average of the instance means and unbiased variances
        # Both kinds of statistics are in (sample, channel) order: per row, or laid out like x.
        mean, var = mean.reshape(x.shape[0], call.C), var.reshape(x.shape[0], call.C)
        _core.update_running(rm, rv, mean.mean(axis=0), var.mean(axis=0) * (count / (count - 1)), momentum)
    return out


def group_norm(x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, activation=None, out=None):
    """Group normalization: the channels split into num_groups groups of C / num_groups consecutive
    channels, statistics per sample and group over its channels and the other axes; weight and bias per
    channel (PyTorch semantics)."""
    return _group_norm(x, num_groups, weight, bias, eps, axis, activation, out, True)


def _group_norm(x, num_groups, weight, bias, eps, axis, activation, out, whole):
    """group_norm; `whole`: x is the whole input, held to PyTorch's one-value-per-group rule (a block of
    a Dask array is not: the rule is the whole array's)."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, True)
    x, code, c = call.x, call.code, call.c
    G = _core.groups(num_groups, call.C, x if whole else None)
    out = _checks.output(out, x)
    _checks.disjoint(_core.written_arrays(out, None, None, False), _core.read_arrays(call, None, None, False))
    if _fused_groups(call, G, out, False) is not None:
        return out
    return _core.apply(call, (0, c), *_core.group_moments(x, code, c, G), out)


def switchable_norm(x, weight, bias, mean_weight, var_weight, running_mean=None, running_var=None, *,
                    training=False, momentum=0.1, eps=1e-5, axis=1, using_bn=True, activation=None, out=None):
    """Switchable normalization (Luo et al., 2019): a softmax-weighted blend of the instance, layer and
    batch statistics (that order; batch only with using_bn), each population (biased) moments.

    x is read once for statistics: the instance moments come from the engine and the layer and batch
    moments are exact Chan merges of them. mean_weight and var_weight are the raw logits, shape (3,)
    (or (2,) without batch statistics). With using_bn, training=True updates running_mean/running_var
    (when given) with the batch mean and unbiased batch variance, as batch_norm does; training=False
    takes the batch statistics from them."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, True)
    x, code, c = call.x, call.code, call.c
    training = _checks.flag(training, "training")
    using_bn = _checks.flag(using_bn, "using_bn")
    momentum = _checks.fraction(momentum, "momentum")
    k = 3 if using_bn else 2
    wm = _core.softmax(mean_weight, k, "mean_weight")
    wv = _core.softmax(var_weight, k, "var_weight")
    if using_bn:
        rm, rv, update = _core.running_pair(call, running_mean, running_var, training, "training", x.size == 0)
    elif running_mean is not None or running_var is not None:
        raise ValueError("running_mean, running_var: only used with using_bn=True")
    else:
        rm = rv = None
        update = False
    out = _checks.output(out, x)
    _checks.disjoint(_core.written_arrays(out, rm, rv, update), _core.read_arrays(call, rm, rv, update))
    count = math.prod(n for i, n in enumerate(x.shape) if i != c)
    if using_bn and training and count <= 1 and x.size:
        raise ValueError(f"x: expected more than 1 value per channel when training, got {count}")
    if x.size == 0:
        return out
    mean_in, var_in = _core.moments64(x, code, (0, c))
    mean_ln, var_ln = _core.chan_merge(mean_in, var_in, c)
    means, var = [mean_in, mean_ln], wv[0] * var_in + wv[1] * var_ln
    if using_bn:
        if training:
            mean_bn, var_bn = _core.chan_merge(mean_in, var_in, 0)
        else:
            mean_bn, var_bn = _core.running_stats(rm, rv, x, c)
        means.append(mean_bn)
        var = var + wv[2] * var_bn
    mean = _core.blend(wm, means)
    _core.apply(call, (0, c), mean, var, out)
    if update:
        _core.update_running(rm, rv, mean_bn.ravel(), var_bn.ravel() * (count / (count - 1)), momentum)
    return out


def _row_norm(x, normalized_shape, weight, bias, eps, residual, residual_out, out, rms, stats=False):
    """Layer or RMS norm (the checked, general path; RMS norm's eps None is _core.machine_eps). With `stats`,
    returns (out, mean, rstd): the rows' float64 mean and 1 / sqrt(var + eps) over the leading shape (RMS
    norm: mean 0 and var the mean square)."""
    x, code = _checks.float_array(x, "x")
    nshape = _core.normalized_dims(x, normalized_shape)
    k = len(nshape)
    pdt = _checks.stats_dtype(x)
    eps = _checks.positive(_core.machine_eps(x) if eps is None and rms else eps, "eps")
    length = math.prod(nshape)
    # The kernel takes both as flat rows of the statistics dtype, or None.
    params = [None if v is None else _checks.param(v, nshape, name, pdt).reshape(-1)
              for name, v in (("weight", weight), ("bias", bias))]
    res = None
    if residual is not None:
        res, _ = _checks.float_array(residual, "residual")
        if res.shape != x.shape:
            raise ValueError(f"residual: expected shape {x.shape}, got {res.shape}")
        if residual_out is not None:
            residual_out = _checks.output(residual_out, x, "residual_out")
    elif residual_out is not None:
        raise ValueError("residual_out: only meaningful with residual")
    out = _checks.output(out, x)
    _checks.disjoint((("out", out), ("residual_out", residual_out)),
                     (("x", x), ("residual", res), ("weight", params[0]), ("bias", params[1])))
    if residual is not None:
        # x + residual, in x's dtype as PyTorch adds them; the sum is what gets normalized.
        x = np.add(x, res.astype(x.dtype, copy=False), out=residual_out)
    lead = x.shape[:x.ndim - k]
    mean, var = (np.empty(lead), np.empty(lead)) if stats else (None, None)
    if x.size == 0:
        pass
    elif length == 1:  # one element per row: no row for the kernel to walk, and a closed form
        _single_element_rows(x, params, eps, out, mean, var, rms)
    else:
        _rows(x, code, k, length, params, eps, out, mean, var, rms)
    return (out, mean, 1 / np.sqrt(var + eps)) if stats else out


def _single_element_rows(x, params, eps, out, mean, var, rms):
    """Layer norm of one-element rows is the bias (x - x keeps NaN and Inf as PyTorch does); RMS norm is
    x / sqrt(x^2 + eps)."""
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ms = x64 * x64
        y = x64 / np.sqrt(ms + eps) if rms else (x64 - x64) / math.sqrt(eps)
    for p, op in zip(params, (np.multiply, np.add)):
        if p is not None:
            y = op(y, p.astype(np.float64))
    out[...] = y
    if mean is not None:
        mean[...] = 0 if rms else x64.reshape(mean.shape)
        var[...] = ms.reshape(var.shape) if rms else 0


def _rows(x, code, k, length, params, eps, out, mean, var, rms):
    """The row kernel over x's rows (its last k axes, `length` elements), statistics into mean and var
    (or None) in C order of the leading axes."""
    x2 = _merge_trailing(x, k, length)
    y2 = _merge_trailing(out, k, length)
    kind = _normc.ROW_RMS if rms else _normc.ROW_LAYER
    # The kernel walks rows in x's memory order: C order, where statistics are wanted, only if x has it.
    if x2 is not None and y2 is not None and (mean is None or x2.flags.c_contiguous) and \
            _normc.rownorm(x2, y2, dtype=code, kind=kind, eps=eps, weight=params[0], bias=params[1], mean=mean,
                           var=var):
        return
    # Rows that are not contiguous (or leading axes the kernel cannot walk row by row): normalize a
    # contiguous copy with the same kernel.
    xc = np.ascontiguousarray(x)
    yc = np.empty_like(xc)
    _normc.rownorm(_merge_trailing(xc, k, length), _merge_trailing(yc, k, length), dtype=code, kind=kind, eps=eps,
                   weight=params[0], bias=params[1], mean=mean, var=var)
    out[...] = yc


def _merge_trailing(a, k, length):
    """a's last k axes as one axis of stride 1 (a view), or None when they are not one contiguous run."""
    step = a.itemsize
    for n, s in zip(reversed(a.shape[a.ndim - k:]), reversed(a.strides[a.ndim - k:])):
        if n != 1 and s != step:
            return None
        step *= n
    return a.reshape(a.shape[:a.ndim - k] + (length,))  # merging one contiguous run is always a view


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, residual=None, residual_out=None,
               out=None, return_stats=False):
    """Layer normalization over the trailing `normalized_shape` dimensions (PyTorch semantics).

    With `residual`, normalizes x + residual and, if `residual_out` is given, stores that sum there
    (pre-norm transformer blocks). Rows contiguous in memory are normalized in one visit each.
    return_stats=True returns (out, mean, rstd), the rows' float64 mean and 1 / sqrt(var + eps) over the
    leading shape, for layer_norm_backward."""
    if residual is None and residual_out is None and return_stats is False:  # the common call runs in the
        y = _normc.rownorm_common(x, normalized_shape, weight, bias, eps, out, False)  # binding, or it says None
        if y is not None:
            return y
    if not _checks.flag(return_stats, "return_stats"):
        return _row_norm(x, normalized_shape, weight, bias, eps, residual, residual_out, out, rms=False)
    return _row_norm(x, normalized_shape, weight, bias, eps, residual, residual_out, out, False, True)


def rms_norm(x, normalized_shape, weight=None, *, eps=None, residual=None, residual_out=None, out=None,
             return_stats=False):
    """RMS normalization, x / sqrt(mean(x^2) + eps) * weight, over the trailing dimensions; eps=None is
    the machine epsilon of the dtype x is computed in (float32 for float16 and bfloat16), as in PyTorch. return_stats=True returns (out, rstd), the rows'
    float64 1 / sqrt(mean(x^2) + eps) over the leading shape (RMS norm has no mean), for
    rms_norm_backward."""
    if residual is None and residual_out is None and return_stats is False:
        y = _normc.rownorm_common(x, normalized_shape, weight, None, _core.machine_eps(x) if eps is None else eps, out,
                                  True)
        if y is not None:
            return y
    if not _checks.flag(return_stats, "return_stats"):
        return _row_norm(x, normalized_shape, weight, None, eps, residual, residual_out, out, rms=True)
    out, _, rstd = _row_norm(x, normalized_shape, weight, None, eps, residual, residual_out, out, True, True)
    return out, rstd
