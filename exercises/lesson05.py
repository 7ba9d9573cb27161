"""Lesson 05 — CUDA C++ with CuPy RawKernel: your exercises.

Exercises 05.1-05.4 are CUDA C++ source in a Python string. The grader compiles it with
``course.cuda_cpu.RawKernel(SOURCE, name)``: NVRTC through CuPy on a GPU, g++ with a small CUDA shim on a
machine without one (same kernels, same launches). Exercises 05.5-05.7 are numpy functions: tensor-core
fragments and rounding to 16 bits. Fill in the bodies marked TODO (and the functions that raise
NotImplementedError), then run ``pytest tests/exercises/test_lesson05.py``.

Remember: kernels are ``extern "C"`` so CuPy finds them by name; scalars must match the C++ type exactly
(pass ``np.int32(n)`` for an ``int``, ``np.float32(a)`` for a ``float``).
"""

import numpy as np

# Graded on the CPU with course.cuda_cpu.RawKernel(..., strict=True): besides the answer, each thread's global
# reads and writes are counted against the budget below, and every thread must reach every __syncthreads().

# 05.1 -------------------------------------------------------------------------------------------------
# out[i] = a * x[i] + y[i] for every i < n.
# The grader launches FEWER threads than elements (a small grid), so one thread must handle several
# elements: use a grid-stride loop that starts at the thread's global index and steps by the whole grid's size
# (gridDim.x * blockDim.x). Budget: ceil(n / threads in the grid) elements of x, y and out per thread.
SAXPY = r"""
extern "C" __global__ void saxpy(float a, const float* x, const float* y, float* out, int n) {
    // TODO: a grid-stride loop over i, writing out[i] = a * x[i] + y[i]
}
"""

# 05.2 -------------------------------------------------------------------------------------------------
# out (cols x rows) = transpose of in (rows x cols), both row-major, through a TILE x TILE shared-memory tile.
# The grader launches blocks of (TILE, TILE) threads on a grid of (ceil(cols/TILE), ceil(rows/TILE)) blocks.
# 1. Each thread reads in[r][c] with c = blockIdx.x*TILE + threadIdx.x, r = blockIdx.y*TILE + threadIdx.y
#    (consecutive threads read consecutive addresses: coalesced) into tile[threadIdx.y][threadIdx.x].
# 2. __syncthreads(): the whole tile must be loaded before anyone reads it.
# 3. Each thread writes out[orow][oc] with orow = blockIdx.x*TILE + threadIdx.y, oc = blockIdx.y*TILE + threadIdx.x,
#    taking tile[threadIdx.x][threadIdx.y] (consecutive threads write consecutive addresses again).
# Guard both the read and the write: rows and cols are not multiples of TILE. Never put __syncthreads()
# inside an if that some threads of the block skip. Budget: one read and one write per thread.
TILE = 16
TRANSPOSE = r"""
#define TILE 16
extern "C" __global__ void transpose(const float* in, float* out, int rows, int cols) {
    __shared__ float tile[TILE][TILE + 1];  // why + 1? see the lesson: shared-memory banks
    // TODO: load the tile, synchronise, write it back transposed
}
"""

# 05.3 -------------------------------------------------------------------------------------------------
# *total += sum(x[0:n]). The grader sets *total = 0 and launches a small grid of THREADS-thread blocks.
# 1. Each thread sums its elements with a grid-stride loop into a register.
# 2. The block reduces the THREADS partial sums in shared memory as a tree: stride = THREADS/2, THREADS/4, ... 1;
#    threads below stride add partial[t + stride]; __syncthreads() after every step.
# 3. Thread 0 adds the block's sum to *total with atomicAdd (blocks finish in any order).
# Budget: a thread's share of x, and one atomicAdd on total.
SUM_THREADS = 128
BLOCK_SUM = r"""
#define THREADS 128
extern "C" __global__ void block_sum(const float* x, float* total, int n) {
    __shared__ float partial[THREADS];
    // TODO
}
"""

# 05.4 -------------------------------------------------------------------------------------------------
# out[i] = the half-precision value nearest to s * x[i] (computed in float), for i < n.
# __float2half(f) from <cuda_fp16.h> rounds a float to the nearest __half (ties to even).
# Budget: one read and one write per thread.
SCALE_TO_HALF = r"""
#include <cuda_fp16.h>
extern "C" __global__ void scale_to_half(const float* x, float s, __half* out, int n) {
    // TODO
}
"""


# Tensor cores have no CPU stand-in (they are hardware), so 05.5-05.7 are numpy: what one warp's tensor-core
# instruction does with its registers, and what rounding to 16 bits does to a number. Graded on the CPU.

