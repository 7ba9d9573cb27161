// half_gemm.cu: convolution and linear layers on half-precision tensor cores, as one implicit GEMM.
//
// Images are NHWC: pixel p's C channels are contiguous. A convolution is then the matrix product
//   out (P x O) = A (P x K) * W^T,   P = N*Ho*Wo output pixels, K = KH*KW*C, k = (ky*KW + kx)*C + c,
// with W the weights reordered to (O, KH, KW, C): row o is k-contiguous, exactly what mma.sync's "col"
// B operand wants. Row p of A (the "im2col" matrix) is never built: for each k-step the loader copies,
// straight from the image, the C-contiguous run of channels of the input pixel under tap (ky, kx).
// A linear layer is the 1x1 case with tokens as pixels (H = 1, W = tokens): the same kernel.
//
// One block of 128 threads (4 warps, stacked along M) computes a BM x BN tile; each warp owns BM/4 rows
// and all BN columns. K is walked in steps of BK = 32 through STAGES = 3 shared-memory buffers filled by
// cp.async: while the warps multiply step t, steps t+1 and t+2 are in flight, so the loads' latency hides
// behind the MMAs without holding the data in registers.
//
// Fused, so the tensor is written once: the bias, a per-(image, channel) addend (a ResNet's time embedding),
// a residual of the output's shape, and GEGLU (the weights' rows are interleaved value, gate, value, gate...
// so one thread's accumulator pair holds both and writes value * gelu(gate)).
// LN = 1: a LayerNorm of the rows before the product, never stored. Its scale and shift are folded into the
// weights (w[n][k] * gamma[k]) and the bias (b[n] + sum_k w[n][k] * beta[k]) once; what is left per row is
//   sum_k (x[k] - mean) * rstd * w[n][k] = rstd * (acc[n] - mean * colsum[n]),  colsum[n] = sum_k w[n][k],
// applied in the epilogue, with mean and rstd from sums of x and x^2 that each warp takes from the A
// fragments it multiplies anyway (every row's K values pass through exactly one warp). In the loader: nearest 2x
// upsampling (UP = 1 reads pixel (iy/2, ix/2) of the half-size input, so the upsampled image never exists),
// and the UNet's skip concatenation (channels below C1 from one image, the rest from another).
// Needs C, C1 % 8 == 0 (16-byte copies never straddle two taps or images) and O % 8 == 0; the host checks.

#define HG_THREADS 128
#define HBK 32
#define HSTAGES 3
#define HLDS (HBK + 8)  // row pitch in halves: 80 bytes, so a warp's fragment reads hit 32 different banks

struct ConvShape {
    int N, H, W, C;  // input image (physical size: half the logical size when up)
    int C1;          // channels 0 .. C1-1 from x, C1 .. C-1 from x2: a skip concatenation never stored
    int O, KH, KW, stride, pad, Ho, Wo, up;
};

template <int BM, int BN>
struct HalfStages {
    half_t a[HSTAGES][BM][HLDS];
    half_t b[HSTAGES][BN][HLDS];
};

// The multiply-accumulate of one block tile over k-steps [t0, t1), into acc[MT][NT][4].
// LN: also the sums of x and x^2 over the same k of the rows g and g + 8 of each of this lane's 16-row
// tiles, into rows[mt][0..1] and squares[mt][0..1].
template <int BM, int BN, int BF16, int LN>
__device__ __forceinline__ void half_mainloop(const half_t* __restrict__ x, const half_t* __restrict__ x2,
                                              const half_t* __restrict__ w,
                                              const ConvShape& s, int m0, int n0, int t0, int t1,
                                              HalfStages<BM, BN>& sm, float (*acc)[BN / 8][4],
                                              float (*rows)[2], float (*squares)[2])
{
    constexpr int MT = BM / 64, NT = BN / 8;           // 16x8 MMA tiles per warp
    constexpr int A_PER = BM / 32, B_PER = BN / 32;    // 16-byte copies per thread per k-step
    const int tid = threadIdx.x, chunk = tid % 4;      // this thread's 8 of the step's 32 k: always the same
    const int M = s.N * s.Ho * s.Wo, K = s.KH * s.KW * s.C, HWo = s.Ho * s.Wo;
    const int Hl = s.H << s.up, Wl = s.W << s.up;      // the logical (upsampled) input size

    // The output pixels this thread gathers for (rows tid/4 + 32i of the tile): image and window origin.
    int img[A_PER], iy0[A_PER], ix0[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
        const int m = m0 + tid / 4 + 32 * i;
        img[i] = m < M ? m / HWo : -1;
        const int r = m - img[i] * HWo, oy = r / s.Wo;
        iy0[i] = oy * s.stride - s.pad;
        ix0[i] = (r - oy * s.Wo) * s.stride - s.pad;
    }

    auto load = [&](int stage, int t) {
        const int k = t * HBK + chunk * 8;
        const int tap = k / s.C, c = k - tap * s.C, ky = tap / s.KW, kx = tap - ky * s.KW;
        const bool first = c < s.C1;  // which of the two concatenated images holds channel c
        const half_t* src0 = first ? x + c : x2 + (c - s.C1);
        const int pitch = first ? s.C1 : s.C - s.C1;  // channels per pixel of that image
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int iy = iy0[i] + ky, ix = ix0[i] + kx;
            const bool ok = k < K && img[i] >= 0 && iy >= 0 && iy < Hl && ix >= 0 && ix < Wl;
            const half_t* src = ok ? src0 + (((long long)img[i] * s.H + (iy >> s.up)) * s.W + (ix >> s.up)) * pitch : x;
            cp_async16(&sm.a[stage][tid / 4 + 32 * i][chunk * 8], src, ok ? 16 : 0);
        }
#pragma unroll
        for (int j = 0; j < B_PER; ++j) {
            const int n = n0 + tid / 4 + 32 * j;
            const bool ok = k < K && n < s.O;
            cp_async16(&sm.b[stage][tid / 4 + 32 * j][chunk * 8], ok ? w + (long long)n * K + k : w, ok ? 16 : 0);
        }
    };

    const int lane = tid % 32, wm = tid / 32 * (BM / 4);
