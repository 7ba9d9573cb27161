// gemm.cu: the tiled matrix-product core shared by linear() (this file) and conv2d() (conv2d.cu, which
// cupy_ops compiles after this file so it can reuse the core).
//
// One block of 128 threads computes a BM x BN tile of C = A * B and walks K in steps of BK = 16:
//   A tile  BM x BK (k contiguous)  ->  shared a[BM][BK + 4]
//   B tile  BK x BN (n contiguous)  ->  shared b[BK][BN + 8]
// The paddings (+4, +8) spread the tensor-core fragment reads over all 32 banks (no conflicts).
// Two shared stages: while the warps multiply stage s, the next tile is already loading into registers,
// so global-memory latency hides behind arithmetic and one __syncthreads per K step suffices.
//
// Small but deep products (most of minisd's) also split K across a cluster of blocks: see gemm_tile.
//
// MODE picks the arithmetic:
//   0  FP32 FMAs on the CUDA cores: float32, the reference path.
//   1  TF32 tensor cores (mma.sync m16n8k8): 10-bit mantissas, relative error ~3e-4, fastest.
//   3  3xTF32: a = big + small with big, small both TF32; big*big + big*small + small*big gets close to
//      float32 (1e-6 .. 2e-5 of max|C| for K up to 2304: the tensor cores truncate as they add) at three
//      times the MMA work.
// Measured on an H100 at minisd's sizes the three modes take about the same time: these products are so
// small that latency (loads, barriers, launches), not arithmetic, sets the pace.

#define BK 16
#define THREADS 128

template <int BM, int BN>
struct Stage {
    float a[BM][BK + 4];
    float b[BK][BN + 8];
};

// TF32 tensor cores need sm_80 (Ampere) or newer. The host never picks MODE 1 or 3 on older GPUs; the
// guards only let this file compile there (with the FP32 path).
#if __CUDA_ARCH__ >= 800
#define HAS_TF32_MMA 1
#endif

// Round a float to TF32 (round to nearest, ties away) and return its bits, as mma.sync wants them.
__device__ __forceinline__ unsigned to_tf32(float x)
{
    unsigned r = __float_as_uint(x);
#ifdef HAS_TF32_MMA
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#endif
    return r;
}

// d += a * b for one 16x8 (m x n) by 8 (k) tile, one warp, float32 accumulate.
__device__ __forceinline__ void mma_tf32(float* d, const unsigned* a, const unsigned* b)
{
#ifdef HAS_TF32_MMA
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

// Split x into TF32 big + small (3xTF32). small carries the 13 mantissa bits that big drops.
__device__ __forceinline__ void split_tf32(float x, unsigned& big, unsigned& small)
{
    big = to_tf32(x);
    small = to_tf32(x - __uint_as_float(big));
}

// One BK step of the block tile product, from shared memory into the per-thread accumulators.
// Every mode keeps BM*BN/THREADS accumulators per thread; acc_coord() says which (m, n) each one is.
template <int BM, int BN, int MODE>
__device__ __forceinline__ void tile_product(const Stage<BM, BN>& s, float* acc)
{
    const int tid = threadIdx.x;
    if (MODE == 0) {
        // 8 x 16 threads, each owns rows ty + 8i and columns tx + 16j (strided: conflict-free reads,
        // coalesced stores).
        constexpr int TM = BM / 8, TN = BN / 16;
        const int tx = tid % 16, ty = tid / 16;
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = s.a[ty + 8 * i][k];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = s.b[k][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i * TN + j] = fmaf(a[i], b[j], acc[i * TN + j]);
        }
    } else {
        // 4 warps in a 2 x 2 grid; each warp owns a (BM/2) x (BN/2) sub-tile = MT x NT mma tiles of 16x8.
        constexpr int MT = BM / 32, NT = BN / 16;
        const int warp = tid / 32, lane = tid % 32;
        const int wm = (warp / 2) * (BM / 2), wn = (warp % 2) * (BN / 2);
        const int g = lane / 4, t4 = lane % 4;  // the PTX fragment layout speaks of groupID, threadID_in_group
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
            unsigned ab[MT][4], as[MT][4], bb[NT][2], bs[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int r = wm + mt * 16 + g;
                const float x[4] = {s.a[r][kk + t4], s.a[r + 8][kk + t4], s.a[r][kk + t4 + 4],
                                    s.a[r + 8][kk + t4 + 4]};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    if (MODE == 3) split_tf32(x[i], ab[mt][i], as[mt][i]);
                    else ab[mt][i] = to_tf32(x[i]);
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int c = wn + nt * 8 + g;
                const float y[2] = {s.b[kk + t4][c], s.b[kk + t4 + 4][c]};
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    if (MODE == 3) split_tf32(y[i], bb[nt][i], bs[nt][i]);
                    else bb[nt][i] = to_tf32(y[i]);
                }
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    float* d = acc + (mt * NT + nt) * 4;
                    if (MODE == 3) {  // small terms first: they are the tiny ones
                        mma_tf32(d, as[mt], bb[nt]);
                        mma_tf32(d, ab[mt], bs[nt]);
                    }
                    mma_tf32(d, ab[mt], bb[nt]);
                }
        }
    }
}

