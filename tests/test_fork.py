"""A child made by fork() after threaded work (multiprocessing's fork start method) runs normfast
without hanging, serially, with the parent's results. Each case runs in a fresh interpreter so that the
test process itself is never forked."""
import subprocess
import sys

import pytest

SCRIPT = """
import multiprocessing, sys
if sys.argv[1] == "torch-first":
    import torch
    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)  # torch's threads started too
import numpy as np
import normfast

normfast.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((16, 32, 48, 48)).astype(np.float32)


def work(i):
    return (normfast.instance_norm(x).sum(dtype=np.float64), normfast.batch_norm(x, training=True)[i].sum(),
            float(normfast.moments(x)[1]), normfast.get_num_threads())


if __name__ == "__main__":
    parent = [work(i)[:3] for i in range(2)]  # threaded work first
    with multiprocessing.get_context("fork").Pool(2) as pool:
        child = pool.map(work, range(2))
    assert [c[:3] for c in child] == parent, (child, parent)
    assert all(c[3] == 1 for c in child), child
    assert normfast.get_num_threads() == 2
    print("ok")
"""


@pytest.mark.parametrize("order", ["normfast-only", "torch-first"])
def test_fork_after_threaded_work(order, tmp_path):
    script = tmp_path / "fork_child.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script), order], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
