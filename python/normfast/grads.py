"""The normalization family, backward. Each function takes the forward's arguments with `grad_out` in
front and returns the gradients with respect to x and the parameters; nothing is stored between calls
and no running statistic changes.

The channel norms (batch, instance, group, switchable) share one scheme. With statistics at the
finest level F the norm needs (per channel for batch norm, per sample and channel otherwise), z the
forward's pre-activation and g = grad_out * act'(z), one kernel pass sums g and g * (x - mean) per F
group; every gradient is then a small float64 computation on those sums, and a second pass writes
grad_x = P * (g - M) + Q * (x - mean) + R with P, M, Q and R per F group. The mean and variance enter as the sums
of one or more "terms" (one for batch, instance and group norm, three blended ones for switchable norm),
each a mean and variance over some pooling of F groups; a term's gradient flows back into x through
both. Layer and RMS norm run a fused row kernel instead."""
import functools
import math
from typing import Callable, NamedTuple

import numpy as np

from . import _checks, _core, _normc, norms

__all__ = ["batch_norm_backward", "instance_norm_backward", "group_norm_backward", "switchable_norm_backward",
           "layer_norm_backward", "rms_norm_backward"]


def _pair(grad_out, x, order="K"):
    """x and grad_out checked and in one layout the kernels can walk together (copies only where their
    strides differ, or where x has gaps; order="C": or where x is not C-contiguous), plus x's dtype code
    and an empty grad_x of that layout."""
    x, code = _checks.float_array(x, "x")
    dy, _ = _checks.float_array(grad_out, "grad_out")
    if dy.shape != x.shape:
        raise ValueError(f"grad_out: expected the shape of x {x.shape}, got {dy.shape}")
    if dy.dtype != x.dtype:
        raise TypeError(f"grad_out: expected the dtype of x ({x.dtype}), got {dy.dtype}")
    gx = np.empty_like(x, order=order)  # order "K": x's axis order, without gaps
    if not _same_strides(gx, x):
        x = _relaid(gx, x)
    if not _same_strides(x, dy):
        dy = _relaid(x, dy)
    return x, dy, code, gx


def _same_strides(a, b):
    return all(n <= 1 or sa == sb for n, sa, sb in zip(a.shape, a.strides, b.strides))


def _relaid(layout, a):
    """A copy of a with the strides of `layout` (an array without gaps)."""
    out = np.empty_like(layout)
    out[...] = a
    return out


def _stat(v, shape, name):
    """A saved statistic (mean or rstd) given to a backward: float, one value per statistic."""
    arr = _checks.param(v, shape, name)
    if arr is None:
        raise TypeError(f"{name}: expected an array of shape {shape}, got None")
    return arr


class _Term:
    """One (mean, var) pair the normalizing statistics are made of: blended with weights wm and wv, a
    mean `mu` (F layout, or broadcastable to it) over `count` elements per group, its groups made of
    the F groups that `pool` sums together (and broadcasts back); pool None: a constant (running
    statistics), which no gradient reaches x through."""

    def __init__(self, wm, wv, mu, count, pool):
        self.wm, self.wv, self.mu, self.count, self.pool = wm, wv, mu, count, pool


def _identity(a):
    return a


