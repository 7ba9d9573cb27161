"""Lesson 04 — matrix multiplication (GEMM): reference solutions (same API as exercises/lesson04.py)."""

import numpy as np

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from minisd.kernel_backend import cuda, float32

TILE = 16  # 04.2: a block of TILE x TILE threads computes a TILE x TILE tile of C
BM, BN, BK = 32, 32, 8  # 04.3: a block computes a BM x BN tile of C, stepping through K by BK
TM, TN = 4, 4  # 04.3: each thread computes TM x TN outputs
THREADS_X, THREADS_Y = BN // TN, BM // TM  # 04.3: 8 x 8 = 64 threads per block


# 04.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def matmul_naive_kernel(a, b, c):
    """Exercise 04.1 — ``C = A @ B``, one thread per element of C, every operand read from global memory."""
    col, row = cuda.grid(2)
    if row < c.shape[0] and col < c.shape[1]:
        s = float32(0)
        for k in range(a.shape[1]):
            s += a[row, k] * b[k, col]
        c[row, col] = s


# 04.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def matmul_tiled_kernel(a, b, c):
    """Exercise 04.2 — ``C = A @ B`` through TILE x TILE shared-memory tiles of A and B (zero-padded)."""
    sa = cuda.shared.array((TILE, TILE), float32)
    sb = cuda.shared.array((TILE, TILE), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    col, row = cuda.grid(2)
    m, kdim = a.shape
    n = b.shape[1]
    s = float32(0)
    for k0 in range(0, kdim, TILE):
        sa[ty, tx] = a[row, k0 + tx] if row < m and k0 + tx < kdim else float32(0)
        sb[ty, tx] = b[k0 + ty, col] if k0 + ty < kdim and col < n else float32(0)
        cuda.syncthreads()
        for k in range(TILE):
            s += sa[ty, k] * sb[k, tx]
        cuda.syncthreads()  # before the next iteration overwrites the tiles
    if row < m and col < n:
        c[row, col] = s


# 04.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def matmul_register_kernel(a, b, c):
    """Exercise 04.3 — ``C = A @ B``, a block computes BM x BN of C, each thread a TM x TN patch in registers."""
    sa = cuda.shared.array((BM, BK), float32)
    sb = cuda.shared.array((BK, BN), float32)
    acc = cuda.local.array((TM, TN), float32)
    a_reg = cuda.local.array(TM, float32)
    b_reg = cuda.local.array(TN, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * THREADS_X + tx
    m0, n0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
    m, kdim = a.shape
    n = b.shape[1]
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = 0
    for k0 in range(0, kdim, BK):
        for e in range(tid, BM * BK, THREADS_X * THREADS_Y):
            r, k = e // BK, e % BK
            sa[r, k] = a[m0 + r, k0 + k] if m0 + r < m and k0 + k < kdim else float32(0)
        for e in range(tid, BK * BN, THREADS_X * THREADS_Y):
            k, col = e // BN, e % BN
            sb[k, col] = b[k0 + k, n0 + col] if k0 + k < kdim and n0 + col < n else float32(0)
        cuda.syncthreads()
        for k in range(BK):
            for i in range(TM):
                a_reg[i] = sa[ty * TM + i, k]
            for j in range(TN):
                b_reg[j] = sb[k, tx * TN + j]
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += a_reg[i] * b_reg[j]
        cuda.syncthreads()
    for i in range(TM):
        row = m0 + ty * TM + i
        for j in range(TN):
            col = n0 + tx * TN + j
            if row < m and col < n:
                c[row, col] = acc[i, j]


# 04.4 -------------------------------------------------------------------------------------------------
def gemm_intensity(m, n, k, itemsize=4):
    """Exercise 04.4 — FLOP per byte of ``C = A @ B`` (2*m*n*k FLOP; A, B read once and C written once)."""
    for name, value in (("m", m), ("n", n), ("k", k), ("itemsize", itemsize)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    return 2 * m * n * k / (itemsize * (m * k + k * n + m * n))
