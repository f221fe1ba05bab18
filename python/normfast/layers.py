"""Stateful normalization layers over the function API (norms.py, grads.py): parameters and running statistics as NumPy
arrays, training and evaluation modes, and state dicts with PyTorch's key names, so a trained PyTorch
module's `state_dict()` loads as it is. A training-mode call remembers what `backward` needs; backward
returns the gradient with respect to x and adds the parameters' gradients to `grads`.

Parameters and buffers read as read-only arrays; they change only by assignment (`layer.weight = w`),
`load_state_dict` or a training call, which is what lets evaluation-mode BatchNorm keep its per-channel
scale and shift between calls and recompute them only after a change."""
import numpy as np

from . import _checks, _core, grads, norms

__all__ = ["BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm", "RMSNorm", "SwitchableNorm"]


class _State:
    """A parameter or buffer of a layer: a read-only view when read (None where the layer has none, e.g.
    weight with affine=False); assignment checks shape and kind, copies, and marks caches stale."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        arr = layer._state.get(self.name)
        if arr is None:
            return None
        view = arr.view()
        view.flags.writeable = False
        return view

    def __set__(self, layer, value):
        if self.name not in layer._state:
            raise AttributeError(f"{self.name}: this {type(layer).__name__} has no {self.name} ({layer!r})")
        layer._load({self.name: value}, lambda k: k)


def _layer_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _shape(normalized_shape):
    items = normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
    return tuple(_checks.positive_int(n, "normalized_shape") for n in items)


class _Layer:
    """Training flag, state (parameters then buffers, in PyTorch's order), state dicts, and gradients."""

    weight = _State()
    bias = _State()
    _PARAMS = ("weight", "bias")  # the learnable state, in the order the backward returns its gradients

    def __init__(self, dtype):
        self.dtype = _layer_dtype(dtype)
        self.training = True
        self._state = {}
        self._cache = {}
        self._grads = {}
        self._saved = None  # what backward needs from the last training-mode call

    @property
    def grads(self):
        """The accumulated gradients of the parameters, by state_dict name (zeros until a backward)."""
        for k in self._PARAMS:
            if k in self._state and k not in self._grads:
                self._grads[k] = np.zeros_like(self._state[k])
        return self._grads

    def zero_grad(self):
        """Set every accumulated gradient to zero."""
        for g in self.grads.values():
            g[...] = 0

    def backward(self, grad_out):
        """The gradient with respect to x of the last training-mode call, given grad_out, the gradient
        with respect to its output; the parameters' gradients are added to `grads`."""
        if self._saved is None:
            raise ValueError(f"backward: this {type(self).__name__} has no training-mode call to differentiate; "
                             "call it with training=True (layer.train()) first")
        gx, *param_grads = self._backward(grad_out, **self._saved)
        acc = self.grads
        for k, g in zip(self._PARAMS, param_grads):
            if g is not None:
                acc[k] += g.astype(self.dtype, copy=False)
        return gx

    @staticmethod
    def _kept(x, out):
        """x as backward will need it: a copy where the call is about to overwrite it."""
        return x.copy() if out is not None and isinstance(out, np.ndarray) and _checks.overlaps(out, x) else x

    def _add(self, name, shape, fill, dtype=None):
        try:
            self._state[name] = np.full(shape, fill, self.dtype if dtype is None else dtype)
        except (ValueError, MemoryError) as e:  # sizes past what NumPy or memory can hold
            size_arg = "normalized_shape" if hasattr(self, "normalized_shape") else (
                "num_channels" if hasattr(self, "num_channels") else "num_features")
            raise ValueError(f"{size_arg}: {name} of shape {shape} cannot be allocated ({e})") from None

    def _channel_setup(self, eps, axis, activation, affine_channels, running_channels):
        """eps, the channel axis and the activation; weight (ones) and bias (zeros) for affine_channels
        channels and running mean (zeros) and variance (ones) for running_channels, where not None."""
        self.eps = _checks.positive(eps, "eps")
        self.axis = _checks.integer(axis, "axis")
        self.activation = _checks.activation(activation)
        for n, names, fills in ((affine_channels, ("weight", "bias"), (1.0, 0.0)),
                                (running_channels, ("running_mean", "running_var"), (0.0, 1.0))):
            if n is not None:
                for name, fill in zip(names, fills):
                    self._add(name, (n,), fill)

    def train(self, mode=True):
        """Training mode (batch statistics, running statistics updated) or, with mode=False, evaluation."""
        self.training = _checks.flag(mode, "mode")
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """Copies of the parameters and buffers under PyTorch's names."""
        return {k: v.copy() for k, v in self._state.items()}

    def load_state_dict(self, state_dict, *, strict=True, prefix=""):
        """Load parameters and buffers from a mapping of names to arrays (NumPy arrays, PyTorch tensors,
        anything np.asarray takes), the keys read after `prefix` (e.g. "1." for the second module of a
        PyTorch Sequential's state dict). Every key, shape and dtype is checked before anything changes;
        values are cast to the layer's dtype; num_batches_tracked must be a count in [0, 2**63 - 1).
        strict=False skips missing keys and ignores unknown ones. Returns (missing keys, unexpected keys)."""
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict: expected a mapping of names to arrays, got {type(state_dict).__name__}")
        given = {k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}
        missing = [k for k in self._state if k not in given and k != "num_batches_tracked"]
        unexpected = [prefix + k for k in given if k not in self._state]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict: missing keys {[prefix + k for k in missing]}, unexpected keys {unexpected}")
        # A dict without num_batches_tracked leaves the count as it is, as PyTorch does.
        self._load({k: v for k, v in given.items() if k in self._state}, lambda k: f"state_dict[{prefix + k!r}]")
        return [prefix + k for k in missing], unexpected

    def _load(self, values, name_of):
        """Check every value against the current one (shape, float or integer), then replace them all."""
        new = {}
        for k, v in values.items():
            name, cur = name_of(k), self._state[k]
            arr = _checks.array(v, name, "an array-like")
            if cur.dtype.kind == "f" and not _checks.is_float(arr.dtype):
                raise TypeError(f"{name}: expected a float array, got dtype {arr.dtype}")
            if cur.dtype.kind == "i" and arr.dtype.kind not in "iu":
                raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
            if arr.shape != cur.shape:
                raise ValueError(f"{name}: expected shape {cur.shape}, got {arr.shape}")
            if k == "num_batches_tracked":
                _checks.counter(arr, name, written=False)
            new[k] = np.array(arr, dtype=cur.dtype)  # a copy: later changes to v do not reach the layer
        self._state.update(new)
        self._cache.clear()

    def _input(self, x, channels):
        """(x, its dtype code, its channel axis) after checking x and that the channel axis has `channels`
        entries."""
        x, code = _checks.float_array(x, "x")
        c = _checks.channel_axis(self.axis, x.ndim)
        if x.shape[c] != channels:
            raise ValueError(f"x: expected {channels} channels along axis {self.axis}, got shape {x.shape}")
        return x, code, c

    def _updatable(self, x):
        """Running statistics are updated in x's statistics dtype: say so before a mismatch gets deep."""
        if _checks.stats_dtype(x) != self.dtype:
            raise TypeError(f"x: dtype {x.dtype} computes statistics in {np.dtype(_checks.stats_dtype(x))}, "
                            f"but this layer's running statistics are {self.dtype}; build the layer with "
                            f"dtype=np.{np.dtype(_checks.stats_dtype(x))} or cast x")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._args().items())
        return f"{type(self).__name__}({args})"


