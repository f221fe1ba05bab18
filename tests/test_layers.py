"""normfast.layers against PyTorch's modules: state dicts loaded as they are, training and evaluation
outputs, running statistics, and the inference of trained Linear/Conv -> BatchNorm -> ReLU networks
(plain and with the BatchNorm folded into the weights)."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normfast
from normfast import layers, reference

from helpers import assert_refused, bad_call, case_ids

torch.set_num_threads(2)

# (name, the PyTorch module, the normfast layer for a dtype, input shape)
PAIRS = [
    ("bn1d", lambda: nn.BatchNorm1d(6), lambda dt: layers.BatchNorm(6, dtype=dt), (8, 6)),
    ("bn1d-seq", lambda: nn.BatchNorm1d(6, momentum=0.3), lambda dt: layers.BatchNorm(6, momentum=0.3, dtype=dt),
     (4, 6, 5)),
    ("bn2d-cumulative", lambda: nn.BatchNorm2d(6, momentum=None),
     lambda dt: layers.BatchNorm(6, momentum=None, dtype=dt), (3, 6, 4, 5)),
    ("bn2d-no-affine", lambda: nn.BatchNorm2d(6, affine=False, eps=1e-3),
     lambda dt: layers.BatchNorm(6, affine=False, eps=1e-3, dtype=dt), (3, 6, 4, 5)),
    ("bn3d-untracked", lambda: nn.BatchNorm3d(4, track_running_stats=False),
     lambda dt: layers.BatchNorm(4, track_running_stats=False, dtype=dt), (2, 4, 3, 3, 3)),
    ("in1d", lambda: nn.InstanceNorm1d(6), lambda dt: layers.InstanceNorm(6, dtype=dt), (4, 6, 9)),
    ("in2d-tracked", lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
     lambda dt: layers.InstanceNorm(6, affine=True, track_running_stats=True, dtype=dt), (3, 6, 4, 5)),
    ("in2d-momentum-none", lambda: nn.InstanceNorm2d(6, track_running_stats=True, momentum=None),
     lambda dt: layers.InstanceNorm(6, track_running_stats=True, momentum=None, dtype=dt), (3, 6, 4, 5)),
    ("gn", lambda: nn.GroupNorm(3, 6), lambda dt: layers.GroupNorm(3, 6, dtype=dt), (3, 6, 4, 5)),
    ("gn-no-affine", lambda: nn.GroupNorm(2, 6, affine=False, eps=1e-2),
     lambda dt: layers.GroupNorm(2, 6, affine=False, eps=1e-2, dtype=dt), (3, 6, 7)),
    ("ln", lambda: nn.LayerNorm(5), lambda dt: layers.LayerNorm(5, dtype=dt), (4, 3, 5)),
    ("ln-2d", lambda: nn.LayerNorm((4, 5)), lambda dt: layers.LayerNorm((4, 5), dtype=dt), (3, 4, 5)),
    ("ln-no-bias", lambda: nn.LayerNorm(5, bias=False), lambda dt: layers.LayerNorm(5, bias=False, dtype=dt),
     (6, 5)),
    ("ln-no-affine", lambda: nn.LayerNorm(5, elementwise_affine=False),
     lambda dt: layers.LayerNorm(5, elementwise_affine=False, dtype=dt), (6, 5)),
    ("rms", lambda: nn.RMSNorm(5), lambda dt: layers.RMSNorm(5, dtype=dt), (4, 3, 5)),
    ("rms-2d-eps", lambda: nn.RMSNorm((4, 5), eps=1e-6), lambda dt: layers.RMSNorm((4, 5), eps=1e-6, dtype=dt),
     (3, 4, 5)),
]
DTYPES = [np.float32, np.float64]


def randomize(module, seed):
    """Parameters and statistics away from their initial values, so loading them is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(3)
            elif name.endswith("running_var") or name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g))


def to_numpy(t):
    return t.detach().numpy()


def assert_state_equal(layer, module, rtol):
    ours, theirs = layer.state_dict(), module.state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert ours[k].shape == tuple(theirs[k].shape), k
        np.testing.assert_allclose(ours[k], theirs[k].numpy(), rtol=rtol, atol=rtol, err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, make_module, make_layer, shape", PAIRS, ids=[p[0] for p in PAIRS])
def test_matches_torch_module(name, make_module, make_layer, shape, dtype):
    module = make_module().to(torch.float64 if dtype == np.float64 else torch.float32)
    randomize(module, 0)
    layer = make_layer(dtype)
    layer.load_state_dict(module.state_dict())  # tensors as they are
    assert_state_equal(layer, module, 0)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    rng = np.random.default_rng(1)
    for step in range(5):  # training calls: outputs and running statistics
        x = (rng.standard_normal(shape) * 2 + step).astype(dtype)
        y = layer(x)
        want = to_numpy(module(torch.from_numpy(x)))
        np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol * 10, err_msg=f"step {step}")
        assert y.dtype == dtype
    assert_state_equal(layer, module, rtol)
    layer.eval()
    module.eval()
    for step in range(2):  # evaluation, twice: the second call may use cached coefficients
        x = (rng.standard_normal(shape) - 1).astype(dtype)
        out = np.empty_like(x)
        assert layer(x, out=out) is out
        np.testing.assert_allclose(out, to_numpy(module(torch.from_numpy(x))), rtol=rtol, atol=rtol * 10)
    assert_state_equal(layer, module, rtol)