# Infinite data makes inf - inf in the float64 steps, and a float64 gradient past float32's range rounds to
# inf in gx: NaN and inf are the defined results (PyTorch's), not warnings.
@np.errstate(invalid="ignore", over="ignore")
def _channel_backward(x, dy, code, gx, keep, mean, rstd, weight, bias, activation, terms, pdt):
    """grad_x into gx, plus (sum_g, sum_gxhat, gmu, gvar) per F group (float64, F layout): sum_g and
    sum_gxhat are the per-group sums of g and g * xhat, gmu and gvar the gradients with respect to the
    group's normalizing mean and variance. mean and rstd: float64 over the `keep` axes (F layout);
    weight and bias: None or (C,) vectors of dtype pdt, along the last kept axis. The groups whose
    coefficients pdt cannot hold (_unfit) take their sums and grad_x from x in float64, each group by its
    own values."""
    c = keep[-1]
    shape = mean.shape
    reduce = tuple(i not in keep for i in range(x.ndim))
    w = 1.0 if weight is None else weight.astype(np.float64).reshape(_core.layout(x.ndim, {c: x.shape[c]}))
    b = 0.0 if bias is None else bias.astype(np.float64).reshape(_core.layout(x.ndim, {c: x.shape[c]}))
    # x and grad_out in float64 for the groups redone there: converted once, when first needed
    wide = functools.cache(lambda: (x.astype(np.float64), dy.astype(np.float64), _checks.F64))
    P = np.broadcast_to(w * rstd, shape)

    # Each pass in precision p over x in it, `bad` the groups already known not to fit p.
    def sums(p, xp, dyp, codep, bad):
        # The forward's apply parameters, z = (x - s) * a + c1, by the engine's centring rule: s is the
        # mean rounded to p and c1 puts that rounding back (x - mean = (x - s) + dm).
        s = mean.astype(p)
        c1 = b + _normc.centrings(s, mean, P)
        # Float also cannot hold the deviations x - s of data spanning past its range, nor those from a
        # shift at or past SPAN_SHIFT (running statistics far from x) (normc.h's rules).
        far = (np.abs(s) >= _normc.SPAN_SHIFT) & np.isfinite(s)
        bad = bad | _unfit(p, P, c1) | ((p != np.float64) & np.broadcast_to((rstd < _normc.SPAN_RSTD) | far, shape))
        sum_g, sum_gd = np.empty(shape), np.empty(shape)
        _normc.grad_sums(xp, dyp, codep, reduce, s, *_held(p, bad, P, c1), activation, sum_g, sum_gd)
        return sum_g, sum_gd + (s.astype(np.float64) - mean) * sum_g, bad  # sum of g * (x - mean)

    none = np.zeros(shape, bool)
    sum_g, sum_gmu, bad = sums(pdt, x, dy, code, none)
    if bad.any():
        g64, gmu64, _ = sums(np.float64, *wide(), none)
        sum_g, sum_gmu = np.where(bad, g64, sum_g), np.where(bad, gmu64, sum_gmu)
    gmu = -w * rstd * sum_g
    gvar = -0.5 * w * rstd * (rstd * (rstd * sum_gmu))  # rstd * sum_gmu first: rstd^3 alone over/underflows
    # Each term t adds wm_t * pool(gmu) / count_t + q_t * (x - mu_t), q_t = 2 wv_t pool(gvar) / count_t.
    pooled = [t for t in terms if t.pool is not None]
    R = sum(t.wm * t.pool(gmu) / t.count for t in pooled)
    q = [2 * t.wv * t.pool(gvar) / t.count for t in pooled]
    Q = np.broadcast_to(sum(q), shape) if q else np.zeros(shape)
    # The second pass writes Q * (x - s2) with s2 the q-weighted mean of the terms' means, so that no
    # large constant cancels against it (the switchable norm's terms have means far apart); where the
    # q_t nearly cancel, the mean itself.
    qmu = sum(qt * t.mu for qt, t in zip(q, pooled))
    weighted = np.abs(Q) >= 0.5 * sum(np.abs(qt) for qt in q) if q else np.zeros(shape, bool)
    centre = np.where(weighted & (Q != 0), np.divide(qmu, Q, out=np.zeros(shape), where=Q != 0), mean)

    def apply(p, xp, dyp, codep, gp, bad):
        s2 = centre.astype(p)
        Rp = R + sum(qt * (s2.astype(np.float64) - t.mu) for qt, t in zip(q, pooled))
        # grad_x = P * (g - M) + Q * (x - s2) + R': M, R's cancelling part, is subtracted from g before
        # scaling, so that a constant grad_out gives 0 to the rounding of the mean, not of P * grad_out;
        # rounding M goes back into R'. z keeps its value with s2 as its shift.
        M = np.divide(-Rp, P, out=np.zeros(shape), where=P != 0)
        # Past float64's range (a weight near 0, as 1e-310): M = 0, and R' keeps all of Rp. Past p's:
        # those groups in float64.
        M = np.where(np.isinf(M), 0, M)
        bad = bad | _unfit(p, M)
        M = np.where(bad, 0, M).astype(p)
        c2, R2 = b + _normc.centrings(s2, mean, P), Rp + P * M
        bad = bad | _unfit(p, c2, Q, R2)
        a, c2, M, Q2, R2 = _held(p, bad, P, c2, M, Q, R2)
        # Statistics held constant (no pooled term, eval mode): no Q term, so an infinite x keeps a finite
        # gradient (0 * inf would be NaN; PyTorch's is finite).
        _normc.grad_apply(xp, dyp, codep, reduce, (s2, a, c2, a, M, Q2 if q else None, R2), gp, activation)
        return bad

    bad = apply(pdt, x, dy, code, gx, bad)
    if bad.any():
        g64 = np.empty(x.shape)
        apply(np.float64, *wide(), g64, none)
        where = np.broadcast_to(bad, x.shape)
        gx[where] = g64[where]
    return sum_g, rstd * sum_gmu, gmu, gvar


