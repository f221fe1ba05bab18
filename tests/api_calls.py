"""Every public entry point of normfast as a keyword call with fresh, valid arguments: the table the
bad-input, fuzz and concurrency tests share. A layer is called through a wrapper that takes it as the
argument `layer`, so its state is part of what an error must leave unchanged (helpers.assert_refused)."""
import numpy as np

import normfast
from normfast import layers

C = 4  # channels in every call


def _layer(layer, x, out=None, **extra):
    """Call a layer (given as the keyword `layer`, so its state is snapshot with the arrays)."""
    return layer(x, out, **extra)


def _running_moments(x, axis=(0, 2), more=None):
    acc = normfast.RunningMoments(axis).update(x)
    if more is not None:
        acc.update(more)
    return acc.mean, acc.var(1)


def _merge(x, axis=(0, 2), other_axis=(0, 2)):
    a = normfast.RunningMoments(axis).update(x)
    return (a + normfast.RunningMoments(other_axis).update(x)).var()


def _precise(x, channel_axis=1, unbiased=True):
    return normfast.precise_batch_norm_stats([x, x], channel_axis=channel_axis, unbiased=unbiased)


def _trained(layer, x):
    """The layer after a training-mode call on x (left untrained where x does not suit it: the fuzz
    test's shapes)."""
    try:
        layer(x)
    except (TypeError, ValueError):
        pass
    return layer


def _layer_backward(layer, grad_out):
    """A layer's backward: grad_x and the accumulated parameter gradients."""
    return (layer.backward(grad_out), *(g.copy() for g in layer.grads.values()))


