"""The executable specification: pure NumPy, float64, two passes. It imports nothing from normfast, so
a bug in the package cannot hide in its own yardstick."""
import numpy as np


def moments(x, axis=None, ddof=0, keepdims=False):
    """(mean, var) of x over axis, computed in float64 as sum(x)/n, then sum((x - mean)^2)/max(n - ddof, 0).

    Empty reductions give NaN. Results are float64 arrays (0-d when every axis is reduced)."""
    x = np.asarray(x).astype(np.float64)
    axes = tuple(range(x.ndim)) if axis is None else _axis_tuple(axis, x.ndim)
    n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(x, axis=axes, keepdims=True) / n
        dev = x - mean
        m2 = np.sum(dev * dev, axis=axes, keepdims=True)
        var = m2 / max(n - ddof, 0)
    if n == 0:
        mean = np.full_like(mean, np.nan)
        var = np.full_like(var, np.nan)
    if not keepdims:
        mean = np.squeeze(mean, axis=axes)
        var = np.squeeze(var, axis=axes)
    return mean, var


def _axis_tuple(axis, ndim):
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(int(a) % ndim for a in items))


def covariance(x, ddof=1):
    """The covariance matrix of the rows of x (n_samples, n_features), two passes in float64: the mean,
    then the sum of the outer products of the deviations, divided by n - ddof."""
    x = np.asarray(x).astype(np.float64)
    d = x - x.sum(axis=0) / x.shape[0]
    return np.einsum("ni,nj->ij", d, d) / (x.shape[0] - ddof)


# --- normalization layers --------------------------------------------------------------------------
# Each takes the channel axis `axis` (batch is axis 0) and returns y in float64, plus, where the layer
# keeps running statistics, their new values as new arrays (the package updates them in place).

def activate(y, activation):
    if activation is None:
        return y
    if activation == "relu":
        return np.where(y < 0, 0.0, y)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if activation == "silu":  # its limit -0 at -inf, not -inf / inf
        return np.where(y == -np.inf, -0.0, y / (1.0 + np.exp(-y)))
    raise ValueError(activation)


def _channels_last(x, axis):
    """float64 copy of x with the channel axis moved last."""
    return np.moveaxis(np.asarray(x).astype(np.float64), axis, -1)


def _affine(z, weight, bias):
    if weight is not None:
        z = z * np.asarray(weight, np.float64)
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    return z


def _running_update(running_mean, running_var, f, batch_mean, batch_var):
    """(1 - f) * running + f * batch for both running arrays, in float64."""
    return ((1 - f) * np.asarray(running_mean, np.float64) + f * batch_mean,
            (1 - f) * np.asarray(running_var, np.float64) + f * batch_var)


def _normalized(xl, mean, var, eps, weight, bias, activation, axis):
    y = activate(_affine((xl - mean) / np.sqrt(var + eps), weight, bias), activation)
    return np.moveaxis(y, -1, axis)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, axis=1, unbiased=True, activation=None, num_batches_tracked=0):
    """Returns (y, new_running_mean, new_running_var); momentum=None averages over
    num_batches_tracked + 1 batches."""
    xl = _channels_last(x, axis)
    flat = xl.reshape(-1, xl.shape[-1])
    n = flat.shape[0]
    new_rm, new_rv = running_mean, running_var
    if training:
        mean = flat.sum(axis=0) / n
        var = ((flat - mean) ** 2).sum(axis=0) / n
        if running_mean is not None:
            f = momentum if momentum is not None else 1.0 / (num_batches_tracked + 1)
            batch_var = var * n / (n - 1) if unbiased else var
            new_rm, new_rv = _running_update(running_mean, running_var, f, mean, batch_var)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    return _normalized(xl, mean, var, eps, weight, bias, activation, axis), new_rm, new_rv


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5, axis=1, activation=None):
    xl = _channels_last(x, axis)  # (N, *spatial, C)
    spatial = tuple(range(1, xl.ndim - 1))
    new_rm, new_rv = running_mean, running_var
    if use_input_stats:
        n = int(np.prod([xl.shape[i] for i in spatial]))
        mean = xl.sum(axis=spatial, keepdims=True) / n
        var = ((xl - mean) ** 2).sum(axis=spatial, keepdims=True) / n
        if running_mean is not None:
            inst_mean = mean.reshape(xl.shape[0], -1).mean(axis=0)
            inst_var = (var * n / (n - 1)).reshape(xl.shape[0], -1).mean(axis=0)
            new_rm, new_rv = _running_update(running_mean, running_var, momentum, inst_mean, inst_var)
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    return _normalized(xl, mean, var, eps, weight, bias, activation, axis), new_rm, new_rv


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, axis=1, activation=None):
    xl = _channels_last(x, axis)  # (N, *spatial, C)
    N, C = xl.shape[0], xl.shape[-1]
    g = xl.reshape(N, -1, num_groups, C // num_groups)  # (N, spatial, G, C/G)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    z = ((g - mean) / np.sqrt(var + eps)).reshape(xl.shape)
    y = activate(_affine(z, weight, bias), activation)
    return np.moveaxis(y, -1, axis)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, residual=None, rms=False):
    """Layer norm (or RMS norm with rms=True) over the trailing dimensions, float64."""
    x = np.asarray(x).astype(np.float64)
    if residual is not None:
        x = x + np.asarray(residual).astype(np.float64)
    k = 1 if np.ndim(normalized_shape) == 0 else len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    n = int(np.prod(x.shape[x.ndim - k:]))
    if rms:
        z = x / np.sqrt((x * x).sum(axis=axes, keepdims=True) / n + eps)
    else:
        mean = x.sum(axis=axes, keepdims=True) / n
        var = ((x - mean) ** 2).sum(axis=axes, keepdims=True) / n
        z = (x - mean) / np.sqrt(var + eps)
    return _affine(z, weight, bias)