// Which tile element (m, n) accumulator number idx of this thread holds.
template <int BM, int BN, int MODE>
__device__ __forceinline__ void acc_coord(int idx, int& m, int& n)
{
    const int tid = threadIdx.x;
    if (MODE == 0) {
        constexpr int TN = BN / 16;
        m = tid / 16 + 8 * (idx / TN);
        n = tid % 16 + 16 * (idx % TN);
    } else {
        constexpr int NT = BN / 16;
        const int warp = tid / 32, lane = tid % 32;
        const int tile = idx / 4, i = idx % 4;
        m = (warp / 2) * (BM / 2) + (tile / NT) * 16 + lane / 4 + (i >= 2 ? 8 : 0);
        n = (warp % 2) * (BN / 2) + (tile % NT) * 8 + (lane % 4) * 2 + (i & 1);
    }
}

// The K loop over tile steps [t0, t1) (a step is BK values of k). Loader::load(k0, ra, rb) fetches the A
// and B tiles starting at k0 into registers, zero outside the matrices: ra[i] is A tile element
// e = threadIdx.x + i * THREADS (m = e / BK, k = e % BK); rb[i] is B tile element e with (k = e / BN,
// n = e % BN), or, when Loader::B_K_FASTEST, (n = e / BK, k = e % BK): whichever order reads global memory
// in contiguous runs. Each op brings its own loader.
template <int BM, int BN, int MODE, class Loader>
__device__ __forceinline__ void gemm_mainloop(const Loader& ld, int t0, int t1, float* acc)
{
    constexpr int A_PER = BM * BK / THREADS, B_PER = BK * BN / THREADS;
    __shared__ Stage<BM, BN> stage[2];
    const int tid = threadIdx.x;
    float ra[A_PER], rb[B_PER];

    auto store = [&](Stage<BM, BN>& s) {
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            const int e = tid + i * THREADS;
            s.a[e / BK][e % BK] = ra[i];
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            const int e = tid + i * THREADS;
            if (Loader::B_K_FASTEST) s.b[e % BK][e / BK] = rb[i];
            else s.b[e / BN][e % BN] = rb[i];
        }
    };

    if (t0 >= t1) return;  // an empty K slice (split-K remainder): same branch for the whole block
    ld.load(t0 * BK, ra, rb);
    store(stage[0]);
    __syncthreads();
    for (int t = t0; t < t1; ++t) {
        const bool more = t + 1 < t1;
        if (more) ld.load((t + 1) * BK, ra, rb);  // in flight while we multiply
        tile_product<BM, BN, MODE>(stage[(t - t0) & 1], acc);
        if (more) store(stage[(t + 1 - t0) & 1]);  // the other stage: nobody reads it now
        __syncthreads();
    }
}

