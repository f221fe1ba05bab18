"""Built-in benchmark cases, shared by `python -m normfast bench` and the pytest-benchmark suite in
bench/: normfast against NumPy (and PyTorch when installed) in one process, next to a copy of the same
bytes, the memory-traffic floor."""
import time

import numpy as np

from . import functional

# (name, shape, dtype, axis)
CASES = [
    ("rows (4096,4096) f32 axis=1", (4096, 4096), np.float32, 1),
    ("cols (4096,4096) f32 axis=0", (4096, 4096), np.float32, 0),
    ("all (4096,4096) f32 axis=None", (4096, 4096), np.float32, None),
    ("all (4096,4096) f64 axis=None", (4096, 4096), np.float64, None),
    ("batch NCHW (32,64,56,56) f32", (32, 64, 56, 56), np.float32, (0, 2, 3)),
    ("batch NHWC (32,56,56,64) f32", (32, 56, 56, 64), np.float32, (0, 1, 2)),
    ("layer (8192,768) f32 axis=-1", (8192, 768), np.float32, -1),
]


def make_input(shape, dtype, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)


def peers(x, axis):
    """Callables computing mean and variance of x over axis, by implementation name."""
    out = {
        "normfast": lambda: functional.moments(x, axis),
        "numpy": lambda: (np.mean(x, axis=axis), np.var(x, axis=axis)),
    }
    try:
        import torch
    except ImportError:
        return out
    t = torch.from_numpy(x)
    dims = tuple(range(x.ndim)) if axis is None else axis
    out["torch"] = lambda: torch.var_mean(t, dim=dims, correction=0)
    return out


def copy_floor(x):
    """A callable copying x's bytes into a preallocated array."""
    dst = np.empty_like(x)
    return lambda: np.copyto(dst, x)


def median_time(fn, repeat, min_time=0.0):
    """Median wall time of fn over `repeat` calls (after one warm-up call)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
