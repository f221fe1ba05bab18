import contextlib
import os

import numpy as np
import pytest

import normfast
from normfast import _normc

# Where PyTorch has no wheel (musl, Intel macOS) the wheel tests set NORMFAST_TEST_WITHOUT_TORCH=1 and the
# files that cross-check against it are left out, by name and said so in the header; anywhere else a
# missing torch is an error.
TORCH_FILES = ["test_docs.py", "test_fork.py", "test_grads.py", "test_inference.py", "test_layers.py",
               "test_norms.py", "test_rownorm.py", "test_stats.py", "test_threads.py"]
WITHOUT_TORCH = os.environ.get("NORMFAST_TEST_WITHOUT_TORCH") == "1"
collect_ignore = TORCH_FILES if WITHOUT_TORCH else []


def pytest_report_header(config):
    if WITHOUT_TORCH:
        return f"NORMFAST_TEST_WITHOUT_TORCH=1: not collected (they need PyTorch): {', '.join(TORCH_FILES)}"


# Every ISA level this CPU can run, up to the NORMFAST_ISA cap (the level in use at import): each
# cross-check runs under all of them.
_CAP = _normc.ISA_NAMES.index(_normc.get_isa())
ISAS = tuple(i for i in _normc.isa_supported() if _normc.ISA_NAMES.index(i) <= _CAP)


@contextlib.contextmanager
def use_isa(name):
    before = _normc.get_isa()
    assert _normc.set_isa(name) == name
    try:
        yield
    finally:
        _normc.set_isa(before)


@contextlib.contextmanager
def use_threads(n):
    before = normfast.get_num_threads()
    normfast.set_num_threads(n)
    try:
        yield
    finally:
        normfast.set_num_threads(before)


@pytest.fixture(params=ISAS)
def isa(request):
    with use_isa(request.param):
        yield request.param


def tolerance(dtype):
    """Relative error allowed against the float64 reference, per input dtype. Half types are computed in
    float32 from their exact values, so they get float32's tolerance."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 2e-5
