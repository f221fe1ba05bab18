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
