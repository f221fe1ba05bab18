import contextlib

import numpy as np
import pytest

import normfast
from normfast import _normc

# Every ISA level this CPU can run: each cross-check runs under all of them.
ISAS = _normc.isa_supported()


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