#pragma unroll
    for (int st = 0; st < HSTAGES - 1; ++st) {
        if (t0 + st < t1) load(st, t0 + st);
        cp_async_commit();  // an empty group when there is no step: keeps the wait counts uniform
    }
    for (int t = t0; t < t1; ++t) {
        cp_async_wait<HSTAGES - 2>();  // step t has landed (for this thread's copies) ...
        __syncthreads();               // ... and for everyone's; and step t-1's buffer is free again
        const int next = t + HSTAGES - 1;
        if (next < t1) load((next - t0) % HSTAGES, next);
        cp_async_commit();
        const int st = (t - t0) % HSTAGES;
#pragma unroll
        for (int kk = 0; kk < HBK; kk += 16) {
            // ldmatrix: one instruction per 16x16 A fragment, and per two 16x8 B fragments
            unsigned a[MT][4], b[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], &sm.a[st][wm + mt * 16 + lane % 16][kk + lane / 16 * 8]);
            if (LN)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int r = 0; r < 4; ++r) {  // a[0], a[2]: row g; a[1], a[3]: row g + 8
                        const float2 f = unpack2<BF16>(a[mt][r]);
                        rows[mt][r & 1] += f.x + f.y;
                        squares[mt][r & 1] += f.x * f.x + f.y * f.y;
                    }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned r[4];
                ldmatrix_x4(r, &sm.b[st][np * 16 + lane % 8 + lane / 16 * 8][kk + lane / 8 % 2 * 8]);
                b[2 * np][0] = r[0];
                b[2 * np][1] = r[1];
                b[2 * np + 1][0] = r[2];
                b[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma_16816<BF16>(acc[mt][nt], a[mt], b[nt]);
        }
    }
    cp_async_wait<0>();  // no copy may still target shared memory when the block moves on
}

// Finish 8 neighbouring outputs (m, n .. n+7) of the product (tile-global coordinates) and store them with
// one 16-byte write: the LayerNorm (colsum, with row m's mean and rstd), bias, addend and residual in
// float32, or GEGLU's 4 outputs from 4 (value, gate).
template <int BF16, int GEGLU>
__device__ __forceinline__ void half_store8(const ConvShape& s, const float* __restrict__ colsum, float mean,
                                            float rstd, const float* __restrict__ bias,
                                            const float* __restrict__ cadd, const half_t* __restrict__ residual,
                                            half_t* __restrict__ out, int m, int n, float* v)
{
    if (m >= s.N * s.Ho * s.Wo || n >= s.O) return;
    if (colsum)
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = rstd * (v[i] - mean * colsum[n + i]);
    if (bias)
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += bias[n + i];
    if (GEGLU) {  // columns (n + 2i, n + 2i + 1) are value and gate of output feature n/2 + i
        *(uint2*)(out + (long long)m * (s.O / 2) + n / 2) = make_uint2(
            pack2<BF16>(v[0] * gelu_f(v[1]), v[2] * gelu_f(v[3])), pack2<BF16>(v[4] * gelu_f(v[5]), v[6] * gelu_f(v[7])));
        return;
    }
    const long long at = (long long)m * s.O + n;
    if (cadd) {
        const float* c = cadd + (long long)(m / (s.Ho * s.Wo)) * s.O + n;
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += c[i];
    }
    if (residual) {
        float r[8];
        load8<BF16>(residual + at, r);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += r[i];
    }
    store8<BF16>(out + at, v);
}