_F32 = np.finfo(np.float32)


def _unfit(pdt, *coefficients):
    """Mask of the groups whose float64 coefficients do not keep their value in pdt: float32 ones past its
    range (rstd^2 of subnormal data under a tiny eps) would be infinite, and nonzero ones below its normal
    range (rstd^2 of data at 1e25) would lose their digits or vanish. NaN passes: the gradient is NaN
    either way. Coefficients broadcast to the groups' shape (the first one's)."""
    shape = np.shape(coefficients[0])
    bad = np.zeros(shape, bool)
    if pdt != np.float64:
        for v in coefficients:
            a = np.abs(v)
            bad |= np.broadcast_to((a > _F32.max) | ((a < _F32.smallest_normal) & (a != 0)), shape)
    return bad


def _held(pdt, bad, *coefficients):
    """The coefficients as contiguous pdt arrays of bad's shape, 0 for the bad groups (their values would
    overflow pdt; those groups are redone in float64)."""
    return [np.where(bad, 0, np.broadcast_to(v, bad.shape)).astype(pdt) for v in coefficients]


# Channels-first data keeps each group of batch, instance and group norm in contiguous segments of the
# spatial extent: there the backward runs group by group while the group is in cache (nf_seg_grad),
# reading x and grad_out from memory once. The choice depends on the shape alone, never on the threads.
_SEG_MIN_LEN = 64    # shorter segments: the two-pass kernels' column walk is better
_SEG_MIN_GROUPS = 8  # fewer groups than this would leave threads idle


class _Segments(NamedTuple):
    """nf_seggrad's geometry: `rows` groups, each `nseg` segments of `len` contiguous elements, row r's
    segment j at r * row_stride + j * seg_stride, scaled by channel (r % period) * nslot + j % nslot."""

    rows: int
    row_stride: int
    nseg: int
    seg_stride: int
    len: int
    nslot: int
    period: int


def _batch_segments(N, C, L):
    """Batch norm's groups: one per channel, its N segments one sample apart."""
    return _Segments(C, L, N, C * L, L, 1, C)


def _instance_segments(N, C, L):
    """Instance norm's groups: one per (sample, channel), a single segment."""
    return _Segments(N * C, L, 1, L, L, 1, C)


