"""fold_batch_norm, weight_norm(_params) and cosine_linear against the float64 reference and PyTorch."""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import normfast
from normfast import reference

from helpers import ISAS, assert_refused, bad_call, case_ids, use_isa

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6, np.dtype(np.float16): 1e-3,
       np.dtype(ml_dtypes.bfloat16): 8e-3}


@SETTINGS
@given(n_in=st.integers(1, 12), n_out=st.integers(1, 9), has_bias=st.booleans(), affine=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_folded_linear_equals_linear_then_batch_norm(n_in, n_out, has_bias, affine, dtype, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if has_bias else None
    rm, rv = rng.standard_normal(n_out) * 3, rng.uniform(0.1, 4, n_out)
    gamma, beta = (rng.uniform(0.5, 2, n_out), rng.standard_normal(n_out)) if affine else (None, None)
    x = rng.standard_normal((7, n_in))
    want, _, _ = reference.batch_norm(x @ w.T.astype(np.float64) + (0 if b is None else b), rm, rv, gamma, beta,
                                      eps=1e-3)
    fw, fb = normfast.fold_batch_norm(w, b, rm, rv, gamma, beta, eps=1e-3)
    assert fw.dtype == fb.dtype == dtype and fw.shape == w.shape and fb.shape == (n_out,)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(x @ fw.T.astype(np.float64) + fb, want, rtol=tol, atol=tol * np.abs(want).max())


def test_folded_conv_transpose_uses_axis_1():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 5, 3, stride=2), nn.BatchNorm2d(5))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w, b = normfast.fold_batch_norm(sd["0.weight"], sd["0.bias"], sd["1.running_mean"], sd["1.running_var"],
                                    sd["1.weight"], sd["1.bias"], axis=1)
    with torch.no_grad():
        np.testing.assert_allclose(F.conv_transpose2d(x, torch.from_numpy(w), torch.from_numpy(b), stride=2).numpy(),
                                   model(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, dim, axis", [
    (lambda: nn.Linear(7, 4), 0, 0), (lambda: nn.Linear(7, 4), 1, 1), (lambda: nn.Linear(7, 4), None, None),
    (lambda: nn.Conv2d(3, 6, 3), 0, 0), (lambda: nn.Conv2d(3, 6, 3), 1, 1), (lambda: nn.Conv1d(3, 6, 1), 2, 2),
    # PyTorch's dim=-1 is the whole tensor; normfast's axis=-1 is the last axis, as in NumPy.
    (lambda: nn.Conv2d(3, 6, 3), -1, None), (lambda: nn.Conv2d(3, 6, 3), 3, -1), (lambda: nn.Linear(1, 4), 0, 0),
])
def test_weight_norm_matches_torch(make, dim, axis):
    torch.manual_seed(0)
    module = torch.nn.utils.parametrizations.weight_norm(make(), dim=dim)
    with torch.no_grad():  # g away from ||v|| so that the product is visible
        module.parametrizations.weight.original0.mul_(torch.rand_like(module.parametrizations.weight.original0) + 0.5)
    sd = {k: v.numpy() for k, v in module.state_dict().items()}
    g, v = sd["parametrizations.weight.original0"], sd["parametrizations.weight.original1"]
    want = module.weight.detach().numpy()
    w = normfast.weight_norm(v, g, axis=axis)
    assert w.shape == v.shape and w.dtype == v.dtype and w.flags.c_contiguous
    np.testing.assert_allclose(w, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(normfast.weight_norm(v, g.reshape(-1) if g.ndim else g, axis=axis), want,
                               rtol=2e-6, atol=1e-7)
    # weight_norm_params gives what PyTorch stores when it parametrizes a plain weight.
    plain = make()
    with torch.no_grad():
        plain.weight.copy_(torch.from_numpy(want))
    g0 = torch.nn.utils.parametrizations.weight_norm(plain, dim=dim).parametrizations.weight.original0
    v2, g2 = normfast.weight_norm_params(want, axis=axis)
    np.testing.assert_array_equal(v2, want)
    assert g2.shape == tuple(g0.shape) and g2.dtype == want.dtype
    np.testing.assert_allclose(g2, g0.detach().numpy(), rtol=2e-6)


@st.composite
def weights(draw):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    steps = draw(st.lists(st.sampled_from([1, 2, -1]), min_size=ndim, max_size=ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    base = (rng.standard_normal([n * abs(k) for n, k in zip(shape, steps)]) * 3 + draw(
        st.sampled_from([0.0, 10.0]))).astype(dtype)
    v = base[tuple(slice(None, None, k) for k in steps)]
    axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1)))
    return v, axis


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=weights(), seed=st.integers(0, 2**32 - 1))
def test_weight_norm_matches_reference(isa, case, seed):
    v, axis = case
    C = 1 if axis is None else v.shape[axis]
    g = np.random.default_rng(seed).uniform(0.5, 2, C).astype(np.float32 if v.dtype != np.float64 else np.float64)
    g_shaped = g.reshape(()) if axis is None else g
    with use_isa(isa):
        w = normfast.weight_norm(v, g_shaped, axis=axis)
        v2, g2 = normfast.weight_norm_params(w, axis=axis)
    want = reference.weight_norm(v, g, axis)
    tol = TOL[v.dtype]
    assert w.dtype == v.dtype and w.shape == v.shape
    np.testing.assert_allclose(w.astype(np.float64), want, rtol=tol, atol=tol * np.abs(want).max(initial=1))
    # the norms of w are g (up to w's rounding)
    np.testing.assert_allclose(g2.astype(np.float64).reshape(-1), g, rtol=4 * tol)


