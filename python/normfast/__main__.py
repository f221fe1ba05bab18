"""`normfast info | bench | stats` (also `python -m normfast ...`)."""
import argparse
import json
import math
import os
import stat
import sys
import tempfile
import time
import warnings

import numpy as np

from . import __version__, _bench, dataset, get_num_threads, set_num_threads, show_config


def cmd_info(_args):
    show_config()
    return 0


def _table_lines(cols, rows):
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    return ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            for r in [cols] + rows]


def _table(cols, rows):
    print("\n".join(_table_lines(cols, rows)))


def _duration(seconds):
    """A time with its unit and three significant digits: 2.43 µs, 145 µs, 1.45 ms, 1.2 s."""
    for unit, scale in (("µs", 1e6), ("ms", 1e3)):
        if seconds * scale < 1000:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _peer_table(table, cases, args, peers=("numpy", "torch", "onnxruntime")):
    """Time each case's implementations and print one row per case: normfast's median, its spread
    (fastest-slowest call) and number of calls, each peer's median and speedup, the floor; returns the 'vs
    best' ratios. A case is (name, make), make() giving ({implementation: callable}, [floor callables]);
    args gives the calls per implementation (repeat) and the pause before them, and collects each row in
    args.records under `table` (for --json and --compare: ratio = normfast / floor, both of this run)."""
    rows, ratios = [], []
    for name, make in cases:
        fns, floors = make()
        t = {k: _bench.time_calls(f, args.repeat, pause=args.pause) for k, f in fns.items()}
        floor = min(_bench.time_calls(f, args.repeat, pause=args.pause).median for f in floors)
        nf = t["normfast"]
        best = min(v.median for k, v in t.items() if k != "normfast")
        ratios.append(best / nf.median)
        args.records.append(_bench.record(table, name, nf, nf.median / floor, floor=floor, vs_best=best / nf.median,
                                          peers={k: v.median for k, v in t.items() if k != "normfast"}))
        rows.append([name, _duration(nf.median), f"{_duration(nf.min)}-{_duration(nf.max)}", str(nf.calls)]
                    + [f"{_duration(t[p].median)} ({t[p].median / nf.median:.1f}x)" if p in t else "-"
                       for p in peers]
                    + [f"{best / nf.median:.2f}x", _duration(floor), f"{nf.median / floor:.2f}"])
    _table(["case", "normfast", "spread", "calls", *peers, "vs best", "floor", "nf/floor"], rows)
    return ratios


def _summary(ratios, tail=""):
    """The line under a peer table: the geometric mean of its 'vs best' ratios."""
    print(f"\ngeometric mean of 'vs best': {np.exp(np.mean(np.log(ratios))):.2f}x over {len(ratios)} cases{tail}")


def _load_table(args, threads):
    """normfast at `threads` threads against its single thread, both with one other process busy."""
    print(f"\nunder load: one other busy process (a Python spin loop) on the machine; normfast at {threads} "
          f"thread(s) against its own single thread in the same conditions (target: at most 1.25x)")
    rows = []
    with _bench.busy_process():
        for name, kind, shape in _bench.LOAD_CASES[:1] if args.quick else _bench.LOAD_CASES:
            fn = _bench.load_call(kind, shape)
            if fn is None:
                rows.append([name, "-", "-", "-", "0", "needs Pillow"])
                continue
            t = {}
            for n in (1, threads):
                set_num_threads(n)
                t[n] = _bench.time_calls(fn, args.repeat, pause=args.pause)
            set_num_threads(threads)
            args.records.append(_bench.record("under load", name, t[threads], t[threads].median / t[1].median,
                                              one_thread=t[1].median))
            rows.append([name, _duration(t[1].median), _duration(t[threads].median),
                         f"{_duration(t[threads].min)}-{_duration(t[threads].max)}", str(t[threads].calls),
                         f"{t[threads].median / t[1].median:.2f}"])
    _table(["case", "1 thread", f"{threads} threads", "spread", "calls", f"{threads}t / 1t"], rows)