// Grid (pixel tiles, channel tiles, KS). The finished tile goes through shared memory (the pipeline's
// buffers, free by then) so each thread writes 16 contiguous bytes, not a fragment's scattered pairs.
// KS > 1 (Hopper, small-tile kernels only): the KS blocks of a cluster each multiply a slice of K and add
// their staged partial tiles through distributed shared memory, as gemm.cu's gemm_tile does: minisd's small
// images give too few tiles to fill 132 SMs otherwise (with LN, the row sums of each slice likewise).
template <int BM, int BN, int BF16, int GEGLU, int KS, int LN>
__global__ void CLUSTER_DIMS(KS) __launch_bounds__(HG_THREADS)
    half_gemm_kernel(const half_t* __restrict__ x, const half_t* __restrict__ x2, const half_t* __restrict__ w,
                     const float* __restrict__ bias, const float* __restrict__ colsum, float eps,
                     const float* __restrict__ cadd, const half_t* __restrict__ residual, half_t* __restrict__ out,
                     int N, int H, int W, int C, int C1, int O, int KH, int KW, int stride, int pad, int Ho, int Wo,
                     int up)
{
    const ConvShape s{N, H, W, C, C1, O, KH, KW, stride, pad, Ho, Wo, up};
    constexpr int MT = BM / 64, NT = BN / 8, LDC = BN + 4;  // LDC: staged row pitch in floats
    __shared__ __align__(16) HalfStages<BM, BN> sm;
    static_assert(BM * LDC * sizeof(float) <= sizeof(HalfStages<BM, BN>), "the staged tile must fit");
    float* tile = reinterpret_cast<float*>(&sm);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int steps = (s.KH * s.KW * s.C + HBK - 1) / HBK;
    const int g = (threadIdx.x % 32) / 4, q = threadIdx.x % 4, wm = threadIdx.x / 32 * (BM / 4);
    const unsigned rank = KS > 1 ? cluster_rank() : 0;
    const int per = (steps + KS - 1) / KS;
    float acc[MT][NT][4] = {}, rows[MT][2] = {}, squares[MT][2] = {};
    half_mainloop<BM, BN, BF16, LN>(x, x2, w, s, m0, n0, rank * per, min(steps, (int)(rank + 1) * per), sm, acc,
                                    rows, squares);
    __shared__ float row_sums[2][LN ? BM : 1];  // LN: each row's sum of x and of x^2 (this block's slice of K)
    if (LN)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float r = rows[mt][h], q2 = squares[mt][h];
#pragma unroll
                for (int off = 1; off < 4; off *= 2) {  // the 4 lanes of a row hold different k
                    r += __shfl_xor_sync(0xffffffffu, r, off);
                    q2 += __shfl_xor_sync(0xffffffffu, q2, off);
                }
                if (q == 0) {
                    row_sums[0][wm + mt * 16 + g + 8 * h] = r;
                    row_sums[1][wm + mt * 16 + g + 8 * h] = q2;
                }
            }

    __syncthreads();  // every warp is done reading the last stage
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i)
                tile[(wm + mt * 16 + g + (i >= 2 ? 8 : 0)) * LDC + nt * 8 + 2 * q + (i & 1)] = acc[mt][nt][i];
    if (KS > 1) cluster_sync();  // every partial tile written, and visible to the whole cluster
    else __syncthreads();
    for (int e = rank * HG_THREADS + threadIdx.x; e < BM * BN / 8; e += KS * HG_THREADS) {
        const int m = e / (BN / 8), n = e % (BN / 8) * 8;
        float v[8] = {};
#pragma unroll
        for (int r = 0; r < KS; ++r)  // always in rank order: the same sum on every run
#pragma unroll
            for (int i = 0; i < 8; i += 4) {
                const float* p = &tile[m * LDC + n + i];
                const float4 f = KS > 1 ? load4_from_block(p, r) : *(const float4*)p;
                v[i] += f.x;
                v[i + 1] += f.y;
                v[i + 2] += f.z;
                v[i + 3] += f.w;
            }
        float mean = 0.0f, rstd = 1.0f;
        if (LN) {
            float sum = 0.0f, sum2 = 0.0f;
            for (int r = 0; r < KS; ++r) {
                sum += KS > 1 ? load_from_block(&row_sums[0][m], r) : row_sums[0][m];
                sum2 += KS > 1 ? load_from_block(&row_sums[1][m], r) : row_sums[1][m];
            }
            mean = sum / s.C;
            rstd = rsqrtf(fmaxf(sum2 / s.C - mean * mean, 0.0f) + eps);
        }
        half_store8<BF16, GEGLU>(s, LN ? colsum : nullptr, mean, rstd, bias, cadd, residual, out, m0 + m, n0 + n, v);
    }
    if (KS > 1) cluster_sync();  // keep our shared memory alive until the other blocks have read it
}
