"""Bad input and edge cases across every public function, table-driven over the calls of api_calls: each
kind of bad value (data, out, huge numbers, tensors, rank 64, zero-size axes) for every call. The bad
arguments of one area are in that area's file (test_norms.py, test_layer_norm.py, test_grads.py, ...);
all go through helpers.assert_refused.

Each bad argument must raise the documented TypeError or ValueError (AxisError is both a ValueError and
an IndexError) naming the argument, and leave every array argument, output and layer state as it was.
Each awkward but valid argument (byte-swapped, misaligned, strided, zero-size, 0-d, NaN/Inf) must give
the result of the same call on plain native copies, which the other test files check against the
reference and PyTorch."""
import contextlib
import warnings

import numpy as np
import pytest

import ml_dtypes
import normfast
from normfast import reference

from api_calls import DATA, GRADIENTS, TAKES_INTEGERS, calls, outcome
from helpers import arrays, assert_refused, read_only, unchanged

NAMES = list(calls())


def data_name(call):
    return DATA.get(call, "x")


def data_label(call):
    """How errors name the data argument."""
    return r"batches\[0\]" if call == "precise_batch_norm_stats" else data_name(call)


def like(kw, name, dtype=None, shape=None):
    """A replacement for the array argument `name` of a call: its values as another dtype or shape."""
    a = kw[name]
    if shape is not None:
        a = np.resize(a, shape)
    return a.astype(dtype) if dtype is not None else a


def overlapping(x):
    """x's values in a buffer and an output one element further on in the same buffer."""
    buf = np.empty(x.size + 1, x.dtype)
    xs = buf[:-1].reshape(x.shape)
    xs[...] = x
    return xs, buf[1:].reshape(x.shape)


def misaligned(a):
    """A copy of a whose data starts one byte off alignment."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    m = buf[1:].view(a.dtype).reshape(a.shape)
    m[...] = a
    assert not m.flags.aligned
    return m


# Bad data for every call: (label, make(kw, name) -> value, exception, message).
BAD_DATA = [
    ("strings", lambda kw, n: ["a", "b"], TypeError, "expected a float"),
    ("objects", lambda kw, n: np.array([object(), object()]), TypeError, "expected a float"),
    ("none", lambda kw, n: None, TypeError, "expected a float"),
    ("complex", lambda kw, n: like(kw, n, np.complex64), TypeError, "expected a float"),
    ("ragged", lambda kw, n: [[1.0, 2.0], [3.0]], TypeError, "expected"),
    ("int", lambda kw, n: like(kw, n, np.int32), TypeError, "expected a float"),
    ("bool", lambda kw, n: like(kw, n, bool), TypeError, "expected a float"),
]


@pytest.mark.parametrize("label, make, exc, match", BAD_DATA, ids=[b[0] for b in BAD_DATA])
@pytest.mark.parametrize("call", NAMES)
def test_bad_data(call, label, make, exc, match):
    fn, kw = calls()[call]
    name = data_name(call)
    kw[name] = make(kw, name)
    if label in ("int", "bool") and call in TAKES_INTEGERS:  # counted as float64, as NumPy does
        want = calls()[call]
        kw2 = dict(want[1], **{name: kw[name].astype(np.float64)})
        assert_same(fn(**kw), fn(**kw2))
        return
    assert_refused(fn, kw, exc, f"{data_label(call)}: {match}")


WITH_OUT = [c for c in NAMES if "out" in calls()[c][1]]


BAD_OUT = [
    ("list", lambda kw: kw["out"].tolist(), TypeError, "out: expected a numpy array"),
    ("dtype", lambda kw: kw["out"].astype(np.float64), ValueError, "out: expected shape .* and dtype float32"),
    ("shape", lambda kw: kw["out"][:1], ValueError, "out: expected shape"),
    ("read-only", lambda kw: read_only(kw["out"]), ValueError, "out: the array is read-only"),
    ("misaligned", lambda kw: misaligned(kw["out"]), ValueError, "out: the array is misaligned"),
    ("x reversed", lambda kw: kw["x"][::-1], ValueError, "out: overlaps x"),
]


@pytest.mark.parametrize("label, make, exc, match", BAD_OUT, ids=[b[0] for b in BAD_OUT])
@pytest.mark.parametrize("call", WITH_OUT)
def test_bad_out(call, label, make, exc, match):
    fn, kw = calls()[call]
    kw["out"] = make(kw)
    assert_refused(fn, kw, exc, match)


@pytest.mark.parametrize("call", WITH_OUT)
def test_out_overlapping_x_by_one_element(call):
    fn, kw = calls()[call]
    kw["x"], kw["out"] = overlapping(kw["x"])
    if "residual" in kw:
        kw["residual"] = kw["residual"].copy()
    assert_refused(fn, kw, ValueError, "out: overlaps x")


# --- valid but awkward input: the same result as plain native copies --------------------------------


def assert_same(got, want):
    """Results (arrays, scalars or lists or tuples of them) of one shape and dtype, equal but for the
    rounding of another summation order (layouts are reduced in memory order)."""
    if isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 4e-6  # the data of these calls is float32
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def plain(kw):
    """The arguments as native, aligned, C-contiguous copies (results compared need nothing else)."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray) and k not in ("out", "residual_out"):
            v = np.ascontiguousarray(v.astype(v.dtype.newbyteorder("="), copy=True))
        out[k] = v
    return out


