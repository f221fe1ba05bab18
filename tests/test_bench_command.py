"""`python -m normfast bench`: its arguments, units and floors (never its timings)."""
import subprocess
import sys
import time

import numpy as np
import pytest

from normfast import _bench
import normfast
from normfast.__main__ import _capped, _duration


@pytest.mark.parametrize("args", [["--repeat", "0"], ["--repeat", "-3"], ["--threads", "0"], ["--threads", "x"],
                                  ["--repeat", "1.5"]])
def test_bad_counts_are_argument_errors(args):
    """A count below 1 (or not an int) is refused before anything runs, naming the option."""
    r = subprocess.run([sys.executable, "-m", "normfast", "bench", *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert f"argument {args[0]}: expected an int >= 1, got {args[1]!r}" in r.stderr
    assert r.stdout == ""


def test_threads_past_the_cap_are_reported():
    """--threads above max_threads() runs at the cap and says so (it was silently capped)."""
    asked = normfast.max_threads() + 5
    r = subprocess.run([sys.executable, "-m", "normfast", "bench", "--threads", str(asked), "--quick", "--repeat", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _capped(asked, normfast.max_threads()) in r.stdout
    assert f"threads={normfast.max_threads()}" in r.stdout


def test_bench_runs_without_its_peers_and_says_so(tmp_path):
    """Without PyTorch and ONNX Runtime (packages of those names that raise ImportError on the path) the
    bench still runs every table, against NumPy, and its first line says which peers it left out."""
    import os

    for mod in ("torch", "onnxruntime"):
        (tmp_path / mod).mkdir()
        (tmp_path / mod / "__init__.py").write_text("raise ImportError('not here')\n")
    saved = tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "normfast", "bench", "--quick", "--repeat", "1", "--json", str(saved)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.endswith("(not installed, left out: torch, onnxruntime)") and "torch 2" not in first
    assert "numpy" in r.stdout.splitlines()[4]  # the first table's header
    # --json: every row of every table, with the machine it ran on
    run = _bench.read_run(str(saved), "--compare")
    assert r.stdout.rstrip().endswith(f"wrote {len(run['rows'])} rows to {saved}")
    tables = {row["table"] for row in run["rows"]}
    assert tables == {"moments", "norms", "half types", "backward", "toolkit", "under load", "data-set statistics"}
    for row in run["rows"]:
        assert row["min"] <= row["median"] <= row["max"] and row["calls"] >= 1 and row["ratio"] > 0, row
        assert row["case"] in r.stdout
    m = run["machine"]
    assert m["isa"] == normfast.show_config(mode="dicts")["isa"] and m["threads"] == normfast.get_num_threads()
    assert m["quick"] is True and m["repeat"] == 1 and "torch" not in m["versions"]


def _run(rows, **machine):
    return {"machine": {"format": _bench.RUN_FORMAT, "cpu": "x", "isa": "avx2", "threads": 2, **machine},
            "rows": [{"table": t, "case": c, "ratio": q} for t, c, q in rows]}


def test_compare_judges_each_row_on_its_ratio_to_its_own_floor(tmp_path, capsys):
    """--compare: each row's normfast / floor now against before; a growth past the threshold fails the run
    (exit 1), rows only in one run are listed, and a different machine or setting is noted."""
    import argparse

    from normfast.__main__ import _print_comparison

    before = _run([("norms", "a", 1.0), ("norms", "b", 2.0), ("norms", "gone", 1.0)], threads=1)
    now = _run([("norms", "a", 1.2), ("norms", "b", 2.7), ("norms", "new", 1.0)])
    args = argparse.Namespace(compare="earlier.json", threshold=1.3)
    assert _print_comparison(before, now, args) == 1  # b grew 35%
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("norms")}
    assert "+20%" in lines["a"] and "SLOWER" not in lines["a"]
    assert "+35%" in lines["b"] and lines["b"].rstrip().endswith("SLOWER")
    assert lines["new"].split()[2:] == ["-", "1.00", "new"] and lines["gone"].split()[2:] == ["1.00", "-", "gone"]
    assert "note: threads was 1, now 2" in out and "1 row(s) slower than x1.3 " in out
    args.threshold = 1.4
    assert _print_comparison(before, now, args) == 0
    assert "no row slower than x1.4" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    (None, "No such file"), ("{", "not JSON"), ('{"rows": []}', "not a run written by `normfast bench --json`"),
    ('{"machine": {"format": 99}, "rows": []}', "run format 99, expected 1"),
    ("[" * 100000 + "]" * 100000, "not JSON"),  # past the parser's depth: RecursionError
    *[('{"machine": {"format": 1}, "rows": [%s]}' % row, "not a run written by `normfast bench --json`")
      for row in ('{"table": "t", "case": "c", "ratio": 0}', '{"table": "t", "case": "c", "ratio": -1.0}',
                  '{"table": "t", "case": "c", "ratio": true}', '{"table": "t", "case": [1], "ratio": 1.0}',
                  '{"table": "t", "case": "c", "ratio": "1"}', '1')]])
def test_compare_with_a_bad_file_fails_before_the_run(tmp_path, content, message):
    path = tmp_path / "earlier.json"
    if content is not None:
        path.write_text(content)
    r = subprocess.run([sys.executable, "-m", "normfast", "bench", "--compare", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"normfast bench: error: --compare: {path}: ") and message in r.stderr


@pytest.mark.parametrize("where", ["folder", "missing folder"])
def test_json_to_a_place_it_cannot_be_written_fails_before_the_run(tmp_path, where):
    path = tmp_path if where == "folder" else tmp_path / "no" / "run.json"
    r = subprocess.run([sys.executable, "-m", "normfast", "bench", "--json", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"normfast bench: error: --json: {path}: ")


@pytest.mark.parametrize("value", ["1", "0.5", "x", "inf", "nan"])
def test_threshold_is_a_factor_above_one(value):
    r = subprocess.run([sys.executable, "-m", "normfast", "bench", "--threshold", value], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and f"argument --threshold: expected a number > 1, got {value!r}" in r.stderr


@pytest.mark.parametrize("seconds, text", [(2.434e-6, "2.43 µs"), (145e-6, "145 µs"), (999.4e-6, "999 µs"),
                                           (1.45e-3, "1.45 ms"), (0.1451, "145 ms"), (1.2, "1.2 s"),
                                           (75.0, "75 s")])
def test_durations_carry_their_unit(seconds, text):
    assert _duration(seconds) == text


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [4 * 1000, 4 * 1001 + 2])
def test_read_floor_reads_every_byte(threads, nbytes):
    """The read floor's result depends on every byte: each word's max, whichever part holds it."""
    raw = np.zeros(nbytes, np.uint8)
    for at in (0, nbytes // 2, nbytes - 1):
        raw[:] = 0
        raw[at] = 7
        got = _bench.read_floor(raw, threads)()
        assert max(np.max(p) for p in np.atleast_1d(got)) > 0


def test_time_calls_counts_and_orders():
    calls = []
    t = _bench.time_calls(lambda: calls.append(1), 4, pause=0)
    assert len(calls) == 5  # a warm-up call, then the timed ones
    assert t.calls == 4 and 0 <= t.min <= t.median <= t.max


@pytest.mark.parametrize("name, kind, shape, dtype", _bench.HALF_CASES, ids=[c[0] for c in _bench.HALF_CASES])
def test_half_cases_compare_the_same_operation(name, kind, shape, dtype):
    """The half-type rows time normfast, NumPy and PyTorch computing the same norm (to half rounding)."""
    pytest.importorskip("ml_dtypes")
    small = (2, 64, 8, 8) if kind == "gn32" else (4, 256)
    fns, floors = _bench.half_peers(kind, small, dtype, 2)
    want = np.asarray(fns["numpy"]()).astype(np.float32)
    tol = 2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10
    for impl, fn in fns.items():
        got = fn() if impl != "torch" else fn().float().numpy()
        np.testing.assert_allclose(np.asarray(got).astype(np.float32), want, rtol=2 * tol, atol=4 * tol,
                                   err_msg=impl)
    assert len(floors) >= 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the spinner through Linux's /proc")
def test_busy_process_ends_with_the_benchmark():
    """The under-load section's spinning process ends when the benchmark's process is killed (it was left
    spinning forever when a timeout or kill skipped the cleanup)."""
    code = ("import os, sys, time; from normfast import _bench\n"
            "with _bench.busy_process():\n"
            "    print(os.getpid(), flush=True); time.sleep(60)")
    bench = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        bench.stdout.readline()
        children = _children(bench.pid)
        assert children, "no spinner started"
    finally:
        bench.kill()
        bench.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children), "the spinner outlived the benchmark"


def _children(pid):
    """The process ids whose parent is pid (Linux's /proc; elsewhere none)."""
    import pathlib

    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    import pathlib

    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