class _ChannelNorm(_Layer):
    """What batch and instance norm share: per-channel affine parameters and optional running statistics."""

    running_mean = _State()
    running_var = _State()
    num_batches_tracked = _State()

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, axis, activation, dtype):
        super().__init__(dtype)
        C = self.num_features = _checks.positive_int(num_features, "num_features")
        self.momentum = _checks.fraction(momentum, "momentum", allow_none=True)
        self.affine = _checks.flag(affine, "affine")
        self.track_running_stats = _checks.flag(track_running_stats, "track_running_stats")
        self._channel_setup(eps, axis, activation, C if self.affine else None, C if self.track_running_stats else None)
        if self.track_running_stats:
            self._add("num_batches_tracked", (), 0, np.int64)

    def _args(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats, "axis": self.axis, "activation": self.activation}


class BatchNorm(_ChannelNorm):
    """Batch normalization of inputs (N, C, *) (channel axis `axis`), as torch.nn.BatchNorm1d/2d/3d.

    Training mode normalizes with the batch statistics and updates the running ones (momentum=None: the
    cumulative average over num_batches_tracked); evaluation mode uses the running statistics, through a
    per-channel scale and shift computed once and kept until a parameter or statistic changes. Without
    running statistics both modes use the batch's. `activation` (None, 'relu', 'sigmoid', 'silu') is
    applied in the same pass."""

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, axis=1,
                 activation=None, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, activation, dtype)

    def __call__(self, x, out=None):
        """PyTorch's rules: training mode, or a layer without running statistics (built with
        track_running_stats=False), normalizes with the batch's statistics, and a training call updates
        the running ones (and counts the batch) only while track_running_stats is True; evaluation
        otherwise uses the running statistics, whatever track_running_stats is now."""
        x, code, c = self._input(x, self.num_features)
        st = self._state
        if not self.training and "running_mean" in st:
            return self._infer(x, code, c, out)
        update = self.training and self.track_running_stats and "running_mean" in st
        if update:
            self._updatable(x)
        kept = self._kept(x, out) if self.training else None
        running = [st.get(k) if update else None for k in ("running_mean", "running_var", "num_batches_tracked")]
        y, mean, rstd = norms.batch_norm(x, running[0], running[1], st.get("weight"), st.get("bias"), training=True,
                                         momentum=self.momentum, eps=self.eps, axis=self.axis,
                                         activation=self.activation, out=out, num_batches_tracked=running[2],
                                         return_stats=True)
        if update:
            self._cache.clear()
            if x.size == 0 and running[2] is not None:  # PyTorch counts an empty batch, which changes no statistic
                running[2] += 1
        if self.training:
            self._saved = dict(x=kept, mean=mean, rstd=rstd)
        return y

    def _backward(self, grad_out, x, mean, rstd):
        return grads.batch_norm_backward(grad_out, x, None, None, self._state.get("weight"), self._state.get("bias"),
                                         training=True, eps=self.eps, axis=self.axis, activation=self.activation,
                                         mean=mean, rstd=rstd)

    def _infer(self, x, code, c, out):
        """Evaluation with running statistics: y = act((x - s) * a + c) with (s, a, c), laid out for x,
        cached per compute dtype, layout and eps."""
        activation = _checks.activation(self.activation)
        out = _checks.output(out, x)
        _checks.disjoint((("out", out),), (("x", x),))
        pdt = _checks.stats_dtype(x)
        key = (pdt, x.ndim, c, self.eps)
        plan = self._cache.get(key)
        if plan is None:
            st = self._state
            params = [None if st.get(k) is None else st[k].astype(pdt) for k in ("weight", "bias")]
            stats = _core.running_stats(st["running_mean"], st["running_var"], x, c)
            plan = self._cache[key] = _core.apply_plan(x.ndim, (c,), *stats, _checks.positive(self.eps, "eps"),
                                                       *params, pdt)
        return _core.run_plan(x, code, plan, out, activation)