def train_briefly(model, make_input, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        out = model(make_input())
        loss = (out - 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def numpy_linear(x, sd, prefix):
    return x @ sd[prefix + "weight"].numpy().T + sd[prefix + "bias"].numpy()


def test_trained_mlp_inference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 16), nn.BatchNorm1d(16, momentum=0.3), nn.ReLU())
    train_briefly(model, lambda: torch.randn(64, 20) * 2 + 1)
    sd = model.state_dict()
    bns = [layers.BatchNorm(32, activation="relu"), layers.BatchNorm(16, activation="relu")]
    for bn, prefix in zip(bns, ["1.", "4."]):
        bn.load_state_dict(sd, prefix=prefix, strict=False)
        bn.eval()
    x = np.random.default_rng(2).standard_normal((50, 20)).astype(np.float32) * 2 + 1
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    y = bns[1](numpy_linear(bns[0](numpy_linear(x, sd, "0.")), sd, "3."))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # The same network with each BatchNorm folded into the Linear before it.
    h = x
    for lin, bn in (("0.", "1."), ("3.", "4.")):
        w, b = normfast.fold_batch_norm(sd[lin + "weight"], sd[lin + "bias"], sd[bn + "running_mean"],
                                        sd[bn + "running_var"], sd[bn + "weight"], sd[bn + "bias"], eps=1e-5)
        h = np.maximum(h @ w.T + b, 0)
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-5)


def test_trained_cnn_inference():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU())
    train_briefly(model, lambda: torch.randn(8, 3, 10, 10) + 0.5)
    sd = model.state_dict()
    bns = []
    for prefix, c, eps in (("1.", 8, 1e-5), ("4.", 4, 1e-3)):
        bn = layers.BatchNorm(c, eps=eps)
        bn.load_state_dict({k: v for k, v in sd.items() if k.startswith(prefix)}, prefix=prefix)
        bns.append(bn.eval())
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((4, 3, 10, 10)).astype(np.float32) + 0.5)
    with torch.no_grad():
        want = model(x).numpy()
        # The convolutions' outputs come from PyTorch; normalization and ReLU from normfast.
        h = np.maximum(bns[0](model[0](x).numpy()), 0)
        y = np.maximum(bns[1](model[3](torch.from_numpy(h)).numpy()), 0)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        h = x
        for conv, bn, eps in ((model[0], "1.", 1e-5), (model[3], "4.", 1e-3)):
            w, b = normfast.fold_batch_norm(conv.weight.numpy(), conv.bias.numpy(), sd[bn + "running_mean"],
                                            sd[bn + "running_var"], sd[bn + "weight"], sd[bn + "bias"], eps=eps)
            h = F.relu(F.conv2d(h, torch.from_numpy(w), torch.from_numpy(b), padding=conv.padding))
        np.testing.assert_allclose(h.numpy(), want, rtol=1e-5, atol=1e-5)


def eval_bn(seed=0):
    rng = np.random.default_rng(seed)
    bn = layers.BatchNorm(4, activation="silu")
    bn.load_state_dict({"weight": rng.uniform(0.5, 2, 4), "bias": rng.standard_normal(4),
                        "running_mean": rng.standard_normal(4), "running_var": rng.uniform(0.5, 2, 4),
                        "num_batches_tracked": np.array(7)})
    return bn.eval(), (rng.standard_normal((3, 4, 5)) * 3).astype(np.float32)


def functional(bn, x):
    st = bn.state_dict()
    return normfast.batch_norm(x, st["running_mean"], st["running_var"], st.get("weight"), st.get("bias"),
                               eps=bn.eps, axis=bn.axis, activation=bn.activation)


def train_once(bn):
    bn.train()(np.random.default_rng(5).standard_normal((6, 4, 3)).astype(np.float32))
    bn.eval()


