"""Graded tests for lesson 04 (GEMM). Oracle: torch float64 matmul on fresh RAGGED shapes (M, N, K not
multiples of any tile size). In the simulator the operands are course.traffic arrays: the tiled kernels must
actually reuse what they load."""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson04")
rng = grading.rng


def _odd(low, high):
    return int(rng.integers(low, high)) | 1


def operands(m, n, k):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ref = (torch.from_numpy(a).double() @ torch.from_numpy(b).double()).numpy()
    return a, b, ref


# 04.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.1",
    hints=(
        "One thread per element of C: a dot product of a row of A with a column of B.",
        "col, row = cuda.grid(2) (x is the column of C); guard row < M and col < N; loop k over A.shape[1] "
        "into a float32 register and write C once.",
        "if row < c.shape[0] and col < c.shape[1]: s = float32(0); for k in range(a.shape[1]): s += a[row, k] "
        "* b[k, col]; c[row, col] = s",
    ),
)
def test_naive_matmul_ragged():
    m, n, k = _odd(9, 19), _odd(11, 25), _odd(5, 31)
    a, b, ref = operands(m, n, k)
    run = grading.launch(
        ex.matmul_naive_kernel, (math.ceil(n / 8), math.ceil(m / 8)), (8, 8), a, b, Out((m, n))
    )
    assert_close(run.out, ref, rtol=1e-4, atol=1e-4, what="matmul_naive_kernel C")
    run.budget(reads={"a": k, "b": k}, writes={"c": 1})


# 04.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.2",
    hints=(
        "The block walks along K one TILE at a time: it loads a tile of A and a tile of B into shared memory "
        "together, waits, multiplies from there, waits again.",
        "Per step k0: sa[ty, tx] = A[row, k0 + tx] and sb[ty, tx] = B[k0 + ty, col] (0 when out of range), "
        "cuda.syncthreads(), accumulate TILE products, cuda.syncthreads(). Every thread takes part in the "
        "loads and barriers, even outside C.",
        "for k0 in range(0, K, TILE): sa[ty, tx] = a[row, k0 + tx] if row < M and k0 + tx < K else 0; sb[ty, tx] "
        "= b[k0 + ty, col] if k0 + ty < K and col < N else 0; cuda.syncthreads(); for kk in range(TILE): s += "
        "sa[ty, kk] * sb[kk, tx]; cuda.syncthreads()  — then if row < M and col < N: c[row, col] = s",
    ),
)
@pytest.mark.parametrize("shape", ["ragged", "k_smaller_than_tile"])
def test_tiled_matmul_ragged(shape):
    m, n = _odd(17, 27), _odd(17, 29)
    k = _odd(17, 41) if shape == "ragged" else _odd(3, 9)
    a, b, ref = operands(m, n, k)
    t = ex.TILE
    run = grading.launch(
        ex.matmul_tiled_kernel, (math.ceil(n / t), math.ceil(m / t)), (t, t), a, b, Out((m, n))
    )
    assert_close(run.out, ref, rtol=1e-4, atol=1e-4, what="matmul_tiled_kernel C")
    steps = math.ceil(k / t)  # each thread loads one element of A and one of B per step
    run.budget(reads={"a": steps, "b": steps}, writes={"c": 1})


# 04.3 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.3",
    hints=(
        "Each thread computes a TM x TN patch of C from registers, so every value loaded from shared memory "
        "is used TN (or TM) times.",
        "Per K-step the 64 threads load the BM x BK tile of A and the BK x BN tile of B into shared memory "
        "(loop e from the thread id in steps of 64; zero outside), syncthreads, then for each k load TM values "
        "of A and TN of B into local arrays and update the TM x TN accumulators; syncthreads; write only "
        "rows < M, cols < N.",
        "See lessons/04_gemm.md's register-blocked kernel: acc = cuda.local.array((TM, TN), float32); for k in "
        "range(BK): ra[i] = sa[ty * TM + i, k]; rb[j] = sb[k, tx * TN + j]; acc[i, j] += ra[i] * rb[j].",
    ),
)
@pytest.mark.parametrize("shape", ["ragged", "thin"])
def test_register_blocked_matmul_ragged(shape):
    if shape == "ragged":
        m, n, k = _odd(33, 61), _odd(33, 61), _odd(9, 27)
    else:  # fewer rows and columns than one block tile
        m, n, k = _odd(3, 11), _odd(3, 11), _odd(3, 11)
    a, b, ref = operands(m, n, k)
    grid = (math.ceil(n / ex.BN), math.ceil(m / ex.BM))
    run = grading.launch(ex.matmul_register_kernel, grid, (ex.THREADS_X, ex.THREADS_Y), a, b, Out((m, n)))
    assert_close(run.out, ref, rtol=1e-4, atol=1e-4, what="matmul_register_kernel C")
    # a block reads its BM rows of A and BN columns of B once: that reuse is the point of the tile
    run.budget(writes={"c": ex.TM * ex.TN}, block_reads={"a": ex.BM * k, "b": ex.BN * k})


# 04.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "04.4",
    hints=(
        "Intensity is FLOPs per byte of the least traffic: each matrix crosses memory once.",
        "A GEMM does 2*m*n*k FLOPs (a multiply and an add per term) and moves itemsize * (m*k + k*n + m*n) bytes.",
        "return 2 * m * n * k / (itemsize * (m * k + k * n + m * n))",
    ),
)
def test_gemm_intensity():
    m, n, k = (int(v) for v in rng.integers(1, 5000, 3))
    want = 2 * m * n * k / (4 * (m * k + k * n + m * n))
    assert ex.gemm_intensity(m, n, k) == pytest.approx(want, rel=1e-12)
    assert ex.gemm_intensity(4096, 4096, 4096, itemsize=2) == pytest.approx(
        4096 / 3, rel=1e-12
    )  # fp16: 2 bytes each
    assert ex.gemm_intensity(1, 1, 1) == pytest.approx(2 / 12)


@pytest.mark.exercise(
    "04.4",
    hints=(
        "Check the sizes before computing.",
        "TypeError for a size that is not an int, ValueError naming a size < 1.",
        "for name, v in (('m', m), ('n', n), ('k', k)): if not isinstance(v, int): raise TypeError(...); "
        "if v < 1: raise ValueError(f'{name} must be >= 1, got {v}')",
    ),
)
@pytest.mark.parametrize(
    "args, error, name",
    [((0, 5, 5), ValueError, "m"), ((5, 5, -1), ValueError, "k"), ((5, 2.5, 5), TypeError, "n")],
)
def test_gemm_intensity_rejects_bad_sizes(args, error, name):
    with pytest.raises(error, match=name):
        ex.gemm_intensity(*args)