// Split-K on a thread-block cluster (Hopper). minisd's matrices are small (M x N of a few thousand) but
// deep (K up to 2304): one block per output tile would leave most of the 132 SMs idle, each block walking
// K alone. So KS blocks (one cluster, along grid z) share each tile: block r multiplies its slice of K,
// writes its partial tile to its own shared memory, and after a cluster barrier every block adds up one
// KS-th of the tile from all KS shared memories (distributed shared memory), always in rank order:
// deterministic, no atomics, no workspace in global memory, one launch.
//

// The whole tile product: K loop (split KS ways across the cluster) and the reduction; store(m, n, value)
// then writes each finished tile element (tile coordinates) exactly once.
template <int BM, int BN, int MODE, int KS, class Loader, class Store>
__device__ __forceinline__ void gemm_tile(const Loader& ld, int K, const Store& store)
{
    float acc[BM * BN / THREADS] = {};
    const int steps = (K + BK - 1) / BK;
    if constexpr (KS == 1) {
        gemm_mainloop<BM, BN, MODE>(ld, 0, steps, acc);
#pragma unroll
        for (int idx = 0; idx < BM * BN / THREADS; ++idx) {
            int m, n;
            acc_coord<BM, BN, MODE>(idx, m, n);
            store(m, n, acc[idx]);
        }
    } else {
        __shared__ float partial[BM * BN];
        const unsigned rank = cluster_rank();
        const int per = (steps + KS - 1) / KS;
        gemm_mainloop<BM, BN, MODE>(ld, rank * per, min(steps, (int)(rank + 1) * per), acc);
#pragma unroll
        for (int idx = 0; idx < BM * BN / THREADS; ++idx) {
            int m, n;
            acc_coord<BM, BN, MODE>(idx, m, n);
            partial[m * BN + n] = acc[idx];
        }
        cluster_sync();  // every partial tile written, and visible to the whole cluster
        for (int e = rank * THREADS + threadIdx.x; e < BM * BN; e += KS * THREADS) {
            float v = 0.0f;
#pragma unroll
            for (int r = 0; r < KS; ++r) v += load_from_block(&partial[e], r);
            store(e / BN, e % BN, v);
        }
        cluster_sync();  // keep our shared memory alive until the other blocks have read it
    }
}

// linear: out[m][n] = sum_k x[m][k] * w[n][k] + bias[n] (+ residual[m][n]).  A = x, B[k][n] = w[n][k].
template <int BM, int BN>
struct LinearLoader {
    static constexpr bool B_K_FASTEST = true;  // w rows are k-contiguous: read them along k
    const float* __restrict__ x;
    const float* __restrict__ w;
    int M, N, K, m0, n0;

    __device__ __forceinline__ void load(int k0, float* ra, float* rb) const
    {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < BM * BK / THREADS; ++i) {
            const int e = tid + i * THREADS, m = m0 + e / BK, k = k0 + e % BK;
            ra[i] = (m < M && k < K) ? x[(long long)m * K + k] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < BK * BN / THREADS; ++i) {
            const int e = tid + i * THREADS, n = n0 + e / BK, k = k0 + e % BK;
            rb[i] = (n < N && k < K) ? w[(long long)n * K + k] : 0.0f;
        }
    }
};

// Grid (row tiles, feature tiles, KS): rows (tokens, possibly many) on x, which allows 2^31 - 1 blocks.
template <int BM, int BN, int MODE, int KS>
__global__ void CLUSTER_DIMS(KS) __launch_bounds__(THREADS)
    linear_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                  const float* __restrict__ residual, float* __restrict__ out, int M, int N, int K)
{
    const LinearLoader<BM, BN> ld{x, w, M, N, K, (int)blockIdx.x * BM, (int)blockIdx.y * BN};
    gemm_tile<BM, BN, MODE, KS>(ld, K, [&](int m, int n, float v) {
        m += ld.m0;
        n += ld.n0;
        if (m < M && n < N) {
            if (bias) v += bias[n];
            if (residual) v += residual[(long long)m * N + n];
            out[(long long)m * N + n] = v;
        }
    });
}
