"""dataset_stats and `python -m normfast stats`: against the float64 reference of the concatenated inputs,
over random shapes, kept axes, dtypes, layouts, containers and block sizes; images through Pillow; the
min/max kernel per ISA; bad input."""
import json
import os
import struct
import subprocess
import sys
import warnings
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import normfast
from normfast import __main__ as cli
from normfast import _checks, _normc, reference

from helpers import ISAS, assert_refused, use_isa, use_threads

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = [np.float64, np.float32, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64]


def expected(parts, kept, ddof=0, scale=1.0):
    """count, mean, var, min, max of the parts concatenated along their reduced axes, in float64."""
    flat = []
    for p in parts:
        p = np.asarray(p, np.float64) * scale
        k = [a % p.ndim for a in kept] if p.ndim else []
        moved = np.moveaxis(p, k, list(range(len(k))))
        flat.append(moved.reshape(moved.shape[:len(k)] + (-1,)))
    cat = np.concatenate(flat, axis=-1)
    mean, var = reference.moments(cat, axis=-1, ddof=ddof)
    return cat.shape[-1], mean, var, cat.min(axis=-1), cat.max(axis=-1)


def check(r, parts, kept, ddof=0, scale=1.0, dtype=np.float64):
    count, mean, var, lo, hi = expected(parts, kept, ddof, scale)
    assert r.count == count
    big = max(1.0, float(np.abs(np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in parts])).max()) * scale)
    # The engine accumulates float32 and the half types in float32 (the design's numerics); integers and
    # float64 in float64.
    rtol = 1e-6 if np.dtype(dtype) in (np.float32, np.float16) else 1e-12
    np.testing.assert_allclose(r.mean, mean, rtol=rtol, atol=rtol * big)
    np.testing.assert_allclose(r.var, var, rtol=rtol * 10, atol=rtol * big * big)
    np.testing.assert_allclose(r.std, np.sqrt(var), rtol=rtol * 10, atol=rtol * big)
    np.testing.assert_array_equal(r.min, lo)
    np.testing.assert_array_equal(r.max, hi)
    assert np.shape(r.mean) == np.shape(mean) and np.asarray(r.mean).dtype == np.float64


@st.composite
def data_set(draw):
    """(parts, kept, dtype): 1-3 arrays of one rank and dtype agreeing on the kept axes' sizes."""
    ndim = draw(st.integers(1, 4))
    kept = tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), max_size=ndim))))
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        s = [n if a in kept else draw(st.integers(1, 7)) for a, n in enumerate(shape)]
        if np.dtype(dtype).kind == "f":
            p = (rng.standard_normal(s) * 10 + draw(st.sampled_from([0.0, 100.0]))).astype(dtype)
        else:
            info = np.iinfo(dtype)
            p = rng.integers(max(info.min, -2**40), min(info.max, 2**40), s, endpoint=True).astype(dtype)
        parts.append(p)
    negative = draw(st.booleans())
    return parts, tuple(a - ndim if negative else a for a in kept), dtype


def _store(tmp_path, parts, how, n):
    """The parts written as `how` (npy, fortran npy, npz, compressed npz member, or arrays as views)."""
    out = []
    for i, p in enumerate(parts):
        if how == "npy":
            np.save(tmp_path / f"{n}_{i}.npy", p)
            out.append(str(tmp_path / f"{n}_{i}.npy"))
        elif how == "fortran":
            np.save(tmp_path / f"{n}_{i}.npy", np.asfortranarray(p))
            out.append(str(tmp_path / f"{n}_{i}.npy"))
        elif how in ("npz", "npz_compressed"):
            save = np.savez if how == "npz" else np.savez_compressed
            save(tmp_path / f"{n}_{i}.npz", other=np.zeros(3), data=p)
            out.append(f"{tmp_path / f'{n}_{i}.npz'}:data")
        else:  # a strided view of a bigger array
            big = np.zeros(tuple(2 * s for s in p.shape), p.dtype)
            view = big[tuple(slice(None, None, 2) for _ in p.shape)]
            view[...] = p
            out.append(view)
    return out


@SETTINGS
@given(case=data_set(), how=st.sampled_from(["npy", "fortran", "npz", "npz_compressed", "array"]),
       block=st.sampled_from([1, 40, 1000, 1 << 22]), ddof=st.integers(0, 1), workers=st.integers(1, 3))
