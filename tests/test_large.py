"""More than 2**31 elements: broadcast views (zero strides) of small arrays, so nothing large is
allocated, reduced with exact expected values (a repeated pattern has the pattern's mean and variance)."""
import numpy as np
import pytest

import normfast
from normfast import reference

BIG = 2**31 + 2**20
PATTERN = np.random.default_rng(0).standard_normal(1024) * 3 + 2


def pattern_rows(dtype):
    """(BIG // 1024 + 1, 1024): every row the same varying pattern; the rows axis has stride 0."""
    return np.broadcast_to(PATTERN.astype(dtype), (BIG // PATTERN.size + 1, PATTERN.size))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moments_over_more_than_2_31_elements(dtype):
    x = pattern_rows(dtype)
    assert x.size > 2**31
    want_mean, want_var = reference.moments(PATTERN.astype(dtype))
    tol = 1e-12 if dtype == np.float64 else 2e-6
    mean, var = normfast.moments(x)  # every axis: the count is > 2**31
    np.testing.assert_allclose([mean, var], [want_mean, want_var], rtol=tol)
    mean, var = normfast.moments(x, axis=0)  # one statistic per column, each over > 2**21 rows
    np.testing.assert_allclose(mean, PATTERN.astype(dtype), rtol=tol)
    np.testing.assert_allclose(var, 0, atol=tol * 10)
    mean, var = normfast.moments(x, axis=1)  # > 2**21 statistics, one per row
    assert mean.shape == (x.shape[0],)
    np.testing.assert_allclose(mean, want_mean, rtol=tol)
    np.testing.assert_allclose(var, want_var, rtol=tol)
    # channels in the middle, batch and spatial axes broadcast: batch-norm statistics
    y = np.broadcast_to(PATTERN.astype(dtype)[None, :4, None], (BIG // 4096 + 1, 4, 1024))
    mean, var = normfast.moments(y, axis=(0, 2), ddof=1)
    np.testing.assert_allclose(mean, PATTERN[:4].astype(dtype), rtol=tol)
    np.testing.assert_allclose(var, 0, atol=tol * 10)


def test_streaming_statistics_over_more_than_2_31_elements():
    x = pattern_rows(np.float32)
    acc = normfast.RunningMoments().update(x).update(x[:3])
    assert acc.count == x.size + 3 * PATTERN.size
    want_mean, want_var = reference.moments(PATTERN.astype(np.float32))
    np.testing.assert_allclose([acc.mean, acc.var()], [want_mean, want_var], rtol=2e-6)
    mean, var = normfast.precise_batch_norm_stats([x.T[None]], channel_axis=1)  # (1, 1024, rows): channels = pattern
    np.testing.assert_allclose(mean, PATTERN.astype(np.float32), rtol=2e-6)
    np.testing.assert_allclose(var, 0, atol=1e-5)


@pytest.fixture(scope="module")
def big_out():
    """One float16 output of more than 2**31 elements (4 GiB), shared by the output tests."""
    out = np.empty((BIG // PATTERN.size + 1, PATTERN.size), np.float16)
    assert out.size > 2**31
    return out


def every_row_is(y, row):
    """Every row of y has row's bits, compared block by block (as integers: float16 compares are slow)."""
    bits, want = y.view(np.uint16), row.view(np.uint16)
    return all((bits[i:i + 2**16] == want).all() for i in range(0, y.shape[0], 2**16))


def test_outputs_of_more_than_2_31_elements(big_out):
    x = pattern_rows(np.float16)
    # Layer norm: every row the normalized pattern, the last row too (no wrapped row index).
    y = normfast.layer_norm(x, PATTERN.size, out=big_out)
    want = reference.layer_norm(PATTERN.astype(np.float16), PATTERN.size).astype(np.float16)
    for i in (0, 2**20, y.shape[0] // 2, y.shape[0] - 1):
        np.testing.assert_allclose(y[i].astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert every_row_is(y, y[0])
    # Batch norm in training: each column is one channel, constant over > 2**21 rows, so its variance is 0
    # and every output element is exactly its channel's bias.
    bias = np.linspace(-2, 2, PATTERN.size).astype(np.float32)
    rm, rv = np.zeros(PATTERN.size, np.float32), np.ones(PATTERN.size, np.float32)
    y = normfast.batch_norm(x, rm, rv, bias=bias, training=True, momentum=1.0, out=big_out)
    assert every_row_is(y, bias.astype(np.float16))
    np.testing.assert_allclose(rm, PATTERN.astype(np.float16).astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(rv, 0)
