// norm.cu: group_norm (+ fused SiLU), layer_norm and softmax: reductions over a group or a row.
//
// Mean and variance in two passes (mean first, then the mean of (x - mean)^2): as cheap as one pass here,
// because the second read of the group comes from L1/L2, and free of the cancellation that
// E[x^2] - E[x]^2 suffers when |mean| >> std.
// Sums: each thread accumulates its strided share, then warp shuffles (5 steps, no shared memory), then
// one value per warp through shared memory.

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// Sum of v over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v)
{
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // partial[] may still be read from a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

// One block per (image, group). In NCHW a group's Cg = C/G channels are one contiguous run of Cg*HW floats.
extern "C" __global__ void group_norm_kernel(const float* __restrict__ x, const float* __restrict__ weight,
                                  const float* __restrict__ bias, float* __restrict__ out, int C, int HW, int G,
                                  float eps, int fuse_silu)
{
    const int cg = C / G, n = cg * HW;
    const int g = blockIdx.x % G;
    const long long base = (long long)blockIdx.x * n;
    const float* xg = x + base;

    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xg[i];
    const float mean = block_sum(s) / n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = xg[i] - mean;
        ss = fmaf(d, d, ss);
    }
    const float rstd = rsqrtf(block_sum(ss) / n + eps);

    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int c = g * cg + i / HW;
        float v = (xg[i] - mean) * rstd;
        if (weight) v *= weight[c];
        if (bias) v += bias[c];
        out[base + i] = fuse_silu ? silu_f(v) : v;
    }
}

// One warp per row (rows are short here: 64..512 features), 8 rows per block of 256 threads.
extern "C" __global__ void layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ weight,
                                  const float* __restrict__ bias, float* __restrict__ out, int rows, int n,
                                  float eps)
{
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // a whole warp leaves together: the shuffles below stay full-warp
    const float* xr = x + (long long)row * n;
    float s = 0.0f;
    for (int i = lane; i < n; i += 32) s += xr[i];
    const float mean = warp_sum(s) / n;
    float ss = 0.0f;
    for (int i = lane; i < n; i += 32) {
        const float d = xr[i] - mean;
        ss = fmaf(d, d, ss);
    }
    const float rstd = rsqrtf(warp_sum(ss) / n + eps);
    float* yr = out + (long long)row * n;
    for (int i = lane; i < n; i += 32) {
        float v = (xr[i] - mean) * rstd;
        if (weight) v *= weight[i];
        if (bias) v += bias[i];
        yr[i] = v;
    }
}

// Numerically stable softmax over the last axis: subtract the row max so exp never overflows.
// Special values as torch: a NaN makes its row NaN (max_nan), a +inf gives inf - inf = NaN, a row of -inf
// gives 0/0 = NaN.
extern "C" __global__ void softmax_kernel(const float* __restrict__ x, float* __restrict__ out, int rows, int n)
{
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* xr = x + (long long)row * n;
    float mx = NEG_INF;
    for (int i = lane; i < n; i += 32) mx = max_nan(mx, xr[i]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (int i = lane; i < n; i += 32) s += __expf(xr[i] - mx);
    const float inv = 1.0f / warp_sum(s);
    float* yr = out + (long long)row * n;
    for (int i = lane; i < n; i += 32) yr[i] = __expf(xr[i] - mx) * inv;
}
