"""Graded tests for lesson 04 (GEMM). Oracle: torch float64 matmul on fresh RAGGED shapes (M, N, K not
multiples of any tile size). In the simulator the operands are course.traffic arrays: the tiled kernels must
actually reuse what they load."""

import math

import numpy as np
import pytest
import torch

import minisd.mode as mode
from course import traffic
from course.grading import assert_close, load, poison

ex = load("lesson04")
rng = np.random.default_rng()


def _odd(low, high):
    return int(rng.integers(low, high)) | 1


def operands(m, n, k):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ref = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()
    return a, b, ref


def run(kernel, grid, block, a, b, m, n):
    ta, tb, c = (
        traffic.maybe_track(a, "A"),
        traffic.maybe_track(b, "B"),
        traffic.maybe_track(poison((m, n)), "C"),
    )
    kernel[grid, block](ta, tb, c)
    return ta, tb, c


# 04.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.1",
    hint="col, row = cuda.grid(2) (x is the column of C); guard row < M and col < N; loop k over A.shape[1].",
)
def test_naive_matmul_ragged():
    m, n, k = _odd(9, 19), _odd(11, 25), _odd(5, 31)
    a, b, ref = operands(m, n, k)
    ta, tb, c = run(ex.matmul_naive_kernel, (math.ceil(n / 8), math.ceil(m / 8)), (8, 8), a, b, m, n)
    assert_close(traffic.plain(c), ref, rtol=1e-4, atol=1e-4, what="matmul_naive_kernel C")
    if mode.SIMULATOR:
        traffic.assert_writes_per_thread(c, at_most=1)


# 04.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.2",
    hint="Loop k0 over K in steps of TILE: load sa[ty, tx] = A[row, k0+tx] and sb[ty, tx] = B[k0+ty, col] "
    "(0 when out of range), syncthreads, accumulate TILE products, syncthreads again. Every thread takes "
    "part in the loads and barriers, even outside C.",
)
@pytest.mark.parametrize("shape", ["ragged", "k_smaller_than_tile"])
def test_tiled_matmul_ragged(shape):
    m, n = _odd(17, 27), _odd(17, 29)
    k = _odd(17, 41) if shape == "ragged" else _odd(3, 9)
    a, b, ref = operands(m, n, k)
    t = ex.TILE
    ta, tb, c = run(ex.matmul_tiled_kernel, (math.ceil(n / t), math.ceil(m / t)), (t, t), a, b, m, n)
    assert_close(traffic.plain(c), ref, rtol=1e-4, atol=1e-4, what="matmul_tiled_kernel C")
    if mode.SIMULATOR:
        steps = math.ceil(k / t)
        traffic.assert_reads_per_thread(ta, at_most=steps)
        traffic.assert_reads_per_thread(tb, at_most=steps)
        traffic.assert_writes_per_thread(c, at_most=1)


# 04.3 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.3",
    hint="Per K-step: the 64 threads load the BM x BK tile of A and the BK x BN tile of B into shared memory "
    "(loop e from the thread id in steps of 64; zero outside), syncthreads, then for each k load TM values "
    "of A and TN of B into registers and update the TM x TN accumulators; write only rows < M, cols < N.",
)
@pytest.mark.parametrize("shape", ["ragged", "thin"])
def test_register_blocked_matmul_ragged(shape):
    if shape == "ragged":
        m, n, k = _odd(33, 61), _odd(33, 61), _odd(9, 27)
    else:  # fewer rows and columns than one block tile
        m, n, k = _odd(3, 11), _odd(3, 11), _odd(3, 11)
    a, b, ref = operands(m, n, k)
    grid = (math.ceil(n / ex.BN), math.ceil(m / ex.BM))
    ta, tb, c = run(ex.matmul_register_kernel, grid, (ex.THREADS_X, ex.THREADS_Y), a, b, m, n)
    assert_close(traffic.plain(c), ref, rtol=1e-4, atol=1e-4, what="matmul_register_kernel C")
    if mode.SIMULATOR:
        # a block reads its BM rows of A and BN columns of B once: that reuse is the point of the tile
        traffic.assert_reads_per_block(ta, at_most=ex.BM * k)
        traffic.assert_reads_per_block(tb, at_most=ex.BN * k)
        traffic.assert_writes_per_thread(c, at_most=ex.TM * ex.TN)


# 04.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("04.4", hint="2*m*n*k FLOP over itemsize * (m*k + k*n + m*n) bytes.")
def test_gemm_intensity():
    m, n, k = (int(v) for v in rng.integers(1, 5000, 3))
    want = 2 * m * n * k / (4 * (m * k + k * n + m * n))
    assert ex.gemm_intensity(m, n, k) == pytest.approx(want, rel=1e-12)
    assert ex.gemm_intensity(4096, 4096, 4096, itemsize=2) == pytest.approx(
        4096 / 3, rel=1e-12
    )  # fp16: 2 bytes each
    assert ex.gemm_intensity(1, 1, 1) == pytest.approx(2 / 12)


@pytest.mark.exercise(
    "04.4", hint="Raise ValueError naming a size < 1, TypeError for a size that is not an int."
)
@pytest.mark.parametrize(
    "args, error, name",
    [((0, 5, 5), ValueError, "m"), ((5, 5, -1), ValueError, "k"), ((5, 2.5, 5), TypeError, "n")],
)
def test_gemm_intensity_rejects_bad_sizes(args, error, name):
    with pytest.raises(error, match=name):
        ex.gemm_intensity(*args)
