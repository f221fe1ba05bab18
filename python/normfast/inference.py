"""Helpers around the weights of a trained network: BatchNorm folded into the preceding linear or
convolution, weight normalization and cosine normalization. Norms of weight rows and of inputs come from
the C kernels (one pass per row, float64 sums); products go through NumPy's BLAS."""
import math

import numpy as np

from . import _checks, _core, _normc

__all__ = ["fold_batch_norm", "weight_norm", "weight_norm_params", "cosine_linear"]


def _weight_axis(w, axis, name, allow_none=True):
    """The output-channel axis of w as an int in range, or None for axis=None (the whole tensor)."""
    if w.ndim == 0:
        raise ValueError(f"{name}: expected an array of rank >= 1, got a scalar")
    if axis is None and allow_none:
        return None
    return _checks.axis_index(axis, w.ndim)


def fold_batch_norm(weight, bias, running_mean, running_var, gamma=None, beta=None, *, eps=1e-5, axis=0):
    """Fold an inference-mode BatchNorm into the linear or convolution before it.

    With scale = gamma / sqrt(running_var + eps), returns (weight * scale along `axis`,
    (bias - running_mean) * scale + beta): the layer with these weights computes BatchNorm(layer(x)).
    weight: the layer's weight, its output-channel axis `axis` (0 for Linear (out, in) and Conv
    (out, in/groups, *k); 1 for ConvTranspose (in, out, *k)); bias, gamma, beta: None or (C,) vectors.
    Computed in float64; the results have weight's dtype."""
    w, _ = _checks.float_array(weight, "weight")
    c = _weight_axis(w, axis, "weight", allow_none=False)
    rm, _ = _checks.float_array(running_mean, "running_mean")
    if rm.ndim != 1:
        raise ValueError(f"running_mean: expected a vector, got shape {rm.shape}")
    C = rm.shape[0]
    if w.shape[c] != C:
        raise ValueError(f"weight: expected {C} output channels (the statistics' length) along axis {axis}, "
                         f"got shape {w.shape}")
    rv = _checks.param(running_var, (C,), "running_var")
    b, g, be = (_checks.param(v, (C,), n) for v, n in ((bias, "bias"), (gamma, "gamma"), (beta, "beta")))
    eps = _checks.positive(eps, "eps")
    scale = (1.0 if g is None else g) / np.sqrt(rv + eps)
    shape = [C if i == c else 1 for i in range(w.ndim)]
    folded_w = (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
    folded_b = ((0.0 if b is None else b) - rm.astype(np.float64)) * scale + (0.0 if be is None else be)
    return folded_w, folded_b.astype(w.dtype)


def _l2_rows(a, code, eps, scale=None, max_threads=0):
    """Each row of the C-contiguous 2-D array a divided by max(||row||, eps) and, with scale (a vector of
    the statistics dtype), multiplied by scale[row]; into a new array."""
    rows, n = a.shape
    y = np.empty_like(a)
    if n >= 2 and rows:  # the row kernel with one segment per row, so each row has its own scale
        _normc.rownorm(a, y, dtype=code, kind=_normc.ROW_L2, eps=eps, weight=scale, seg=n, period=rows,
                       max_threads=max_threads)
    elif a.size:  # rows of one element: the norm is |x|
        with np.errstate(divide="ignore", invalid="ignore"):
            y[...] = a / np.maximum(np.abs(a), eps) * (1.0 if scale is None else scale[:, None])
    return y


def weight_norm(v, g, *, axis=0):
    """Weight normalization (Salimans & Kingma): w = g * v / ||v||, the norm over every axis but `axis`
    (PyTorch's `dim`; None: over the whole tensor, g a scalar; a negative axis counts from the end, where
    PyTorch takes dim=-1 to mean the whole tensor). g has shape (C,) or v's rank with C
    along `axis` and 1 elsewhere, as PyTorch stores it. A zero slice of v gives NaN, as in PyTorch.
    Returns w with v's shape and dtype."""
    v, code = _checks.float_array(v, "v")
    c = _weight_axis(v, axis, "v")
    C = 1 if c is None else v.shape[c]
    g_arr, _ = _checks.float_array(g, "g")
    kept = () if c is None else tuple(C if i == c else 1 for i in range(v.ndim))
    if g_arr.shape not in ((C,), kept):
        raise ValueError(f"g: expected shape {(C,)} or {kept} (one norm per slice along axis {axis}), "
                         f"got {g_arr.shape}")
    scale = np.ascontiguousarray(g_arr.reshape(C), dtype=_checks.stats_dtype(v))
    # Slices along the axis as contiguous rows, each scaled by its own g.
    moved = v if not c else np.moveaxis(v, c, 0)
    rows = np.ascontiguousarray(moved).reshape(C, math.prod(moved.shape) // C if C else 0)
    w = _l2_rows(rows, code, 0.0, scale).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(w, 0, c)) if c else w


def weight_norm_params(w, *, axis=0):
    """The (v, g) of weight normalization that reproduce w: v a copy of w, g = ||w|| over every axis but
    `axis`, shaped as PyTorch stores it (v's rank, 1 except along axis; a scalar array for axis=None).
    The norms come from the moments engine: ||w||^2 = n * (var + mean^2), in float64."""
    w, code = _checks.float_array(w, "w")
    c = _weight_axis(w, axis, "w")
    keep = () if c is None else (c,)
    mean, var = _core.moments64(w, code, keep)
    n = w.size // max(mean.size, 1)
    g = np.sqrt(n * (var + mean * mean)) if n else np.zeros_like(mean)  # the norm of nothing is 0
    g = g.astype(w.dtype)
    return w.copy(), (g.reshape(()) if c is None else g)


def cosine_linear(x, weight, *, eps=1e-8):
    """Cosine normalization of a linear layer: y[..., j] = (x . w_j) / (max(||x||, eps) * max(||w_j||, eps))
    for each row x of the last axis and each row w_j of weight (out, in), as
    torch.nn.functional.cosine_similarity computes each pair. Rows are normalized by the row kernel and
    multiplied with NumPy's matmul (float32 for half-precision inputs). Returns shape x.shape[:-1] + (out,)
    in the promoted dtype of x and weight."""
    x, _ = _checks.float_array(x, "x")
    w, _ = _checks.float_array(weight, "weight")
    if x.ndim < 1:
        raise ValueError("x: expected an array of rank >= 1, got a scalar")
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"weight: expected shape (out, {x.shape[-1]}) to match x's last axis, got {w.shape}")
    eps = _checks.positive(eps, "eps")
    try:
        dtype = np.result_type(x.dtype, w.dtype)
    except TypeError:  # float16 with bfloat16: no common half type, so float32 (as PyTorch promotes them)
        dtype = np.dtype(np.float32)
    cdt = np.dtype(np.float64 if dtype == np.float64 else np.float32)
    code = _checks.dtype_code(cdt)
    # One thread: OpenMP workers left spinning after a threaded pass would take cores from the matmul
    # (measured 2 -> 8 ms for (1024, 512) x (256, 512) on 2 cores), which costs far more than the pass.
    xn = _l2_rows(np.ascontiguousarray(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), dtype=cdt), code, eps, max_threads=1)
    wn = _l2_rows(np.ascontiguousarray(w, dtype=cdt), code, eps, max_threads=1)
    y = np.matmul(xn, wn.T).reshape(x.shape[:-1] + (w.shape[0],))
    return y if y.dtype == dtype else y.astype(dtype)