def switchable_norm(x, weight, bias, mean_weight, var_weight, running_mean=None, running_var=None,
                    training=False, momentum=0.1, eps=1e-5, axis=1, using_bn=True, activation=None):
    """Each of the instance, layer and batch moments computed directly from x (two passes, biased),
    blended by the softmax of the logits. Returns (y, new_running_mean, new_running_var)."""
    xl = _channels_last(x, axis)  # (N, *spatial, C)
    spatial = tuple(range(1, xl.ndim - 1))

    def stats(axes):
        n = int(np.prod([xl.shape[i] for i in axes]))
        mean = xl.sum(axis=axes, keepdims=True) / n
        return mean, ((xl - mean) ** 2).sum(axis=axes, keepdims=True) / n, n

    def softmax(v):
        e = np.exp(np.asarray(v, np.float64) - np.max(v))
        return e / e.sum()

    wm, wv = softmax(mean_weight), softmax(var_weight)
    means, variances = zip(stats(spatial)[:2], stats(spatial + (xl.ndim - 1,))[:2])
    new_rm, new_rv = running_mean, running_var
    if using_bn:
        if training:
            mean_bn, var_bn, n = stats((0,) + spatial)
            if running_mean is not None:
                new_rm, new_rv = _running_update(running_mean, running_var, momentum, mean_bn.ravel(),
                                                 var_bn.ravel() * n / (n - 1))
        else:
            mean_bn, var_bn = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
        means, variances = means + (mean_bn,), variances + (var_bn,)
    mean = sum(w * m for w, m in zip(wm, means))
    var = sum(w * v for w, v in zip(wv, variances))
    return _normalized(xl, mean, var, eps, weight, bias, activation, axis), new_rm, new_rv


# --- weights -------------------------------------------------------------------------------------------

def weight_norm(v, g, axis=0):
    """g * v / ||v||, the norm over every axis of v but `axis` (None: over all of them)."""
    v = np.asarray(v).astype(np.float64)
    others = tuple(i for i in range(v.ndim) if axis is None or i != axis % v.ndim)
    shape = [1 if i in others else n for i, n in enumerate(v.shape)]
    norm = np.sqrt(np.sum(v * v, axis=others, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(g).astype(np.float64).reshape(shape) * v / norm


def cosine_linear(x, weight, eps=1e-8):
    """(x . w_j) / (max(||x||, eps) * max(||w_j||, eps)) for each row x of the last axis and each row w_j."""
    x = np.asarray(x).astype(np.float64)
    w = np.asarray(weight).astype(np.float64)
    nx = np.maximum(np.sqrt(np.sum(x * x, axis=-1, keepdims=True)), eps)
    nw = np.maximum(np.sqrt(np.sum(w * w, axis=1)), eps)
    return (x @ w.T) / nx / nw
