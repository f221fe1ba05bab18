"""pytest-benchmark suite: normfast.moments against its peers and the read floor (one read of the same
bytes), one group per case.

Run with `python -m pytest bench --benchmark-only` (compare groups; times are not asserted)."""
import pytest

import normfast
from normfast import _bench

IDS = [name for name, *_ in _bench.CASES]


@pytest.fixture(scope="module", params=_bench.CASES, ids=IDS)
def case(request):
    name, shape, dtype, axis = request.param
    return name, _bench.make_input(shape, dtype), axis


@pytest.mark.parametrize("impl", ["normfast", "numpy", "torch"])
def test_moments(benchmark, case, impl):
    name, x, axis = case
    fns = _bench.peers(x, axis)
    if impl not in fns:
        pytest.skip(f"{impl} is not installed")
    benchmark.group = name
    benchmark(fns[impl])


def test_read_floor(benchmark, case):
    name, x, _ = case
    benchmark.group = name
    benchmark(_bench.read_floor(x, normfast.get_num_threads()))