def test_equals_the_statistics_of_the_concatenation(tmp_path_factory, case, how, block, ddof, workers):
    parts, kept, dtype = case
    tmp = tmp_path_factory.mktemp("data")
    inputs = _store(tmp, parts, how, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ddof=1 of one sample: NaN, as numpy
        r = normfast.dataset_stats(inputs, channel_axis=kept if kept else (), ddof=ddof, block_bytes=block, workers=workers)
        check(r, parts, kept, ddof, dtype=dtype)
        # Against the package's own moments too: the same statistics as one in-memory array.
        if np.dtype(dtype).kind == "f" and len(parts) == 1:
            mean, var = normfast.moments(parts[0].astype(np.float64), axis=tuple(
                a for a in range(parts[0].ndim) if a not in [k % parts[0].ndim for k in kept]), ddof=ddof)
            np.testing.assert_allclose(r.mean, mean, rtol=1e-6, atol=1e-6 * max(1, np.abs(parts[0]).max()))


def test_the_block_size_and_the_pool_change_nothing(tmp_path):
    """Block bounds depend on the block size, so only rounding may change; the pool never changes the
    order in which blocks are folded, so its size changes no bit."""
    x = np.random.default_rng(0).standard_normal((40, 3, 50, 7)) * 5 + 1e3
    np.save(tmp_path / "x.npy", x)
    np.savez_compressed(tmp_path / "z.npz", x=x)
    base = normfast.dataset_stats([str(tmp_path / "x.npy"), str(tmp_path / "z.npz")], channel_axis=1, workers=1)
    for block in (64, 5000, 1 << 16):
        for workers in (1, 2, 4):
            r = normfast.dataset_stats([str(tmp_path / "x.npy"), str(tmp_path / "z.npz")], channel_axis=1, workers=workers,
                                       block_bytes=block)
            if block == normfast.dataset.BLOCK_BYTES:
                assert r.to_dict() == base.to_dict()
            check(r, [x, x], (1,))
        assert normfast.dataset_stats(str(tmp_path / "x.npy"), channel_axis=1, block_bytes=block, workers=1).to_dict() == \
            normfast.dataset_stats(str(tmp_path / "x.npy"), channel_axis=1, block_bytes=block, workers=3).to_dict()


def test_a_file_larger_than_a_block_is_read_in_blocks(tmp_path, monkeypatch):
    x = np.random.default_rng(1).standard_normal((64, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    seen = []
    reduce = normfast.dataset._Piece.reduce
    monkeypatch.setattr(normfast.dataset._Piece, "reduce", lambda p, b: (seen.append(p.values.nbytes), reduce(p, b))[1])
    r = normfast.dataset_stats(str(tmp_path / "x.npy"), channel_axis=1, block_bytes=1 << 16)
    rows = (1 << 16) // (3 * 32 * 32 * 4)  # whole (3, 32, 32) samples per block
    assert len(seen) == -(-64 // rows) and max(seen) <= 1 << 16 and sum(seen) == x.nbytes
    check(r, [x], (1,), dtype=np.float32)


def test_nan_and_infinities_show_as_numpy_shows_them():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    x[0, 1, 2] = np.nan
    x[1, 2, 3] = np.inf
    x[0, 0, 0] = -np.inf
    r = normfast.dataset_stats(x, channel_axis=1)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(r.min, np.min(x, axis=(0, 2)))
        np.testing.assert_array_equal(r.max, np.max(x, axis=(0, 2)))
        np.testing.assert_array_equal(r.mean, np.mean(x, axis=(0, 2)))


def test_no_data_gives_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="no data"):
        r = normfast.dataset_stats(np.zeros((0, 3)), channel_axis=1)
    assert r.count == 0 and r.shape == (3,) and np.isnan(r.mean).all() and np.isnan(r.min).all()


def test_inputs_may_differ_in_reduced_sizes_and_rank_only_by_kept_shape():
    a, b = np.random.default_rng(2).random((5, 3)), np.random.default_rng(3).random((2, 7, 3))
    check(normfast.dataset_stats([a, b], channel_axis=-1), [a.reshape(-1, 3), b.reshape(-1, 3)], (-1,))
    with pytest.raises(ValueError, match=r"paths_or_arrays\[1\]: kept axes of shape \(2,\), expected \(5,\) "
                                         r"as in paths_or_arrays\[0\]"):
        normfast.dataset_stats([a, b], channel_axis=0)


def test_to_dict_is_json_and_scalars_come_back_as_scalars():
    r = normfast.dataset_stats(np.arange(10.0))
    assert r.shape == () and isinstance(r.mean, np.float64) and r.mean == 4.5 and r.min == 0 and r.max == 9
    d = json.loads(json.dumps(r.to_dict()))
    assert d["count"] == 10 and d["mean"] == 4.5 and d["shape"] == [] and d["files"] == 1
    assert "count=10" in repr(r)


# The moments engine's min and max, per ISA, against numpy; asking for them changes no bit of the moments.


def moments_and_range(x, red):
    shape = [1 if r else n for r, n in zip(red, x.shape)]
    out = [np.empty(shape) for _ in range(6)]
    code = _checks.dtype_code(x.dtype)
    _normc.moments(x, code, red, *out[:2], 0.0, *out[2:4])
    _normc.moments(x, code, red, *out[4:], 0.0)
    np.testing.assert_array_equal(out[0], out[4])
    np.testing.assert_array_equal(out[1], out[5])
    return out[2], out[3]


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=4), data=st.data(),
       dtype=st.sampled_from([np.float64, np.float32, np.float16, ml_dtypes.bfloat16]),
       special=st.sampled_from(["", "nan", "infs", "nan infs", "huge"]), seed=st.integers(0, 2**32 - 1))
def test_min_and_max_match_numpy(shape, data, dtype, special, seed):
    """The kernels skip NaN and look for one only where an item's moments are not finite: a NaN, +inf
    with -inf (NaN moments, no NaN), or data whose squares overflow."""
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # "huge" is inf in the narrow types
        x = (rng.standard_normal(shape) * (1e300 if special == "huge" else 100)).astype(dtype)
    if "infs" in special:
        x.flat[rng.integers(x.size, size=2)] = np.inf
        x.flat[rng.integers(x.size, size=2)] = -np.inf
    if "nan" in special:
        x.flat[rng.integers(x.size)] = np.nan
    x = x[tuple(slice(None, None, data.draw(st.sampled_from([1, -1, 2]))) for _ in shape)]
    x = np.transpose(x, data.draw(st.permutations(range(x.ndim))))
    keep = data.draw(st.sets(st.integers(0, x.ndim - 1)))
    red = tuple(a not in keep for a in range(x.ndim))
    want_lo = np.min(x.astype(np.float64), axis=tuple(a for a in range(x.ndim) if red[a]), keepdims=True)
    want_hi = np.max(x.astype(np.float64), axis=tuple(a for a in range(x.ndim) if red[a]), keepdims=True)
    for isa in ISAS:
        with use_isa(isa), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = moments_and_range(x, red)
            np.testing.assert_array_equal(lo, want_lo)
            np.testing.assert_array_equal(hi, want_hi)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_min_and_max_on_large_inputs_and_threads(threads):
    x = np.random.default_rng(4).standard_normal((64, 32, 40, 24)).astype(np.float32)
    x[5, 3, 2, 1] = np.nan
    for axes in [(0, 2, 3), (0, 1, 2), (), (0, 1, 2, 3), (1, 2)]:
        keep = [a for a in range(4) if a not in axes]
        with use_threads(threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # keeping every axis: one element, var of it
            lo, hi = moments_and_range(x, tuple(a in axes for a in range(4)))
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(lo, np.min(x, axis=tuple(axes), keepdims=True), err_msg=str(keep))
            np.testing.assert_array_equal(hi, np.max(x, axis=tuple(axes), keepdims=True))
    # Short contiguous reduced rows beside kept ones (group norm channels-last): the engine's grouped
    # column mode, where each statistic merges several columns.
    g = x.reshape(64, 2560, 12)
    with use_threads(threads):
        lo, hi = moments_and_range(g, (True, False, True))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(lo, np.min(g, axis=(0, 2), keepdims=True))
        np.testing.assert_array_equal(hi, np.max(g, axis=(0, 2), keepdims=True))


# Images.


def _images(folder):
    rng = np.random.default_rng(5)
    sizes = [(10, 12), (7, 5), (30, 2), (16, 16)]
    arrays = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, a in enumerate(arrays):
        p = folder / ("sub" if i == 2 else "") / f"{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")
    return arrays, paths


def test_a_folder_of_images_of_different_sizes_per_channel_scaled(tmp_path):
    arrays, _ = _images(tmp_path / "imgs")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) that are not data: .*notes.txt"):
        r = normfast.dataset_stats(str(tmp_path / "imgs"))
    check(r, arrays, (-1,), scale=1 / 255)
    assert r.shape == (3,) and r.files == 4 and r.skipped == (str(tmp_path / "imgs" / "notes.txt"),)
    with pytest.warns(UserWarning, match="notes.txt"):
        raw = normfast.dataset_stats(str(tmp_path / "imgs"), scale=False)
    check(raw, arrays, (-1,))
    with pytest.warns(UserWarning, match="notes.txt"):
        whole = normfast.dataset_stats(str(tmp_path / "imgs"), channel_axis=())
    check(whole, arrays, (), scale=1 / 255)


