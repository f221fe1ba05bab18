"""What the test files share: the ISA levels and the context managers that switch them and the thread
count, the tolerances and input strategy of the norm tests, and the one check of a bad argument
(assert_refused), which every bad-argument table runs its cases through."""
import contextlib
import pickle

import ml_dtypes
import numpy as np
import pytest

import normfast
from normfast import _normc

from api_calls import calls

# --- ISA levels and threads ------------------------------------------------------------------------

# Every ISA level this CPU can run, up to the NORMFAST_ISA cap (the level in use at import): each
# cross-check runs under all of them.
_CAP = _normc.ISA_NAMES.index(_normc.get_isa())
ISAS = tuple(i for i in _normc.isa_supported() if _normc.ISA_NAMES.index(i) <= _CAP)


@contextlib.contextmanager
def use_isa(name):
    before = _normc.get_isa()
    assert _normc.set_isa(name) == name
    try:
        yield
    finally:
        _normc.set_isa(before)


@contextlib.contextmanager
def use_threads(n):
    before = normfast.get_num_threads()
    normfast.set_num_threads(n)
    try:
        yield
    finally:
        normfast.set_num_threads(before)


def tolerance(dtype):
    """Relative error allowed against the float64 reference, per input dtype. Half types are computed in
    float32 from their exact values, so they get float32's tolerance."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 2e-5


# --- the norms' inputs and tolerances --------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
ACTS = [None, "relu", "sigmoid", "silu"]

# Output tolerance relative to the output's scale: the computation is float32 (float64 for float64),
# then rounded to the output dtype.
Y_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5, np.dtype(np.float16): 2e-3,
         np.dtype(ml_dtypes.bfloat16): 1.6e-2}


def assert_close_y(y, ref, dtype):
    assert y.dtype == np.dtype(dtype) and y.shape == ref.shape
    tol = Y_TOL[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max(initial=0)))


def norm_inputs(min_spatial=1):
    """A strategy of (x, axis, C): a strided view of rank 2-5 whose channel axis is 1 or last. (Hypothesis
    is imported here: conftest imports this module, and a file run without Hypothesis, as the sdist check
    runs test_bad_input.py, must still be collected.)"""
    from hypothesis import strategies as st

    @st.composite
    def inputs(draw):
        ndim = draw(st.integers(2, 5))
        n = draw(st.integers(1, 4))
        c = draw(st.sampled_from([1, 2, 3, 4, 6, 8]))
        spatial = draw(st.lists(st.integers(1, 7), min_size=ndim - 2, max_size=ndim - 2))
        if np.prod(spatial) < min_spatial:
            spatial = spatial[:-1] + [min_spatial] if spatial else spatial
        last = draw(st.booleans())
        shape = [n] + ([] if last else [c]) + spatial + ([c] if last else [])
        steps = draw(st.lists(st.sampled_from([1, 1, 2, -1]), min_size=ndim, max_size=ndim))
        dtype = draw(st.sampled_from(DTYPES))
        offset = draw(st.sampled_from([0.0, 5.0, -300.0]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        base = (rng.standard_normal([s * abs(k) for s, k in zip(shape, steps)]) * 2 + offset).astype(dtype)
        x = base[tuple(slice(None, None, k) for k in steps)]
        return x, (ndim - 1 if last else 1) - (ndim if last and draw(st.booleans()) else 0), c

    return inputs()


# --- the one check of a bad argument ---------------------------------------------------------------

# Objects whose whole state an error must leave as it was (compared pickled).
STATEFUL = (normfast.RunningMoments, normfast.RunningCovariance, normfast.Whitening)


def arrays(kwargs):
    """Everything of a call's arguments that an error must leave unchanged: copies of every array
    argument, the state of the layer given as `layer`, and the pickled state of an accumulator or
    estimator argument."""
    snap = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    if "layer" in kwargs:
        snap.update({"layer." + k: v for k, v in kwargs["layer"].state_dict().items()})
    snap.update({k + " (pickled)": np.frombuffer(pickle.dumps(v), np.uint8)
                 for k, v in kwargs.items() if isinstance(v, STATEFUL)})
    return snap


def read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def unchanged(before, kwargs):
    now = arrays(kwargs)
    return now.keys() == before.keys() and all(
        now[k].dtype == v.dtype and np.array_equal(now[k], v, equal_nan=v.dtype.kind in "fc")
        for k, v in before.items())


def bad_call(call, change):
    """The (function, keyword arguments) of a bad-argument case. `call` names a call of api_calls.calls()
    (fresh valid arguments), whose arguments in `change` are replaced (a callable value is applied to the
    fresh arguments); or `call` is the function itself and `change` all its keyword arguments."""
    if not isinstance(call, str):
        return call, dict(change)
    fn, kw = calls()[call]
    kw.update({k: v(kw) if callable(v) else v for k, v in change.items()})
    return fn, kw


def case_ids(cases):
    """Test ids for a table of (call, change, ...) cases: the call, the arguments changed, the index."""
    return [f"{getattr(c[0], '__name__', c[0])}-{'-'.join(c[1])}-{i}" for i, c in enumerate(cases)]


def assert_refused(fn, kwargs, exc, match):
    """The check of every bad argument: fn(**kwargs) raises exc (a type or a tuple of them) with a
    message matching `match` (which names the argument), and leaves every array argument, output, layer
    state and accumulator as it was: nothing half-written."""
    before = arrays(kwargs)
    with pytest.raises(exc, match=match):
        fn(**kwargs)
    assert unchanged(before, kwargs)


def torch_switchable(X, W, B, mw, vw, rm, rv, training, eps, using_bn):
    """Switchable norm (channels on axis 1) in PyTorch: each statistic directly from X, biased."""
    import torch  # the tests that compare with PyTorch import it; the others need not

    spatial = tuple(range(2, X.ndim))

    def stats(dims):
        if not dims:  # torch reduces every axis for an empty tuple; over no axis, x is its own mean
            return X, torch.zeros_like(X)
        return X.mean(dims, keepdim=True), X.var(dims, keepdim=True, unbiased=False)

    kinds = [stats(spatial), stats((1,) + spatial)]
    if using_bn:
        shape = (1, -1) + (1,) * len(spatial)
        kinds.append(stats((0,) + spatial) if training else (rm.view(shape), rv.view(shape)))
    pm, pv = torch.softmax(mw, 0), torch.softmax(vw, 0)
    mean = sum(p * m for p, (m, _) in zip(pm, kinds))
    var = sum(p * v for p, (_, v) in zip(pv, kinds))
    shape = (1, -1) + (1,) * len(spatial)
    return (X - mean) / torch.sqrt(var + eps) * W.view(shape) + B.view(shape)
