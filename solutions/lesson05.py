"""Lesson 05 — CUDA C++ with CuPy RawKernel: reference answers (same API as exercises/lesson05.py).

Each exercise is CUDA C++ source in a string. ``course.cuda_cpu.RawKernel(SOURCE, name)`` compiles it: with
NVRTC through CuPy on a GPU, with g++ and a small CUDA shim on the CPU otherwise.
"""

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