def test_globs_and_image_modes(tmp_path):
    rng = np.random.default_rng(6)
    grey = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.fromarray(grey).convert("1").save(tmp_path / "bw.png")
    Image.fromarray(rgba).save(tmp_path / "a.png")
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.save(tmp_path / "p.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "j.jpg", quality=90)
    check(normfast.dataset_stats(str(tmp_path / "g.png")), [grey[..., None]], (-1,), scale=1 / 255)
    check(normfast.dataset_stats(str(tmp_path / "g16.png")), [grey16[..., None]], (-1,), scale=1 / 65535)
    bw = np.asarray(Image.open(tmp_path / "bw.png").convert("L"))
    check(normfast.dataset_stats(str(tmp_path / "bw.png")), [bw[..., None]], (-1,), scale=1 / 255)
    check(normfast.dataset_stats(str(tmp_path / "a.png")), [rgba], (-1,), scale=1 / 255)
    rgb = [np.asarray(pal.convert("RGB")), np.asarray(Image.open(tmp_path / "j.jpg"))]
    check(normfast.dataset_stats([str(tmp_path / "p.png"), str(tmp_path / "j.jpg")]), rgb, (-1,), scale=1 / 255)
    r = normfast.dataset_stats(str(tmp_path / "[gb]*.png"), scale=False)
    assert r.files == 3 and r.shape == (1,)
    check(r, [grey[..., None], grey16[..., None], bw[..., None]], (-1,))


# Bad input: a DatasetError (a ValueError) or TypeError naming the file or argument, before any output.


def _truncated_npy(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((100, 3)))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-50])
    return str(tmp_path / "t.npy")


def _truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "t.png")


def _truncated_npz(tmp_path):
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:  # a member whose header promises more data
        np.save(tmp_path / "m.npy", np.zeros((100, 3)))
        z.writestr("x.npy", (tmp_path / "m.npy").read_bytes()[:-40])
    return f"{tmp_path / 't.npz'}:x"


def _mixed_channels(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "grey.png")
    return [str(tmp_path / "rgb.png"), str(tmp_path / "grey.png")]


def _written(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def _saved(tmp_path, name, arr):
    np.save(tmp_path / name, arr, allow_pickle=True)
    return str(tmp_path / name)


BAD = [
    (lambda t: str(t / "missing.npy"), {}, ValueError, "missing.npy: no such file or folder"),
    (lambda t: str(t / "*.nothing"), {}, ValueError, r"\*.nothing: no file matches"),
    (lambda t: (t / "empty").mkdir() or str(t / "empty"), {}, ValueError, "a folder with no data files"),
    (_truncated_npy, {}, ValueError, r"t.npy: truncated: its header says 2400 bytes of data, the file holds 2350"),
    (lambda t: _written(t, "h.npy", b"\x93NUMPY garbage"), {}, ValueError,
     "h.npy: not a readable .npy array"),
    (lambda t: _saved(t, "o.npy", np.array([1, "a"], dtype=object)), {}, ValueError,
     "o.npy: expected float, integer or bool data, got dtype object"),
    (lambda t: _saved(t, "c.npy", np.ones(3, complex)), {}, ValueError,
     "c.npy: expected float, integer or bool data, got dtype complex128"),
    (lambda t: _written(t, "x.csv", b"1,2"), {}, ValueError, "x.csv: unknown kind of file"),
    (lambda t: np.savez(t / "z.npz", a=np.ones(2)) or f"{t / 'z.npz'}:b", {}, ValueError,
     r"z.npz: no member 'b' \(it has a\)"),
    (lambda t: _written(t, "bad.npz", b"junk"), {}, ValueError, "bad.npz: not a readable .npz"),
    (_truncated_npz, {}, ValueError, "t.npz:x: truncated"),
    (_truncated_png, {}, ValueError, "t.png: not a readable image"),
    (lambda t: _written(t, "f.png", b"not a png"), {}, ValueError, "f.png: not a readable image"),
    (_mixed_channels, {}, ValueError, r"grey.png: channels \(1,\) \(mode L\), expected \(3,\) as in .*rgb.png "
                                      r"\(mode RGB\): pass mode='RGB' \(--mode RGB\) to convert every image"),
    (_mixed_channels, {"mode": "XYZ"}, ValueError, "mode: expected a Pillow mode name such as 'RGB', 'L' or 'RGBA', "
                                                   "got 'XYZ'"),
    (_mixed_channels, {"mode": 3}, TypeError, "mode: expected None or a Pillow mode name"),
    (lambda t: _saved(t, "a.npy", np.ones((2, 3))), {"channel_axis": 2}, ValueError, r"a.npy: channel_axis: axis 2 is out of range"),
    (lambda t: _saved(t, "a.npy", np.ones((2, 3))), {"channel_axis": "0"}, TypeError, "channel_axis: expected None"),
    (lambda t: _saved(t, "a.npy", np.ones((2, 3))), {"ddof": "1"}, TypeError, "ddof: expected a real number"),
    (lambda t: _saved(t, "a.npy", np.ones((2, 3))), {"workers": 0}, ValueError, "workers: expected a positive int"),
    (lambda t: [], {}, ValueError, "expected at least one input"),
    (lambda t: 5, {}, TypeError, "paths_or_arrays: expected a path, an array or a list of them, got int"),
    (lambda t: [np.ones(3, complex)], {}, ValueError, r"paths_or_arrays\[0\]: expected float, integer or bool data"),
]


@pytest.mark.parametrize("make, kwargs, exc, message", BAD)
def test_bad_input_is_named(tmp_path, make, kwargs, exc, message):
    assert_refused(normfast.dataset_stats, {"paths_or_arrays": make(tmp_path), **kwargs}, exc, message)


def test_dataset_stats_names_bad_arrays_and_axes():
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(TypeError, match=r"paths_or_arrays\[0\]: .*masked"):
        normfast.dataset_stats([np.ma.masked_array(x, mask=x > 4)])
    for axis in (np.nan, np.array([0.1, 0.2]), 1.5):
        with pytest.raises(TypeError, match="channel_axis: expected None"):
            normfast.dataset_stats([x], channel_axis=axis)
    s = normfast.dataset_stats([np.arange(4.0).reshape((1,) * 62 + (2, 2))], channel_axis=63)  # rank 64
    np.testing.assert_array_equal(s.mean, [1.0, 2.0])


# The command.


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "normfast", "stats", *args], capture_output=True, text=True)


