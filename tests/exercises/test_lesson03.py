"""Graded tests for lesson 03 (shared memory, synchronisation, atomics, warp shuffles).

Oracles: torch float64 on fresh ragged inputs. In the simulator the inputs and outputs are course.traffic
arrays, so the tests also grade global-memory traffic (GPU-Puzzles style): a kernel that gets the right
answer by reading global memory over and over instead of sharing through shared memory fails, and so does one
whose threads reach cuda.syncthreads() different numbers of times (course.grading.instrument counts them).
"""

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson03")
rng = grading.rng


def _odd(low, high):
    return int(rng.integers(low, high)) | 1


# 03.1 -------------------------------------------------------------------------------------------------
def _blur1d_reference(x, r):
    t = F.pad(torch.from_numpy(x).double()[None, None], (r, r), mode="replicate")
    return F.avg_pool1d(t, 2 * r + 1, stride=1)[0, 0].numpy()


@pytest.mark.exercise(
    "03.1",
    hints=(
        "Neighbouring outputs share most of their inputs: the block loads its elements plus a halo of RADIUS "
        "on each side into shared memory once, waits, then every thread reads its neighbours from there.",
        "tile[t + RADIUS] = x[clamped i]; threads t < RADIUS also load the left halo, the last RADIUS threads "
        "the right halo (indices clamped to [0, n-1]); cuda.syncthreads() by every thread; then average.",
        "start = blockIdx.x * THREADS; tile[t + RADIUS] = x[min(start + t, n - 1)]; if t < RADIUS: tile[t] = "
        "x[max(start - RADIUS + t, 0)]; if t >= THREADS - RADIUS: tile[t + 2 * RADIUS] = x[min(start + t + "
        "RADIUS, n - 1)]; cuda.syncthreads(); if i < n: out[i] = sum(tile[t .. t + 2R]) / WIDTH",
    ),
)
def test_blur1d_with_halo():
    n = _odd(150, 260)
    x = rng.standard_normal(n).astype(np.float32)
    run = grading.launch(ex.blur1d_kernel, math.ceil(n / ex.THREADS), ex.THREADS, x, Out(n))
    assert_close(run.out, _blur1d_reference(x, ex.RADIUS), rtol=1e-5, atol=1e-5, what="blur1d_kernel output")
    run.budget(reads={"x": 3}, writes={"out": 1}, block_reads={"x": ex.THREADS + 2 * ex.RADIUS})


# 03.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.2",
    hints=(
        "The 2-D version of 03.1: a tile with a 1-pixel halo all round, which has more cells than the block "
        "has threads, so some threads load two.",
        "Loop k from the thread's linear id (ty * TILE_X + tx) over the TILE_H * TILE_W cells in steps of "
        "TILE_X * TILE_Y, with r, c = k // TILE_W, k % TILE_W and clamped image coordinates; syncthreads; "
        "then sum the 3x3 neighbourhood from the tile.",
        "for k in range(ty * TILE_X + tx, TILE_H * TILE_W, TILE_X * TILE_Y): tile[r, c] = img[clamp(y0 + r), "
        "clamp(x0 + c)]; cuda.syncthreads(); if y < h and x < w: out[y, x] = sum(tile[ty + dy, tx + dx]) / 9",
    ),
)
def test_blur2d_with_halo():
    h, w = _odd(11, 19), _odd(19, 29)
    img = rng.uniform(0, 1, (h, w)).astype(np.float32)
    tx, ty = ex.TILE_X, ex.TILE_Y
    run = grading.launch(ex.blur2d_kernel, (math.ceil(w / tx), math.ceil(h / ty)), (tx, ty), img, Out((h, w)))
    t = F.pad(torch.from_numpy(img).double()[None, None], (1, 1, 1, 1), mode="replicate")
    ref = F.avg_pool2d(t, 3, stride=1)[0, 0].numpy()
    assert_close(run.out, ref, rtol=1e-5, atol=1e-6, what="blur2d_kernel output")
    run.budget(reads={"img": 4}, writes={"out": 1}, block_reads={"img": (tx + 2) * (ty + 2)})


# 03.3 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.3",
    hints=(
        "A tree: each step, the lower half of the threads adds the upper half's values into its own, until "
        "one value is left; every thread waits at the barrier after every step.",
        "Each thread first adds x[i] and x[i + THREADS] into buf[t]; then stride goes THREADS // 2, ..., 1: "
        "threads t < stride add buf[t + stride]; cuda.syncthreads() outside the `if`, reached by all.",
        "buf[t] = x[i] + x[i + THREADS] (guarded, 0 past the end); cuda.syncthreads(); stride = THREADS // 2; "
        "while stride > 0: if t < stride: buf[t] += buf[t + stride]; cuda.syncthreads(); stride //= 2; "
        "if t == 0: partial[cuda.blockIdx.x] = buf[0]",
    ),
)
def test_block_sum_tree():
    n = _odd(300, 700)
    x = rng.standard_normal(n).astype(np.float32)
    per_block = 2 * ex.THREADS
    blocks = math.ceil(n / per_block)
    run = grading.launch(ex.block_sum_kernel, blocks, ex.THREADS, x, Out(blocks))
    padded = np.zeros(blocks * per_block)
    padded[:n] = x
    ref = torch.from_numpy(padded).view(blocks, per_block).sum(dim=1).numpy()
    assert_close(run.out, ref, rtol=1e-4, atol=1e-4, what="block_sum_kernel partial sums")
    run.budget(reads={"x": 2}, element_reads={"x": 1}, block_writes={"partial": 1})