def awkward(make):
    """Each array argument (but outputs) through make, one at a time: a list of (argument, function,
    kwargs, the same kwargs with that argument as a plain native contiguous copy)."""
    def variants(call):
        out = []
        for name in calls()[call][1]:
            fn, kw = calls()[call]
            if not isinstance(kw[name], np.ndarray) or name in ("out", "residual_out"):
                continue
            kw[name] = make(kw[name])
            _, want = calls()[call]
            want[name] = plain({name: kw[name]})[name]
            out.append((name, fn, kw, want))
        return out
    return variants


def byteswapped(a):
    return a.astype(a.dtype.newbyteorder("S"))


def strided(a):
    """a's values in a view with every stride doubled and the last axis reversed."""
    big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
    v = big[tuple(slice(None, None, 2) for _ in a.shape)]
    if a.ndim:
        v = v[..., ::-1]
    v[...] = a
    return v


def broadcast(a):
    """A zero-stride view repeating a's first slice along axis 0 (read-only)."""
    return np.broadcast_to(a[:1], a.shape) if a.ndim else a


@pytest.mark.parametrize("make", [byteswapped, misaligned, strided, np.asfortranarray, broadcast],
                         ids=["byteswapped", "misaligned", "strided", "fortran", "broadcast"])
@pytest.mark.parametrize("call", NAMES)
def test_awkward_layouts_give_the_plain_result(call, make):
    for name, fn, kw, plain_kw in awkward(make)(call):
        if name.startswith("running") and call in UPDATED and make in (byteswapped, broadcast):
            # Updated in place, so they must be native and writeable (any strides): the documented errors.
            assert_refused(fn, kw, (TypeError, ValueError), f"{name}: (expected dtype|the array is read-only)")
            continue
        assert_same(outcome(fn, kw), outcome(fn, plain_kw))


# Calls that update the running statistics they are given.
UPDATED = {"batch_norm", "instance_norm", "switchable_norm"}


@pytest.mark.parametrize("call", WITH_OUT)
def test_strided_and_in_place_out(call):
    fn, kw = calls()[call]
    want = outcome(fn, plain(calls()[call][1]))
    kw["out"] = strided(np.zeros_like(kw["x"]))
    got = outcome(fn, kw)
    assert got[0] is kw["out"]
    assert_same(got, want)
    fn, kw = calls()[call]  # in place
    kw["out"] = kw["x"]
    assert_same(outcome(fn, kw), want)


ZERO_SIZE = [(0, 4, 5, 2), (3, 4, 0, 2)]


@pytest.mark.parametrize("shape", ZERO_SIZE)
@pytest.mark.parametrize("call", NAMES)
def test_zero_size(call, shape):
    """Empty data: an empty result (statistics NaN, with NumPy's warning), or the documented error where a
    statistic needs data; running statistics are left as they were (an empty batch has none)."""
    fn, kw = calls(shape=shape)[call]
    runs = {k: kw[k].copy() for k in ("running_mean", "running_var") if isinstance(kw.get(k), np.ndarray)}
    state = {k: v for k, v in arrays(kw).items() if k.startswith("layer.")}
    if call == "precise_batch_norm_stats":
        with pytest.raises(ValueError, match="batches: expected more than 1 value"):
            fn(**kw)
        return
    with np.errstate(all="ignore"), pytest.warns() if _warns(call) else _no_warning():
        r = fn(**kw)
    if call in GRADIENTS:  # grad_x is empty; nothing reaches the parameters
        assert np.asarray(r[0]).size == 0 and all(g is None or not np.asarray(g).any() for g in r[1:])
        return
    for a in r if isinstance(r, tuple) else (r,):
        a = np.asarray(a)
        if a.size and call not in ("moments", "RunningMoments", "RunningMoments_merge", "weight_norm_params",
                                   "fold_batch_norm"):
            raise AssertionError(f"{call}: expected an empty result, got shape {a.shape}")
    if call in ("moments", "RunningMoments", "RunningMoments_merge"):
        assert all(np.isnan(a).all() for a in (r if isinstance(r, tuple) else (r,)))
    if call == "weight_norm_params":
        np.testing.assert_array_equal(r[1], 0)  # the norm of nothing
    if call != "fold_batch_norm":
        for k, v in runs.items():
            np.testing.assert_array_equal(kw[k], v, err_msg=f"{call} changed {k} on an empty batch")
    for k, v in state.items():
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_array_equal(arrays(kw)[k], v, err_msg=f"{call} changed {k} on an empty batch")


