"""Lesson 05 — CUDA C++ with CuPy RawKernel: reference answers (same API as exercises/lesson05.py).

Exercises 05.1-05.4 are CUDA C++ source in a string. ``course.cuda_cpu.RawKernel(SOURCE, name)`` compiles it:
with NVRTC through CuPy on a GPU, with g++ and a small CUDA shim on the CPU otherwise. Exercises 05.5-05.7 are
numpy models of what tensor cores and half precision do.
"""

import math

import numpy as np

# 05.1 -------------------------------------------------------------------------------------------------
SAXPY = r"""
extern "C" __global__ void saxpy(float a, const float* x, const float* y, float* out, int n) {
    // grid-stride loop: correct for any n, whatever grid the caller picked
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = a * x[i] + y[i];
}
"""

# 05.2 -------------------------------------------------------------------------------------------------
TILE = 16
TRANSPOSE = r"""
#define TILE 16
extern "C" __global__ void transpose(const float* in, float* out, int rows, int cols) {
    __shared__ float tile[TILE][TILE + 1];  // +1 column: threads of a warp hit 32 different banks
    int c = blockIdx.x * TILE + threadIdx.x, r = blockIdx.y * TILE + threadIdx.y;
    if (r < rows && c < cols) tile[threadIdx.y][threadIdx.x] = in[r * cols + c];  // coalesced read
    __syncthreads();
    int oc = blockIdx.y * TILE + threadIdx.x, orow = blockIdx.x * TILE + threadIdx.y;
    if (orow < cols && oc < rows) out[orow * rows + oc] = tile[threadIdx.x][threadIdx.y];  // coalesced write
}
"""

# 05.3 -------------------------------------------------------------------------------------------------
SUM_THREADS = 128
BLOCK_SUM = r"""
#define THREADS 128
extern "C" __global__ void block_sum(const float* x, float* total, int n) {
    __shared__ float partial[THREADS];
    float acc = 0.0f;
    for (int i = blockIdx.x * THREADS + threadIdx.x; i < n; i += gridDim.x * THREADS) acc += x[i];
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride /= 2) {  // tree: halve the active threads each step
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(total, partial[0]);  // one atomic per block, not per element
}
"""

# 05.4 -------------------------------------------------------------------------------------------------
SCALE_TO_HALF = r"""
#include <cuda_fp16.h>
extern "C" __global__ void scale_to_half(const float* x, float s, __half* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2half(s * x[i]);  // round to nearest even, as numpy's astype(float16)
}
"""


# 05.5 -------------------------------------------------------------------------------------------------
# Tensor cores have no CPU stand-in, so exercises 05.5-05.7 are numpy: the register layout of one warp's
# mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, as the PTX ISA gives it.
REGISTERS = {"a": 8, "b": 4, "c": 4, "d": 4}  # registers per lane; D has C's layout
SHAPES = {"a": (16, 16), "b": (16, 8), "c": (16, 8), "d": (16, 8)}


def fragment_coords(matrix, lane, reg):
    if matrix not in REGISTERS:
        raise ValueError(f"matrix must be one of {sorted(REGISTERS)}, got {matrix!r}")
    if not 0 <= lane < 32:
        raise ValueError(f"lane must be 0..31 (a warp has 32), got {lane}")
    if not 0 <= reg < REGISTERS[matrix]:
        raise ValueError(f"matrix {matrix} has registers 0..{REGISTERS[matrix] - 1} per lane, got {reg}")
    group, in_group = lane >> 2, lane % 4
    pair = 2 * in_group + (reg & 1)  # registers come in pairs of neighbours: 2t, 2t + 1
    if matrix == "b":  # B is col-major: the pair runs down a column
        return pair + 8 * (reg >> 1), group
    if matrix == "a":  # a0-a3 the left 8 columns, a4-a7 the right ones; odd pairs 8 rows lower
        return group + 8 * ((reg >> 1) & 1), pair + 8 * (reg >> 2)
    return group + 8 * (reg >> 1), pair  # C and D: c0, c1 on row g, c2, c3 on row g + 8


# 05.6 -------------------------------------------------------------------------------------------------
def _scatter(matrix, frags, dtype):
    whole = np.empty(SHAPES[matrix], dtype)
    for lane in range(32):
        for reg in range(REGISTERS[matrix]):
            whole[fragment_coords(matrix, lane, reg)] = frags[lane, reg]
    return whole


def mma_m16n8k16(a, b, c):
    A = _scatter("a", a, np.float32)  # halves are exact in float32, and so are their products
    B = _scatter("b", b, np.float32)
    D = A @ B + _scatter("c", c, np.float32)  # summed in float32: the accumulator's precision
    d = np.empty((32, 4), np.float32)
    for lane in range(32):
        for reg in range(4):
            d[lane, reg] = D[fragment_coords("d", lane, reg)]
    return d


def accumulator_as_a(left, right):
    # c0..c3 of the left tile sit where a0..a3 sit, the right tile's where a4..a7 do: only the type changes
    return np.concatenate([left, right], axis=1).astype(np.float16)


# 05.7 -------------------------------------------------------------------------------------------------
def bfloat16_to_float32(bits):
    """bfloat16 bit patterns (uint16) as float32: the top half of a float32, exactly."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_bfloat16(x):
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    lsb = (bits >> 16) & 1  # the last bit kept: a tie rounds towards the even pattern
    # a carry may run into the exponent: the next power of two, or infinity past the largest bfloat16
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)  # NaN + bias could carry into an inf


# (mantissa bits, largest exponent): the largest finite value is (2 - 2^-m) 2^e; from halfway above it, the
# nearest value (ties to even) is 2^(e+1), which the format cannot hold: infinity.
FORMATS = {"fp16": (10, 15), "bf16": (7, 127), "fp32": (23, 127)}


def overflows(value):
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"overflows() takes a finite number, got {value}")
    return tuple(
        name for name, (m, e) in FORMATS.items() if abs(value) >= 2.0 ** (e + 1) - 2.0 ** (e - m - 1)
    )
