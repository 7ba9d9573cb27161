// half_norm.cu: GroupNorm (+ fused SiLU) on NHWC images and LayerNorm on token rows, half storage.
//
// Statistics in fp32: half inputs have 3 (fp16) or 2 (bf16) digits, the sums must not lose more.

#define HN_MAX_C 512
#define HN_THREADS 512  // at most

// The block's per-thread values (16 each: 8 channels x 2 sums) -> out[j] = their sum over the R threads that
// hold the same channels (R = blockDim / (C/8), a power of two), by a tree: parts is [R][2C], thread t's
// values at row t / (C/8), column (t % (C/8)) * 16. A fixed order of additions, log2(R) steps, no atomics.
__device__ __forceinline__ void sum_channels(float* parts, const float* mine, float* out, int C)
{
    const int cv = C / 8, rows = blockDim.x / cv, width = 2 * C;
    float* row = parts + threadIdx.x / cv * width + threadIdx.x % cv * 16;
#pragma unroll
    for (int i = 0; i < 16; ++i) row[i] = mine[i];
    __syncthreads();
    for (int half = rows / 2; half > 0; half /= 2) {
        for (int e = threadIdx.x; e < half * width; e += blockDim.x) parts[e] += parts[e + half * width];
        __syncthreads();
    }
    for (int j = threadIdx.x; j < width; j += blockDim.x) out[j] = parts[j];
}

// GroupNorm of x (N, HW, C): one image per CL-block cluster (grid (1, N, CL)). In NHWC a group is not
// contiguous, so each thread reads whole 16-byte runs of 8 channels, always the same 8 (the block's thread
// count is C/8 times a power of two), and keeps two sums per channel; the block adds them per channel in
// shared memory, the cluster's blocks read each other's sums (distributed shared memory), and every block
// then knows its groups' mean and variance. A small batch (1 or 2 images) thus still spreads over CL SMs.
// The image may be two (channels below C1 from x, the rest from x2): a skip concatenation, read in place.
// One pass for the statistics: the sums are of d = x - K, with K the group's first value, and
// var = E[d^2] - E[d]^2. K lies within a few standard deviations of the mean, so the subtraction cancels
// little (E[x^2] - E[x]^2 without the shift loses every digit when |mean| >> std).
// Every sum is taken in a fixed order (no atomics): the same input gives the same bits on every run, so a
// CUDA graph replay reproduces the eager run exactly.
template <int BF16, int CL>
__global__ void CLUSTER_DIMS(CL) half_group_norm_kernel(const half_t* __restrict__ x, const half_t* __restrict__ x2,
                                                   const float* __restrict__ weight, const float* __restrict__ bias,
                                                   half_t* __restrict__ out, int HW, int C, int C1, int G, float eps,
                                                   int fuse_silu)
{
    __shared__ float sums[2 * HN_MAX_C];              // [C/8][sums of d for 8 channels, of d^2 for 8]
    __shared__ float scale[HN_MAX_C], shift[HN_MAX_C];  // per channel: y = x * scale + shift
    __shared__ float parts[HN_THREADS * 16];
    const int cv = C / 8, cg = C / G;
    const int rank = CL > 1 ? (int)cluster_rank() : 0;
    half_t* oi = out + (long long)blockIdx.y * HW * C;
    const int c0 = (threadIdx.x % cv) * 8;  // this thread's 8 channels
    // Channels below C1 come from x, the rest from x2 (a skip concatenation, read in place).
    const bool from_x = c0 < C1;
    const int pitch = from_x ? C1 : C - C1;
    const half_t* xa = x + (long long)blockIdx.y * HW * C1;
    const half_t* xb = x2 + (long long)blockIdx.y * HW * (C - C1);
    const half_t* xi = from_x ? xa + c0 : xb + c0 - C1;
    auto first_value = [&](int c) {  // channel c at pixel 0: the shift K of the group starting at c
        return to_float<BF16>(c < C1 ? xa[c] : xb[c - C1]);
    };
    // this thread's pixels: (rank * blockDim + threadIdx) / (C/8), then every CL * blockDim / (C/8)-th
    const long long first = ((long long)rank * blockDim.x + threadIdx.x) / cv, step = (long long)CL * blockDim.x / cv;

    float k[8], s[16] = {};  // s[i]: sum of d, s[8 + i]: sum of d^2, channel c0 + i
#pragma unroll
    for (int i = 0; i < 8; ++i) k[i] = first_value((c0 + i) / cg * cg);
#pragma unroll 4
    for (long long p = first; p < HW; p += step) {
        float f[8];
        load8<BF16>(xi + p * pitch, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float d = f[i] - k[i];
            s[i] += d;
            s[8 + i] = fmaf(d, d, s[8 + i]);
        }
    }
    sum_channels(parts, s, sums, C);
    if (CL > 1) cluster_sync();  // every block's sums are complete and visible
    else __syncthreads();
    float* total = parts;  // the whole image's sums (parts is free again): one remote read per block
    for (int j = threadIdx.x; j < 2 * C; j += blockDim.x) {
        float v = 0.0f;
        for (int r = 0; r < CL; ++r) v += CL > 1 ? load_from_block(&sums[j], r) : sums[j];  // rank order
        total[j] = v;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const int g0 = c / cg * cg;
        float d = 0.0f, d2 = 0.0f;
        for (int j = g0; j < g0 + cg; ++j) {
            d += total[j / 8 * 16 + j % 8];
            d2 += total[j / 8 * 16 + 8 + j % 8];
        }
        const float count = (float)HW * cg, md = d / count;
        const float rstd = rsqrtf(fmaxf(d2 / count - md * md, 0.0f) + eps);
        const float a = rstd * (weight ? weight[c] : 1.0f);
        scale[c] = a;
        shift[c] = (bias ? bias[c] : 0.0f) - (first_value(g0) + md) * a;
    }
    __syncthreads();

    // Normalise, scale and shift per channel, SiLU.
    float a[8], b[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        a[i] = scale[c0 + i];
        b[i] = shift[c0 + i];
    }
#pragma unroll 4
    for (long long p = first; p < HW; p += step) {
        float f[8];
        load8<BF16>(xi + p * pitch, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            f[i] = fmaf(f[i], a[i], b[i]);
            if (fuse_silu) f[i] = silu_f(f[i]);
        }
        store8<BF16>(oi + p * C + c0, f);
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
