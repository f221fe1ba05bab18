"""pytest-benchmark suite for the normalization layers (forward and backward), the inference toolkit and the
data-set statistics: normfast against NumPy, PyTorch and ONNX Runtime and the memory floor (a copy of x;
for a backward, x + grad_out into an array; for a file, reading its bytes), one group per case (the cases
of `python -m normfast bench`), and three of them with another process busy at 1 thread and the default.

Run with `python -m pytest bench --benchmark-only --benchmark-group-by=group`; times are not asserted."""
import pytest

import normfast
from normfast import _bench

IMPLS = ["normfast", "numpy", "torch", "onnxruntime"]
CASES = ([(name, lambda s=shape, r=rms: _bench.row_peers(s, r, normfast.get_num_threads()))
          for name, shape, rms in _bench.ROW_CASES]
         + [(name, lambda s=shape, la=last, n=norm: _bench.norm_peers(s, la, n, normfast.get_num_threads()))
            for name, shape, last, norm in _bench.NORM_CASES]
         + [(name, lambda k=kind, s=shape, d=dt: _bench.half_peers(k, s, d, normfast.get_num_threads()))
            for name, kind, shape, dt in _bench.HALF_CASES if _bench.half_dtype(dt) is not None]
         + [(name, lambda k=kind, s=shape: _bench.tool_peers(k, s, normfast.get_num_threads()))
            for name, kind, shape in _bench.TOOL_CASES]
         + [(name, lambda k=kind, s=shape, la=last: _bench.grad_peers(k, s, la, normfast.get_num_threads()))
            for name, kind, shape, last in _bench.GRAD_CASES]
         + [(f"stats {what}", lambda k=kept: _bench.stats_peers(_bench.STATS_SHAPE, k))
            for what, kept in _bench.STATS_CASES])


@pytest.fixture(scope="module", params=CASES, ids=[name for name, _ in CASES])
def case(request):
    name, make = request.param
    fns, floors = make()
    return name, fns, floors


@pytest.mark.parametrize("impl", IMPLS)
def test_norm(benchmark, case, impl):
    name, fns, _ = case
    if impl not in fns:
        pytest.skip(f"{impl} is not installed or has no such operation")
    benchmark.group = name
    benchmark(fns[impl])


@pytest.mark.parametrize("floor", ["numpy", "torch"])
def test_copy_floor(benchmark, case, floor):
    name, _, floors = case
    i = ["numpy", "torch"].index(floor)
    if i >= len(floors):
        pytest.skip("no torch floor for this case (torch not installed, or the case has one floor)")
    benchmark.group = name
    benchmark(floors[i])


@pytest.fixture(scope="module")
def busy():
    with _bench.busy_process():
        yield


@pytest.mark.parametrize("threads", sorted({1, normfast.get_num_threads()}))
@pytest.mark.parametrize("name,kind,shape", _bench.LOAD_CASES, ids=[c[0] for c in _bench.LOAD_CASES])
def test_under_load(benchmark, busy, name, kind, shape, threads):
    """normfast with one other process busy, at 1 thread and at the default count: compare the two."""
    fn = _bench.load_call(kind, shape)
    if fn is None:
        pytest.skip("Pillow is not installed (the image-folder case)")
    default = normfast.get_num_threads()
    normfast.set_num_threads(threads)
    try:
        benchmark.group = f"under load: {name}"
        benchmark(fn)
    finally:
        normfast.set_num_threads(default)