def _warns(call):
    return call in ("moments", "RunningMoments", "RunningMoments_merge")


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_zero_d_input():
    """0-d data: its own statistics (mean itself, variance 0) where every axis may be reduced, else the
    documented rank error (checked in the table above)."""
    x = np.float32(3.5)
    assert normfast.moments(x) == (np.float32(3.5), np.float32(0.0))
    acc = normfast.RunningMoments().update(np.array(3.5)).update(np.array(1.5))
    assert (acc.count, acc.mean, acc.var()) == (2, 2.5, 1.0)


NAN_CALLS = {
    "moments": lambda kw: reference.moments(kw["x"], kw["axis"]),
    "batch_norm": lambda kw: reference.batch_norm(**{k: v.copy() if isinstance(v, np.ndarray) else v
                                                     for k, v in kw.items() if k != "out"})[0],
    "instance_norm": lambda kw: reference.instance_norm(**{k: v.copy() if isinstance(v, np.ndarray) else v
                                                           for k, v in kw.items() if k != "out"})[0],
    "group_norm": lambda kw: reference.group_norm(kw["x"], kw["num_groups"], kw["weight"], kw["bias"]),
    "layer_norm": lambda kw: reference.layer_norm(kw["x"], kw["normalized_shape"], kw["weight"], kw["bias"]),
    "rms_norm": lambda kw: reference.layer_norm(kw["x"], kw["normalized_shape"], kw["weight"],
                                                eps=float(np.finfo(np.float32).eps), rms=True),
    "weight_norm": lambda kw: reference.weight_norm(kw["v"], kw["g"], kw["axis"]),
    "cosine_linear": lambda kw: reference.cosine_linear(kw["x"], kw["weight"], kw["eps"]),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", list(NAN_CALLS))
def test_nan_and_inf_follow_the_reference(call, value):
    """A non-finite input value spoils exactly the results the reference says it spoils."""
    fn, kw = calls()[call]
    x = kw[data_name(call)]
    x[1, 2, 3, 1] = value
    with np.errstate(all="ignore"):
        got, want = fn(**kw), NAN_CALLS[call](calls()[call][1] | {data_name(call): x})
    for g, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want))):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
        ok = np.isfinite(w)
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-4, atol=1e-5)


# --- the error contract over every call: huge numbers, tensors that need detaching, rank 64 ---------

# Past any float or index range, and NumPy scalars that are not finite (their conversion to int raises
# OverflowError or an unnamed ValueError where a Python float's message would not).
HUGE = [10**400, -10**400, 2**63, 2**64, 1e308, -1e308, np.float32("inf"), np.float16("nan"),
        np.longdouble("-inf"), np.float64("nan"), np.uint64(2**64 - 1), np.int64(-2**63)]
ARG_LABEL = {"other_axis": "axis"}  # the wrapper's second accumulator names its axis "axis"


def _numeric(value):
    return isinstance(value, (int, float, tuple)) and not isinstance(value, bool)


@pytest.mark.parametrize("call", NAMES)
def test_huge_numbers_are_named_errors(call):
    """Every numeric argument, past any float or index range: a TypeError or ValueError naming it (or a
    valid call), nothing written."""
    for name, value in calls()[call][1].items():
        if not _numeric(value):
            continue
        for huge in HUGE:
            fn, kw = calls()[call]
            kw[name] = (huge,) * len(value) if isinstance(value, tuple) else huge
            before = arrays(kw)
            try:
                fn(**kw)
            except (TypeError, ValueError) as e:
                assert str(e).startswith(ARG_LABEL.get(name, name) + ":"), (name, huge, str(e)[:200])
                assert unchanged(before, kw)