@pytest.mark.parametrize("change", [
    lambda bn: setattr(bn, "weight", bn.weight * 2),
    lambda bn: setattr(bn, "running_var", bn.running_var + 1),
    lambda bn: bn.load_state_dict({"running_mean": np.ones(4, np.float32)}, strict=False),
    lambda bn: setattr(bn, "eps", 0.5),
    lambda bn: train_once(bn),
], ids=["weight", "running_var", "load_state_dict", "eps", "training-call"])
def test_eval_cache_follows_every_change(change):
    bn, x = eval_bn()
    first = bn(x)
    np.testing.assert_array_equal(first, functional(bn, x))
    np.testing.assert_array_equal(bn(x.astype(np.float64)), functional(bn, x.astype(np.float64)))
    change(bn)
    second = bn(x)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, functional(bn, x))
    y = np.moveaxis(x, 1, -1)  # another layout of the same data: its own coefficients
    bn.axis = -1
    np.testing.assert_array_equal(bn(y), np.moveaxis(second, 1, -1))


def test_parameters_are_read_only_and_state_dicts_are_copies():
    bn, x = eval_bn()
    with pytest.raises(ValueError, match="read-only"):
        bn.weight[0] = 5
    sd = bn.state_dict()
    sd["weight"][...] = 5
    assert not np.any(bn.weight == 5)
    w = np.full(4, 3.0)
    bn.weight = w
    w[...] = 4  # the layer took a copy
    np.testing.assert_array_equal(bn.weight, np.full(4, 3.0, np.float32))
    assert bn.weight.dtype == np.float32 and bn.num_batches_tracked.dtype == np.int64
    assert pickle.loads(pickle.dumps(bn)).state_dict().keys() == sd.keys()


@pytest.mark.parametrize("strict", [True, False])
def test_load_from_old_checkpoint_without_counter(strict):
    """A dict without num_batches_tracked keeps the count, as PyTorch does (checked against it), so that
    momentum=None goes on averaging instead of restarting from the next batch."""
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    sd = {"weight": np.ones(3, np.float32), "bias": np.zeros(3, np.float32),
          "running_mean": np.full(3, 0.5, np.float32), "running_var": np.full(3, 2.0, np.float32)}
    bn, tb = layers.BatchNorm(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    for _ in range(2):
        bn(x)
        tb(torch.from_numpy(x))
    bn.load_state_dict(sd, strict=strict)
    tb.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=strict)
    assert bn.num_batches_tracked == tb.num_batches_tracked.item() == 2
    bn(x + 1)
    tb(torch.from_numpy(x + 1))
    for k, v in tb.state_dict().items():
        np.testing.assert_allclose(bn.state_dict()[k], v.numpy(), rtol=1e-6, err_msg=k)


