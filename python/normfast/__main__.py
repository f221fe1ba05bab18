"""`python -m normfast info | bench`."""
import argparse
import sys

import numpy as np

from . import _bench, get_num_threads, set_num_threads, show_config


def cmd_info(_args):
    for key, value in show_config().items():
        print(f"{key:14s} {value}")
    return 0


def cmd_bench(args):
    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(get_num_threads())
    except ImportError:
        torch = None
    cfg = show_config()
    print(f"normfast {cfg['version']}  isa={cfg['isa']}  threads={get_num_threads()}"
          f"  numpy {np.__version__}" + (f"  torch {torch.__version__}" if torch else "  (torch not installed)"))
    print("mean+var, median of repeated calls; speedup = peer time / normfast time")
    cols = ["case", "normfast ms", "numpy ms", "speedup"] + (["torch ms", "speedup"] if torch else [])
    cols += ["copy ms", "nf/copy"]
    rows = []
    for name, shape, dtype, axis in _bench.CASES:
        if args.quick and np.prod(shape) > 4_000_000:
            shape = tuple(max(1, n // 4) if i == 0 else n for i, n in enumerate(shape))
        x = _bench.make_input(shape, dtype)
        fns = _bench.peers(x, axis)
        t = {k: _bench.median_time(f, args.repeat) * 1e3 for k, f in fns.items()}
        copy = _bench.median_time(_bench.copy_floor(x), args.repeat) * 1e3
        row = [name, f"{t['normfast']:.2f}", f"{t['numpy']:.2f}", f"{t['numpy'] / t['normfast']:.1f}x"]
        if torch:
            row += [f"{t['torch']:.2f}", f"{t['torch'] / t['normfast']:.1f}x"]
        row += [f"{copy:.2f}", f"{t['normfast'] / copy:.2f}"]
        rows.append(row)
        del x
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for r in rows:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m normfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build and runtime configuration").set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="time normfast against NumPy (and PyTorch) on built-in cases")
    bench.add_argument("--threads", type=int, default=None, help="threads for normfast and torch")
    bench.add_argument("--repeat", type=int, default=11, help="timed calls per case (median)")
    bench.add_argument("--quick", action="store_true", help="smaller inputs")
    bench.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