def _capped(asked, granted):
    """What the benchmark says when --threads asked for more than set_num_threads grants."""
    return f"--threads {asked} capped at {granted}: normfast.max_threads(), 4 x the CPUs this process may run on"


def _factor(text):
    """--threshold: a number > 1."""
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not x > 1 or not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a number > 1, got {text!r}")
    return x


def _count(text):
    """--repeat and --threads: an int >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return n


def cmd_bench(args):
    # An earlier run to compare with is read before this one starts: a bad file fails at once.
    before = _bench.read_run(args.compare, "--compare") if args.compare else None
    if args.json:  # where it will be written, checked before the run as --compare's file is
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.path.isdir(folder):
            raise dataset.DatasetError(f"--json: {args.json}: "
                                       + ("is a folder" if os.path.isdir(args.json) else "no such folder"))
    args.records = []
    if args.repeat is None:
        args.repeat = 5 if args.quick else 11
    args.pause = 0.02 if args.quick else 0.05  # before each implementation's calls (see time_calls)
    if args.threads is not None:
        set_num_threads(args.threads)
    threads = get_num_threads()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    cfg = show_config(mode="dicts")
    peers = [f"{name} {mod.__version__}" for name, mod in (("torch", torch), ("onnxruntime", onnxruntime)) if mod]
    missing = [name for name, mod in (("torch", torch), ("onnxruntime", onnxruntime)) if not mod]
    print("  ".join([f"normfast {cfg['version']}", f"isa={cfg['isa']}", f"threads={threads}", f"numpy {np.__version__}",
                     *peers] + ([f"(not installed, left out: {', '.join(missing)})"] if missing else [])))
    if args.threads is not None and args.threads > threads:
        print(_capped(args.threads, threads))
    print(f"Median of {args.repeat} calls per implementation; spread = normfast's fastest-slowest call; "
          "speedup = peer time / normfast time.\n")

    print(f"moments (mean and variance); floor = reading the same bytes once, as NumPy's max of them as "
          f"32-bit words on {threads} threads")

    def moments_case(shape, dtype, axis):
        x = _bench.make_input(shape, dtype)
        return _bench.peers(x, axis), [_bench.read_floor(x, threads)]

    cases = []
    for name, shape, dtype, axis in _bench.CASES:
        if args.quick and np.prod(shape) > 4_000_000:  # a quarter of the rows, and the name says so
            shape = (max(1, shape[0] // 4),) + tuple(shape[1:])
            name += f" as {shape}"
        cases.append((name, lambda s=shape, d=dtype, a=axis: moments_case(s, d, a)))
    _peer_table("moments", cases, args, ("numpy", "torch"))

    print("\nnormalization layers, float32, normfast with out=; floor = the faster of np.copyto and "
          "torch copy_; '-' = peer has no such op")
    cases = [(name, lambda s=shape, r=rms: _bench.row_peers(s, r, threads)) for name, shape, rms in _bench.ROW_CASES
             if not (args.quick and shape[0] > 512)]
    cases += [(name, lambda s=shape, la=last, n=norm: _bench.norm_peers(s, la, n, threads))
              for name, shape, last, norm in _bench.NORM_CASES if not (args.quick and shape[0] > 8)]
    ratios = _peer_table("norms", cases, args)
    _summary(ratios, f"; {sum(r < 1 for r in ratios)} case(s) where a peer is faster")

    print("\nhalf types, normfast with out=; PyTorch in the same type, NumPy in float32 and rounded; "
          "floor = the faster of np.copyto and torch copy_")
    half = [(name, lambda k=kind, s=shape, d=dt: _bench.half_peers(k, s, d, threads))
            for name, kind, shape, dt in _bench.HALF_CASES if _bench.half_dtype(dt) is not None]
    missing = "" if len(half) == len(_bench.HALF_CASES) else " (bfloat16 cases need ml_dtypes)"
    ratios = _peer_table("half types", half[:2] if args.quick else half, args)
    _summary(ratios, missing)

    print("\nbackward (grad_x, grad_weight, grad_bias), float32; PyTorch = its native backward ops given the "
          "saved statistics; floor = x + grad_out into an array (the bytes a backward must move)")
    ratios = _peer_table("backward", [(name, lambda k=kind, s=shape, la=last: _bench.grad_peers(k, s, la, threads))
                          for name, kind, shape, last in _bench.GRAD_CASES
                          if not (args.quick and np.prod(shape) > 4_000_000)], args)
    _summary(ratios)

    print("\ninference toolkit and streaming statistics, float32; floor = copying the input")
    _peer_table("toolkit", [(name, lambda k=kind, s=shape: _bench.tool_peers(k, s, threads))
                 for name, kind, shape in _bench.TOOL_CASES], args)

    _load_table(args, threads)

    shape = (32,) + _bench.STATS_SHAPE[1:] if args.quick else _bench.STATS_SHAPE
    print(f"\ndata-set statistics (dataset_stats, `stats`: count, mean, var, min, max) of a float32 .npy "
          f"{shape} in the page cache; NumPy and PyTorch load it whole first; floor = reading its bytes")
    _peer_table("data-set statistics", [(f"{what} {shape}", lambda k=kept: _bench.stats_peers(shape, k))
                 for what, kept in _bench.STATS_CASES], args)
    run = {"machine": _bench.machine(threads, args.quick, args.repeat), "rows": args.records}
    if args.json:
        _write_atomic(args.json, lambda f: f.write((json.dumps(run, indent=1) + "\n").encode()), "--json")
        print(f"\nwrote {len(args.records)} rows to {args.json}")
    return _print_comparison(before, run, args) if before else 0


def _print_comparison(before, run, args):
    """The change of each row against an earlier run, judged on its ratio to the floor of its own run
    (absolute times move between runs and machines); 1 where a row's ratio grew past the threshold."""
    rows, worse = [], 0
    for change in _bench.compare_runs(before["rows"], run["rows"]):
        old, new = change.get("before"), change.get("now")
        if old is None or new is None:
            rows.append([change["table"], change["case"], "-" if old is None else f"{old:.2f}",
                         "-" if new is None else f"{new:.2f}", "new" if old is None else "gone", ""])
            continue
        slower = new / old > args.threshold
        worse += slower
        rows.append([change["table"], change["case"], f"{old:.2f}", f"{new:.2f}", f"{new / old - 1:+.0%}",
                     "SLOWER" if slower else ""])
    print(f"\nagainst {args.compare}: normfast / floor of each run (under load: N threads / 1 thread); "
          f"'SLOWER' past x{args.threshold}")
    for line in _bench.machine_differences(before["machine"], run["machine"]):
        print(f"note: {line}")
    _table(["table", "case", "before", "now", "change", ""], rows)
    print(f"\n{worse} row(s) slower than x{args.threshold} of their earlier ratio" if worse else
          f"\nno row slower than x{args.threshold} of its earlier ratio")
    return 1 if worse else 0


