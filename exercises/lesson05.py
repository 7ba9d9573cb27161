"""Lesson 05 — CUDA C++ with CuPy RawKernel: your exercises.

Each exercise is CUDA C++ source in a Python string. The grader compiles it with
``course.cuda_cpu.RawKernel(SOURCE, name)``: NVRTC through CuPy on a GPU, g++ with a small CUDA shim on a
machine without one (same kernels, same launches). Fill in the bodies marked TODO, then run
``pytest tests/exercises/test_lesson05.py``.

Remember: kernels are ``extern "C"`` so CuPy finds them by name; scalars must match the C++ type exactly
(pass ``np.int32(n)`` for an ``int``, ``np.float32(a)`` for a ``float``).
"""

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