# 05.5 -------------------------------------------------------------------------------------------------
# mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 computes D = A·B + C for A 16x16 and B 16x8 (halves), C and
# D 16x8 (floats), all 32 lanes of a warp together. No lane holds a whole matrix: each holds a FRAGMENT, a few
# registers, and the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type") fixes which element
# is in which register. With g = lane >> 2 (the lane's group of four) and t = lane % 4 (its place in the group):
#   A, registers a0..a7:  a0, a1 = row g,     cols 2t, 2t+1      a2, a3 = row g + 8, cols 2t, 2t+1
#                         a4, a5 = row g,     cols 2t+8, 2t+9    a6, a7 = row g + 8, cols 2t+8, 2t+9
#   B, registers b0..b3:  b0, b1 = rows 2t, 2t+1 (of K), col g   b2, b3 = rows 2t+8, 2t+9, col g
#   C, D, c0..c3:         c0, c1 = row g, cols 2t, 2t+1          c2, c3 = row g + 8, cols 2t, 2t+1
REGISTERS = {"a": 8, "b": 4, "c": 4, "d": 4}  # registers per lane; D has C's layout
SHAPES = {"a": (16, 16), "b": (16, 8), "c": (16, 8), "d": (16, 8)}


def fragment_coords(matrix, lane, reg):
    """(row, col) of the element of ``matrix`` ("a", "b", "c" or "d") that register ``reg`` of ``lane`` holds.

    Raise ValueError (saying what is wrong) for another matrix name, a lane outside 0..31, or a register the
    matrix does not have (A has 8 per lane, the others 4). Example: lane 5 is g = 1, t = 1, so its a2 is
    A[9, 2] and its b3 is B[11, 1].
    """
    raise NotImplementedError("Exercise 05.5: fragment_coords")


# 05.6 -------------------------------------------------------------------------------------------------
# What the instruction computes, from the registers of the 32 lanes (lane-major arrays: a[lane, i] is register
# a_i of that lane).
def mma_m16n8k16(a, b, c):
    """One warp's mma.sync.m16n8k16: a (32, 8) and b (32, 4) float16, c (32, 4) float32 -> d (32, 4) float32.

    1. Put every lane's registers where fragment_coords says, giving A (16x16), B (16x8) and C (16x8).
    2. D = A·B + C with float32 sums (a product of two halves is exact in float32; in half precision the sum
       would lose digits after 2048).
    3. Return each lane's registers of D (C's layout).
    """
    raise NotImplementedError("Exercise 05.6: mma_m16n8k16")


def accumulator_as_a(left, right):
    """Flash attention keeps S = Q·Kᵀ in registers and multiplies it by V next. S (16x16) comes out of two
    m16n8k16 products as two accumulator fragments, ``left`` = S[:, 0:8] and ``right`` = S[:, 8:16], (32, 4)
    float32 each; P·V needs S as an A fragment, (32, 8) float16. Return that A fragment.

    Compare, lane by lane, the (row, col) that c0..c3 hold with what a0..a7 hold: no value has to move to
    another lane (a GPU would need shuffles or shared memory for that), only its type changes.
    """
    raise NotImplementedError("Exercise 05.6: accumulator_as_a")


# 05.7 -------------------------------------------------------------------------------------------------
# bfloat16 is the top 16 bits of a float32: 1 sign, 8 exponent, 7 mantissa bits. Same range as float32, less
# precision (2^-8 ≈ 0.4 %). fp16 keeps 10 mantissa bits but 5 exponent bits: more precision, range 65504.
def bfloat16_to_float32(bits):
    """bfloat16 bit patterns (uint16) as float32: the top half of a float32, exactly."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_bfloat16(x):
    """float32 array -> uint16 array: the bit pattern of the bfloat16 nearest to each value (ties to even).

    Work on the bits (``x.view(np.uint32)``), as GPU code does: add 0x7FFF plus the lowest bit you keep (bit 16),
    then keep the top 16 bits. A carry that runs into the exponent is right: it rounds up to the next power of
    two, or to infinity past bfloat16's largest value. NaN needs its own case (the addition could turn a NaN into
    an infinity): return a NaN pattern (0x7FC0) for it.
    """
    raise NotImplementedError("Exercise 05.7: round_to_bfloat16")


def overflows(value):
    """The formats among ("fp16", "bf16", "fp32"), in that order, in which ``value`` rounds to ±infinity.

    A format with m mantissa bits and largest exponent e holds at most (2 - 2^-m)·2^e (fp16: m = 10, e = 15, so
    65504; bf16: 7, 127; fp32: 23, 127). Round to nearest (ties to even) sends everything from halfway between
    that and 2^(e+1) upwards to infinity. Raise ValueError for NaN or an infinite ``value``.
    Example: overflows(70000.0) == ("fp16",); overflows(1.0) == ().
    """
    raise NotImplementedError("Exercise 05.7: overflows")
