"""Determinism: every public call writes the same bytes whatever the number of threads (set_num_threads,
threadpoolctl's limit, a fork child's single thread) and whatever the layout of the outputs it is given.
The kernel path must be chosen from the shape and dtype alone."""
import multiprocessing

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import normfast
from api_calls import calls, outcome
from helpers import use_threads

ml_dtypes = pytest.importorskip("ml_dtypes")

# (samples, channels, ...): channels 4 on axis 1 as api_calls expects. Many rows (the fused group and
# instance norm), one or two samples (the two-pass path, rows split across chunks), sizes past one
# work chunk so that the threads share every reduction, and rows longer than a row norm's chunk, fewer
# than the threads can split among themselves (the threads share each row).
SHAPES = [(8, 4, 64, 32), (1, 4, 128, 160), (2, 4, 3, 4099), (1, 4, 2, 40000)]
DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
NAMES = list(calls())


def run(name, dtype, shape, threads, out_layout=None):
    fn, kw = calls(np.random.default_rng(3), dtype, shape)[name]
    if out_layout is not None:
        for k in ("out", "residual_out"):
            if isinstance(kw.get(k), np.ndarray):
                kw[k] = out_layout(kw[k])
    with use_threads(threads):
        return outcome(fn, kw)


def assert_same_bytes(got, want, what):
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, what
        # Bytes, not values: -0.0 against 0.0 or two NaN payloads would be a difference too.
        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(w).tobytes(), what


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES)
def test_same_bytes_for_1_2_and_3_threads(name, dtype, shape):
    want = run(name, dtype, shape, 1)
    for threads in (2, 3):
        assert_same_bytes(run(name, dtype, shape, threads), want, f"{name} with {threads} threads")


def fortran(a):
    return np.asfortranarray(a)


def strided(a):
    """The same values in every other element of a buffer twice as long on the last axis."""
    buf = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = buf[..., ::2]
    view[...] = a
    return view


def reversed_view(a):
    view = np.empty_like(a)[::-1]
    view[...] = a
    return view


WITH_OUT = [n for n in NAMES if "out" in calls()[n][1]]


@pytest.mark.parametrize("layout", [fortran, strided, reversed_view], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", WITH_OUT)
def test_same_bytes_whatever_the_layout_of_out(name, dtype, layout):
    for shape in SHAPES:
        want = run(name, dtype, shape, 2)
        assert_same_bytes(run(name, dtype, shape, 2, layout), want, f"{name} {shape} out {layout.__name__}")


@pytest.mark.parametrize("name", ["group_norm", "instance_norm", "GroupNorm", "InstanceNorm", "batch_norm",
                                  "layer_norm", "moments"])
def test_same_bytes_under_threadpool_limits(name):
    for shape in SHAPES:
        want = run(name, np.float32, shape, 3)
        with use_threads(2), threadpool_limits(1):
            assert normfast.get_num_threads() == 1
            fn, kw = calls(np.random.default_rng(3), np.float32, shape)[name]
            got = outcome(fn, kw)
        assert_same_bytes(got, want, f"{name} {shape} under threadpool_limits(1)")


def _child(name, shape, queue):
    fn, kw = calls(np.random.default_rng(3), np.float32, shape)[name]
    queue.put([a.tobytes() for a in outcome(fn, kw)])


@pytest.mark.parametrize("name", ["group_norm", "instance_norm", "GroupNorm"])
def test_same_bytes_in_a_fork_child(name):
    """A fork child runs on one thread (see the README); its results are the parent's, bit for bit."""
    ctx = multiprocessing.get_context("fork")
    for shape in SHAPES:
        want = run(name, np.float32, shape, 2)
        queue = ctx.Queue()
        p = ctx.Process(target=_child, args=(name, shape, queue))
        p.start()
        got = queue.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0
        assert got == [np.ascontiguousarray(w).tobytes() for w in want], f"{name} {shape} in a fork child"


@pytest.mark.parametrize("name", ["moments", "batch_norm", "layer_norm", "group_norm", "group_norm_backward"])
def test_same_bytes_with_another_process_busy(name):
    """With another process spinning on a core, the threads get parked and the load guard moves calls to
    one thread and back: every call still gives the one-thread bytes."""
    from normfast import _bench

    shape = (2, 4, 3, 4099)
    want = run(name, np.float32, shape, 1)
    with _bench.busy_process():
        for _ in range(20):
            for threads in (2, 3):
                assert_same_bytes(run(name, np.float32, shape, threads), want, f"{name} under load, {threads} threads")
