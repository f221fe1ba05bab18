"""`python -m normfast info | bench`."""
import argparse
import sys

import numpy as np

from . import _bench, get_num_threads, set_num_threads, show_config


def cmd_info(_args):
    for key, value in show_config().items():
        print(f"{key:14s} {value}")
    return 0


def _table(cols, rows):
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    for r in [cols] + rows:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def _peer_table(cases, repeat):
    """Time each case's implementations and print one row per case; returns the 'vs best' ratios."""
    peers = ["numpy", "torch", "onnxruntime"]
    rows, ratios = [], []
    for name, make in cases:
        fns, floors = make()
        t = {k: _bench.median_time(f, repeat) * 1e3 for k, f in fns.items()}
        floor = min(_bench.median_time(f, repeat) for f in floors) * 1e3
        best = min(v for k, v in t.items() if k != "normfast")
        ratios.append(best / t["normfast"])
        rows.append([name, f"{t['normfast']:.3f}"]
                    + [f"{t[p]:.3f} ({t[p] / t['normfast']:.1f}x)" if p in t else "-" for p in peers]
                    + [f"{best / t['normfast']:.2f}x", f"{floor:.3f}", f"{t['normfast'] / floor:.2f}"])
    _table(["case", "normfast"] + peers + ["vs best", "floor", "nf/floor"], rows)
    return ratios


def cmd_bench(args):
    if args.threads is not None:
        set_num_threads(args.threads)
    threads = get_num_threads()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    cfg = show_config()
    print(f"normfast {cfg['version']}  isa={cfg['isa']}  threads={threads}  numpy {np.__version__}"
          + (f"  torch {torch.__version__}" if torch else "  (torch not installed)"))
    print("Median of repeated calls, ms; speedup = peer time / normfast time.\n")

    print("moments (mean and variance); floor = copying the same bytes")
    peers = ["numpy"] + (["torch"] if torch else [])
    rows = []
    for name, shape, dtype, axis in _bench.CASES:
        if args.quick and np.prod(shape) > 4_000_000:
            shape = (max(1, shape[0] // 4),) + tuple(shape[1:])
        x = _bench.make_input(shape, dtype)
        t = {k: _bench.median_time(f, args.repeat) * 1e3 for k, f in _bench.peers(x, axis).items()}
        copy = _bench.median_time(_bench.copy_floor(x), args.repeat) * 1e3
        rows.append([name, f"{t['normfast']:.2f}"] + [f"{t[p]:.2f} ({t[p] / t['normfast']:.1f}x)" for p in peers]
                    + [f"{copy:.2f}", f"{t['normfast'] / copy:.2f}"])
        del x
    _table(["case", "normfast"] + peers + ["floor", "nf/floor"], rows)

    print("\nnormalization layers, float32, normfast with out=; floor = the faster of np.copyto and "
          "torch copy_; '-' = peer has no such op")
    cases = [(name, lambda s=shape, r=rms: _bench.row_peers(s, r, threads)) for name, shape, rms in _bench.ROW_CASES
             if not (args.quick and shape[0] > 512)]
    cases += [(name, lambda s=shape, la=last, n=norm: _bench.norm_peers(s, la, n, threads))
              for name, shape, last, norm in _bench.NORM_CASES if not (args.quick and shape[0] > 8)]
    ratios = _peer_table(cases, args.repeat)
    print(f"\ngeometric mean of 'vs best': {np.exp(np.mean(np.log(ratios))):.2f}x over {len(ratios)} cases; "
          f"{sum(r < 1 for r in ratios)} case(s) where a peer is faster")

    print("\nbackward (grad_x, grad_weight, grad_bias), float32; PyTorch = its native backward ops given the "
          "saved statistics; floor = x + grad_out into an array (the bytes a backward must move)")
    ratios = _peer_table([(name, lambda k=kind, s=shape, la=last: _bench.grad_peers(k, s, la, threads))
                          for name, kind, shape, last in _bench.GRAD_CASES
                          if not (args.quick and np.prod(shape) > 4_000_000)], args.repeat)
    print(f"\ngeometric mean of 'vs best': {np.exp(np.mean(np.log(ratios))):.2f}x over {len(ratios)} cases")

    print("\ninference toolkit and streaming statistics, float32; floor = copying the input")
    _peer_table([(name, lambda k=kind, s=shape: _bench.tool_peers(k, s, threads))
                 for name, kind, shape in _bench.TOOL_CASES], args.repeat)
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
