// half_attention.cu: flash attention on half-precision tensor cores: softmax(q k^T * scale) v, fused.
//
// Tokens are (B, L, H*D) with the heads in place (what the half path's linear layers write), D = 32 or 64;
// rows may be longer than H*D (ldq, ldk, ldo: row strides), so q, k and v can be column slices of one
// (B, L, 3*H*D) tensor, the output of a single projection.
// One block = 4 warps = 64 queries of one (batch, head); each warp owns 16 queries, held as MMA A fragments
// in registers for the whole run. K/V tiles of KT = 64 keys are copied to shared memory once per block and
// walked 16 keys at a time:
//   S = Q K^T   (16 x 16, fp32 accumulators: D/16 MMAs per 8 keys)
//   online softmax on S, row by row (max and sum over a row's 4 lanes by shuffles), in exp2 units
//   O += P V    (P rounded to half; the accumulator layout of S is already the A-fragment layout of P,
//                so P never leaves registers)
// Statistics (max, sum, rescaling) stay in fp32: only the MMA inputs are half.
// Special values as torch: a NaN score poisons its row (max_nan), a row of -inf scores is 0/0 = NaN, and
// no keys at all (Lk = 0) gives zeros.

#define HA_WARPS 4
#define HA_KT 64

template <int D, int BF16>
__global__ void __launch_bounds__(32 * HA_WARPS)
    half_attention_kernel(const half_t* __restrict__ q, const half_t* __restrict__ k,
                          const half_t* __restrict__ v, half_t* __restrict__ out, int Lq, int Lk, int ldq, int ldk,
                          int ldo, float scale_log2e)
{
    constexpr int KS = D / 16, DT = D / 8;  // k-steps of Q K^T, 8-wide column tiles of O
    constexpr int LDS = D + 8;              // padded rows: conflict-free fragment reads
    __shared__ __align__(16) half_t ks[HA_KT][LDS];
    __shared__ __align__(16) half_t vs[HA_KT][LDS];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int b = blockIdx.z, h = blockIdx.y;
    const int row0 = blockIdx.x * (16 * HA_WARPS) + warp * 16 + g, row1 = row0 + 8;
    q += (long long)b * Lq * ldq + h * D;
    out += (long long)b * Lq * ldo + h * D;
    k += (long long)b * Lk * ldk + h * D;
    v += (long long)b * Lk * ldk + h * D;

    unsigned qa[KS][4];  // this warp's 16 queries as A fragments (rows past Lq are zeros, never stored)
#pragma unroll
    for (int s = 0; s < KS; ++s) {
        const int c = s * 16 + 2 * t;
        qa[s][0] = row0 < Lq ? *(const unsigned*)(q + (long long)row0 * ldq + c) : 0u;
        qa[s][1] = row1 < Lq ? *(const unsigned*)(q + (long long)row1 * ldq + c) : 0u;
        qa[s][2] = row0 < Lq ? *(const unsigned*)(q + (long long)row0 * ldq + c + 8) : 0u;
        qa[s][3] = row1 < Lq ? *(const unsigned*)(q + (long long)row1 * ldq + c + 8) : 0u;
    }

    float acc[DT][4] = {};
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;  // rows g and g+8; l: this lane's share

    for (int tile = 0; tile < Lk; tile += HA_KT) {
        __syncthreads();  // the previous tile is no longer read
        for (int e = threadIdx.x; e < HA_KT * D / 8; e += 32 * HA_WARPS) {
            const int r = e / (D / 8), c = (e % (D / 8)) * 8;
            const bool ok = tile + r < Lk;
            const long long at = (long long)(tile + r) * ldk + c;
            cp_async16(&ks[r][c], ok ? k + at : k, ok ? 16 : 0);
            cp_async16(&vs[r][c], ok ? v + at : v, ok ? 16 : 0);
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        const int valid = min(HA_KT, Lk - tile);
        for (int j0 = 0; j0 < valid; j0 += 16) {
            float s[2][4] = {};
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int st = 0; st < KS; ++st) {
                    const half_t* kr = &ks[j0 + nt * 8 + g][st * 16 + 2 * t];
                    const unsigned kb[2] = {*(const unsigned*)kr, *(const unsigned*)(kr + 8)};
                    mma_16816<BF16>(s[nt], qa[st], kb);
                }
            float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int key = tile + j0 + nt * 8 + 2 * t + (i & 1);
                    s[nt][i] = key < Lk ? s[nt][i] * scale_log2e : NEG_INF;
                    if (i < 2) mx0 = max_nan(mx0, s[nt][i]);
                    else mx1 = max_nan(mx1, s[nt][i]);
                }
#pragma unroll
            for (int off = 1; off < 4; off *= 2) {  // the 4 lanes of a row: lanes 4g .. 4g+3
                mx0 = max_nan(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
                mx1 = max_nan(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
            }
            const float n0 = max_nan(m0, mx0), n1 = max_nan(m1, mx1);
            // While a row has seen only -inf, subtract 0: exp2(-inf - (-inf)) would be NaN.
            const float u0 = n0 == NEG_INF ? 0.0f : n0, u1 = n1 == NEG_INF ? 0.0f : n1;
            const float c0 = exp2f(m0 - u0), c1 = exp2f(m1 - u1);
            m0 = n0;
            m1 = n1;
            l0 *= c0;
            l1 *= c1;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                acc[dt][0] *= c0;
                acc[dt][1] *= c0;
                acc[dt][2] *= c1;
                acc[dt][3] *= c1;
            }
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    s[nt][i] = exp2f(s[nt][i] - (i < 2 ? u0 : u1));
                    if (i < 2) l0 += s[nt][i];
                    else l1 += s[nt][i];
                }
            const unsigned pa[4] = {pack2<BF16>(s[0][0], s[0][1]), pack2<BF16>(s[0][2], s[0][3]),
                                    pack2<BF16>(s[1][0], s[1][1]), pack2<BF16>(s[1][2], s[1][3])};
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                const int c = dt * 8 + g, j = j0 + 2 * t;  // B[k = key][n = d]: two keys per register
                const unsigned vb[2] = {(unsigned)vs[j][c] | ((unsigned)vs[j + 1][c] << 16),
                                        (unsigned)vs[j + 8][c] | ((unsigned)vs[j + 9][c] << 16)};
                mma_16816<BF16>(acc[dt], pa, vb);
            }
        }
    }

#pragma unroll
    for (int off = 1; off < 4; off *= 2) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float i0 = Lk == 0 ? 0.0f : 1.0f / l0, i1 = Lk == 0 ? 0.0f : 1.0f / l1;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
        const int c = dt * 8 + 2 * t;
        if (row0 < Lq) *(unsigned*)(out + (long long)row0 * ldo + c) = pack2<BF16>(acc[dt][0] * i0, acc[dt][1] * i0);
        if (row1 < Lq) *(unsigned*)(out + (long long)row1 * ldo + c) = pack2<BF16>(acc[dt][2] * i1, acc[dt][3] * i1);
    }
}