def test_command_table_json_and_npz(tmp_path, capsys):
    x = np.random.default_rng(8).standard_normal((20, 3, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["stats", str(tmp_path / "x.npy"), "--channel-axis", "1", "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "count 500 per statistic" in out and len(out.strip().splitlines()) == 5
    assert cli.main(["stats", str(tmp_path / "x.npy"), "--channel-axis", "1", "--format", "json", "--ddof", "1"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert "normfast stats: 1 input(s)" in err  # the summary line, on stderr
    r = normfast.dataset_stats(str(tmp_path / "x.npy"), channel_axis=1, ddof=1)
    assert d == json.loads(json.dumps(r.to_dict()))
    assert cli.main(["stats", str(tmp_path / "x.npy"), "--channel-axis", "0,1", "-o", str(tmp_path / "s.npz"), "-q"]) == 0
    with np.load(tmp_path / "s.npz") as z:
        check_like = normfast.dataset_stats(str(tmp_path / "x.npy"), channel_axis=(0, 1))
        np.testing.assert_array_equal(z["mean"], check_like.mean)
        np.testing.assert_array_equal(z["max"], x.max(axis=(2, 3)))
        assert int(z["count"]) == 25
    assert cli.main(["stats", str(tmp_path / "x.npy"), "--channel-axis", "none", "-o", str(tmp_path / "s.json"), "-q"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["count"] == x.size
    assert sorted(os.listdir(tmp_path)) == ["s.json", "s.npz", "x.npy"]  # no temporary files left


def test_command_bad_input_exits_1_without_traceback_and_writes_nothing(tmp_path):
    (tmp_path / "out.json").write_text("old")
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    cases = [[str(tmp_path / "missing.npy")], [_truncated_npy(tmp_path)], [_truncated_png(tmp_path)],
             [str(tmp_path / "x.npy"), "--channel-axis", "5"], _mixed_channels(tmp_path),
             [str(tmp_path / "x.npy"), "--format", "npz"]]
    for args in cases:
        p = run_cli(*args, "-o", str(tmp_path / "out.json")) if "--format" not in args else run_cli(*args)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stderr.startswith("normfast stats: error: ") and "Traceback" not in p.stderr, p.stderr
        assert p.stdout == ""
    assert (tmp_path / "out.json").read_text() == "old"  # untouched, and no temporary file beside it
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    p = run_cli(str(tmp_path / "x.npy"), "--channel-axis", "x")
    assert p.returncode == 2 and "--channel-axis: expected 'none'" in p.stderr and "Traceback" not in p.stderr


def test_write_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.ones((4, 3)))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cli.np, "savez", broken)
    assert cli.main(["stats", str(tmp_path / "x.npy"), "-o", str(tmp_path / "s.npz"), "-q"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((400, 30)))
    normfast.dataset_stats(str(tmp_path / "x.npy"), progress=True, block_bytes=4096)
    out, err = capsys.readouterr()
    assert out == "" and "1 file" in err and "B/s" in err


# --- damaged files, files that are not files, and links: named errors, each file once -----------------

def _npy_bytes(shape, descr="<f4"):
    """A .npy file's bytes whose header says `shape` (any, a negative dimension too) and no data."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _npz(tmp_path, name, compress, damage=None):
    """An .npz of one float64 member, its bytes then changed by damage(bytearray)."""
    path = tmp_path / name
    (np.savez_compressed if compress else np.savez)(path, a=np.arange(4096.0))
    raw = bytearray(path.read_bytes())
    if damage:
        damage(raw)
    path.write_bytes(bytes(raw))
    return str(path)


def _flip(at):
    def damage(raw):
        i = int(len(raw) * at)
        raw[i:i + 8] = bytes(b ^ 0x5A for b in raw[i:i + 8])
    return damage


def _method(number):
    """Damage: the first member's compression method (local and central headers) set to `number`."""
    def damage(raw):
        for signature, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            i = raw.find(signature) + at
            raw[i:i + 2] = number.to_bytes(2, "little")
    return damage


def _encrypted(raw):
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the general purpose flag's bit 0
        raw[raw.find(signature) + at] |= 1


def _bad_local_header(raw):
    raw[0:4] = b"XXXX"  # the first member's local header signature


def _damaged_inputs(tmp_path):
    (tmp_path / "neg.npy").write_bytes(_npy_bytes((-1, 3)))
    (tmp_path / "rank65.npy").write_bytes(_npy_bytes((1,) * 65))
    cut = _npy_bytes((4, 3), "<f8").replace(b"'fortran_order': False, 'shape': (4, 3)}", b"'fortran_ord")
    (tmp_path / "cut.npy").write_bytes(cut[:8] + (len(cut) - 10).to_bytes(2, "little") + cut[10:])  # a TokenError
    brace = bytearray(_npy_bytes((4, 3), "<f8") + bytes(96))
    brace[brace.index(b"}")] = ord(" ")
    (tmp_path / "brace.npy").write_bytes(bytes(brace))
    with zipfile.ZipFile(tmp_path / "negmember.npz", "w") as z:
        z.writestr("a.npy", _npy_bytes((4, -2)))
    with zipfile.ZipFile(tmp_path / "noarrays.npz", "w") as z:
        z.writestr("readme.txt", "no arrays here")
    return {
        "negative dimension": (str(tmp_path / "neg.npy"), "corrupt header: negative dimension"),
        "65 dimensions": (str(tmp_path / "rank65.npy"), "corrupt header: 65 dimensions"),
        "header cut short": (str(tmp_path / "cut.npy"), "not a readable .npy array"),
        "header without its closing brace": (str(tmp_path / "brace.npy"), "not a readable .npy array"),
        "negative dimension in a member": (str(tmp_path / "negmember.npz"), "corrupt header: negative dimension"),
        "no arrays": (str(tmp_path / "noarrays.npz"), "an .npz archive with no arrays"),
        "bad CRC": (_npz(tmp_path, "crc.npz", False, _flip(0.5)), "unreadable"),
        "damaged local header": (_npz(tmp_path, "local.npz", False, _bad_local_header), "unreadable"),
        "corrupt deflate stream": (_npz(tmp_path, "deflate.npz", True, _flip(0.3)), "unreadable"),
        "encrypted member": (_npz(tmp_path, "encrypted.npz", False, _encrypted), "unreadable .*encrypted"),
        "unknown compression method": (_npz(tmp_path, "method99.npz", False, _method(99)), "unreadable"),
        "bzip2 method, stored data": (_npz(tmp_path, "bzip2.npz", False, _method(12)), "(unreadable|not a readable)"),
        "LZMA method, stored data": (_npz(tmp_path, "lzma.npz", False, _method(14)), "(unreadable|not a readable)"),
    }


def test_damaged_files_are_named_errors(tmp_path):
    """Each kind of damage is a DatasetError naming the file, and exit 1 with one line from the command;
    good files beside it change nothing of that."""
    np.save(tmp_path / "good.npy", np.ones((4, 3)))
    for what, (path, message) in _damaged_inputs(tmp_path).items():
        for inputs in ([path], [str(tmp_path / "good.npy"), path]):
            with pytest.raises(normfast.dataset.DatasetError, match=message) as e:
                normfast.dataset_stats(inputs)
            assert str(e.value).startswith(path.split(":")[0]), (what, str(e.value))
        p = run_cli(path)
        assert p.returncode == 1 and p.stdout == "", (what, p.stderr)
        assert p.stderr.startswith("normfast stats: error: ") and p.stderr.count("\n") == 1, (what, p.stderr)
        assert path in p.stderr, (what, p.stderr)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_is_refused_not_read(tmp_path):
    """A FIFO, named or found in a folder or a glob under an image or .npy name, would block forever:
    it is refused at once, naming it."""
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    os.mkfifo(tmp_path / "c.npy")
    for inputs in ([str(tmp_path)], [str(tmp_path / "*.png")], [str(tmp_path / "c.npy")],
                   [str(tmp_path / "b.png")]):
        with pytest.raises(normfast.dataset.DatasetError, match="not a regular file"):
            normfast.dataset_stats(inputs)
    p = subprocess.run([sys.executable, "-m", "normfast", "stats", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and "not a regular file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this OS")
def test_each_file_is_read_once_whatever_the_links(tmp_path):
    """A recursive glob through a symlinked folder loop, a link to a file and the same file named twice:
    each file counts once (the same device and inode)."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    x = np.arange(12.0).reshape(4, 3)
    np.save(data / "sub" / "x.npy", x)
    os.symlink(data, data / "sub" / "loop")  # data/sub/loop/sub/loop/... is data again
    os.symlink(data / "sub" / "x.npy", tmp_path / "link.npy")
    r = normfast.dataset_stats([str(data / "**" / "*.npy"), str(tmp_path / "link.npy"),
                                str(data / "sub" / ".." / "sub" / "x.npy")], channel_axis=1)
    assert r.count == 4 and r.files == 1
    np.testing.assert_array_equal(r.mean, x.mean(0))


def test_an_input_is_never_the_output(tmp_path):
    """--output naming an input (the same file by another spelling, through a link, or the archive of a
    member) is refused with exit 1 before anything is read, and the data is left as it was."""
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "z.npz", a=x)
    os.symlink(tmp_path / "x.npy", tmp_path / "link.json")
    before = {p: (tmp_path / p).read_bytes() for p in ("x.npy", "z.npz")}
    (tmp_path / "sub").mkdir()
    cases = [(str(tmp_path / "x.npy"), str(tmp_path / "x.npy")),
             (str(tmp_path / "x.npy"), str(tmp_path / "sub" / ".." / "x.npy")),
             (str(tmp_path / "x.npy"), str(tmp_path / "link.json")),
             (str(tmp_path / "*.npy"), str(tmp_path / "x.npy")),
             (str(tmp_path / "z.npz") + ":a", str(tmp_path / "z.npz"))]
    for inp, out in cases:
        p = run_cli(inp, "--output", out)
        assert p.returncode == 1 and "is also an input" in p.stderr and "Traceback" not in p.stderr, (inp, out)
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert os.path.islink(tmp_path / "link.json")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this OS")
def test_the_output_keeps_its_mode_and_its_link(tmp_path):
    """An existing output keeps its mode; a new one gets the umask's (not mkstemp's 0600); a link is
    written through; an error names the user's path, not the temporary file."""
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    old = tmp_path / "old.json"
    old.write_text("{}")
    os.chmod(old, 0o644)
    target = tmp_path / "target.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    os.symlink(target, tmp_path / "link.json")
    code = ("import os, sys; os.umask(0o027); from normfast.__main__ import main; "
            "sys.exit(main(sys.argv[1:]))")
    for out in ("old.json", "new.json", "link.json"):
        p = subprocess.run([sys.executable, "-c", code, "stats", str(tmp_path / "x.npy"), "-o", str(tmp_path / out),
                            "-q"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    assert os.stat(old).st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "new.json").st_mode & 0o777 == 0o640
    assert os.path.islink(tmp_path / "link.json") and os.stat(target).st_mode & 0o777 == 0o640
    assert json.loads(target.read_text())["count"] == 12
    missing = str(tmp_path / "no" / "such" / "dir" / "s.json")
    p = run_cli(str(tmp_path / "x.npy"), "-o", missing)
    assert p.returncode == 1 and missing in p.stderr and ".tmp" not in p.stderr, p.stderr
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_sixteen_bit_images_are_scaled_by_their_depth_whatever_the_container(tmp_path):
    """A 16-bit PGM (any maxval: Pillow stretches it to 65535) and a 16-bit PNG give the same [0, 1]
    values, and a folder mixing them with 8-bit PNGs averages one scale."""
    a = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.pgm")
    Image.fromarray(a).save(tmp_path / "g16.png")
    (tmp_path / "g10.pgm").write_bytes(b"P5\n2 1\n1023\n" + np.array([1023, 0], ">u2").tobytes())
    Image.fromarray((a // 257).astype(np.uint8)).save(tmp_path / "g8.png")
    for name in ("g16.pgm", "g16.png"):
        np.testing.assert_allclose(normfast.dataset_stats([str(tmp_path / name)]).mean, [a.mean() / 65535])
    np.testing.assert_allclose(normfast.dataset_stats([str(tmp_path / "g10.pgm")]).mean, [0.5])
    r = normfast.dataset_stats([str(tmp_path)])
    assert r.files == 4 and 0 <= r.min[0] and r.max[0] <= 1


def test_big_endian_floats_and_objects_with_array(tmp_path):
    """Big-endian float files and arrays are swapped and reduced (they were refused); anything with
    __array__ that is not a path (a DataFrame) is one array, not a list of paths."""
    x = np.arange(24.0).reshape(6, 4)
    for dt in (">f4", ">f8", ">f2"):
        np.save(tmp_path / "be.npy", x.astype(dt))
        for inp in (str(tmp_path / "be.npy"), x.astype(dt)):
            r = normfast.dataset_stats([inp], channel_axis=1)
            np.testing.assert_allclose(r.mean, x.mean(0), rtol=1e-3)
            np.testing.assert_allclose(r.var, x.var(0), rtol=1e-3)

    class Frame:  # what matters of a pandas DataFrame: iterable (column names) and __array__
        def __iter__(self):
            return iter(["a", "b"])

        def __array__(self, dtype=None, copy=None):
            return x

    r = normfast.dataset_stats(Frame(), channel_axis=1)
    np.testing.assert_array_equal(r.mean, x.mean(0))


# Inputs that change under the reader, and many inputs: an error naming the file, never a signal, and a
# bounded number of open descriptors. Each runs in a child process, so that a signal fails one test.

_SHRINK = """
import sys, numpy as np, normfast
from normfast import dataset
path, kind = sys.argv[1], sys.argv[2]
x = np.arange(64 * 1024, dtype=np.float64).reshape(64, 1024)
import os, time
if kind.startswith("npz"):
    np.savez(path, a=x, b=x)
else:
    np.save(path, x)
reduce, done = dataset._Piece.reduce, []

def change_after_first(piece, buffers):  # another process changing the file, between two blocks
    if done:
        return reduce(piece, buffers)
    done.append(1)
    time.sleep(0.01)  # a later time of last write, on file systems with a coarse clock too
    if kind == "replace":
        np.save(path + ".new.npy", x[:4])
        os.replace(path + ".new.npy", path)
    elif kind == "rewrite":  # in place, the same size: only the time of the write tells
        with open(path, "r+b") as f:
            np.save(f, x + 1)
    elif kind == "remove":
        os.remove(path)
    elif kind == "npz replaced, member gone":
        np.savez(path + ".new.npz", c=x)
        os.replace(path + ".new.npz", path)
    elif kind == "npz replaced, member kept":
        np.savez(path + ".new.npz", a=x + 1, b=x)
        os.replace(path + ".new.npz", path)
    else:
        with open(path, "r+b") as f:
            f.truncate(4096)
    return reduce(piece, buffers)

dataset._Piece.reduce = change_after_first
try:
    normfast.dataset_stats(path, block_bytes=8192, workers=1)
except dataset.DatasetError as e:
    print("DatasetError:", e)
"""


@pytest.mark.parametrize("kind, message", [
    ("npy", "truncated|changed while being read"), ("npz", "unreadable|truncated|changed while being read"),
    ("replace", "changed while being read"), ("rewrite", "changed while being read"),
    ("remove", "changed while being read"),
    ("npz replaced, member gone", "changed while being read"),
    ("npz replaced, member kept", "changed while being read")])
def test_a_file_that_changes_while_read_is_an_error_naming_it(tmp_path, kind, message):
    """A file shortened, replaced or rewritten between two blocks, as by another process: a memory map
    would kill Python with SIGBUS or mix two versions of the data; a read is short, or finds another
    version of the file (device, inode, size, time of last write): a DatasetError naming it."""
    path = str(tmp_path / ("x.npz" if kind.startswith("npz") else "x.npy"))
    p = subprocess.run([sys.executable, "-c", _SHRINK, path, kind], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr  # a signal gives a negative code
    assert p.stdout.startswith(f"DatasetError: {path}") and any(m in p.stdout for m in message.split("|")), p.stdout


_MANY = """
import os, resource, sys, numpy as np, normfast
folder, n, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    (np.savez if kind == "npz" else np.save)(os.path.join(folder, f"{i:05}.{kind}"), np.full((2, 3), float(i)))
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
r = normfast.dataset_stats(folder, channel_axis=1, workers=4, progress=False)
print(r.count, r.files, r.mean.tolist())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX")
@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_many_more_files_than_descriptors(tmp_path, kind):
    """3000 files under a limit of 128 descriptors (as 10,000 under the common 1024): a file is open only
    while its blocks are read."""
    n = 3000
    p = subprocess.run([sys.executable, "-c", _MANY, str(tmp_path), str(n), kind], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    count, files, mean = p.stdout.split(" ", 2)
    assert int(count) == 2 * n and int(files) == n
    np.testing.assert_allclose(json.loads(mean), [(n - 1) / 2] * 3)


def test_a_pool_threads_kernels_run_on_it_alone():
    """The reading pool caps its threads' kernels at one thread each (cap_threads_here); the cap is the
    calling thread's only."""
    import threading

    seen = []

    def capped():
        _normc.cap_threads_here(1)
        seen.append(normfast.get_num_threads())
        _normc.cap_threads_here(0)
        seen.append(normfast.get_num_threads())

    with use_threads(3):
        t = threading.Thread(target=capped)
        t.start()
        t.join()
        assert seen == [1, 3] and normfast.get_num_threads() == 3


def test_a_folder_means_every_data_file_in_it(tmp_path):
    """A folder of .npy and .npz shards (in subfolders too) is read whole; other files are skipped and
    reported, by count and a few names, from the API (a UserWarning and .skipped) and the command (one
    line on stderr, --quiet too)."""
    rng = np.random.default_rng(8)
    shards = [rng.standard_normal((n, 3)) for n in (5, 7, 2, 4)]
    (tmp_path / "d" / "sub").mkdir(parents=True)
    np.save(tmp_path / "d" / "a.npy", shards[0])
    np.savez(tmp_path / "d" / "b.npz", x=shards[1], y=shards[2])
    np.save(tmp_path / "d" / "sub" / "c.npy", shards[3])
    for name in ("README.md", "labels.csv", ".hidden", "sub/notes.txt", "sub/x.json"):
        (tmp_path / "d" / name).write_text("not data")
    with pytest.warns(UserWarning, match=r"skipped 5 file\(s\) that are not data: .* and 2 more"):
        r = normfast.dataset_stats(str(tmp_path / "d"), channel_axis=1)
    check(r, shards, (1,))
    assert r.files == 4 and len(r.skipped) == 5 and json.loads(json.dumps(r.to_dict()))["skipped"] == list(r.skipped)
    for quiet in ([], ["-q"]):
        p = run_cli(str(tmp_path / "d"), "--channel-axis", "1", "--format", "json", *quiet)
        assert p.returncode == 0 and json.loads(p.stdout)["count"] == 18, p.stderr
        assert "skipped 5 file(s) that are not data" in p.stderr and "Warning" not in p.stderr, p.stderr
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text("x")
    with pytest.raises(normfast.dataset.DatasetError, match=r"a folder with no data files .*1 file\(s\) that are not "
                                                            r"data: .*a.txt"):
        normfast.dataset_stats(str(tmp_path / "e"))


def _photo_folder(folder):
    """A folder of one RGB photo and one each of grey, RGBA, CMYK, palette, bilevel and 16-bit grey."""
    folder.mkdir()
    rng = np.random.default_rng(9)
    rgb = Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    images = {"rgb.png": rgb, "grey.png": rgb.convert("L"), "rgba.png": rgb.convert("RGBA"),
              "cmyk.tif": rgb.convert("CMYK"), "pal.png": rgb.convert("P"), "bw.png": rgb.convert("1"),
              "g16.png": Image.fromarray(rng.integers(0, 65536, (4, 7), dtype=np.uint16))}
    for name, im in images.items():
        im.save(folder / name)
    return images


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "I", "F"])
def test_mode_converts_every_image(tmp_path, mode):
    """mode= (--mode) converts every image with Pillow; 16-bit grey is rounded to 8 bits for an 8-bit
    mode (Pillow would clip it) and kept for a wide one; values are scaled by their bit depth."""
    images = _photo_folder(tmp_path / "photos")
    expected = []
    for name in sorted(images):
        im = Image.open(tmp_path / "photos" / name)
        wide = mode in ("I", "F")
        if name == "g16.png" and wide:
            a = np.asarray(im) / 65535
        elif name == "g16.png":
            a = np.asarray(Image.fromarray(np.round(np.asarray(im) / 257).astype(np.uint8)).convert(mode)) / 255
        else:
            a = np.asarray(im.convert(mode)).astype(np.float64) / 255
        expected.append(a.reshape(a.shape[:2] + (-1,)))
    r = normfast.dataset_stats(str(tmp_path / "photos"), mode=mode)
    check(r, expected, (-1,), dtype=np.float32 if mode == "F" else np.float64)  # mode F: float32 data
    assert r.files == 7 and 0 <= np.min(r.min) and np.max(r.max) <= 1
    p = run_cli(str(tmp_path / "photos"), "--mode", mode, "--format", "json", "-q")
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(json.loads(p.stdout)["mean"], np.atleast_1d(r.mean))


def test_modes_that_differ_name_the_option(tmp_path):
    """Without mode, a grey image beside RGB ones stops the run, and the message names the option."""
    _photo_folder(tmp_path / "photos")
    with pytest.raises(normfast.dataset.DatasetError, match=r"pass mode='RGB' \(--mode RGB\)"):
        normfast.dataset_stats(str(tmp_path / "photos"))
    p = run_cli(str(tmp_path / "photos"))
    assert p.returncode == 1 and "--mode RGB" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    p = run_cli(str(tmp_path / "photos"), "--mode", "nonsense")
    assert p.returncode == 1 and "mode: expected a Pillow mode name" in p.stderr, p.stderr


def test_an_archive_named_whole_and_by_member_is_read_once(tmp_path):
    """An .npz given whole (or by its folder) and one of its members too: each member counts once."""
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "a.npz", x=np.arange(10.0), y=np.arange(100.0, 110.0))
    both = np.concatenate([np.arange(10.0), np.arange(100.0, 110.0)])
    for inputs in ([tmp_path / "d" / "a.npz", f"{tmp_path / 'd' / 'a.npz'}:x"],
                   [f"{tmp_path / 'd' / 'a.npz'}:y", tmp_path / "d"]):
        r = normfast.dataset_stats([str(p) for p in inputs])
        assert r.count == 20 and r.files == 2 and r.mean == both.mean()


def test_hidden_entries_are_skipped_and_unreadable_folders_named(tmp_path, monkeypatch):
    """A folder's hidden files and folders (.DS_Store, macOS's ._photo.png, .git/) are skipped and listed;
    a subfolder that cannot be listed is an error naming it, not a silent gap."""
    (tmp_path / "d" / ".git").mkdir(parents=True)
    (tmp_path / "d" / "sub").mkdir()
    np.save(tmp_path / "d" / "a.npy", np.arange(4.0))
    np.save(tmp_path / "d" / ".git" / "x.npy", np.arange(1000.0))
    (tmp_path / "d" / "._photo.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "d" / ".DS_Store").write_bytes(b"\x00")
    np.save(tmp_path / "d" / "sub" / "b.npy", np.arange(4.0, 8.0))
    with pytest.warns(UserWarning, match="skipped 3 file"):
        r = normfast.dataset_stats(str(tmp_path / "d"))
    assert r.count == 8 and r.mean == 3.5
    assert sorted(os.path.basename(p.rstrip(os.sep)) for p in r.skipped) == [".DS_Store", "._photo.png", ".git"]
    scandir = os.scandir

    def locked(path):  # as a folder without read permission lists for a user who is not root
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    with pytest.raises(normfast.dataset.DatasetError, match=r"sub: cannot be read \(Permission denied\)"):
        normfast.dataset_stats(str(tmp_path / "d"))


def test_paths_as_bytes_and_names_with_colons(tmp_path):
    """A bytes path is a path (it was iterated as numbers); a file whose own name holds ':' is that file,
    the member syntax applying only where no file is so named."""
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "x.npy", np.arange(6.0))
    r = normfast.dataset_stats(os.fsencode(tmp_path / "d" / "x.npy"))
    assert r.count == 6 and r.files == 1 and r.mean == 2.5
    assert normfast.dataset_stats([os.fsencode(tmp_path / "d")]).count == 6
    np.savez(tmp_path / "d" / "b.npz", q=np.arange(3.0))
    os.rename(tmp_path / "d" / "b.npz", tmp_path / "d" / "b.npz:real.npz")  # an archive named so
    r = normfast.dataset_stats(str(tmp_path / "d"))
    assert r.count == 9 and r.files == 2
    np.savez(tmp_path / "real.npz", x=np.arange(100.0, 110.0))
    assert normfast.dataset_stats(f"{tmp_path / 'real.npz'}:x").count == 10


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this OS")
def test_linked_folders_are_followed_once(tmp_path):
    """A folder's linked subfolders are read as its own (they were left out silently), and a link back up
    the tree is read once, not forever."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "a.npy", np.zeros(10))
    np.save(tmp_path / "elsewhere" / "b.npy", np.ones(30))
    os.symlink(tmp_path / "elsewhere", tmp_path / "d" / "linked")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    r = normfast.dataset_stats(str(tmp_path / "d"))
    assert r.count == 40 and r.files == 2 and r.mean == 0.75


def test_the_output_may_be_a_device_or_a_fifo_and_a_read_only_file_is_refused(tmp_path, monkeypatch):
    """Anything but a regular file (/dev/null, /dev/stdout, a FIFO) is written in place: renaming over it
    made /dev/null a regular file when run as root. An existing output we may not write is refused."""
    import threading

    np.save(tmp_path / "x.npy", np.arange(4.0))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "out.fifo")
        got = []
        # daemon: where the FIFO were replaced, the reader would wait forever for a writer
        reader = threading.Thread(target=lambda: got.append(open(tmp_path / "out.fifo").read()), daemon=True)
        reader.start()
        assert cli.main(["stats", str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.fifo"), "--format", "json",
                         "-q"]) == 0
        reader.join(30)
        assert stat_kind(tmp_path / "out.fifo") == "fifo" and got and json.loads(got[0])["count"] == 4
    try:  # a character device like /dev/null, made here (root only) so that a failure harms nothing
        os.mknod(tmp_path / "null", 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
    except (OSError, AttributeError):
        pass
    else:
        assert cli.main(["stats", str(tmp_path / "x.npy"), "-o", str(tmp_path / "null"), "-q"]) == 0
        assert stat_kind(tmp_path / "null") == "char device"
    (tmp_path / "ro.json").write_text("{}")
    os.chmod(tmp_path / "ro.json", 0o444)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if str(p).endswith("ro.json") else access(p, m, **k))
    assert cli.main(["stats", str(tmp_path / "x.npy"), "-o", str(tmp_path / "ro.json"), "-q"]) == 1
    assert (tmp_path / "ro.json").read_text() == "{}"


def stat_kind(path):
    import stat as st

    mode = os.stat(path).st_mode
    return "fifo" if st.S_ISFIFO(mode) else "char device" if st.S_ISCHR(mode) else "regular" if st.S_ISREG(mode) \
        else "other"


def test_the_command_writes_strict_json_and_warnings_as_one_line(tmp_path):
    """NaN and infinities are null in --format json (NaN and Infinity are not JSON); the engine's and
    Pillow's warnings are one line each, not Python's two with a source line."""
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    np.save(tmp_path / "inf.npy", np.array([[1.0, np.inf, 3.0]]))
    p = run_cli(str(tmp_path / "empty.npy"), "--channel-axis", "1", "--format", "json", "-q")
    assert p.returncode == 0 and json.loads(p.stdout)["mean"] == [None] * 3
    assert p.stderr == "normfast stats: warning: no data\n", p.stderr
    p = run_cli(str(tmp_path / "inf.npy"), "--channel-axis", "1", "--format", "json", "-q")
    assert p.returncode == 0 and json.loads(p.stdout)["mean"] == [1.0, None, 3.0], p.stdout


def test_image_modes_pillow_cannot_convert_and_frames(tmp_path):
    """A mode Pillow cannot convert an image to is named before anything is read; an image of several
    frames is read for its first, with a warning naming it."""
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(normfast.dataset.DatasetError, match=r"g.png: Pillow cannot convert its mode L to mode='RGBa'"):
        normfast.dataset_stats(str(tmp_path / "g.png"), mode="RGBa")
    frames = [Image.fromarray(np.full((5, 5), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="pages.tif: 2 frames; only the first is read"):
        r = normfast.dataset_stats(str(tmp_path / "pages.tif"))
    assert r.count == 25 and r.mean == 0


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout on this OS")
def test_output_to_our_own_stdout_appends_and_reaches_a_pipe(tmp_path):
    """-o /dev/stdout writes through the stream: a log stdout is appended to keeps its lines (renaming
    over the file it leads to replaced them), and a pipe gets the output (the renamed path did not exist)."""
    np.save(tmp_path / "x.npy", np.arange(3.0))
    log = tmp_path / "app.log"
    log.write_text("EARLIER LOG LINE\n")
    with open(log, "a") as out:
        p = subprocess.run([sys.executable, "-m", "normfast", "stats", str(tmp_path / "x.npy"), "-o", "/dev/stdout",
                            "--format", "json", "-q"], stdout=out, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    text = log.read_text()
    assert text.startswith("EARLIER LOG LINE\n") and json.loads(text.split("\n", 1)[1])["count"] == 3
    p = run_cli(str(tmp_path / "x.npy"), "-o", "/dev/stdout", "--format", "json", "-q")
    assert p.returncode == 0 and json.loads(p.stdout)["count"] == 3, p.stderr


@pytest.mark.parametrize("when", ["header", "decode"])
@pytest.mark.parametrize("error", [IndexError, TypeError, SyntaxError, struct.error])
def test_whatever_pillow_raises_on_a_damaged_image_is_an_error_naming_it(tmp_path, monkeypatch, when, error):
    """Damaged GIF and TIFF files made Pillow raise IndexError, TypeError or SyntaxError (found by a
    user's fuzzing): any failure of its parsers is a DatasetError naming the file, before or after the
    header."""
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "a.png")
    real, calls = Image.open, []

    def damaged(*args, **kwargs):
        calls.append(1)
        if (when == "header") == (len(calls) == 1):
            raise error("damaged")
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", damaged)
    with pytest.raises(normfast.dataset.DatasetError, match=rf"a.png: not a readable image \({error.__name__}"):
        normfast.dataset_stats(str(tmp_path / "a.png"))


def test_an_image_replaced_between_its_header_and_its_pixels_is_an_error(tmp_path, monkeypatch):
    """An 8-bit image replaced by a 16-bit one of the same size after its header was read decoded the new
    pixels as 8-bit (a silent 1.0): images are checked as .npy files are."""
    import time

    path = tmp_path / "a.png"
    Image.fromarray(np.full((4, 5), 100, np.uint8)).save(path)
    block = normfast.dataset._ImageSource.block

    def replaced(self, *args):
        time.sleep(0.01)
        Image.fromarray(np.full((4, 5), 60000, np.uint16)).save(tmp_path / "b.png")
        os.replace(tmp_path / "b.png", path)
        return block(self, *args)

    monkeypatch.setattr(normfast.dataset._ImageSource, "block", replaced)
    with pytest.raises(normfast.dataset.DatasetError, match="a.png: changed while being read"):
        normfast.dataset_stats(str(path))
