"""Threads: Python threads calling normfast at once, the GIL released during kernels, threadpoolctl's view
and limits of normfast's OpenMP runtime, and PyTorch's threads in the same process in either import
order. Runtime-wide cases run in a fresh interpreter so that this process's state does not leak in."""
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import normfast
from api_calls import calls, outcome

SHAPE = (8, 4, 64, 32)  # large enough for the kernels to release the GIL and use their threads


def fresh_call(name, x):
    """The named call with its own outputs, running arrays and layer, reading the shared x."""
    fn, kw = calls(np.random.default_rng(0), np.float32, SHAPE)[name]
    for k, v in kw.items():  # the data argument, however the call names it
        if isinstance(v, np.ndarray) and k not in ("out", "residual_out") and v.shape == x.shape \
                and np.array_equal(v, x):
            kw[k] = x
    return fn, kw


def test_eight_threads_calling_different_functions_match_serial():
    x = calls(np.random.default_rng(0), np.float32, SHAPE)["moments"][1]["x"]
    x.setflags(write=False)  # shared by every call: none may write it
    names = list(calls(np.random.default_rng(0), np.float32, SHAPE))
    serial = {name: outcome(*fresh_call(name, x)) for name in names}
    jobs = names * 4
    random.Random(0).shuffle(jobs)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda name: (name, outcome(*fresh_call(name, x))), jobs))
    for name, got in results:
        want = serial[name]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_the_gil_is_released_during_kernels():
    """While one thread is inside a long kernel, another runs Python code: some of its ticks fall in the
    middle of the call (with the GIL held there would be none)."""
    x = np.broadcast_to(np.random.default_rng(1).standard_normal(4096).astype(np.float32), (40000, 4096))
    span, ticks, done = [], [], threading.Event()

    def worker():
        start = time.perf_counter()
        normfast.moments(x, axis=0)
        span.extend([start, time.perf_counter()])
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.0005)
    t.join()
    start, end = span
    third = (end - start) / 3
    middle = [s for s in ticks if start + third < s < end - third]
    assert len(middle) >= 3, (end - start, len(ticks))


def run_python(code, timeout=120, **env):
    """Run code in a fresh interpreter, with `env` added to this process's environment (None removes)."""
    environ = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=environ)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


THREADPOOLCTL = """
import numpy as np, threadpoolctl
before = {lib["filepath"] for lib in threadpoolctl.threadpool_info()}
import normfast
mine = [lib for lib in threadpoolctl.threadpool_info() if lib["filepath"] not in before]
assert [lib["user_api"] for lib in mine] == ["openmp"], mine  # normfast brought exactly its OpenMP runtime
n = normfast.get_num_threads()
x = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
want = normfast.layer_norm(x, 4096)
normfast.set_num_threads(2)
with threadpoolctl.threadpool_limits(1):
    assert normfast.get_num_threads() == 1
    np.testing.assert_array_equal(normfast.layer_norm(x, 4096), want)
assert normfast.get_num_threads() == 2
with threadpoolctl.threadpool_limits(1, user_api="openmp"):
    assert normfast.get_num_threads() == 1
with threadpoolctl.threadpool_limits(1, user_api="blas"):  # not ours
    assert normfast.get_num_threads() == 2
# Another Python thread keeps set_num_threads's count, and a limit there holds there only. (A thread that
# never called set_num_threads tells a limit only from a count below OpenMP's at start: not 1 under 1.)
seen = []
def other():
    seen.append(normfast.get_num_threads())
    with threadpoolctl.threadpool_limits(1):
        seen.append(normfast.get_num_threads())
        np.testing.assert_array_equal(normfast.layer_norm(x, 4096), want)
    seen.append(normfast.get_num_threads())
t = threading.Thread(target=other)
t.start()
t.join()
assert seen == ([2, 1, 2] if n > 1 else [2, 2, 2]), seen
normfast.set_num_threads(3)  # raised above a limit's count
with threadpoolctl.threadpool_limits(2):
    assert normfast.get_num_threads() == 2
assert normfast.get_num_threads() == 3
print(mine[0]["internal_api"], n)
"""


@pytest.mark.parametrize("omp_num_threads", [None, "1", "2", "4"])
def test_threadpoolctl_lists_and_limits_normfast(omp_num_threads):
    """The limit holds after set_num_threads whatever OpenMP's count at start (OMP_NUM_THREADS=1 made
    set_num_threads(2) ignore threadpool_limits(1))."""
    out = run_python("import threading\n" + THREADPOOLCTL, OMP_NUM_THREADS=omp_num_threads)
    api, n = out.split()
    assert api in ("openmp", "libgomp", "libomp", "libiomp") and int(n) == int(omp_num_threads or n) >= 1


BOTH = """
import sys
from concurrent.futures import ThreadPoolExecutor
first = sys.argv[1] if len(sys.argv) > 1 else "{first}"
if first == "torch":
    import torch
import numpy as np
import normfast
if first == "normfast":
    import torch
torch.set_num_threads(2)
normfast.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 32, 32, 32)).astype(np.float32)
a = torch.randn(512, 512)


def both(_):
    y = normfast.batch_norm(x, training=True)
    t = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True)
    p = (a @ a).sum().item()
    return y, t.numpy(), p


serial = both(0)
np.testing.assert_allclose(serial[0], serial[1], rtol=1e-4, atol=1e-4)
with ThreadPoolExecutor(4) as pool:
    for y, t, p in pool.map(both, range(12)):
        np.testing.assert_array_equal(y, serial[0])
        np.testing.assert_allclose(t, serial[1], rtol=1e-5, atol=1e-5)
assert normfast.get_num_threads() == 2 and torch.get_num_threads() == 2
print("ok")
"""


@pytest.mark.parametrize("first", ["torch", "normfast"])
def test_torch_and_normfast_threaded_in_one_process(first):
    assert run_python(BOTH.replace("{first}", first)).strip() == "ok"
