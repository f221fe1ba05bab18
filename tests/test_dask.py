"""normfast.dask against the in-memory functions: any chunking (chunks split along reduced axes included),
on Dask's local schedulers and on a real distributed.LocalCluster of two worker processes, one run with
an array twice as large as a worker's memory limit."""
import os
import subprocess
import sys
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normfast
import normfast.dask as nd

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def chunked(draw, min_rank=1):
    """(x, d): a random array and the same as a dask array with random chunks along every axis."""
    ndim = draw(st.integers(min_rank, 4))
    shape = draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal(shape) * 3 + draw(st.sampled_from([0.0, 50.0]))).astype(dtype)
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    return x, da.from_array(x, chunks=chunks)


def close(got, want, dtype):
    # A float16 output may round one ulp apart (2^-11) when a block takes another kernel path than the
    # whole array (strided vs contiguous apply); statistics come out in float32 or float64.
    rtol = {np.float64: 1e-12, np.float32: 1e-5}.get(np.asarray(want).dtype.type, 2e-3)
    scale = max(1.0, float(np.max(np.abs(np.nan_to_num(want)), initial=0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@SETTINGS
@given(case=chunked(), data=st.data(), ddof=st.integers(0, 1), keepdims=st.booleans(),
       split_every=st.sampled_from([None, 2, 3]))
def test_moments_equal_the_in_memory_moments_for_any_chunking(case, data, ddof, keepdims, split_every):
    x, d = case
    axis = data.draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1),
                               st.sets(st.integers(0, x.ndim - 1), min_size=1).map(tuple)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ddof=1 of one element: NaN in both
        want = normfast.moments(x, axis, ddof=ddof, keepdims=keepdims)
        mean, var = nd.moments(d, axis, ddof=ddof, keepdims=keepdims, split_every=split_every)
        got = dask.compute(mean, var, scheduler="sync")
    for g, w in zip(got, want):
        assert np.shape(g) == np.shape(w) and np.asarray(g).dtype == np.asarray(w).dtype
        close(g, w, x.dtype)


@SETTINGS
@given(case=chunked(min_rank=2), relu=st.booleans(), momentum=st.sampled_from([0.1, 0.5]))
def test_batch_norm_trains_and_infers_as_in_memory(case, relu, momentum):
    x, d = case
    C = x.shape[1]
    if x.size // C < 2:
        return
    rng = np.random.default_rng(0)
    w, b = rng.random(C), rng.random(C)
    act = "relu" if relu else None
    stats = [np.zeros(C, normfast._checks.stats_dtype(x)), np.ones(C, normfast._checks.stats_dtype(x))]
    mine = [s.copy() for s in stats]
    want = normfast.batch_norm(x, *stats, w, b, training=True, momentum=momentum, activation=act)
    got = nd.batch_norm(d, *mine, w, b, training=True, momentum=momentum, activation=act).compute(scheduler="sync")
    close(got, want, x.dtype)
    for s, m in zip(stats, mine):
        close(m, s, x.dtype)
    close(nd.batch_norm(d, weight=w, training=True).compute(scheduler="sync"),
          normfast.batch_norm(x, weight=w, training=True), x.dtype)
    close(nd.batch_norm(d, *stats, w, b).compute(scheduler="sync"), normfast.batch_norm(x, *stats, w, b), x.dtype)


@SETTINGS
@given(case=chunked(min_rank=3), data=st.data())
def test_instance_group_layer_and_rms_norm_as_in_memory(case, data):
    x, d = case
    C = x.shape[1]
    rng = np.random.default_rng(1)
    w, b = rng.random(C), rng.random(C)
    if x.size > x.shape[0] * C:  # instance statistics need two spatial elements
        close(nd.instance_norm(d, weight=w, bias=b).compute(scheduler="sync"),
              normfast.instance_norm(x, weight=w, bias=b), x.dtype)
    rm, rv = rng.random(C), rng.random(C) + 0.5
    close(nd.instance_norm(d, rm, rv, w, b, use_input_stats=False).compute(scheduler="sync"),
          normfast.instance_norm(x, rm, rv, w, b, use_input_stats=False), x.dtype)
    G = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    if x.size == G:  # one value per group: refused before any graph runs, as in memory (and PyTorch)
        with pytest.raises(ValueError, match="x: expected more than 1 value per group"):
            nd.group_norm(d, G, w, b)
    else:
        close(nd.group_norm(d, G, w, b, activation="silu").compute(scheduler="sync"),
              normfast.group_norm(x, G, w, b, activation="silu"), x.dtype)
    k = data.draw(st.integers(1, x.ndim - 1))
    nshape = x.shape[x.ndim - k:]
    lw, lb = rng.random(nshape), rng.random(nshape)
    close(nd.layer_norm(d, nshape, lw, lb).compute(scheduler="sync"), normfast.layer_norm(x, nshape, lw, lb), x.dtype)
    close(nd.rms_norm(d, nshape, lw).compute(scheduler="sync"), normfast.rms_norm(x, nshape, lw), x.dtype)


def test_group_norm_of_blocks_with_one_value_per_group():
    """Blocks of one sample hold one value per group where the whole array holds several: the result is
    the in-memory one (the bias), not the block's refusal."""
    x = np.random.default_rng(2).standard_normal((4, 6, 1, 1))
    w, b = np.arange(1.0, 7.0), np.arange(6.0)
    got = nd.group_norm(da.from_array(x, chunks=(1, 6, 1, 1)), 6, w, b).compute(scheduler="sync")
    np.testing.assert_array_equal(got, normfast.group_norm(x, 6, w, b))
    np.testing.assert_array_equal(got, np.broadcast_to(b.reshape(1, 6, 1, 1), x.shape))


def test_group_norm_keeps_channel_chunks_that_hold_whole_groups():
    x = np.random.default_rng(2).standard_normal((4, 8, 5, 5))
    aligned = da.from_array(x, chunks=(2, 4, 5, 5))
    y = nd.group_norm(aligned, 4)
    assert y.chunks[1] == (4, 4)  # no rechunk: each chunk holds two whole groups
    np.testing.assert_allclose(y.compute(scheduler="sync"), normfast.group_norm(x, 4), rtol=1e-12, atol=1e-12)
    assert nd.group_norm(da.from_array(x, chunks=(2, 3, 5, 5)), 4).chunks[1] == (8,)


def test_precise_batch_norm_stats_and_covariance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 4, 6, 6)) * 2 + 7
    for chunks in [(30, 4, 6, 6), (7, 3, 2, 5), (1, 1, 6, 6)]:
        got = nd.precise_batch_norm_stats(da.from_array(x, chunks=chunks))
        want = normfast.precise_batch_norm_stats([x])
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-12)
            assert isinstance(g, np.ndarray) and g.dtype == np.float64
    X = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) + 100
    for chunks in [(500, 6), (37, 6), (1, 2), (64, 4)]:
        c = nd.covariance(da.from_array(X, chunks=chunks), split_every=3)
        assert c.shape == (6, 6)
        np.testing.assert_allclose(c.compute(scheduler="sync"), np.cov(X.T), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nd.covariance(da.from_array(X, chunks=(50, 6)), ddof=0).compute(),
                               np.cov(X.T, ddof=0), rtol=1e-10)