class InstanceNorm(_ChannelNorm):
    """Instance normalization of inputs (N, C, *), as torch.nn.InstanceNorm1d/2d/3d: statistics per sample
    and channel. With track_running_stats, training calls update the running statistics and evaluation
    uses them (momentum=None leaves them unchanged and num_batches_tracked is never counted, as in
    PyTorch)."""

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, axis=1,
                 activation=None, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, activation, dtype)

    def __call__(self, x, out=None):
        """PyTorch's rules: batch statistics in training mode or while track_running_stats is False, and
        then the running statistics, where the layer has them, are updated (even in evaluation mode, as
        torch.nn.InstanceNorm does); otherwise the running statistics normalize."""
        x, _, _ = self._input(x, self.num_features)
        st = self._state
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats and "running_mean" in st:
            self._updatable(x)
        kept = self._kept(x, out) if self.training else None
        y = norms.instance_norm(x, st.get("running_mean"), st.get("running_var"), st.get("weight"), st.get("bias"),
                                use_input_stats=use_input_stats, momentum=0.0 if self.momentum is None else self.momentum,
                                eps=self.eps, axis=self.axis, activation=self.activation, out=out)
        if self.training:
            self._saved = dict(x=kept)
        return y

    def _backward(self, grad_out, x):
        return grads.instance_norm_backward(grad_out, x, weight=self._state.get("weight"), bias=self._state.get("bias"),
                                            eps=self.eps, axis=self.axis, activation=self.activation)