def test_switchable_norm_layer_training_and_eval():
    rng = np.random.default_rng(6)
    sn = layers.SwitchableNorm(5, momentum=0.2)
    sn.load_state_dict({"weight": rng.uniform(0.5, 2, 5), "bias": rng.standard_normal(5),
                        "mean_weight": rng.standard_normal(3), "var_weight": rng.standard_normal(3),
                        "running_mean": np.zeros(5), "running_var": np.ones(5)})
    st = {k: v.astype(np.float64) for k, v in sn.state_dict().items()}
    rm, rv = st["running_mean"], st["running_var"]
    for step in range(5):
        x = (rng.standard_normal((4, 5, 6)) + step).astype(np.float32)
        want, rm, rv = reference.switchable_norm(x, st["weight"], st["bias"], st["mean_weight"], st["var_weight"],
                                                 rm, rv, training=True, momentum=0.2)
        np.testing.assert_allclose(sn(x), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(sn.running_mean, rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sn.running_var, rv, rtol=1e-5)
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    want, _, _ = reference.switchable_norm(x, st["weight"], st["bias"], st["mean_weight"], st["var_weight"],
                                           rm, rv, training=False)
    np.testing.assert_allclose(sn.eval()(x), want, rtol=2e-5, atol=2e-5)
    assert list(sn.state_dict()) == ["weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var"]
    assert list(layers.SwitchableNorm(5, using_bn=False).state_dict()) == ["weight", "bias", "mean_weight",
                                                                           "var_weight"]


def test_layer_norm_layer_with_residual():
    rng = np.random.default_rng(7)
    ln = layers.LayerNorm(8)
    ln.weight, ln.bias = rng.uniform(0.5, 2, 8), rng.standard_normal(8)
    x, r = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    s = np.empty_like(x)
    y = ln(x, residual=r, residual_out=s)
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_array_equal(y, ln(x + r))


def test_repr_names_the_arguments():
    assert repr(layers.GroupNorm(2, 4)) == ("GroupNorm(num_groups=2, num_channels=4, eps=1e-05, affine=True, "
                                          "axis=1, activation=None)")
    assert "momentum=None" in repr(layers.BatchNorm(3, momentum=None))


GOOD = {"weight": np.ones(4), "bias": np.zeros(4), "running_mean": np.zeros(4), "running_var": np.ones(4),
        "num_batches_tracked": np.array(2)}


def _load(layer, state):
    return layer.load_state_dict(state)


@pytest.mark.parametrize("state, error, match", [
    ({**GOOD, "running_var": np.ones(5)}, ValueError, r"state_dict\['running_var'\]: expected shape \(4,\)"),
    ({**GOOD, "weight": np.ones((4, 1))}, ValueError, r"state_dict\['weight'\]: expected shape"),
    ({k: v for k, v in GOOD.items() if k != "bias"}, ValueError, r"missing keys \['bias'\]"),
    ({**GOOD, "extra": np.ones(4)}, ValueError, r"unexpected keys \['extra'\]"),
    ({**GOOD, "weight": np.arange(4)}, TypeError, r"state_dict\['weight'\]: expected a float array"),
    ({**GOOD, "num_batches_tracked": np.array(2.5)}, TypeError, "expected an integer array"),
    ({**GOOD, "bias": ["a", "b", "c", "d"]}, TypeError, r"state_dict\['bias'\]: expected a float"),
    ({**GOOD, "bias": torch.zeros(4, requires_grad=True)}, TypeError, r"state_dict\['bias'\]: expected an array"),
    ([1, 2], TypeError, "state_dict: expected a mapping"),
])
def test_bad_state_dict_changes_nothing(state, error, match):
    bn, _ = eval_bn()
    assert_refused(_load, {"layer": bn, "state": state}, error, match)


@pytest.mark.parametrize("value", [-1, np.array(-5, np.int8), np.array(2**63, np.uint64), 1.5])
def test_layer_refuses_bad_counter(value):
    bn = normfast.layers.BatchNorm(3)
    bn(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    assert_refused(lambda layer: layer.load_state_dict({"num_batches_tracked": value}, strict=False), {"layer": bn},
                   (TypeError, ValueError), r"state_dict\['num_batches_tracked'\]")


# (call, {argument: value or make(kw)}, exception, message): a layer call of api_calls.calls() by name with
# the arguments given replaced, or a function of the layer, called on eval_bn()'s layer in training mode.
BAD = [
    *[(c, {"x": lambda kw: kw["x"][0, 0, 0]}, ValueError, "x: expected an array of rank >= 2")
      for c in ("BatchNorm", "GroupNorm", "InstanceNorm", "SwitchableNorm")],
    ("BatchNorm", {"x": lambda kw: kw["x"][:, 0]}, ValueError, "x: expected 4 channels along axis 1"),
    *[(c, {"x": lambda kw: kw["x"][:, 0]}, ValueError, "x: expected 4 channels")
      for c in ("BatchNorm_eval", "InstanceNorm", "GroupNorm", "SwitchableNorm")],
    ("LayerNorm", {"out": None, "x": lambda kw: kw["x"][..., :1]}, ValueError,
     "normalized_shape: expected the trailing"),
    ("BatchNorm", {"out": None, "x": lambda kw: kw["x"][:1, :, :1, :1]}, ValueError,
     "x: expected more than 1 value per channel"),
    ("BatchNorm", {"out": None, "x": lambda kw: kw["x"].astype(np.float64)}, TypeError,
     "x: dtype float64 computes statistics in float64"),
    (lambda layer: setattr(layer, "weight", np.ones(3)), {}, ValueError, r"weight: expected shape \(4,\)"),
    (lambda layer: setattr(layer, "num_batches_tracked", 1.5), {}, TypeError,
     "num_batches_tracked: expected an integer"),
    (lambda layer: layer.train("yes"), {}, TypeError, "mode"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    if not isinstance(call, str):
        bn, _ = eval_bn()
        change = {"layer": bn.train(), **change}
    assert_refused(*bad_call(call, change), exc, match)


@pytest.mark.parametrize("make, error, match", [
    (lambda: layers.BatchNorm(0), ValueError, "num_features: expected a positive int"),
    (lambda: layers.BatchNorm(3, momentum=2), ValueError, "momentum"),
    (lambda: layers.GroupNorm(4, 6), ValueError, "num_groups: expected a divisor"),
    (lambda: layers.LayerNorm((3, "a")), TypeError, "normalized_shape"),
    (lambda: layers.RMSNorm(4, dtype=np.float16), TypeError, "dtype: expected float32 or float64"),
    (lambda: layers.InstanceNorm(3, activation="tanh"), ValueError, "activation"),
    (lambda: setattr(layers.LayerNorm(3, elementwise_affine=False), "weight", np.ones(3)), AttributeError,
     "has no weight"),
])
def test_bad_construction(make, error, match):
    assert_refused(make, {}, error, match)
