// half_norm.cu: GroupNorm (+ fused SiLU) on NHWC images and LayerNorm on token rows, half storage.
//
// Statistics in fp32 and in two passes (mean, then the mean of (x - mean)^2), as norm.cu: half inputs
// have 3 (fp16) or 2 (bf16) digits, the sums must not lose more.

#define HN_MAX_C 1024
#define HN_THREADS 512  // at most

// The block's per-thread sums -> out[c] for every channel c, by a tree over the R = blockDim / (C/8) threads
// that hold channel c (R a power of two): parts is [R][C], thread j's 8 sums at row j / (C/8), column
// (j % (C/8)) * 8. A fixed order of additions, log2(R) steps, no atomics.
__device__ __forceinline__ void sum_channels(float* parts, const float* mine, float* out, int C)
{
    const int cv = C / 8, rows = blockDim.x / cv;
    float* row = parts + threadIdx.x / cv * C + threadIdx.x % cv * 8;
#pragma unroll
    for (int i = 0; i < 8; ++i) row[i] = mine[i];
    __syncthreads();
    for (int half = rows / 2; half > 0; half /= 2) {
        for (int e = threadIdx.x; e < half * C; e += blockDim.x) parts[e] += parts[e + half * C];
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[c] = parts[c];
}

// GroupNorm of x (N, HW, C): one image per CL-block cluster (grid (1, N, CL)). In NHWC a group is not
// contiguous, so each thread reads whole 16-byte runs of 8 channels, always the same 8 (the block's thread
// count is C/8 times a power of two), and keeps one sum per channel; the block adds them per channel in shared
// memory, the cluster's blocks read each other's sums (distributed shared memory), and every block then
// knows its groups' mean and variance. A small batch (1 or 2 images) thus still spreads over CL SMs.
// Every sum is taken in a fixed order (no atomics): the same input gives the same bits on every run, so a
// CUDA graph replay reproduces the eager run exactly.
template <int BF16, int CL>
__global__ void CLUSTER_DIMS(CL) half_group_norm_kernel(const half_t* __restrict__ x, const float* __restrict__ weight,
                                                   const float* __restrict__ bias, half_t* __restrict__ out,
                                                   int HW, int C, int G, float eps, int fuse_silu)
{
    __shared__ float sum[HN_MAX_C], sq[HN_MAX_C];  // per channel, this block's share
    __shared__ float mean[HN_MAX_C], rstd[HN_MAX_C];  // per channel, of its group
    __shared__ float parts[HN_THREADS * 8];           // each thread's 8 channel sums
    const int cv = C / 8, cg = C / G;
    const int rank = CL > 1 ? (int)cluster_rank() : 0;
    const long long vectors = (long long)HW * cv;
    const half_t* xi = x + (long long)blockIdx.y * HW * C;
    half_t* oi = out + (long long)blockIdx.y * HW * C;
    const int c0 = (threadIdx.x % cv) * 8;  // this thread's 8 channels
    const long long first = (long long)rank * blockDim.x + threadIdx.x, step = (long long)CL * blockDim.x;
    const float count = (float)HW * cg;

    // Pass 1: the mean of each group.
    float part[8] = {};
    for (long long e = first; e < vectors; e += step) {
        float f[8];
        load8<BF16>(xi + e * 8, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) part[i] += f[i];
    }
    sum_channels(parts, part, sum, C);
    if (CL > 1) cluster_sync();  // every block's sums are complete and visible
    else __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const int g0 = c / cg * cg;
        float s = 0.0f;
        for (int r = 0; r < CL; ++r)
            for (int j = g0; j < g0 + cg; ++j) s += CL > 1 ? load_from_block(&sum[j], r) : sum[j];
        mean[c] = s / count;
    }
    __syncthreads();

    // Pass 2: the variance, around the mean.
    float m[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        m[i] = mean[c0 + i];
        part[i] = 0.0f;
    }
    for (long long e = first; e < vectors; e += step) {
        float f[8];
        load8<BF16>(xi + e * 8, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) part[i] = fmaf(f[i] - m[i], f[i] - m[i], part[i]);
    }
    sum_channels(parts, part, sq, C);  // (pass 1's reads of parts[] ended before its cluster barrier)
    if (CL > 1) cluster_sync();
    else __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const int g0 = c / cg * cg;
        float s = 0.0f;
        for (int r = 0; r < CL; ++r)
            for (int j = g0; j < g0 + cg; ++j) s += CL > 1 ? load_from_block(&sq[j], r) : sq[j];
        rstd[c] = rsqrtf(s / count + eps);
    }
    __syncthreads();

    // Pass 3: normalise, scale and shift per channel, SiLU.
    float a[8], b[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int c = c0 + i;
        a[i] = rstd[c] * (weight ? weight[c] : 1.0f);
        b[i] = (bias ? bias[c] : 0.0f) - m[i] * a[i];
    }
    for (long long e = first; e < vectors; e += step) {
        float f[8];
        load8<BF16>(xi + e * 8, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            f[i] = fmaf(f[i], a[i], b[i]);
            if (fuse_silu) f[i] = silu_f(f[i]);
        }
        store8<BF16>(oi + e * 8, f);
    }
    if (CL > 1) cluster_sync();  // the other blocks may still be reading our sums
}

// LayerNorm over rows of F features (F % 8 == 0): one warp per row, 8 rows per block.
template <int BF16>
__global__ void half_layer_norm_kernel(const half_t* __restrict__ x, const float* __restrict__ weight,
                                       const float* __restrict__ bias, half_t* __restrict__ out, int rows, int F,
                                       float eps)
{
    const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // a whole warp leaves together: the shuffles below stay full
    const half_t* xr = x + (long long)row * F;
    half_t* orow = out + (long long)row * F;
    float s = 0.0f;
    for (int c = lane * 8; c < F; c += 256) {
        float f[8];
        load8<BF16>(xr + c, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) s += f[i];
    }
    const float mean = warp_sum(s) / F;
    float ss = 0.0f;
    for (int c = lane * 8; c < F; c += 256) {
        float f[8];
        load8<BF16>(xr + c, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) ss = fmaf(f[i] - mean, f[i] - mean, ss);
    }
    const float r = rsqrtf(warp_sum(ss) / F + eps);
    for (int c = lane * 8; c < F; c += 256) {
        float f[8];
        load8<BF16>(xr + c, f);
#pragma unroll
        for (int i = 0; i < 8; ++i)
            f[i] = (f[i] - mean) * r * (weight ? weight[c + i] : 1.0f) + (bias ? bias[c + i] : 0.0f);
        store8<BF16>(orow + c, f);
    }
}
