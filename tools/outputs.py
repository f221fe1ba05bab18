"""Saves, or compares with a saved file, a digest of every output normfast gives on the benchmark cases
and on every public call (tests/api_calls.py) in each dtype: a refactoring that must not change results
is checked bit for bit with it.

    python tools/outputs.py save before.json      # on the old build
    python tools/outputs.py compare before.json   # on the new one; exit status 1 on any difference

Run it under each ISA level (NORMFAST_ISA=baseline|avx2|avx512) and thread count (OMP_NUM_THREADS)."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import api_calls  # noqa: E402

from normfast import _bench  # noqa: E402


def _digests(value):
    """sha256 of each array in a result (tuples, lists and objects' attributes walked in order)."""
    if isinstance(value, np.ndarray) or np.isscalar(value):
        a = np.ascontiguousarray(np.asarray(value))
        return [f"{a.dtype.str}{a.shape}:{hashlib.sha256(a.view(np.uint8) if a.size else b'').hexdigest()[:16]}"]
    if isinstance(value, (tuple, list)):
        return [d for v in value for d in _digests(v)]
    if hasattr(value, "__dict__"):
        return [d for k in sorted(vars(value)) for d in _digests(vars(value)[k])]
    return []


def _bench_cases():
    yield from ((name, lambda shape=shape, axis=axis, dt=dt: _bench.peers(_bench.make_input(shape, dt), axis))
                for name, shape, dt, axis in _bench.CASES)
    yield from ((name, lambda a=(shape, last, norm): _bench.norm_peers(*a, 2)[0])
                for name, shape, last, norm in _bench.NORM_CASES)
    yield from ((name, lambda a=(shape, rms): _bench.row_peers(*a, 2)[0]) for name, shape, rms in _bench.ROW_CASES)
    yield from ((name, lambda a=(kind, shape): _bench.tool_peers(*a, 2)[0]) for name, kind, shape in _bench.TOOL_CASES)
    yield from ((name, lambda a=(kind, shape, last): _bench.grad_peers(*a, 2)[0])
                for name, kind, shape, last in _bench.GRAD_CASES)


def _dtypes():
    yield from (np.float32, np.float64, np.float16)
    try:
        import ml_dtypes
        yield ml_dtypes.bfloat16
    except ImportError:
        pass


def digests():
    out = {}
    for name, make in _bench_cases():
        fns = make()
        fn = fns["normfast"]
        out["bench " + name] = _digests(fn())
    for dt in _dtypes():
        for shape in [(3, 4, 5, 2), (2, 4, 33, 17), (5, 4, 9, 300)]:
            for name, (fn, kwargs) in api_calls.calls(dtype=dt, shape=shape).items():
                key = f"{name} {np.dtype(dt).name} {shape}"
                try:
                    out[key] = _digests(api_calls.outcome(fn, kwargs))
                except (TypeError, ValueError) as e:  # the same refusal counts as the same outcome
                    out[key] = [type(e).__name__]
    return out


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "compare"):
        sys.exit(__doc__)
    now = digests()
    if argv[1] == "save":
        Path(argv[2]).write_text(json.dumps(now, indent=0))
        print(f"saved {len(now)} cases")
        return 0
    before = json.loads(Path(argv[2]).read_text())
    bad = [k for k in sorted(before.keys() | now.keys()) if before.get(k) != now.get(k)]
    for k in bad:
        print(f"differs: {k}\n  before {before.get(k)}\n  now    {now.get(k)}")
    print(f"{len(now)} cases, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