def _group_segments(G):
    """Group norm's groups: one per (sample, group), a segment per channel of the group."""
    return lambda N, C, L: _Segments(N * G, C // G * L, C // G, L, L, C // G, G)


def _segments(x, c, groups_of):
    """The _Segments that groups_of(N, C, L) (N samples, C channels, L spatial elements) gives for x, or
    None where the layout does not suit."""
    if c != 1 or x.ndim < 3 or not x.flags.c_contiguous:
        return None
    N, C = x.shape[:2]
    L = x.size // (N * C) if x.size else 0
    geometry = groups_of(N, C, L)
    ok = L >= _SEG_MIN_LEN and geometry.rows >= _SEG_MIN_GROUPS and geometry.nslot <= _normc.MAX_SLOTS
    return geometry if ok else None


def _seg_backward(x, dy, code, gx, geometry, weight, bias, eps, activation, pdt, mean=None, rstd=None):
    """nf_seg_grad: grad_x into gx; returns (grad_weight, grad_bias) as _param_grads does."""
    sums = np.empty(geometry.rows * geometry.nslot), np.empty(geometry.rows * geometry.nslot)
    _normc.seg_grad(x, dy, gx, dtype=code, **geometry._asdict(), eps=eps, sum_g=sums[0], sum_gxhat=sums[1],
                    weight=weight, bias=bias, mean=mean, rstd=rstd, activation=activation)
    C = x.shape[1]
    return _param_grads(*(a.reshape(-1, C) for a in sums), 1, weight, bias, pdt)


def _per_channel(a, c):
    """An F-layout float64 array summed over every axis but the channel axis c, as a (C,) vector."""
    return a.sum(axis=tuple(i for i in range(a.ndim) if i != c)) if a.ndim > 1 else a.reshape(-1)


@np.errstate(over="ignore")
def _rounded(a, pdt):
    """A float64 gradient in the parameters' dtype: past its range, inf, quietly, as the engine's stores
    round (NumPy's cast would warn: an error under -W error)."""
    return a.astype(pdt)


def _param_grads(sum_g, sum_gxhat, c, weight, bias, pdt):
    """(grad_weight, grad_bias) in the parameters' dtype, None where the forward had no such parameter."""
    gw = None if weight is None else _rounded(_per_channel(sum_gxhat, c), pdt)
    gb = None if bias is None else _rounded(_per_channel(sum_g, c), pdt)
    return gw, gb


def _empty_grads(x, gx, C, weight, bias, pdt):
    return (gx, None if weight is None else np.zeros(C, pdt), None if bias is None else np.zeros(C, pdt))


def _training_count(x, count, what):
    if count <= 1 and x.size:
        raise ValueError(f"x: expected more than 1 {what}, got {count}")


class _Statistic(NamedTuple):
    """How batch, instance or group norm takes its single statistic per group, for _one_statistic:
    `groups_of` gives its nf_seg_grad segments (_segments), `moments()` its (keep axes, mean, rstd) for the
    two-pass path, `count` the elements of a group and `pool` sums the F groups of the two-pass path into
    the statistic's; `from_batch`: the statistic is the batch's (else a constant, which no gradient flows
    through); `saved`: the caller's per-group (mean, rstd), flat, or (None, None)."""

    groups_of: Callable
    moments: Callable
    count: int
    pool: Callable
    from_batch: bool
    saved: tuple = (None, None)


def _one_statistic(call, x, dy, code, gx, stat):
    """The backward of batch, instance or group norm (a _Statistic) for a ChannelCall, x and dy laid out
    alike (code x's dtype code, gx the output)."""
    c, weight, bias, pdt = call.c, call.weight, call.bias, call.pdt
    if x.size == 0:
        return _empty_grads(x, gx, x.shape[c], weight, bias, pdt)
    geometry = _segments(x, c, stat.groups_of) if stat.from_batch else None
    if geometry is not None:
        return (gx, *_seg_backward(x, dy, code, gx, geometry, weight, bias, call.eps, call.activation, pdt,
                                   *stat.saved))
    keep, mean, rstd = stat.moments()
    terms = [_Term(1.0, 1.0, mean, stat.count, stat.pool)] if stat.from_batch else []
    sum_g, sum_gxhat, _, _ = _channel_backward(x, dy, code, gx, keep, mean, rstd, weight, bias, call.activation,
                                               terms, pdt)
    return (gx, *_param_grads(sum_g, sum_gxhat, c, weight, bias, pdt))


def batch_norm_backward(grad_out, x, running_mean=None, running_var=None, weight=None, bias=None, *, training=True,
                        eps=1e-5, axis=1, activation=None, mean=None, rstd=None):
    """Gradients of batch_norm(x, ...) (same arguments) given grad_out, the gradient of its output:
    (grad_x, grad_weight, grad_bias), the last two None where weight or bias is None.

    training=True differentiates through the batch statistics, training=False treats the running ones
    as constants. mean and rstd (the (C,) statistics batch_norm(..., return_stats=True) returns) skip
    recomputing them. The running statistics are read (training=False) but never changed."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, False)
    c = call.c
    x, dy, code, gx = _pair(grad_out, call.x)
    training = _checks.flag(training, "training")
    if (mean is None) != (rstd is None):
        raise ValueError("mean, rstd: give both or neither")
    # Eval mode normalizes with the running statistics, or with the given mean and rstd.
    rm, rv, _ = _core.running_pair(call, running_mean, running_var, training or mean is not None, "training",
                                   True, written=False)
    saved = (None, None) if mean is None else tuple(_stat(v, (call.C,), n) for v, n in ((mean, "mean"), (rstd, "rstd")))
    count = math.prod(n for i, n in enumerate(x.shape) if i != c)
    if training:
        _training_count(x, count, "value per channel when training")

    def statistics():
        layout = _core.layout(x.ndim, {c: call.C})
        if mean is not None:
            return (c,), saved[0].reshape(layout), saved[1].reshape(layout)
        m, v = _core.moments64(x, code, (c,)) if training else _core.running_stats(rm, rv, x, c)
        return (c,), m, 1 / np.sqrt(v + call.eps)

    return _one_statistic(call, x, dy, code, gx, _Statistic(_batch_segments, statistics, count, _identity, training,
                                                            saved))


def instance_norm_backward(grad_out, x, running_mean=None, running_var=None, weight=None, bias=None, *,
                           use_input_stats=True, eps=1e-5, axis=1, activation=None):
    """Gradients of instance_norm(x, ...) given grad_out: (grad_x, grad_weight, grad_bias), the last two
    None where weight or bias is None. use_input_stats=False treats the running statistics as constants;
    they are never changed."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, True)
    c = call.c
    x, dy, code, gx = _pair(grad_out, call.x)
    use_input_stats = _checks.flag(use_input_stats, "use_input_stats")
    rm, rv, _ = _core.running_pair(call, running_mean, running_var, use_input_stats, "use_input_stats", True,
                                   written=False)
    count = math.prod(n for i, n in enumerate(x.shape) if i not in (0, c))
    if use_input_stats:
        _training_count(x, count, "spatial element when use_input_stats=True")

    def statistics():
        keep = (0, c) if use_input_stats else (c,)
        m, v = _core.moments64(x, code, keep) if use_input_stats else _core.running_stats(rm, rv, x, c)
        return keep, m, 1 / np.sqrt(v + call.eps)

    return _one_statistic(call, x, dy, code, gx, _Statistic(_instance_segments, statistics, count, _identity,
                                                            use_input_stats))


def group_norm_backward(grad_out, x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, activation=None):
    """Gradients of group_norm(x, num_groups, ...) given grad_out: (grad_x, grad_weight, grad_bias), the
    last two None where weight or bias is None."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, True)
    c = call.c
    x, dy, code, gx = _pair(grad_out, call.x)
    G = _core.groups(num_groups, call.C, x)
    cg = call.C // G

    def pool(a):  # sum over each group's channels, broadcast back to them (a: 1 but on axes 0 and c)
        split = a.reshape(a.shape[0], G, cg)
        return np.repeat(split.sum(axis=2), cg, axis=1).reshape(a.shape)

    def statistics():
        m, v = _core.group_moments(x, code, c, G)
        return (0, c), m, 1 / np.sqrt(v + call.eps)

    count = x.size // (x.shape[0] * G) if x.size else 0
    return _one_statistic(call, x, dy, code, gx, _Statistic(_group_segments(G), statistics, count, pool, True))


def _softmax_backward(p, g):
    """The gradient with respect to the logits of softmax p, given the gradient g with respect to p."""
    return p * (g - np.dot(p, g))


def switchable_norm_backward(grad_out, x, weight, bias, mean_weight, var_weight, running_mean=None, running_var=None,
                             *, training=True, eps=1e-5, axis=1, using_bn=True, activation=None):
    """Gradients of switchable_norm(x, ...) given grad_out: (grad_x, grad_weight, grad_bias,
    grad_mean_weight, grad_var_weight), the last two with respect to the logits. With using_bn and
    training=False the batch statistics are the running ones, constants here; they are never changed."""
    call = _core.channel_call(x, axis, weight, bias, eps, activation, True)
    c = call.c
    x, dy, code, gx = _pair(grad_out, call.x)
    training = _checks.flag(training, "training")
    using_bn = _checks.flag(using_bn, "using_bn")
    k = 3 if using_bn else 2
    wm = _core.softmax(mean_weight, k, "mean_weight")
    wv = _core.softmax(var_weight, k, "var_weight")
    if using_bn:
        rm, rv, _ = _core.running_pair(call, running_mean, running_var, training, "training", True, written=False)
    elif running_mean is not None or running_var is not None:
        raise ValueError("running_mean, running_var: only used with using_bn=True")
    count = math.prod(n for i, n in enumerate(x.shape) if i != c)
    if using_bn and training:
        _training_count(x, count, "value per channel when training")
    if x.size == 0:
        gw, gb = (np.zeros(call.C, call.pdt) if v is not None else None for v in (call.weight, call.bias))
        return gx, gw, gb, np.zeros(k, call.pdt), np.zeros(k, call.pdt)
    N = x.shape[0]
    mean_in, var_in = _core.moments64(x, code, (0, c))
    stats = [(mean_in, var_in, count // N, _identity),
             (*_core.chan_merge(mean_in, var_in, c), count // N * call.C, lambda a: a.sum(axis=c, keepdims=True))]
    if using_bn:
        if training:
            stats.append((*_core.chan_merge(mean_in, var_in, 0), count, lambda a: a.sum(axis=0, keepdims=True)))
        else:
            stats.append((*_core.running_stats(rm, rv, x, c), count, None))
    mean = _core.blend(wm, [m for m, _, _, _ in stats])
    var = sum(wv[i] * v for i, (_, v, _, _) in enumerate(stats))
    terms = [_Term(wm[i], wv[i], m, n, pool) for i, (m, _, n, pool) in enumerate(stats)]
    sum_g, sum_gxhat, gmu, gvar = _channel_backward(x, dy, code, gx, (0, c), mean, 1 / np.sqrt(var + call.eps),
                                                    call.weight, call.bias, call.activation, terms, call.pdt)
    # d loss / d blend weight i: the statistic i seen from every (sample, channel) group.
    g_wm = np.array([np.sum(gmu * m) for m, _, _, _ in stats])
    g_wv = np.array([np.sum(gvar * v) for _, v, _, _ in stats])
    return (gx, *_param_grads(sum_g, sum_gxhat, c, call.weight, call.bias, call.pdt),
            _rounded(_softmax_backward(wm, g_wm), call.pdt), _rounded(_softmax_backward(wv, g_wv), call.pdt))


@np.errstate(over="ignore")  # squares of float64 data near its largest value overflow to inf, as the engine's
def _row_stats(x, code, lead, mean, rstd, eps, rms, scratch):
    """Per-row float64 (mean, rstd), flat (mean None for RMS norm): as given, checked against the leading
    shape `lead`, or computed. RMS norm's is the forward's own (rms_norm's rows, their normalized values
    written to `scratch`, an array like x), so that it is the rstd rms_norm returns, bit for bit, and a
    row with an infinite element has rstd 0 as in PyTorch (var + mean^2 of the moments gave NaN there:
    inf - inf)."""
    if (rstd is None) != (mean is None) and not rms:
        raise ValueError("mean, rstd: give both or neither")
    if rstd is not None:
        rstd = _stat(rstd, lead, "rstd").reshape(-1)
        return (None if rms else _stat(mean, lead, "mean").reshape(-1)), rstd
    if rms:
        k, n = x.ndim - len(lead), math.prod(x.shape[len(lead):])
        mean, ms = np.empty(lead), np.empty(lead)
        if x.size == 0:
            pass
        elif n == 1:
            norms._single_element_rows(x, (None, None), eps, scratch, mean, ms, True)
        else:
            norms._rows(x, code, k, n, (None, None), eps, scratch, mean, ms, True)
        return None, 1 / np.sqrt(ms.reshape(-1) + eps)
    mean, var = _core.moments64(x, code, tuple(range(len(lead))))
    return mean.reshape(-1), 1 / np.sqrt(var.reshape(-1) + eps)


def _row_backward(grad_out, x, normalized_shape, weight, bias, eps, mean, rstd, rms):
    x, dy, code, gx = _pair(grad_out, x, "C")  # the row kernel walks C-contiguous rows
    nshape = _core.normalized_dims(x, normalized_shape)
    pdt = _checks.stats_dtype(x)
    eps = _checks.positive(_core.machine_eps(x) if eps is None and rms else eps, "eps")
    params = [None if v is None else _checks.param(v, nshape, name, pdt).reshape(-1)
              for name, v in (("weight", weight), ("bias", bias))]
    lead = x.shape[:x.ndim - len(nshape)]
    mean, rstd = _row_stats(x, code, lead, mean, rstd, eps, rms, gx)  # gx: overwritten below
    n = math.prod(nshape)
    gw, gb = (np.zeros(n), np.zeros(n)) if params[0] is not None or params[1] is not None else (None, None)
    if x.size:
        rows = (-1, n)
        x2, dy2 = x.reshape(rows), dy.reshape(rows)
        _normc.rownorm_grad(x2, dy2, gx.reshape(rows), dtype=code, rstd=rstd, mean=mean, weight=params[0],
                            grad_weight=gw, grad_bias=gb)
        if gw is not None:
            _exact_param_sums(x2, dy2, mean, rstd, gw, gb)
    return (gx, *(None if p is None else _rounded(g.reshape(nshape), pdt) for p, g in zip(params, (gw, gb))))


def _exact_param_sums(x, dy, mean, rstd, gw, gb):
    """The row kernel sums each chunk of rows' dy * xhat and dy in pdt: one that overflows (grad_out near
    float's largest value) is inf or NaN where the float64 sum may fit. Those columns are summed again
    here in float64 from the exact values (columns of non-finite data too, to the same non-finite
    value). x, dy: (rows, n); mean (None for RMS norm) and rstd: float64 per row."""
    lost = ~(np.isfinite(gw) & np.isfinite(gb))
    if x.dtype == np.float64 or not lost.any():
        return
    with np.errstate(invalid="ignore", over="ignore"):
        d, xc = dy[:, lost].astype(np.float64), x[:, lost].astype(np.float64)
        xhat = (xc if mean is None else xc - mean[:, None]) * rstd[:, None]
        gw[lost], gb[lost] = (d * xhat).sum(axis=0), d.sum(axis=0)


def layer_norm_backward(grad_out, x, normalized_shape, weight=None, bias=None, *, eps=1e-5, mean=None, rstd=None):
    """Gradients of layer_norm(x, normalized_shape, ...) given grad_out: (grad_x, grad_weight, grad_bias),
    the last two None where weight or bias is None. mean and rstd (layer_norm(..., return_stats=True)'s,
    one per row) skip recomputing the statistics."""
    return _row_backward(grad_out, x, normalized_shape, weight, bias, eps, mean, rstd, rms=False)


def rms_norm_backward(grad_out, x, normalized_shape, weight=None, *, eps=None, rstd=None):
    """Gradients of rms_norm(x, normalized_shape, ...) given grad_out: (grad_x, grad_weight), grad_weight
    None where weight is None. rstd (rms_norm(..., return_stats=True)'s, one per row) skips recomputing
    it; eps=None is the machine epsilon of x's compute dtype (float32 for the half types), as in the
    forward."""
    gx, gw, _ = _row_backward(grad_out, x, normalized_shape, weight, None, eps, None, rstd, rms=True)
    return gx, gw
