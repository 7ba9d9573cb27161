"""Graded tests for lesson 03 (shared memory, synchronisation, atomics, warp shuffles).

Oracles: torch float64 on fresh ragged inputs. In the simulator the inputs and outputs are course.traffic
arrays, so the tests also grade global-memory traffic (GPU-Puzzles style): a kernel that gets the right
answer by reading global memory over and over instead of sharing through shared memory fails.
"""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode as mode
from course import traffic
from course.grading import assert_close, load, poison

ex = load("lesson03")
rng = np.random.default_rng()


def _odd(low, high):
    return int(rng.integers(low, high)) | 1


# 03.1 -------------------------------------------------------------------------------------------------
def _blur1d_reference(x, r):
    t = F.pad(torch.from_numpy(x).double()[None, None], (r, r), mode="replicate")
    return F.avg_pool1d(t, 2 * r + 1, stride=1)[0, 0].numpy()


@pytest.mark.exercise(
    "03.1",
    hint="Load tile[t + RADIUS] = x[clamped i]; threads t < RADIUS also load the left halo, the last RADIUS "
    "threads the right halo (clamp indices to [0, n-1]); cuda.syncthreads(); then average tile[t .. t+2R].",
)
def test_blur1d_with_halo():
    n = _odd(150, 260)
    x = rng.standard_normal(n).astype(np.float32)
    tx, out = traffic.maybe_track(x, "x"), traffic.maybe_track(poison(n), "out")
    ex.blur1d_kernel[math.ceil(n / ex.THREADS), ex.THREADS](tx, out)
    assert_close(
        traffic.plain(out), _blur1d_reference(x, ex.RADIUS), rtol=1e-5, atol=1e-5, what="blur1d_kernel output"
    )
    if mode.SIMULATOR:
        traffic.assert_reads_per_block(tx, at_most=ex.THREADS + 2 * ex.RADIUS)
        traffic.assert_reads_per_thread(tx, at_most=3)
        traffic.assert_writes_per_thread(out, at_most=1)


# 03.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.2",
    hint="The (TILE_H, TILE_W) tile has more cells than the block has threads: loop k from the thread's "
    "linear id over all cells in steps of TILE_X*TILE_Y, clamping image coordinates; syncthreads; sum 3x3.",
)
def test_blur2d_with_halo():
    h, w = _odd(11, 19), _odd(19, 29)
    img = rng.uniform(0, 1, (h, w)).astype(np.float32)
    timg, out = traffic.maybe_track(img, "img"), traffic.maybe_track(poison((h, w)), "out")
    tx, ty = ex.TILE_X, ex.TILE_Y
    ex.blur2d_kernel[(math.ceil(w / tx), math.ceil(h / ty)), (tx, ty)](timg, out)
    t = F.pad(torch.from_numpy(img).double()[None, None], (1, 1, 1, 1), mode="replicate")
    ref = F.avg_pool2d(t, 3, stride=1)[0, 0].numpy()
    assert_close(traffic.plain(out), ref, rtol=1e-5, atol=1e-6, what="blur2d_kernel output")
    if mode.SIMULATOR:
        traffic.assert_reads_per_block(timg, at_most=(tx + 2) * (ty + 2))
        traffic.assert_reads_per_thread(timg, at_most=4)


# 03.3 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.3",
    hint="Each thread adds x[i] and x[i + THREADS] into buf[t]; then halve `stride` from THREADS//2 to 1: "
    "threads t < stride add buf[t + stride]; cuda.syncthreads() after every step; thread 0 writes.",
)
def test_block_sum_tree():
    n = _odd(300, 700)
    x = rng.standard_normal(n).astype(np.float32)
    per_block = 2 * ex.THREADS
    blocks = math.ceil(n / per_block)
    tx, partial = traffic.maybe_track(x, "x"), traffic.maybe_track(poison(blocks), "partial")
    ex.block_sum_kernel[blocks, ex.THREADS](tx, partial)
    padded = np.zeros(blocks * per_block)
    padded[:n] = x
    ref = torch.from_numpy(padded).view(blocks, per_block).sum(dim=1).numpy()
    assert_close(traffic.plain(partial), ref, rtol=1e-4, atol=1e-4, what="block_sum_kernel partial sums")
    if mode.SIMULATOR:
        traffic.assert_reads_per_thread(tx, at_most=2)
        traffic.assert_each_element_read(tx, at_most=1)
        traffic.assert_writes_per_block(partial, at_most=1)