class GroupNorm(_Layer):
    """Group normalization, as torch.nn.GroupNorm: statistics per sample over groups of consecutive
    channels (channel axis `axis`), weight and bias per channel."""

    def __init__(self, num_groups, num_channels, *, eps=1e-5, affine=True, axis=1, activation=None,
                 dtype=np.float32):
        super().__init__(dtype)
        self.num_groups = _checks.positive_int(num_groups, "num_groups")
        self.num_channels = _checks.positive_int(num_channels, "num_channels")
        self.affine = _checks.flag(affine, "affine")
        self._channel_setup(eps, axis, activation, self.num_channels if self.affine else None, None)
        if self.num_channels % self.num_groups:  # after the parameters: a num_channels too large is named first
            raise ValueError(f"num_groups: expected a divisor of num_channels={self.num_channels}, got {self.num_groups}")

    def _args(self):
        return {"num_groups": self.num_groups, "num_channels": self.num_channels, "eps": self.eps,
                "affine": self.affine, "axis": self.axis, "activation": self.activation}

    def __call__(self, x, out=None):
        x, _, _ = self._input(x, self.num_channels)
        kept = self._kept(x, out) if self.training else None
        y = norms.group_norm(x, self.num_groups, self._state.get("weight"), self._state.get("bias"), eps=self.eps,
                             axis=self.axis, activation=self.activation, out=out)
        if self.training:
            self._saved = dict(x=kept)
        return y

    def _backward(self, grad_out, x):
        return grads.group_norm_backward(grad_out, x, self.num_groups, self._state.get("weight"),
                                         self._state.get("bias"), eps=self.eps, axis=self.axis,
                                         activation=self.activation)


def _row_call(norm, x, out, residual, residual_out):
    """A training-mode layer or RMS norm call, norm(x, residual_out) -> (y, *stats), with the x backward
    differentiates: x itself (a copy where out overwrites it), or the normalized sum x + residual, which
    goes to the caller's residual_out (then copied, as the caller may reuse it) or to an array of its own.
    Returns (y, stats, that x)."""
    x, _ = _checks.float_array(x, "x")
    if residual is None:
        kept = _Layer._kept(x, out)
        y, *stats = norm(x, residual_out)
        return y, stats, kept
    own = residual_out is None
    summed = np.empty_like(x) if own else residual_out
    y, *stats = norm(x, summed)
    return y, stats, summed if own else summed.copy()


