"""Lesson 04 — matrix multiplication (GEMM): exercises.

Fill in the bodies, then grade yourself:

    python -m pytest tests/exercises/test_lesson04.py -q

Read lessons/04_gemm.md first. Every test uses RAGGED shapes: M, N and K are never multiples of a tile, so
every load from A or B needs a bounds check (load 0 outside: a zero adds nothing to a dot product) and
every store to C too. In the simulator the tests count global reads with course.traffic.
"""

import numpy as np  # noqa: F401  (04.4: np.integer)

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from minisd.kernel_backend import cuda, float32  # noqa: F401  (float32 for shared/local arrays and accumulators)

TILE = 16  # 04.2: a block of TILE x TILE threads computes a TILE x TILE tile of C
BM, BN, BK = 32, 32, 8  # 04.3: a block computes a BM x BN tile of C, stepping through K by BK
TM, TN = 4, 4  # 04.3: each thread computes TM x TN outputs
THREADS_X, THREADS_Y = BN // TN, BM // TM  # 04.3: 8 x 8 = 64 threads per block


# 04.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def matmul_naive_kernel(a, b, c):
    """Exercise 04.1 — ``C = A @ B`` for float32 A (M, K), B (K, N), C (M, N): one thread per element of C.

    Launch: ``matmul_naive_kernel[(ceil(N / 8), ceil(M / 8)), (8, 8)](A, B, C)`` — x runs along a row of C.

    Hints:
    * col, row = cuda.grid(2); guard row < C.shape[0] and col < C.shape[1].
    * Accumulate ``s += a[row, k] * b[k, col]`` in a float32 register, write C once.

    Graded: the answer on ragged shapes; at most K reads of A and of B and one write of C per thread.
    """
    # TODO
    pass


# 04.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def matmul_tiled_kernel(a, b, c):
    """Exercise 04.2 — ``C = A @ B`` through shared-memory tiles.

    Launch: ``matmul_tiled_kernel[(ceil(N / TILE), ceil(M / TILE)), (TILE, TILE)](A, B, C)``.

    The naive kernel reads 2K values from global memory per output. Here the block walks along K in steps
    of TILE: each thread loads ONE element of A's tile and ONE of B's into shared memory, the block
    synchronises, and every thread does TILE multiply-adds from shared memory.

    Graded: the answer (also when K < TILE); at most ceil(K / TILE) global reads of A and of B per thread.

    Hints:
    * sa = cuda.shared.array((TILE, TILE), float32) and sb likewise, one per line.
    * sa[ty, tx] = a[row, k0 + tx] and sb[ty, tx] = b[k0 + ty, col], or float32(0) when out of range.
    * cuda.syncthreads() after the loads AND after the multiply-adds (before the next loads overwrite).
    * All threads of the block take part in the loads and barriers, even those outside C; only the
      final store is guarded.
    """
    # TODO
    pass


# 04.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def matmul_register_kernel(a, b, c):
    """Exercise 04.3 — register blocking: a block of THREADS_X x THREADS_Y = 8 x 8 threads computes a
    BM x BN = 32 x 32 tile of C; thread (tx, ty) computes the TM x TN = 4 x 4 patch at rows
    ty*TM .. ty*TM+3 and columns tx*TN .. tx*TN+3 of that tile.

    Launch: ``matmul_register_kernel[(ceil(N / BN), ceil(M / BM)), (THREADS_X, THREADS_Y)](A, B, C)``.

    Why: in the tiled kernel each multiply-add needs two shared-memory loads. Here each k step loads TM
    values of A and TN values of B into registers and does TM*TN multiply-adds with them: 16 FMAs per
    8 loads instead of 1 per 2.

    Graded: the answer on ragged shapes and on shapes smaller than one tile; each block reads at most
    BM*K elements of A and BN*K of B (its rows and columns, once).

    Hints:
    * sa = cuda.shared.array((BM, BK), float32) and sb = cuda.shared.array((BK, BN), float32), one per
      line (the simulator aliases two shared arrays declared on one line); acc =
      cuda.local.array((TM, TN), float32) zeroed; a_reg, b_reg = local arrays of TM and TN.
    * For k0 in range(0, K, BK): the 64 threads load the 32x8 tile of A
      (``for e in range(tid, BM * BK, 64): r, k = e // BK, e % BK``) and the 8x32 tile of B, with zeros
      outside A and B; syncthreads; for k in range(BK): fill a_reg, b_reg from shared memory, then
      acc[i, j] += a_reg[i] * b_reg[j]; syncthreads.
    * Store acc[i, j] to C[m0 + ty*TM + i, n0 + tx*TN + j] only where that is inside C.
    """
    # TODO
    pass


# 04.4 -------------------------------------------------------------------------------------------------
def gemm_intensity(m, n, k, itemsize=4):
    """Exercise 04.4 — the arithmetic intensity (FLOP per byte) of C = A @ B with A (m, k), B (k, n):
    2*m*n*k FLOP (a multiply and an add per term) over the bytes that must move at least once:
    itemsize * (m*k + k*n + m*n).

    On the roofline, a kernel with intensity I can reach at most min(peak FLOP/s, I * bandwidth). Check:
    where is a 4096^3 fp32 GEMM? a 4096 x 4096 x 1 outer product?

    Raise TypeError when a size is not an int (bool does not count), ValueError (naming it) when < 1.
    """
    raise NotImplementedError("Exercise 04.4: gemm_intensity")