def test_weight_norm_of_a_zero_slice_is_nan_as_in_torch():
    v = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    w = normfast.weight_norm(v, np.array([2.0, 2.0], np.float32))
    want = torch._weight_norm(torch.from_numpy(v), torch.tensor([[2.0], [2.0]]), 0).numpy()
    np.testing.assert_array_equal(np.isnan(w), np.isnan(want))
    np.testing.assert_allclose(w[1], [1.2, 1.6], rtol=1e-6)


@st.composite
def cosine_inputs(draw):
    lead = draw(st.lists(st.integers(0, 5), max_size=2))
    n_in = draw(st.integers(1, 40))
    n_out = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(lead + [n_in]) * draw(st.sampled_from([1.0, 1e-9, 1e3]))
    w = rng.standard_normal((n_out, n_in))
    if draw(st.booleans()) and x.size:  # a zero row in each: the eps clamp
        x.reshape(-1, n_in)[0] = 0
        w[0] = 0
    if draw(st.booleans()):  # a strided weight
        w = np.repeat(w, 2, axis=1)[:, ::2]
    return x.astype(draw(st.sampled_from(DTYPES))), w.astype(draw(st.sampled_from(DTYPES)))


@pytest.mark.parametrize("isa", ISAS)
@SETTINGS
@given(case=cosine_inputs(), eps=st.sampled_from([1e-8, 1e-3]))
def test_cosine_linear_matches_reference(isa, case, eps):
    x, w = case
    with use_isa(isa):
        y = normfast.cosine_linear(x, w, eps=eps)
    want = reference.cosine_linear(x, w, eps)
    halves = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}
    mixed_halves = x.dtype in halves and w.dtype in halves and x.dtype != w.dtype
    dtype = np.dtype(np.float32) if mixed_halves else np.result_type(x.dtype, w.dtype)
    assert y.dtype == dtype and y.shape == x.shape[:-1] + (w.shape[0],)
    # |y| <= 1; the normalized rows are rounded to the compute precision before the product.
    tol = 1e-12 if dtype == np.float64 else 2e-6 * np.sqrt(x.shape[-1])
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=0, atol=max(tol, TOL[dtype]))


def test_cosine_linear_matches_torch():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 4, 33)).astype(np.float32)
    w = rng.standard_normal((10, 33)).astype(np.float32)
    x[0, 0] = 1e-10  # below eps: clamped
    want = F.cosine_similarity(torch.from_numpy(x)[..., None, :], torch.from_numpy(w), dim=-1).numpy()
    np.testing.assert_allclose(normfast.cosine_linear(x, w), want, rtol=0, atol=2e-6)


