"""The README's code and the examples run as written."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_inference_example_matches_torch():
    # The example asserts its own agreement with PyTorch; a few timed calls keep it short.
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "mlp_inference.py"), "--repeat", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "max |diff| vs torch" in run.stdout


def _example(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_example_follows_pytorch():
    """200 SGD steps of the same MLP in NumPy + normfast and in PyTorch give the same losses."""
    import numpy as np

    train = _example("train_mlp").train
    for dtype, rtol in ((np.float32, 1e-4), (np.float64, 1e-12)):
        ours, theirs, _, _ = train(steps=200, dtype=dtype)
        assert len(ours) == 200 and theirs[-1] < 0.5 * theirs[0]  # it learns
        np.testing.assert_allclose(ours, theirs, rtol=rtol)


def _run_example(name, *args, blocked=(), tmp_path=None):
    """Runs an example script; `blocked` names modules made unimportable (a package of that name on the
    path that raises ImportError), as on a machine without them."""
    env = None
    if blocked:
        import os

        for mod in blocked:
            (tmp_path / mod).mkdir()
            (tmp_path / mod / "__init__.py").write_text(f"raise ImportError('no {mod} here')\n")
        env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_example_help_is_whole():
    for name in ("train_mlp.py", "mlp_inference.py"):
        run = _run_example(name, "--help")
        assert run.returncode == 0, run.stderr
        last = [line for line in _example(name[:-3]).__doc__.strip().splitlines() if line.strip()][-1].strip()
        assert last in run.stdout, name  # the docstring's last line: nothing cut off


def test_examples_check_their_dependencies_before_they_start(tmp_path):
    """--plot without matplotlib fails at once with the extra to install (it trained for the whole run,
    then raised); without PyTorch each example says what to install instead of a traceback; bad counts
    are argument errors."""
    run = _run_example("train_mlp.py", "--plot", str(tmp_path / "x.png"), blocked=["matplotlib"], tmp_path=tmp_path)
    assert run.returncode == 2 and "--plot needs matplotlib: pip install '.[plot]'" in run.stderr
    assert "step" not in run.stdout  # nothing trained
    for name in ("train_mlp.py", "mlp_inference.py"):
        (tmp_path / name).mkdir()
        run = _run_example(name, blocked=["torch"], tmp_path=tmp_path / name)
        assert run.returncode == 1 and "pip install" in run.stderr and "Traceback" not in run.stderr, name
    for name, arg in (("train_mlp.py", "--steps"), ("mlp_inference.py", "--repeat")):
        run = _run_example(name, arg, "0")
        assert run.returncode == 2 and "expected an int >= 1, got '0'" in run.stderr, name