def calls(rng=None, dtype=np.float32, shape=(3, C, 5, 2)):
    """{name: (function, kwargs)}, the arguments fresh arrays of the given dtype (x of `shape`, valid when
    it has 4 channels on axis 1 and rank 4; other shapes make the fuzz test's mostly invalid calls)."""
    rng = np.random.default_rng(0) if rng is None else rng
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    last, first = (shape[-1], shape[0]) if shape else (1, 1)
    other = (x[::-1] if x.ndim else x).copy()  # a residual
    dy = rng.standard_normal(shape).astype(dtype)  # an upstream gradient
    lead = shape[:-1] if shape else ()

    def vec(fill=None, n=C):
        return rng.standard_normal(n).astype(pdt) if fill is None else np.full(n, fill, pdt)

    def out():
        return np.full_like(x, 7)  # a sentinel: an error must leave it

    return {
        "moments": (normfast.moments, dict(x=x, axis=(0, 2))),
        "batch_norm": (normfast.batch_norm, dict(
            x=x, running_mean=vec(0.0), running_var=vec(1.0), weight=vec(), bias=vec(), training=True,
            momentum=0.1, eps=1e-5, out=out())),
        "batch_norm_eval": (normfast.batch_norm, dict(
            x=x, running_mean=vec(), running_var=vec(2.0), weight=vec(), bias=vec(), training=False,
            activation="relu", out=out())),
        "instance_norm": (normfast.instance_norm, dict(
            x=x, running_mean=vec(0.0), running_var=vec(1.0), weight=vec(), bias=vec(), momentum=0.1,
            out=out())),
        "group_norm": (normfast.group_norm, dict(x=x, num_groups=2, weight=vec(), bias=vec(), out=out())),
        "switchable_norm": (normfast.switchable_norm, dict(
            x=x, weight=vec(), bias=vec(), mean_weight=vec(n=3), var_weight=vec(n=3), running_mean=vec(0.0),
            running_var=vec(1.0), training=True, out=out())),
        "layer_norm": (normfast.layer_norm, dict(
            x=x, normalized_shape=(last,), weight=vec(n=last), bias=vec(n=last), out=out())),
        "layer_norm_residual": (normfast.layer_norm, dict(
            x=x, normalized_shape=shape[-2:], weight=vec(n=shape[-2:]), bias=vec(n=shape[-2:]),
            residual=other, residual_out=out(), out=out())),
        "rms_norm": (normfast.rms_norm, dict(x=x, normalized_shape=(last,), weight=vec(n=last), out=out())),
        "rms_norm_residual": (normfast.rms_norm, dict(
            x=x, normalized_shape=(last,), weight=vec(n=last), residual=other, out=out())),
        "batch_norm_backward": (normfast.batch_norm_backward, dict(
            grad_out=dy, x=x, running_mean=vec(0.0), running_var=vec(1.0), weight=vec(), bias=vec(), training=True,
            activation="relu")),
        "batch_norm_backward_saved": (normfast.batch_norm_backward, dict(
            grad_out=dy, x=x, weight=vec(), bias=vec(), training=True, mean=vec(), rstd=vec(0.5))),
        "instance_norm_backward": (normfast.instance_norm_backward, dict(
            grad_out=dy, x=x, weight=vec(), bias=vec(), activation="silu")),
        "group_norm_backward": (normfast.group_norm_backward, dict(
            grad_out=dy, x=x, num_groups=2, weight=vec(), bias=vec())),
        "switchable_norm_backward": (normfast.switchable_norm_backward, dict(
            grad_out=dy, x=x, weight=vec(), bias=vec(), mean_weight=vec(n=3), var_weight=vec(n=3), training=True)),
        "layer_norm_backward": (normfast.layer_norm_backward, dict(
            grad_out=dy, x=x, normalized_shape=(last,), weight=vec(n=last), bias=vec(n=last),
            mean=rng.standard_normal(lead), rstd=np.full(lead, 0.5))),
        "rms_norm_backward": (normfast.rms_norm_backward, dict(
            grad_out=dy, x=x, normalized_shape=(last,), weight=vec(n=last))),
        "RunningMoments": (_running_moments, dict(x=x, axis=(0, 2))),
        "RunningMoments_merge": (_merge, dict(x=x, axis=(0, 2), other_axis=(0, 2))),
        "precise_batch_norm_stats": (_precise, dict(x=x, channel_axis=1)),
        "fold_batch_norm": (normfast.fold_batch_norm, dict(
            weight=x, bias=vec(n=first), running_mean=vec(n=first), running_var=vec(2.0, first),
            gamma=vec(n=first), beta=vec(n=first), eps=1e-5, axis=0)),
        "weight_norm": (normfast.weight_norm, dict(v=x, g=vec(n=C), axis=1)),
        "weight_norm_params": (normfast.weight_norm_params, dict(w=x, axis=1)),
        "cosine_linear": (normfast.cosine_linear, dict(
            x=x, weight=rng.standard_normal((3, last)).astype(dtype), eps=1e-8)),
        "BatchNorm": (_layer, dict(layer=layers.BatchNorm(C, dtype=pdt), x=x, out=out())),
        "BatchNorm_eval": (_layer, dict(layer=layers.BatchNorm(C, dtype=pdt).eval(), x=x, out=out())),
        "InstanceNorm": (_layer, dict(
            layer=layers.InstanceNorm(C, affine=True, track_running_stats=True, dtype=pdt), x=x, out=out())),
        "GroupNorm": (_layer, dict(layer=layers.GroupNorm(2, C, dtype=pdt), x=x, out=out())),
        "LayerNorm": (_layer, dict(layer=layers.LayerNorm((max(last, 1),), dtype=pdt), x=x, out=out())),
        "RMSNorm": (_layer, dict(layer=layers.RMSNorm((max(last, 1),), dtype=pdt), x=x, out=out())),
        "SwitchableNorm": (_layer, dict(layer=layers.SwitchableNorm(C, dtype=pdt), x=x, out=out())),
        "BatchNorm_backward": (_layer_backward, dict(layer=_trained(layers.BatchNorm(C, dtype=pdt), x), grad_out=dy)),
        "LayerNorm_backward": (_layer_backward, dict(
            layer=_trained(layers.LayerNorm((max(last, 1),), dtype=pdt), x), grad_out=dy)),
    }


# The backward calls: an empty batch gives an empty grad_x and zero parameter gradients.
GRADIENTS = {"batch_norm_backward", "batch_norm_backward_saved", "instance_norm_backward", "group_norm_backward",
             "switchable_norm_backward", "layer_norm_backward", "rms_norm_backward", "BatchNorm_backward",
             "LayerNorm_backward"}


# The argument holding the data of each call (x unless named otherwise).
DATA = {"fold_batch_norm": "weight", "weight_norm": "v", "weight_norm_params": "w", "BatchNorm_backward": "grad_out",
        "LayerNorm_backward": "grad_out"}

# Calls that take integer and bool data (as float64), as NumPy's statistics do.
TAKES_INTEGERS = {"moments", "RunningMoments", "RunningMoments_merge", "precise_batch_norm_stats"}


def outcome(fn, kwargs):
    """Everything a call produces, as a list of arrays: its result(s), then the running statistics and the
    layer state it may update (in native byte order, so arguments of any layout compare by value)."""
    r = fn(**kwargs)
    extra = [kwargs[k] for k in ("running_mean", "running_var") if isinstance(kwargs.get(k), np.ndarray)]
    if "layer" in kwargs:
        extra += list(kwargs["layer"].state_dict().values())
    return ([np.asarray(a) for a in (r if isinstance(r, tuple) else (r,))]
            + [a.astype(a.dtype.newbyteorder("=")) for a in extra])