# --- bad arguments ---------------------------------------------------------------------------------

FOLD = dict(weight=np.ones((4, 3)), bias=None, running_mean=np.zeros(4), running_var=np.ones(4))

# (call, {argument: value or make(kw)}, exception, message): a call of api_calls.calls() by name with the
# arguments given replaced, or the function itself with these keyword arguments.
BAD = [
    # ranks and shapes
    ("weight_norm", {"v": lambda kw: kw["v"][0, 0, 0, 0]}, ValueError, "v: expected an array of rank >= 1"),
    ("weight_norm_params", {"w": np.float32(1)}, ValueError, "w: expected an array of rank >= 1"),
    ("cosine_linear", {"x": np.float32(1)}, ValueError, "x: expected an array of rank >= 1"),
    ("fold_batch_norm", {"weight": np.float32(1)}, ValueError, "weight: expected an array of rank >= 1"),
    # parameters: shape, dtype, kind
    ("weight_norm", {"g": np.ones(3, np.float32)}, ValueError, r"g: expected shape \(4,\) or \(1, 4, 1, 1\)"),
    (normfast.weight_norm, {"v": np.ones((3, 2)), "g": np.ones((1, 2)), "axis": 0}, ValueError, "g: expected"),
    (normfast.weight_norm, {"v": np.ones((3, 2)), "g": np.ones(3), "axis": None}, ValueError,
     r"g: expected shape \(1,\) or \(\)"),
    ("weight_norm", {"g": np.ones(4, int)}, TypeError, "g: expected a float"),
    (normfast.fold_batch_norm, {**FOLD, "running_mean": np.zeros(5), "running_var": np.ones(5)}, ValueError,
     "weight: expected 5 output channels"),
    (normfast.fold_batch_norm, {**FOLD, "axis": 1}, ValueError, "weight: expected 4"),
    ("fold_batch_norm", {"running_var": np.ones(2)}, ValueError, r"running_var: expected shape \(3,\)"),
    (normfast.fold_batch_norm, {**FOLD, "bias": np.ones(3)}, ValueError, r"bias: expected shape \(4,\)"),
    (normfast.fold_batch_norm, {**FOLD, "gamma": np.ones(2)}, ValueError, "gamma"),
    ("fold_batch_norm", {"gamma": np.ones(3, int)}, TypeError, "gamma: expected a float"),
    ("fold_batch_norm", {"running_mean": np.zeros((3, 1))}, ValueError, "running_mean: expected a vector"),
    ("cosine_linear", {"weight": np.ones((3, 4), np.float32)}, ValueError, r"weight: expected shape \(out, 2\)"),
    (normfast.cosine_linear, {"x": np.ones((2, 3)), "weight": np.ones(3)}, ValueError, "weight: expected shape"),
    ("cosine_linear", {"weight": np.ones((3, 2), int)}, TypeError, "weight: expected a float"),
    # scalars out of range or of the wrong type
    *[(c, {"eps": e}, ValueError, "eps: expected") for c in ("fold_batch_norm", "cosine_linear")
      for e in (0, -1e-5, np.nan, np.inf)],
    *[(c, {"axis": 4}, np.exceptions.AxisError, "axis: axis 4 is out of range")
      for c in ("weight_norm", "weight_norm_params", "fold_batch_norm")],
    *[(c, {"axis": 1.0}, TypeError, "axis: expected") for c in ("weight_norm", "fold_batch_norm")],
    (normfast.fold_batch_norm, {**FOLD, "axis": None}, TypeError, "axis: expected an int"),
    (normfast.weight_norm_params, {"w": np.ones(3), "axis": "0"}, TypeError, "axis"),
]


@pytest.mark.parametrize("call, change, exc, match", BAD, ids=case_ids(BAD))
def test_bad_argument(call, change, exc, match):
    assert_refused(*bad_call(call, change), exc, match)
