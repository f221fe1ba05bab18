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