def test_bad_input_is_named():
    x = da.ones((4, 3), chunks=2)
    with pytest.raises(TypeError, match="x: expected a dask array, got ndarray"):
        nd.moments(np.ones(3))
    unknown = da.from_array(np.arange(10.0), chunks=5)
    unknown = unknown[unknown > 3]
    with pytest.raises(ValueError, match=r"x: the dask array has unknown chunk sizes .*; call x.compute_chunk_sizes\(\) first"):
        nd.moments(unknown)
    with pytest.raises(TypeError, match="x: expected a float16, bfloat16, float32 or float64 array, got dtype int64"):
        nd.batch_norm(da.ones((4, 3), dtype=np.int64, chunks=2), training=True)
    with pytest.raises(np.exceptions.AxisError, match="axis 2 is out of range"):
        nd.moments(x, 2)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3,\), got \(4,\)"):
        nd.batch_norm(x, weight=np.ones(4), training=True)
    with pytest.raises(ValueError, match=r"weight: expected shape \(3,\), got \(2,\)"):
        nd.layer_norm(x, 3, np.ones(2))
    with pytest.raises(ValueError, match="normalized_shape: expected the trailing dimensions"):
        nd.rms_norm(x, 4)
    with pytest.raises(ValueError, match="num_groups: expected a positive divisor of the 3 channels, got 2"):
        nd.group_norm(x, 2)
    with pytest.raises(ValueError, match="x: expected more than 1 spatial element"):
        nd.instance_norm(da.ones((2, 3, 1)))
    with pytest.raises(ValueError, match="does not update them"):
        nd.instance_norm(da.ones((2, 3, 4)), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="running_mean, running_var: required when training=False"):
        nd.batch_norm(x)
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="x: expected more than 1 value per channel"):
        nd.batch_norm(da.ones((1, 3)), rm, rv, training=True)
    assert (rm == 0).all() and (rv == 1).all()
    with pytest.raises(ValueError, match=r"x: expected a 2-D array \(n_samples, n_features\), got shape \(2, 3, 4\)"):
        nd.covariance(da.ones((2, 3, 4)))