# 03.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.4",
    hint="Lane l takes columns l, l+32, ... (start from -inf); then for offset 16, 8, 4, 2, 1: "
    "m = max(m, warp.shfl_xor_sync(warp.FULL_MASK, m, offset)); lane 0 writes out[row].",
)
@pytest.mark.parametrize("cols", [5, 77])
def test_row_max_with_warp_shuffles(cols):
    rows = _odd(3, 8)
    a = rng.standard_normal((rows, cols)).astype(np.float32) - 10.0  # all negative: 0 is a wrong start
    ta, out = traffic.maybe_track(a, "a"), traffic.maybe_track(poison(rows), "out")
    ex.row_max_kernel[rows, 32](ta, out)
    ref = torch.from_numpy(a).double().amax(dim=1).numpy()
    assert_close(traffic.plain(out), ref, rtol=0, atol=0, what="row_max_kernel output")
    source = inspect.getsource(ex.row_max_kernel.py_func)
    assert "shared.array" not in source, (
        "row_max_kernel: combine the lanes with warp shuffles, no shared memory"
    )
    if mode.SIMULATOR:
        traffic.assert_each_element_read(ta, at_most=1)
        traffic.assert_writes_per_block(out, at_most=1)


# 03.5 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.5",
    hint="Zero a shared int32 array of MAX_BINS (threads stride over the bins), syncthreads, grid-stride "
    "over x with cuda.atomic.add(local, x[i], 1), syncthreads, then one atomic add per bin into hist.",
)
@pytest.mark.parametrize("nbins", [7, 64])
def test_privatised_histogram(nbins):
    n = _odd(600, 1200)
    x = rng.integers(0, nbins, n).astype(np.int32)
    x[: n // 4] = nbins // 2  # a hot bin: many threads collide on it
    tx, hist = traffic.maybe_track(x, "x"), traffic.maybe_track(np.zeros(nbins, np.int32), "hist")
    blocks, threads = 3, 64
    ex.histogram_kernel[blocks, threads](tx, hist)
    ref = torch.bincount(torch.from_numpy(x).long(), minlength=nbins).numpy()
    got = traffic.plain(hist)
    assert np.array_equal(got, ref), f"histogram_kernel: got {got.tolist()}, expected {ref.tolist()}"
    if mode.SIMULATOR:
        traffic.assert_each_element_read(tx, at_most=1)
        traffic.assert_writes_per_block(hist, at_most=nbins)


# 03.6 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.6",
    hint="Hillis–Steele: for offset 1, 2, 4, ... < THREADS: read buf[t - offset] (if t >= offset), "
    "syncthreads, add it to buf[t], syncthreads. Pad past the end of x with 0.",
)
def test_block_scan():
    n = _odd(150, 300)
    x = rng.standard_normal(n).astype(np.float32)
    blocks = math.ceil(n / ex.THREADS)
    tx, out = traffic.maybe_track(x, "x"), traffic.maybe_track(poison(n), "out")
    ex.block_scan_kernel[blocks, ex.THREADS](tx, out)
    padded = torch.zeros(blocks * ex.THREADS, dtype=torch.float64)
    padded[:n] = torch.from_numpy(x).double()
    ref = padded.view(blocks, ex.THREADS).cumsum(dim=1).flatten()[:n].numpy()
    assert_close(traffic.plain(out), ref, rtol=1e-4, atol=1e-4, what="block_scan_kernel output")
    if mode.SIMULATOR:
        traffic.assert_reads_per_thread(tx, at_most=1)
        traffic.assert_writes_per_thread(out, at_most=1)
