import os

import pytest

from helpers import ISAS, use_isa

# Where PyTorch has no wheel (musl, Intel macOS) the wheel tests set NORMFAST_TEST_WITHOUT_TORCH=1 and the
# files that cross-check against it are left out, by name and said so in the header; anywhere else a
# missing torch is an error.
TORCH_FILES = ["test_aliasing.py", "test_docs.py", "test_fork.py", "test_grads.py", "test_inference.py",
               "test_layer_norm.py", "test_layers.py", "test_magnitudes.py", "test_norms.py", "test_parity.py",
               "test_stats.py", "test_threads.py"]
WITHOUT_TORCH = os.environ.get("NORMFAST_TEST_WITHOUT_TORCH") == "1"
collect_ignore = TORCH_FILES if WITHOUT_TORCH else []


def pytest_report_header(config):
    if WITHOUT_TORCH:
        return f"NORMFAST_TEST_WITHOUT_TORCH=1: not collected (they need PyTorch): {', '.join(TORCH_FILES)}"


@pytest.fixture(params=ISAS)
def isa(request):
    with use_isa(request.param):
        yield request.param