# A real cluster: two worker processes, each with a memory limit smaller than the array below.

PROBE = "import psutil, dask.array, distributed, normfast; print(psutil.Process().memory_info().rss)"


def worker_memory():
    """A worker's limit: what a fresh process with these libraries holds (more under the sanitizers, whose
    runtime the workers inherit) plus 384 MiB of room for tasks."""
    base = int(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
    return base + 384 * 2**20


@pytest.fixture(scope="module")
def client():
    # Starting workers sets OMP_NUM_THREADS=1 and friends in this process's environment for good; later
    # tests start Python processes that must see the environment the suite started with.
    environ = dict(os.environ)
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=worker_memory(),
                          dashboard_address=None) as cluster, Client(cluster) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(environ)


def test_on_a_cluster_of_two_processes(client):
    assert len(client.scheduler_info()["workers"]) == 2
    x = np.random.default_rng(4).standard_normal((64, 8, 10, 10)).astype(np.float32) + 3
    d = da.from_array(x, chunks=(16, 3, 10, 5))
    mean, var = dask.compute(*nd.moments(d, (0, 2, 3), ddof=1))
    want = normfast.moments(x, (0, 2, 3), ddof=1)
    close(mean, want[0], np.float32)
    close(var, want[1], np.float32)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    y = nd.batch_norm(d, rm, rv, training=True, activation="relu").compute()
    rm2, rv2 = np.zeros(8, np.float32), np.ones(8, np.float32)
    close(y, normfast.batch_norm(x, rm2, rv2, training=True, activation="relu"), np.float32)
    close(rm, rm2, np.float32)
    close(nd.group_norm(d, 4).compute(), normfast.group_norm(x, 4), np.float32)
    X = x.reshape(-1, 100)
    close(nd.covariance(da.from_array(X, chunks=(100, 50))).compute(), np.cov(X.T.astype(np.float64)), np.float64)


def test_an_array_larger_than_a_worker_s_memory(client):
    limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    rows = -(-2 * max(limits.values()) // 2**20)  # twice a worker's limit, in MiB rows of 1024 x 128
    x = da.random.default_rng(5).standard_normal((rows, 1024, 128), chunks=(16, 1024, 128))
    assert all(x.nbytes > 1.9 * limit for limit in limits.values())
    mean, var = dask.compute(*nd.moments(x, (0, 1), ddof=1))  # per column: every chunk feeds every output
    mb, vb = nd.precise_batch_norm_stats(x, channel_axis=2)
    # The reference, block by block in this process (the generator is seeded per block).
    acc = normfast.RunningMoments(axis=(0, 1))
    for block in x.to_delayed().ravel():
        acc.update(block.compute(scheduler="sync"))
    np.testing.assert_allclose(mean, acc.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, acc.var(ddof=1), rtol=1e-9)
    np.testing.assert_allclose(mb, acc.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(vb, acc.var(ddof=1), rtol=1e-9)