LAYER_ARGS = [("BatchNorm", (4,), "num_features"), ("BatchNorm", (4,), "eps"), ("BatchNorm", (4,), "momentum"),
              ("InstanceNorm", (4,), "num_features"), ("SwitchableNorm", (4,), "num_features"),
              ("GroupNorm", (2, 4), "num_channels"), ("GroupNorm", (2, 4), "num_groups"),
              ("LayerNorm", (4,), "normalized_shape"), ("RMSNorm", (4,), "eps")]
LAYER_ARGS_INT = [a for a in LAYER_ARGS if a[2] in ("num_features", "num_channels", "num_groups", "normalized_shape")]


def _int_valued(value):
    ints = value if isinstance(value, tuple) else (value,)
    return bool(ints) and all(isinstance(i, int) and not isinstance(i, bool) for i in ints)


@pytest.mark.parametrize("call", NAMES)
@pytest.mark.parametrize("true", [True, np.True_], ids=["bool", "numpy bool"])
def test_bools_are_not_ints(call, true):
    """Every int argument (axes, num_groups, normalized_shape; the channel axis where it is left at its
    default) given True, alone or in a tuple: a TypeError naming it, as NumPy's for an axis (it was taken
    as 1). ddof is a real number, where NumPy takes a bool as 0 or 1."""
    import inspect

    fn, kw = calls()[call]
    names = [k for k, v in kw.items() if _int_valued(v) and k != "ddof"]
    takes_axis = "axis" in inspect.signature(fn).parameters and "axis" not in kw
    for name in names + (["axis"] if takes_axis else []):
        for value in (true, (true,)) if name in kw and isinstance(kw[name], tuple) else (true,):
            fn, kw = calls()[call]
            kw[name] = value
            before = arrays(kw)
            with pytest.raises(TypeError, match="^" + ARG_LABEL.get(name, name) + r": expected .*got .*(bool|True)"):
                fn(**kw)
            assert unchanged(before, kw)


@pytest.mark.parametrize("layer, args, arg", LAYER_ARGS_INT)
def test_bool_layer_sizes_are_refused(layer, args, arg):
    cls = getattr(normfast.layers, layer)
    names = cls.__init__.__code__.co_varnames[1:1 + len(args)]
    with pytest.raises(TypeError, match=f"^{arg}: expected .*got bool"):
        cls(**dict(zip(names, args), **{arg: True}))


def test_bool_thread_count_is_refused():
    with pytest.raises(TypeError, match="^n: expected a positive int, got bool"):
        normfast.set_num_threads(True)




@pytest.mark.parametrize("layer, args, arg", LAYER_ARGS)
@pytest.mark.parametrize("huge", HUGE)
def test_huge_layer_arguments_are_named_errors(layer, args, arg, huge):
    cls = getattr(normfast.layers, layer)
    names = cls.__init__.__code__.co_varnames[1:1 + len(args)]
    kw = dict(zip(names, args), **{arg: huge})
    try:
        cls(**kw)
    except (TypeError, ValueError) as e:
        assert str(e).split(":")[0] == arg, str(e)[:200]


def test_huge_ddof():
    for ddof in (10**400, -10**400):
        with pytest.raises(ValueError, match="ddof: expected a finite number"):
            normfast.moments(np.ones(3), ddof=ddof)


@pytest.mark.parametrize("call", NAMES)
def test_tensors_that_require_grad_are_named_type_errors(call):
    torch = pytest.importorskip("torch")
    for name, value in calls()[call][1].items():
        if not isinstance(value, np.ndarray) or name in ("out", "residual_out") or value.dtype.kind != "f":
            continue
        fn, kw = calls()[call]
        kw[name] = torch.from_numpy(value.copy()).requires_grad_()
        # Running statistics updated in place must be numpy arrays: that message instead.
        why = "expected a numpy array updated in place" if name.startswith("running") and call in UPDATED else ".*detach"
        assert_refused(fn, kw, TypeError, rf"{data_label(call) if name == data_name(call) else name}: {why}")


def test_load_state_dict_tensor_requiring_grad():
    torch = pytest.importorskip("torch")
    bn = normfast.layers.BatchNorm(3)
    before = bn.state_dict()
    with pytest.raises(TypeError, match=r"state_dict\['weight'\]: .*detach"):
        bn.load_state_dict({"weight": torch.ones(3, requires_grad=True)}, strict=False)
    assert all(np.array_equal(v, bn.state_dict()[k]) for k, v in before.items())


RANK_64 = [(3, 4) + (1,) * 59 + (1, 5, 2), (1, 4) + (1,) * 60 + (3, 2)]


