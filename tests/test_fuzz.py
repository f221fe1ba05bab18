"""Every public call driven with random shapes, strides, axes, dtypes and arguments, valid and invalid:
it returns, or raises the documented TypeError or ValueError and changes nothing it was given. A crash
(a signal, an abort, a memory error caught by the sanitizer build) fails the whole run."""
import warnings

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api_calls import calls
from helpers import arrays, unchanged

NAMES = list(calls())
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64, np.int32, np.bool_, np.complex64]
# Most examples have the shape the table is valid for (channels 4 on axis 1), so both valid calls and
# every kind of rejection are exercised.
VALID_SHAPE = (3, 4, 5, 2)


@st.composite
def shapes(draw):
    if draw(st.booleans()):
        shape = list(VALID_SHAPE)
        for i in draw(st.sets(st.integers(0, 3), max_size=2)):  # some axes resized (channels too)
            shape[i] = draw(st.integers(0, 6))
        return tuple(shape)
    return tuple(draw(st.lists(st.integers(0, 5), max_size=5)))


def view(draw, a):
    """a as a random view with the same values: reversed or doubled strides, transposed (and back, so
    the shape is kept but the strides are permuted), or a zero-stride broadcast."""
    kind = draw(st.sampled_from(["plain", "strided", "transposed", "broadcast", "fortran"]))
    if a.ndim == 0 or kind == "plain":
        return a
    if kind == "strided":
        big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
        v = big[tuple(slice(None, None, draw(st.sampled_from([2, -2]))) for _ in a.shape)]
        v[...] = a
        return v
    if kind == "transposed":
        perm = draw(st.permutations(range(a.ndim)))
        return np.ascontiguousarray(a.transpose(perm)).transpose(np.argsort(perm))
    if kind == "fortran":
        return np.asfortranarray(a)
    return np.broadcast_to(a[(slice(None),) * (a.ndim - 1) + (slice(0, 1),)], a.shape)  # read-only


def junk(draw, rng):
    """A random value of a random kind, for an argument of any type."""
    kind = draw(st.sampled_from(["none", "int", "float", "nan", "str", "tuple", "array", "list"]))
    if kind == "array":
        shape = draw(st.lists(st.integers(0, 5), max_size=4))
        return (rng.standard_normal(shape) * 3).astype(draw(st.sampled_from(DTYPES)))
    return {"none": None, "int": draw(st.integers(-5, 5)), "float": draw(st.floats(-2, 2)), "nan": np.nan,
            "str": "relu", "tuple": tuple(draw(st.lists(st.integers(-5, 5), max_size=3))),
            "list": [1.0, "a"]}.get(kind)


@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(NAMES), dtype=st.sampled_from(DTYPES), shape=shapes(),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_every_call(data, name, dtype, shape, seed):
    rng = np.random.default_rng(seed)
    fn, kw = calls(rng, dtype, shape)[name]
    for k in list(kw):
        if isinstance(kw[k], np.ndarray) and data.draw(st.integers(0, 3)) == 0:
            kw[k] = view(data.draw, kw[k])
    for k in data.draw(st.sets(st.sampled_from(sorted(kw)), max_size=2)):
        if k != "layer":
            kw[k] = junk(data.draw, rng)
    before = arrays(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy's empty-slice and degrees-of-freedom warnings
        try:
            fn(**kw)
            event("returned")  # the statistics (--hypothesis-show-statistics) show both outcomes occur
        except (TypeError, ValueError) as e:
            event(type(e).__name__)
            assert unchanged(before, kw), f"{name} raised after changing an argument"
