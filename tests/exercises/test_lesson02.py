"""Graded tests for lesson 02 (global memory). Oracles: torch float64 on fresh ragged inputs.

In the simulator the arrays are wrapped by course.traffic, so the tests also check HOW memory is accessed:
each warp's loads and stores must be coalesced (neighbouring threads, neighbouring addresses).
"""

import math

import numpy as np
import pytest
import torch

import minisd.mode as mode
from course import traffic
from course.grading import assert_close, load, poison

ex = load("lesson02")
rng = np.random.default_rng()


def _odd(low, high):
    return int(rng.integers(low, high)) | 1


# 02.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "02.1",
    hint="i = cuda.grid(1) is the flat index into the (C, H, W) image: c = i // (H*W), y = i % (H*W) // W, "
    "x = i % W. Guard c < C.",
)
@pytest.mark.parametrize("channels", [3, 4])
def test_normalize_planar_image(channels):
    h, w = _odd(5, 11), _odd(7, 15)
    img = rng.uniform(0, 1, (channels, h, w)).astype(np.float32)
    mean = rng.uniform(0.2, 0.6, channels).astype(np.float32)
    std = rng.uniform(0.1, 0.4, channels).astype(np.float32)
    x, out = traffic.maybe_track(img, "img"), traffic.maybe_track(poison(img.shape), "out")
    threads = 64
    ex.normalize_kernel[math.ceil(img.size / threads), threads](x, mean, std, out)
    t = torch.from_numpy(img).double()
    ref = (t - torch.from_numpy(mean).double()[:, None, None]) / torch.from_numpy(std).double()[:, None, None]
    assert_close(traffic.plain(out), ref.numpy(), rtol=1e-5, atol=1e-5, what="normalize_kernel output")
    if mode.SIMULATOR:
        traffic.assert_reads_per_thread(x, at_most=1)
        traffic.assert_coalesced(x)
        traffic.assert_coalesced(out, kind=traffic.WRITE)


# 02.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "02.2",
    hint="Thread j = cuda.grid(1) owns column j and loops i over the rows: at every step the warp reads "
    "a[i, j..j+31], 32 neighbours in one row. Guard j < a.shape[1].",
)
def test_column_sums_are_coalesced():
    rows, cols = _odd(9, 21), _odd(40, 70)
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    x, out = traffic.maybe_track(a, "a"), traffic.maybe_track(poison(cols), "out")
    ex.column_sums_kernel[math.ceil(cols / 32), 32](x, out)
    ref = torch.from_numpy(a).double().sum(dim=0)
    assert_close(traffic.plain(out), ref.numpy(), rtol=1e-5, atol=1e-5, what="column_sums_kernel output")
    if mode.SIMULATOR:
        traffic.assert_each_element_read(x, at_most=1)
        traffic.assert_coalesced(x)
        traffic.assert_writes_per_thread(out, at_most=1)


# 02.3 -------------------------------------------------------------------------------------------------
def _to_uint8_reference(img):
    v = torch.floor((torch.from_numpy(img).double() + 1.0) * 127.5 + 0.5).clamp(0, 255)
    return v.permute(1, 2, 0).numpy()


@pytest.mark.exercise(
    "02.3",
    hint="x, y = cuda.grid(2) (x = column); guard y < H and x < W; for c in range(3): "
    "out[y, x, c] = clamp(floor((img[c, y, x] + 1) * 127.5 + 0.5), 0, 255).",
)
@pytest.mark.parametrize("fill", [0, 255])
def test_chw_float_to_hwc_uint8(fill):
    h, w = _odd(7, 15), _odd(9, 19)
    img = rng.uniform(-1.2, 1.2, (3, h, w)).astype(np.float32)  # a little outside [-1, 1]: clamp it
    x = traffic.maybe_track(img, "img")
    out = traffic.maybe_track(
        np.full((h, w, 3), fill, np.uint8), "out"
    )  # a uint8 output cannot hold NaN: try two fills
    ex.chw_to_hwc_uint8_kernel[(math.ceil(w / 8), math.ceil(h / 8)), (8, 8)](x, out)
    got = traffic.plain(out).astype(np.float64)
    ref = _to_uint8_reference(img)
    assert got.shape == ref.shape
    worst = np.abs(got - ref).max()
    assert worst <= 1, (
        f"chw_to_hwc_uint8_kernel: a pixel is off by {worst:.0f} levels (unwritten or wrong channel?)"
    )
    exact = np.mean(got == ref)
    assert exact >= 0.99, f"only {exact:.1%} of values are exact: round with floor(v + 0.5), do not truncate"
    if mode.SIMULATOR:
        traffic.assert_reads_per_thread(x, at_most=3)
        traffic.assert_writes_per_thread(out, at_most=3)


# 02.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "02.4", hint="GB/s = (bytes_read + bytes_written) / (ms / 1000) / 1e9; check the arguments."
)
def test_effective_bandwidth():
    n = int(rng.integers(1 << 20, 1 << 28))
    ms = float(rng.uniform(0.05, 5))
    got = ex.effective_bandwidth(4 * n, 4 * n, ms)
    assert got == pytest.approx(8 * n / (ms / 1e3) / 1e9, rel=1e-9)
    assert ex.effective_bandwidth(3e9, 0, 1000.0) == pytest.approx(3.0)


@pytest.mark.exercise("02.4", hint="Raise ValueError naming the argument: ms must be > 0, byte counts >= 0.")
@pytest.mark.parametrize(
    "args, name", [((1, 1, 0), "ms"), ((1, 1, -2.0), "ms"), ((-1, 0, 1.0), "bytes_read")]
)
def test_effective_bandwidth_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        ex.effective_bandwidth(*args)
