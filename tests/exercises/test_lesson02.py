"""Graded tests for lesson 02 (global memory). Oracles: torch float64 on fresh ragged inputs.

In the simulator the arrays are wrapped by course.traffic, so the tests also check HOW memory is accessed:
each warp's loads and stores must be coalesced (neighbouring threads, neighbouring addresses).
"""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
import minisd.mode as mode
from course import traffic
from course.grading import Out, assert_close, load

ex = load("lesson02")
rng = grading.rng


def _odd(low, high):
    return int(rng.integers(low, high)) | 1


# 02.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "02.1",
    hints=(
        "One thread per element of the flat (C, H, W) array: thread i touches element i, so a warp touches "
        "32 neighbours.",
        "i = cuda.grid(1) is the flat index: c = i // (H*W), y = i % (H*W) // W, x = i % W; guard c < C.",
        "c, y, x from i as above; if c < img.shape[0]: out[c, y, x] = (img[c, y, x] - mean[c]) / std[c]",
    ),
)
@pytest.mark.parametrize("channels", [3, 4])
def test_normalize_planar_image(channels):
    h, w = _odd(5, 11), _odd(7, 15)
    img = rng.uniform(0, 1, (channels, h, w)).astype(np.float32)
    mean = rng.uniform(0.2, 0.6, channels).astype(np.float32)
    std = rng.uniform(0.1, 0.4, channels).astype(np.float32)
    threads = 64
    run = grading.launch(
        ex.normalize_kernel, math.ceil(img.size / threads), threads, img, mean, std, Out(img.shape)
    )
    t = torch.from_numpy(img).double()
    ref = (t - torch.from_numpy(mean).double()[:, None, None]) / torch.from_numpy(std).double()[:, None, None]
    assert_close(run.out, ref.numpy(), rtol=1e-5, atol=1e-5, what="normalize_kernel output")
    run.budget(reads={"img": 1}, writes={"out": 1}).coalesced(reads=["img"], writes=["out"])


# 02.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "02.2",
    hints=(
        "One thread per column: at every step the warp reads 32 neighbours in one row (coalesced).",
        "j = cuda.grid(1) owns column j and loops i over the rows, summing into a register; guard "
        "j < a.shape[1]; write out[j] once at the end.",
        "j = cuda.grid(1); if j < a.shape[1]: s = 0 (float32); for i in range(a.shape[0]): s += a[i, j]; "
        "out[j] = s",
    ),
)
def test_column_sums_are_coalesced():
    rows, cols = _odd(9, 21), _odd(40, 70)
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    run = grading.launch(ex.column_sums_kernel, math.ceil(cols / 32), 32, a, Out(cols))
    ref = torch.from_numpy(a).double().sum(dim=0)
    assert_close(run.out, ref.numpy(), rtol=1e-5, atol=1e-5, what="column_sums_kernel output")
    run.budget(reads={"a": rows}, writes={"out": 1}).coalesced(reads=["a"])
    if mode.SIMULATOR:
        traffic.assert_each_element_read(run.arrays["a"], at_most=1)


# 02.3 -------------------------------------------------------------------------------------------------
def _to_uint8_reference(img):
    v = torch.floor((torch.from_numpy(img).double() + 1.0) * 127.5 + 0.5).clamp(0, 255)
    return v.permute(1, 2, 0).numpy()


@pytest.mark.exercise(
    "02.3",
    hints=(
        "One thread per pixel: it reads its 3 channel planes and writes 3 neighbouring bytes.",
        "x, y = cuda.grid(2) (x = column); guard y < H and x < W; round half up with floor(v + 0.5) and clamp "
        "to [0, 255] before storing a uint8.",
        "for c in range(3): out[y, x, c] = min(max(math.floor((img[c, y, x] + 1) * 127.5 + 0.5), 0), 255)",
    ),
)
@pytest.mark.parametrize("fill", [0, 255])
def test_chw_float_to_hwc_uint8(fill):
    h, w = _odd(7, 15), _odd(9, 19)
    img = rng.uniform(-1.2, 1.2, (3, h, w)).astype(np.float32)  # a little outside [-1, 1]: clamp it
    out = Out((h, w, 3), np.uint8, fill=fill)  # a uint8 output cannot hold NaN: try two fills
    run = grading.launch(ex.chw_to_hwc_uint8_kernel, (math.ceil(w / 8), math.ceil(h / 8)), (8, 8), img, out)
    got = run.out.astype(np.float64)
    ref = _to_uint8_reference(img)
    assert got.shape == ref.shape
    worst = np.abs(got - ref).max()
    assert worst <= 1, (
        f"chw_to_hwc_uint8_kernel: a pixel is off by {worst:.0f} levels (unwritten or wrong channel?)"
    )
    exact = np.mean(got == ref)
    assert exact >= 0.99, f"only {exact:.1%} of values are exact: round with floor(v + 0.5), do not truncate"
    run.budget(reads={"img": 3}, writes={"out": 3})


# 02.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "02.4",
    hints=(
        "Effective bandwidth is the bytes a kernel must move divided by the time it took.",
        "Add the bytes read and written, turn ms into seconds, and give GB/s (1e9 bytes per second).",
        "return (bytes_read + bytes_written) / (ms / 1000) / 1e9",
    ),
)
def test_effective_bandwidth():
    n = int(rng.integers(1 << 20, 1 << 28))
    ms = float(rng.uniform(0.05, 5))
    got = ex.effective_bandwidth(4 * n, 4 * n, ms)
    assert got == pytest.approx(8 * n / (ms / 1e3) / 1e9, rel=1e-9)
    assert ex.effective_bandwidth(3e9, 0, 1000.0) == pytest.approx(3.0)


@pytest.mark.exercise(
    "02.4",
    hints=(
        "Refuse impossible measurements before dividing.",
        "ms must be > 0 and the byte counts >= 0: raise ValueError naming the argument.",
        "if ms <= 0: raise ValueError(f'ms must be > 0, got {ms}'); likewise bytes_read / bytes_written < 0",
    ),
)
@pytest.mark.parametrize(
    "args, name", [((1, 1, 0), "ms"), ((1, 1, -2.0), "ms"), ((-1, 0, 1.0), "bytes_read")]
)
def test_effective_bandwidth_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        ex.effective_bandwidth(*args)