# 03.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.4",
    hints=(
        "The 32 lanes of the warp each take every 32nd column, then combine their maxima by exchanging "
        "registers: no shared memory.",
        "Lane l starts from -inf (float32) over columns l, l+32, ...; then for offset 16, 8, 4, 2, 1 take the "
        "max with warp.shfl_xor_sync(warp.FULL_MASK, m, offset); every lane ends with the row's max.",
        "for c in range(lane, a.shape[1], 32): m = max(m, a[r, c]); offset = 16; while offset > 0: "
        "m = max(m, warp.shfl_xor_sync(warp.FULL_MASK, m, offset)); offset //= 2; if lane == 0: out[r] = m",
    ),
)
@pytest.mark.parametrize("cols", [5, 77])
def test_row_max_with_warp_shuffles(cols):
    rows = _odd(3, 8)
    a = rng.standard_normal((rows, cols)).astype(np.float32) - 10.0  # all negative: 0 is a wrong start
    run = grading.launch(ex.row_max_kernel, rows, 32, a, Out(rows))
    ref = torch.from_numpy(a).double().amax(dim=1).numpy()
    assert_close(run.out, ref, rtol=0, atol=0, what="row_max_kernel output")
    source = inspect.getsource(ex.row_max_kernel.py_func)
    assert "shared.array" not in source, (
        "row_max_kernel: combine the lanes with warp shuffles, no shared memory"
    )
    run.budget(reads={"a": math.ceil(cols / 32)}, element_reads={"a": 1}, block_writes={"out": 1})


# 03.5 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.5",
    hints=(
        "Each block counts into its own histogram in shared memory (cheap atomics), then adds it to the "
        "global one: one global update per bin per block.",
        "Zero a shared int32 array of MAX_BINS (threads stride over the bins), syncthreads, grid-stride over "
        "x with cuda.atomic.add(local, x[i], 1), syncthreads, then one cuda.atomic.add per bin into hist.",
        "for b in range(t, nbins, blockDim.x): local[b] = 0; cuda.syncthreads(); for i in range(cuda.grid(1), "
        "x.size, cuda.gridsize(1)): cuda.atomic.add(local, x[i], 1); cuda.syncthreads(); for b in range(t, "
        "nbins, blockDim.x): if local[b] > 0: cuda.atomic.add(hist, b, local[b])",
    ),
)
@pytest.mark.parametrize("nbins", [7, 64])
def test_privatised_histogram(nbins):
    n = _odd(600, 1200)
    x = rng.integers(0, nbins, n).astype(np.int32)
    x[: n // 4] = nbins // 2  # a hot bin: many threads collide on it
    blocks, threads = 3, 64
    run = grading.launch(ex.histogram_kernel, blocks, threads, x, Out(nbins, np.int32, fill=0))
    ref = torch.bincount(torch.from_numpy(x).long(), minlength=nbins).numpy()
    got = run.out
    assert np.array_equal(got, ref), f"histogram_kernel: got {got.tolist()}, expected {ref.tolist()}"
    share = math.ceil(n / (blocks * threads))
    run.budget(reads={"x": share}, element_reads={"x": 1}, block_writes={"hist": nbins})


# 03.6 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "03.6",
    hints=(
        "Hillis-Steele: log2(THREADS) steps; at step k every thread adds the value 2**k places to its left.",
        "Load x[i] (0 past the end) into a shared buf; for offset 1, 2, 4, ... < THREADS: read buf[t - offset] "
        "(if t >= offset), syncthreads, add it to buf[t], syncthreads.",
        "buf[t] = x[i] if i < n else 0; cuda.syncthreads(); offset = 1; while offset < THREADS: v = buf[t - "
        "offset] if t >= offset else 0; cuda.syncthreads(); buf[t] += v; cuda.syncthreads(); offset *= 2; "
        "if i < n: out[i] = buf[t]",
    ),
)
def test_block_scan():
    n = _odd(150, 300)
    x = rng.standard_normal(n).astype(np.float32)
    blocks = math.ceil(n / ex.THREADS)
    run = grading.launch(ex.block_scan_kernel, blocks, ex.THREADS, x, Out(n))
    padded = torch.zeros(blocks * ex.THREADS, dtype=torch.float64)
    padded[:n] = torch.from_numpy(x).double()
    ref = padded.view(blocks, ex.THREADS).cumsum(dim=1).flatten()[:n].numpy()
    assert_close(run.out, ref, rtol=1e-4, atol=1e-4, what="block_scan_kernel output")
    run.budget(reads={"x": 1}, writes={"out": 1})