@pytest.mark.parametrize("shape", RANK_64)
@pytest.mark.parametrize("call", NAMES)
def test_rank_64(call, shape):
    """64 dimensions, NumPy's most: a result (no dimension added on the way), or a named error."""
    fn, kw = calls(shape=shape)[call]
    before = arrays(kw)
    try:
        got = fn(**kw)
    except (TypeError, ValueError) as e:
        head = str(e).split(":")[0]
        assert head and (" " not in head or "," in head), str(e)[:200]
        assert unchanged(before, kw)
        return
    data = np.asarray(got[0] if isinstance(got, tuple) else got)
    assert call not in WITH_OUT or data.shape == shape


@pytest.mark.parametrize("shape", [(0, 4, 5, 2), (3, 4, 0, 2), (3, 4, 5, 0), (0, 4, 0, 0), (3, 0, 5, 2)])
@pytest.mark.parametrize("call", NAMES)
def test_any_zero_size_axis(call, shape):
    """A zero-size axis anywhere: a result, or a TypeError/ValueError naming the argument; nothing
    written on error."""
    fn, kw = calls(shape=shape)[call]
    before = arrays(kw)
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(**kw)
    except (TypeError, ValueError) as e:
        head = str(e).split(":")[0]
        assert head and (" " not in head or "," in head), str(e)[:200]
        assert unchanged(before, kw)


def test_cosine_linear_of_no_features_is_zero_as_torch():
    torch = pytest.importorskip("torch")
    x, w = np.ones((3, 0), np.float32), np.ones((2, 0), np.float32)
    want = torch.nn.functional.cosine_similarity(torch.from_numpy(x)[:, None], torch.from_numpy(w)[None], dim=-1)
    np.testing.assert_array_equal(normfast.cosine_linear(x, w), want.numpy())


# --- dtypes and byte order of the arguments -------------------------------------------------------


def test_bfloat16_running_statistics_are_read_as_float16_ones_are():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    fn, kw = calls()["batch_norm_eval"]
    rm, rv = kw["running_mean"], kw["running_var"]
    got = fn(**dict(kw, running_mean=rm.astype(ml_dtypes.bfloat16), running_var=rv.astype(ml_dtypes.bfloat16)))
    want = fn(**dict(calls()["batch_norm_eval"][1], running_mean=rm.astype(ml_dtypes.bfloat16).astype(np.float32),
                     running_var=rv.astype(ml_dtypes.bfloat16).astype(np.float32)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("call", WITH_OUT)
def test_byte_swapped_out_says_why(call):
    """out=x on byte-swapped x (read through a native copy), or any byte-swapped out: a ValueError saying
    that outputs are native, nothing written."""
    fn, kw = calls()[call]
    kw["x"] = byteswapped(kw["x"])
    if "residual" in kw:
        kw["residual"] = kw["residual"].copy()
    kw["out"] = kw["x"]
    assert_refused(fn, kw, ValueError, "out: expected a native byte order array")


def test_zero_d_real_arrays_are_numbers():
    """A 0-d array of a real dtype (bfloat16 too) is a number where one is expected, as NumPy takes it."""
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    want = normfast.layer_norm(x, 8, eps=1e-3)
    for eps in (np.array(1e-3), np.float64(1e-3), np.array([1e-3])[0]):
        np.testing.assert_array_equal(normfast.layer_norm(x, 8, eps=eps), want)
    got = normfast.layer_norm(x, 8, eps=np.array(2**-10, ml_dtypes.bfloat16))  # exactly representable
    np.testing.assert_array_equal(got, normfast.layer_norm(x, 8, eps=2**-10))
    with pytest.raises(TypeError, match="eps: expected a real number"):
        normfast.layer_norm(x, 8, eps=np.array([1e-3]))
    with pytest.raises(TypeError, match="eps: expected a real number"):
        normfast.layer_norm(x, 8, eps=np.array(1e-3 + 0j))


def test_tensors_that_require_grad_in_dataset_stats_and_whitening():
    torch = pytest.importorskip("torch")
    t = torch.ones((5, 3), dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"paths_or_arrays\[0\]: .*detach"):
        normfast.dataset_stats([t])
    w = normfast.Whitening("zca")
    for call in (w.fit, w.partial_fit):
        with pytest.raises(TypeError, match="X: .*detach"):
            call(t)
    w.fit(np.random.default_rng(0).standard_normal((20, 3)))
    with pytest.raises(TypeError, match="X: .*detach"):
        w.transform(t)
