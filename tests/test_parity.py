"""PyTorch parity of the rules around the arithmetic: RMS norm's default eps per dtype, the running
statistics' rules of BatchNorm and InstanceNorm for every mode, track_running_stats and buffers, the
batch counter of a loaded state dict, and group norm's refusal of one value per group. Each rule is
checked against torch itself."""
import itertools

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normfast
from normfast import layers

HALF = {np.float16: torch.float16, ml_dtypes.bfloat16: torch.bfloat16}
DTYPES = {**HALF, np.float32: torch.float32, np.float64: torch.float64}


def to_torch(a, tdt):
    return torch.from_numpy(np.asarray(a, np.float64)).to(tdt)


def small_rows(dtype, shape=(4, 64)):
    """Rows whose mean square (1e-4) is far below the half types' epsilon: eps decides the result."""
    return np.random.default_rng(0).normal(0, 0.01, shape).astype(dtype)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: np.dtype(d).name)
def test_rms_norm_default_eps_is_torchs(dtype):
    x = small_rows(dtype)
    tx = to_torch(x, DTYPES[dtype])
    want = F.rms_norm(tx, (64,)).double().numpy()
    tol = 1e-2 if dtype in HALF else 1e-5
    np.testing.assert_allclose(normfast.rms_norm(x, 64).astype(np.float64), want, rtol=tol, atol=tol)
    y, rstd = normfast.rms_norm(x, 64, return_stats=True)
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=tol, atol=tol)
    layer = layers.RMSNorm(64, dtype=np.float64 if dtype == np.float64 else np.float32)
    tl = torch.nn.RMSNorm(64, dtype=DTYPES[dtype])
    np.testing.assert_allclose(layer(x).astype(np.float64), tl(tx).double().detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: np.dtype(d).name)
def test_rms_norm_backward_default_eps_is_torchs(dtype):
    x = small_rows(dtype, (3, 16))
    dy = np.random.default_rng(1).standard_normal((3, 16)).astype(dtype)
    w = np.linspace(0.5, 2, 16).astype(np.float64 if dtype == np.float64 else np.float32)
    tx = to_torch(x, DTYPES[dtype]).requires_grad_()
    tw = torch.from_numpy(w).to(DTYPES[dtype] if dtype not in HALF else torch.float32).requires_grad_()
    # torch computes a half x with a float32 weight in float32, as normfast does.
    F.rms_norm(tx.float() if dtype in HALF else tx, (16,), tw).backward(to_torch(dy, tw.dtype))
    gx, gw = normfast.rms_norm_backward(dy, x, 16, w)
    tol = 2e-2 if dtype in HALF else 1e-4
    np.testing.assert_allclose(gx.astype(np.float64), tx.grad.double().numpy(), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(gw.astype(np.float64), tw.grad.double().numpy(), rtol=tol, atol=tol * 10)


def test_dask_rms_norm_default_eps_is_torchs():
    da = pytest.importorskip("dask.array")
    import normfast.dask as nd
    x = small_rows(np.float16, (8, 64))
    want = F.rms_norm(to_torch(x, torch.float16), (64,)).double().numpy()
    got = nd.rms_norm(da.from_array(x, chunks=(3, 64)), 64).compute()
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-2, atol=1e-2)


def _run(ours, theirs, x, training, momentum):
    """One call of each module; the outputs and every buffer after it compared."""
    ours.train(training)
    theirs.train(training)
    y = ours(x)
    ty = theirs(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, ty, rtol=1e-10, atol=1e-10)
    want = {k: v.numpy() for k, v in theirs.state_dict().items()}
    got = ours.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)


COMBOS = list(itertools.product((True, False), (True, False), (True, False), (0.1, None)))


@pytest.mark.parametrize("built, now, training, momentum", COMBOS)
@pytest.mark.parametrize("kind", ["BatchNorm", "InstanceNorm"])
def test_running_statistics_rules(kind, built, now, training, momentum):
    """track_running_stats given at construction (buffers or none) and set afterwards, in either mode,
    over three calls: outputs and buffers as torch's after each."""
    rng = np.random.default_rng(2)
    ours = getattr(layers, kind)(4, momentum=momentum, track_running_stats=built, dtype=np.float64, affine=True)
    theirs = getattr(torch.nn, kind + "1d")(4, momentum=momentum, track_running_stats=built, dtype=torch.float64,
                                            affine=True)
    if built:  # non-trivial running statistics to start from
        sd = {"running_mean": rng.standard_normal(4), "running_var": rng.uniform(0.5, 2, 4),
              "num_batches_tracked": np.array(3)}
        ours.load_state_dict(sd, strict=False)
        theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=False)
    ours.track_running_stats = theirs.track_running_stats = now
    if kind == "InstanceNorm" and now and not built and not training:
        with pytest.raises(ValueError, match="running_mean, running_var: required"):  # torch: RuntimeError
            ours.eval()(rng.standard_normal((3, 4, 5)))
        return
    for step in range(3):
        _run(ours, theirs, rng.standard_normal((3, 4, 5)) * 2 + step, training, momentum)