class LayerNorm(_Layer):
    """Layer normalization over the trailing `normalized_shape` dimensions, as torch.nn.LayerNorm.
    `residual` (and `residual_out`) normalize x + residual in the same pass, as in pre-norm blocks."""

    def __init__(self, normalized_shape, *, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = _shape(normalized_shape)
        self.eps = _checks.positive(eps, "eps")
        self.elementwise_affine = _checks.flag(elementwise_affine, "elementwise_affine")
        if self.elementwise_affine:
            self._add("weight", self.normalized_shape, 1.0)
            if _checks.flag(bias, "bias"):
                self._add("bias", self.normalized_shape, 0.0)

    def _args(self):
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": "bias" in self._state}

    def __call__(self, x, out=None, *, residual=None, residual_out=None):
        w, b = self._state.get("weight"), self._state.get("bias")
        if not self.training:
            return norms.layer_norm(x, self.normalized_shape, w, b, eps=self.eps, residual=residual,
                                    residual_out=residual_out, out=out)
        y, (mean, rstd), kept = _row_call(
            lambda x, res_out: norms.layer_norm(x, self.normalized_shape, w, b, eps=self.eps, residual=residual,
                                                residual_out=res_out, out=out, return_stats=True),
            x, out, residual, residual_out)
        self._saved = dict(x=kept, mean=mean, rstd=rstd)
        return y

    def _backward(self, grad_out, x, mean, rstd):
        return grads.layer_norm_backward(grad_out, x, self.normalized_shape, self._state.get("weight"),
                                         self._state.get("bias"), eps=self.eps, mean=mean, rstd=rstd)


class RMSNorm(_Layer):
    """RMS normalization over the trailing `normalized_shape` dimensions, as torch.nn.RMSNorm (eps=None:
    the machine epsilon of x's dtype)."""

    def __init__(self, normalized_shape, *, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__(dtype)
        self.normalized_shape = _shape(normalized_shape)
        self.eps = None if eps is None else _checks.positive(eps, "eps")
        self.elementwise_affine = _checks.flag(elementwise_affine, "elementwise_affine")
        if self.elementwise_affine:
            self._add("weight", self.normalized_shape, 1.0)

    def _args(self):
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine}

    _PARAMS = ("weight",)

    def __call__(self, x, out=None, *, residual=None, residual_out=None):
        w = self._state.get("weight")
        if not self.training:
            return norms.rms_norm(x, self.normalized_shape, w, eps=self.eps, residual=residual,
                                  residual_out=residual_out, out=out)
        y, (rstd,), kept = _row_call(
            lambda x, res_out: norms.rms_norm(x, self.normalized_shape, w, eps=self.eps, residual=residual,
                                              residual_out=res_out, out=out, return_stats=True),
            x, out, residual, residual_out)
        self._saved = dict(x=kept, rstd=rstd)
        return y

    def _backward(self, grad_out, x, rstd):
        return grads.rms_norm_backward(grad_out, x, self.normalized_shape, self._state.get("weight"), eps=self.eps,
                                       rstd=rstd)


class SwitchableNorm(_Layer):
    """Switchable normalization (Luo et al.): a learned softmax blend of instance, layer and (with using_bn)
    batch statistics; the logits are the parameters mean_weight and var_weight (initially equal)."""

    mean_weight = _State()
    var_weight = _State()
    running_mean = _State()
    running_var = _State()
    _PARAMS = ("weight", "bias", "mean_weight", "var_weight")

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, using_bn=True, axis=1, activation=None,
                 dtype=np.float32):
        super().__init__(dtype)
        C = self.num_features = _checks.positive_int(num_features, "num_features")
        self.momentum = _checks.fraction(momentum, "momentum")
        self.using_bn = _checks.flag(using_bn, "using_bn")
        self._channel_setup(eps, axis, activation, C, None)
        self._add("mean_weight", (3 if self.using_bn else 2,), 1.0)
        self._add("var_weight", (3 if self.using_bn else 2,), 1.0)
        if self.using_bn:  # after the logits: the original implementation's order
            self._add("running_mean", (C,), 0.0)
            self._add("running_var", (C,), 1.0)

    def _args(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "using_bn": self.using_bn, "axis": self.axis, "activation": self.activation}

    def __call__(self, x, out=None):
        x, _, _ = self._input(x, self.num_features)
        if self.training and self.using_bn:
            self._updatable(x)
        st = self._state
        kept = self._kept(x, out) if self.training else None
        y = norms.switchable_norm(x, st["weight"], st["bias"], st["mean_weight"], st["var_weight"],
                                  st.get("running_mean"), st.get("running_var"), training=self.training,
                                  momentum=self.momentum, eps=self.eps, axis=self.axis, using_bn=self.using_bn,
                                  activation=self.activation, out=out)
        if self.training:
            self._saved = dict(x=kept)
        return y

    def _backward(self, grad_out, x):
        st = self._state
        return grads.switchable_norm_backward(grad_out, x, st["weight"], st["bias"], st["mean_weight"],
                                              st["var_weight"], training=True, eps=self.eps, axis=self.axis,
                                              using_bn=self.using_bn, activation=self.activation)