def _kept_axes(text):
    """--channel-axis: 'none' (reduce every axis), an int or a comma-separated list of ints."""
    if text.strip().lower() == "none":
        return ()
    try:
        axes = tuple(int(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'none', an int or ints separated by commas, got {text!r}") from None
    return axes[0] if len(axes) == 1 else axes


def _size(nbytes):
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000


def _stats_table(r):
    cols = ["index", *r.STATISTICS]
    values = [np.ravel(getattr(r, c)) for c in r.STATISTICS]
    index = [str(i[0]) if len(i) == 1 else str(i) for i in np.ndindex(*r.shape)] if r.shape else ["all"]
    rows = [[index[j]] + [f"{v[j]:.6g}" for v in values] for j in range(len(index))]
    head = (f"{r.files} input(s), {_size(r.nbytes)} of data, count {r.count} per statistic, ddof {r.ddof}, "
            f"kept shape {r.shape}")
    return head, cols, rows


# Links to this process's open streams (/dev/stdout, /dev/fd/1, /proc/self/fd/1): written through, in
# place, whatever they lead to (a pipe, or the file a shell appends stdout to).
_STREAM_LINKS = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def _write_atomic(path, write, option="--output"):
    """write(file) into a temporary file beside path's target (a link is written through, not
    replaced), renamed over it only once it is complete. The file keeps an existing file's mode; a new
    one gets the umask's; an existing file we may not write is refused, as cp refuses it. Anything but a
    regular file (/dev/null, a FIFO) and the links to our own streams (/dev/stdout) are written in place:
    renaming over them would replace a device, or the log stdout is appended to. An OSError is a
    DatasetError naming `path` as the user gave it."""
    target = os.path.realpath(path)
    try:
        st = None if os.path.abspath(path).startswith(_STREAM_LINKS) else os.stat(target)
        if st is None or not stat.S_ISREG(st.st_mode):
            with open(path, "ab") as f:  # appending: a log that stdout is appended to keeps its lines
                write(f)
            return
        if not os.access(target, os.W_OK):
            raise PermissionError(13, "Permission denied (the file is read-only)")
        mode = stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    except OSError as e:
        raise dataset.DatasetError(f"{option}: {path}: {e.strerror or e}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as e:
        raise dataset.DatasetError(f"{option}: {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise dataset.DatasetError(f"{option}: {path}: {e.strerror or e}") from None
        raise


def _refuse_input_as_output(paths, output):
    """An --output that is one of the inputs (the same file by any spelling or link) would replace the data
    with the report: refused before anything is read."""
    try:
        out = os.stat(output)
    except OSError:
        return  # not there yet, so not an input
    for item in paths:
        for p in dataset._expand(item)[0]:
            st = os.stat(dataset._split_member(p)[0])
            if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
                raise dataset.DatasetError(f"--output: {output} is also an input ({p}); choose another file")


def _finite_or_none(v):
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def cmd_stats(args):
    fmt = args.format or next((f for f in ("json", "npz") if (args.output or "").lower().endswith("." + f)), "table")
    if fmt == "npz" and not args.output:
        raise dataset.DatasetError("--format npz: needs --output FILE")
    if args.output and os.path.isdir(args.output):
        raise dataset.DatasetError(f"--output: {args.output} is a folder")
    if args.output:
        _refuse_input_as_output(args.paths, args.output)
    progress = not args.quiet and sys.stderr.isatty()
    if progress:
        try:
            import tqdm  # noqa: F401
        except ImportError:
            progress = False
            print("normfast stats: no progress bar without tqdm (pip install 'normfast[stats]')", file=sys.stderr)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = dataset.dataset_stats(args.paths, channel_axis=args.channel_axis, ddof=args.ddof, scale=not args.scale_off,
                                  mode=args.mode, progress=progress, workers=args.workers)
    t = time.perf_counter() - t
    for w in caught:  # skipped files, no data, huge images: one line each, even with --quiet
        print(f"normfast stats: warning: {str(w.message).removeprefix('dataset_stats: ')}", file=sys.stderr)
    if not args.quiet:
        print(f"normfast stats: {r.files} input(s), {_size(r.nbytes)} in {t:.2f} s "
              f"({_size(r.nbytes / max(t, 1e-9))}/s)", file=sys.stderr)
    if fmt == "npz":
        arrays = {k: np.asarray(getattr(r, k)) for k in r.STATISTICS}
        _write_atomic(args.output, lambda f: np.savez(f, count=r.count, ddof=r.ddof, **arrays))
        return 0
    if fmt == "json":  # strict JSON: NaN and infinities (no data, ddof >= count, inf in the data) as null
        text = json.dumps(_finite_or_none(r.to_dict()), indent=2, allow_nan=False) + "\n"
    else:
        head, cols, rows = _stats_table(r)
        text = head + "\n" + "\n".join(_table_lines(cols, rows)) + "\n"
    if args.output:
        _write_atomic(args.output, lambda f: f.write(text.encode()))
    else:
        sys.stdout.write(text)
    return 0


def main(argv=None):
    """The command line (`normfast ...`, or `python -m normfast ...`); returns the exit status."""
    prog = "normfast" if os.path.basename(sys.argv[0]) in ("normfast", "normfast.exe") else "python -m normfast"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--version", action="version", version=f"normfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build and runtime configuration").set_defaults(func=cmd_info)
    bench = sub.add_parser("bench", help="time normfast against NumPy (and PyTorch) on built-in cases")
    bench.add_argument("--threads", type=_count, default=None,
                       help="threads for normfast, PyTorch and ONNX Runtime (>= 1; at most normfast.max_threads())")
    bench.add_argument("--repeat", type=_count, default=None,
                       help="timed calls per implementation, the median reported (>= 1; default 11, 5 with --quick)")
    bench.add_argument("--quick", action="store_true", help="smaller inputs and fewer calls (a quick look)")
    bench.add_argument("--json", metavar="FILE", help="write every row (times, spread, floor, ratios) and the "
                       "machine (CPU, ISA, threads, versions) to FILE")
    bench.add_argument("--compare", metavar="FILE", help="print each row's change against an earlier --json run, "
                       "judged on normfast / floor of each run; exit 1 if one grew past --threshold")
    bench.add_argument("--threshold", type=_factor, default=1.3,
                       help="--compare: the growth of a row's ratio that fails it (a factor > 1, default 1.3)")
    bench.set_defaults(func=cmd_bench)
    stats = sub.add_parser("stats", help="count, mean, std, min and max of a data set (.npy, .npz, images)",
                           description="Statistics of all the inputs together, as one concatenated array: "
                           ".npy files and .npz archives or members (file.npz:key), read in blocks; images "
                           "(Pillow); folders, for every .npy, .npz and image in them (other files are skipped "
                           "and listed); globs.")
    stats.add_argument("paths", nargs="+", metavar="PATH")
    stats.add_argument("--channel-axis", type=_kept_axes, default=None,
                       help="the axes kept (the rest are reduced): an int, ints separated by commas, or 'none'; "
                       "default: the channel axis of images, none for arrays")
    stats.add_argument("--ddof", type=int, default=0, help="variance divisor count - ddof (default 0)")
    stats.add_argument("--output", "-o", metavar="FILE", help="write here (atomically) instead of stdout")
    stats.add_argument("--format", choices=["table", "json", "npz"],
                       help="default: from --output's extension (.json, .npz), else table")
    stats.add_argument("--no-scale", dest="scale_off", action="store_true",
                       help="keep raw 8/16-bit image values (default: scaled to [0, 1])")
    stats.add_argument("--mode", metavar="MODE",
                       help="convert every image to this Pillow mode (RGB, L, RGBA, ...), for folders mixing "
                       "grey, palette or RGBA images with RGB ones")
    stats.add_argument("--workers", type=int, default=None,
                       help="threads reading and reducing blocks (default: normfast's thread count)")
    stats.add_argument("--quiet", "-q", action="store_true",
                       help="no progress bar or summary on stderr (skipped files are still listed)")
    stats.set_defaults(func=cmd_stats)
    args = parser.parse_args(argv)
    if args.command == "info":
        return args.func(args)
    if args.command == "bench":
        try:
            return args.func(args)
        except (_bench.RunFileError, dataset.DatasetError) as e:  # --compare's or --json's file
            print(f"normfast bench: error: {e}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as e:  # bad input: a message, not a traceback
        print(f"normfast stats: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("normfast stats: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
