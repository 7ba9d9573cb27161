// attention.cu: fused scaled-dot-product attention, flash style: softmax(q k^T * scale) v without ever
// writing the Lq x Lk score matrix to memory.
//
// One block = QT = 128 / SPLIT queries of one (batch, head). SPLIT threads (8 or 16) share each query, and
// thread `part` handles keys part, part + SPLIT, part + 2 SPLIT, ... of every K/V tile. Each thread keeps
// an "online softmax" for its keys: a running max m, a running sum l = sum exp(s - m) and an output row
// acc = sum exp(s - m) v, rescaled by exp(m_old - m_new) whenever the max grows. At the end the SPLIT
// partial results of a query (adjacent lanes of one warp) are merged with warp shuffles, the same
// rescaling once more. K/V tiles of KT = 64 keys are staged in shared memory and read by all QT queries.
// SPLIT = 16 halves each thread's serial work and doubles the blocks: the host picks it when SPLIT = 8
// would leave SMs idle (minisd's attention has only B * heads * Lq / 16 = 64 blocks of work at 16x16).
//
// Layout: element strides are arguments (batch, head, row; the head dim is contiguous; v has k's), so
// one kernel reads both (B, H, L, D) and (B, L, H*D) tensors: no transposes around it.
// Scores use exp2: q is pre-multiplied by scale * log2(e), and exp2(s*log2e - m) == exp(s - m').
// Special values as torch: a NaN score poisons its row (max_nan: fmaxf would drop it), a row of -inf scores
// is 0/0 = NaN, and no keys at all (Lk = 0) is an empty weighted sum: zeros.

#define ATT_THREADS 128
#define KT 64

// DP: head_dim rounded up to 32 or 64 (registers need a compile-time size); lanes d >= D hold zeros.
template <int DP, int SPLIT>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                     float* __restrict__ out, int Lq, int Lk, int D, long long sq_b, long long sq_h,
                     long long sq_l, long long sk_b, long long sk_h, long long sk_l, long long so_b, long long so_h,
                     long long so_l, float scale_log2e)
{
    constexpr int QT = ATT_THREADS / SPLIT;
    // +1 column: the SPLIT threads of a query read SPLIT different key rows at once; the odd row pitch
    // puts them in different banks.
    __shared__ float ks[KT][DP + 1];
    __shared__ float vs[KT][DP + 1];

    const int tid = threadIdx.x, part = tid % SPLIT;
    const int b = blockIdx.z, h = blockIdx.y, row = blockIdx.x * QT + tid / SPLIT;
    const bool active = row < Lq;  // inactive threads still compute (on zeros): they take part in shuffles
    float* op = out + b * so_b + h * so_h + row * so_l;
    if (Lk == 0) {  // no keys: zeros, as torch (the merge below would compute 0/0); the whole block leaves
        if (active)
            for (int d = part; d < D; d += SPLIT) op[d] = 0.0f;
        return;
    }

    float qr[DP], acc[DP];
    const float* qp = q + b * sq_b + h * sq_h + row * sq_l;
#pragma unroll
    for (int d = 0; d < DP; ++d) {
        qr[d] = (active && d < D) ? qp[d] * scale_log2e : 0.0f;
        acc[d] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;

    const float* kb = k + b * sk_b + h * sk_h;
    const float* vb = v + b * sk_b + h * sk_h;
    for (int j0 = 0; j0 < Lk; j0 += KT) {
        for (int e = tid; e < KT * DP; e += ATT_THREADS) {  // coalesced: consecutive threads, consecutive d
            const int j = e / DP, d = e % DP;
            const bool ok = j0 + j < Lk && d < D;
            ks[j][d] = ok ? kb[(j0 + j) * sk_l + d] : 0.0f;
            vs[j][d] = ok ? vb[(j0 + j) * sk_l + d] : 0.0f;
        }
        __syncthreads();

        // Scores of this thread's keys in the tile, and their max.
        const int valid = min(KT, Lk - j0);
        float s[KT / SPLIT];
        float tile_max = NEG_INF;
#pragma unroll
        for (int i = 0; i < KT / SPLIT; ++i) {
            const int j = part + i * SPLIT;
            float dot = 0.0f;
#pragma unroll
            for (int d = 0; d < DP; ++d) dot = fmaf(qr[d], ks[j][d], dot);
            s[i] = j < valid ? dot : NEG_INF;
            tile_max = max_nan(tile_max, s[i]);
        }
        if (tile_max != NEG_INF) {  // this thread has a real key here (or a NaN, which must spread)
            const float m_new = max_nan(m, tile_max);
            const float corr = exp2f(m - m_new);  // 0 on the first tile (m = -inf)
            l *= corr;
#pragma unroll
            for (int d = 0; d < DP; ++d) acc[d] *= corr;
#pragma unroll
            for (int i = 0; i < KT / SPLIT; ++i) {
                const float p = exp2f(s[i] - m_new);  // 0 for padded keys (s = -inf)
                l += p;
                const int j = part + i * SPLIT;
#pragma unroll
                for (int d = 0; d < DP; ++d) acc[d] = fmaf(p, vs[j][d], acc[d]);
            }
            m = m_new;
        }
        __syncthreads();  // the next tile overwrites ks, vs
    }

    // Merge the SPLIT partial softmaxes of this query: common max, rescale, sum.
    float mq = m;
#pragma unroll
    for (int off = SPLIT / 2; off > 0; off /= 2) mq = max_nan(mq, __shfl_xor_sync(0xffffffffu, mq, off));
    const float w = exp2f(m - mq);  // mq is finite unless a score is NaN or inf: then the row is NaN, as torch
    l *= w;
#pragma unroll
    for (int off = SPLIT / 2; off > 0; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    const float inv_l = 1.0f / l;
#pragma unroll
    for (int d = 0; d < DP; ++d) {
        float a = acc[d] * w;
#pragma unroll
        for (int off = SPLIT / 2; off > 0; off /= 2) a += __shfl_xor_sync(0xffffffffu, a, off);
        if (active && d < D && d % SPLIT == part) op[d] = a * inv_l;  // the SPLIT threads share the stores
    }
}
