"""Threads, ISA selection and the reported configuration."""
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import normfast
from normfast import _normc


def run_python(code, **env):
    full = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    return out.stdout.strip(), out.stderr


def test_show_config_keys():
    cfg = normfast.show_config(mode="dicts")
    assert cfg["version"] == normfast.__version__
    assert cfg["isa"] in cfg["isa_available"]
    assert set(cfg["isa_available"]) <= set(cfg["isa_compiled"])
    assert cfg["num_threads"] == normfast.get_num_threads() >= 1
    assert cfg["openmp"] is True


def test_every_level_is_compiled():
    """AVX-512 is built on every x86-64 build, even where this CPU cannot run it."""
    compiled = _normc.isa_compiled()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert compiled == ("baseline", "avx2", "avx512")
    else:
        assert compiled == ("baseline",)


def test_set_num_threads_validates():
    before = normfast.get_num_threads()
    try:
        normfast.set_num_threads(3)
        assert normfast.get_num_threads() == 3
        with pytest.raises(ValueError, match="n: expected a positive int"):
            normfast.set_num_threads(0)
        with pytest.raises(TypeError, match="n: expected a positive int"):
            normfast.set_num_threads(1.5)
        with pytest.raises(ValueError, match="n: expected a positive int"):
            normfast.set_num_threads(-2**70)
        with pytest.raises(TypeError, match="n: expected a positive int"):
            normfast.set_num_threads("2")
        assert normfast.get_num_threads() == 3
    finally:
        normfast.set_num_threads(before)


@pytest.mark.parametrize("n", [2**31, 2**64, 10**400, "max + 1"])
def test_set_num_threads_caps_at_max_threads(n):
    """More threads than 4 per usable CPU are not granted (where the OS could not create them, OpenMP
    would end the interpreter at the next call), and no count overflows the C int."""
    before = normfast.get_num_threads()
    cap = normfast.max_threads()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cap == 4 * usable
    try:
        normfast.set_num_threads(cap + 1 if n == "max + 1" else n)
        assert normfast.get_num_threads() == cap
        x = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
        np.testing.assert_array_equal(normfast.layer_norm(x, 4096), normfast.layer_norm(x.copy(), 4096))
    finally:
        normfast.set_num_threads(before)


@pytest.mark.parametrize("n", ["1", "3"])
def test_omp_num_threads_is_honoured(n):
    out, _ = run_python("import normfast; print(normfast.get_num_threads())", OMP_NUM_THREADS=n)
    assert out == n


@pytest.mark.parametrize("cap", ["baseline", "avx2", "avx512"])
def test_isa_cap_from_environment(cap):
    out, _ = run_python("import json, normfast; print(json.dumps(normfast.show_config(mode='dicts')))", NORMFAST_ISA=cap)
    cfg = json.loads(out)
    order = list(_normc.ISA_NAMES)
    best = max((i for i in cfg["isa_available"] if order.index(i) <= order.index(cap)), key=order.index)
    assert cfg["isa"] == best


def test_bad_isa_cap_warns_and_is_ignored():
    out, err = run_python("import normfast; print(normfast.show_config(mode='dicts')['isa'])", NORMFAST_ISA="sse9")
    assert "NORMFAST_ISA: expected one of baseline, avx2, avx512" in err
    assert out == max(_normc.isa_supported(), key=list(_normc.ISA_NAMES).index)  # the CPU's best, uncapped


def test_show_config_prints_like_numpys(capsys):
    """show_config() prints one "key: value" line per entry and returns None, as NumPy's; mode="dicts"
    returns the dict without printing."""
    assert normfast.show_config() is None
    lines = capsys.readouterr().out.splitlines()
    cfg = normfast.show_config(mode="dicts")
    assert capsys.readouterr().out == ""
    assert [line.split(":")[0] for line in lines] == list(cfg)
    assert lines[0].split()[-1] == normfast.__version__
    assert lines[1].split()[-1] == cfg["isa"]
    assert lines[2].split(None, 1)[1] == ", ".join(cfg["isa_available"])
    with pytest.raises(ValueError, match="mode: expected 'stdout' or 'dicts', got 'dict'"):
        normfast.show_config(mode="dict")


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "normfast", "info"], capture_output=True, text=True, check=True)
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == list(normfast.show_config(mode="dicts"))


def console_script():
    """The `normfast` command pip installed beside this Python (bin/ or Scripts/)."""
    found = shutil.which("normfast", path=str(Path(sys.executable).parent))
    assert found, f"no normfast command beside {sys.executable}"
    return found


@pytest.mark.parametrize("command", [[sys.executable, "-m", "normfast"], None], ids=["python -m", "script"])
def test_version_and_the_console_script(command):
    cmd = command or [console_script()]
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"normfast {normfast.__version__}"
    out = subprocess.run([*cmd, "info"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[1].split()[-1] == normfast.show_config(mode="dicts")["isa"]
    usage = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True).stdout
    assert usage.startswith("usage: normfast " if command is None else "usage: python -m normfast ")