def test_layer_counter_kept_by_momentum_none_average():
    """Loading a dict without the counter then averaging (momentum=None) goes on from the count."""
    rng = np.random.default_rng(3)
    ours, theirs = layers.BatchNorm(4, momentum=None, dtype=np.float64), torch.nn.BatchNorm1d(
        4, momentum=None, dtype=torch.float64)
    for _ in range(3):
        x = rng.standard_normal((5, 4))
        ours(x)
        theirs(torch.from_numpy(x))
    sd = {k: v for k, v in ours.state_dict().items() if k != "num_batches_tracked"}
    ours.load_state_dict(sd, strict=False)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    _run(ours, theirs, rng.standard_normal((5, 4)), True, None)


@pytest.mark.parametrize("shape, groups", [((1, 10, 1), 10), ((1, 10), 10), ((1, 6, 1, 1), 6), ((2, 10, 1), 10),
                                           ((1, 10, 2), 10), ((1, 10, 1), 5), ((3, 4), 4), ((1, 1), 1), ((0, 4, 1), 4)])
def test_group_norm_one_value_per_group_as_torch(shape, groups):
    x = np.random.default_rng(4).standard_normal(shape)
    w, b = np.linspace(0.5, 2, shape[1]), np.linspace(-1, 1, shape[1])
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
    try:
        want = F.group_norm(tx, groups, tw, tb).numpy()
    except ValueError:
        want = None
    calls = [lambda: normfast.group_norm(x, groups, w, b),
             lambda: layers.GroupNorm(groups, shape[1], dtype=np.float64)(x),
             lambda: normfast.group_norm_backward(np.ones_like(x), x, groups, w, b)[0]]
    for call in calls:
        if want is None:
            with pytest.raises(ValueError, match="x: expected more than 1 value per group"):
                call()
        else:
            assert call().shape == x.shape
    if want is not None:
        np.testing.assert_allclose(normfast.group_norm(x, groups, w, b), want, rtol=1e-10, atol=1e-12)
        txg = tx.clone().requires_grad_()
        F.group_norm(txg, groups, tw, tb).backward(torch.ones_like(txg))
        gx = normfast.group_norm_backward(np.ones_like(x), x, groups, w, b)[0]
        np.testing.assert_allclose(gx, txg.grad.numpy(), atol=1e-10)


def test_group_norm_of_rank_64():
    """The group split happens without a 65th dimension."""
    x = np.random.default_rng(5).standard_normal((2, 4) + (1,) * 60 + (3, 2))
    w, b = np.linspace(0.5, 2, 4), np.linspace(-1, 1, 4)
    want = F.group_norm(torch.from_numpy(x.reshape(2, 4, 6)), 2, torch.from_numpy(w), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(normfast.group_norm(x, 2, w, b).reshape(2, 4, 6), want, rtol=1e-10, atol=1e-12)
    tx = torch.from_numpy(x.reshape(2, 4, 6)).requires_grad_()
    dy = np.random.default_rng(6).standard_normal(x.shape)
    F.group_norm(tx, 2, torch.from_numpy(w), torch.from_numpy(b)).backward(torch.from_numpy(dy.reshape(2, 4, 6)))
    gx = normfast.group_norm_backward(dy, x, 2, w, b)[0]
    np.testing.assert_allclose(gx.reshape(2, 4, 6), tx.grad.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_counts_an_empty_batch_as_torch(momentum, training):
    """An empty training batch changes no running statistic but is counted, so a cumulative average
    (momentum=None) goes on from the same count as torch's."""
    rng = np.random.default_rng(4)
    ours = layers.BatchNorm(4, momentum=momentum, dtype=np.float64)
    theirs = torch.nn.BatchNorm1d(4, momentum=momentum, dtype=torch.float64)
    for x in [rng.standard_normal((5, 4)), np.empty((0, 4)), np.empty((0, 4, 3)), rng.standard_normal((6, 4)) + 1]:
        _run(ours, theirs, x, training if x.size == 0 else True, momentum)


@pytest.mark.parametrize("fn", ["batch_norm", "instance_norm"])
def test_strided_running_statistics_updated_in_place_as_torch(fn):
    """Running buffers that are strided views are updated in place, element for element, as torch's."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))
    buf, tbuf = np.zeros(8), torch.zeros(8, dtype=torch.float64)
    var, tvar = np.ones(12)[::-3], torch.ones(4, dtype=torch.float64)  # reversed, step 3
    kw = dict(training=True) if fn == "batch_norm" else {}
    y = getattr(normfast, fn)(x, buf[1::2], var, **kw)
    ty = getattr(F, fn)(torch.from_numpy(x), tbuf[1::2], tvar, **({"training": True} if fn == "batch_norm" else
                                                                    {"use_input_stats": True}))
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(buf, tbuf.numpy(), rtol=1e-12)
    np.testing.assert_allclose(var, tvar.numpy(), rtol=1e-12)
    assert (buf[::2] == 0).all()
