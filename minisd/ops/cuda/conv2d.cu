// conv2d.cu: convolution as an implicit GEMM, on the tile core of gemm.cu (compiled right after it).
//
//   out[n][o][oy][ox] = bias[o] + sum_{c,ky,kx} w[o][c][ky][kx] * x[n][c][oy*stride - pad + ky][ox*stride - pad + kx]
//
// Read it as a matrix product C = A * B with
//   A = w viewed as (O, K), K = C*kh*kw: already row-major in memory;
//   B = the "im2col" matrix (K, P), P = N*Ho*Wo output pixels: column p holds every input value that
//       output pixel p looks at. B is never built in memory: the loader gathers each BK x BN tile straight
//       from x into registers (zero where the window hangs over the padding).
// Each block computes BM output channels x BN output pixels; the bias add (and, optionally, a residual of the
// output's shape: a ResNet block's skip connection) is fused into the store.

// KSIZE: the kernel's height and width when known at compile time (3 or 1 in minisd), so the k -> (c, ky, kx)
// divisions become multiplications; 0 reads them from KH, KW at run time.
template <int BM, int BN, int KSIZE>
struct ConvLoader {
    static constexpr bool B_K_FASTEST = false;  // gather along pixels: neighbouring threads, neighbouring x
    const float* __restrict__ w;
    int C, H, W, O, KH, KW, K, m0;
    // THREADS is a multiple of BN, so each thread always gathers the same output pixel (column n):
    // its image and window origin are worked out once, not per element.
    const float* xn;  // x + image * C*H*W
    int iy0, ix0;     // top-left corner of the pixel's input window (may be negative: padding)
    bool pixel_ok;    // the column is a real pixel (the last tile may run past P)

    __device__ __forceinline__ void load(int k0, float* ra, float* rb) const
    {
        const int tid = threadIdx.x;
#pragma unroll
        for (int i = 0; i < BM * BK / THREADS; ++i) {
            const int e = tid + i * THREADS, m = m0 + e / BK, k = k0 + e % BK;
            ra[i] = (m < O && k < K) ? w[(long long)m * K + k] : 0.0f;
        }
        const int kh = KSIZE ? KSIZE : KH, kw = KSIZE ? KSIZE : KW, khw = kh * kw;
#pragma unroll
        for (int i = 0; i < BK * BN / THREADS; ++i) {
            const int k = k0 + (tid + i * THREADS) / BN;
            float v = 0.0f;
            if (pixel_ok && k < K) {
                const int c = k / khw, r = k - c * khw, ky = r / kw, kx = r - ky * kw;
                const int iy = iy0 + ky, ix = ix0 + kx;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = xn[((long long)c * H + iy) * W + ix];
            }
            rb[i] = v;
        }
    }
};

// Grid (pixel tiles, channel tiles, KS).
template <int BM, int BN, int MODE, int KS, int KSIZE>
__global__ void CLUSTER_DIMS(KS) __launch_bounds__(THREADS)
    conv2d_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                  const float* __restrict__ residual, float* __restrict__ out, int N, int C, int H, int W, int O,
                  int KH, int KW, int stride, int pad, int Ho, int Wo)
{
    const int K = C * KH * KW, HWo = Ho * Wo, P = N * HWo;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    ConvLoader<BM, BN, KSIZE> ld;
    ld.w = w;
    ld.C = C;
    ld.H = H;
    ld.W = W;
    ld.O = O;
    ld.KH = KH;
    ld.KW = KW;
    ld.K = K;
    ld.m0 = m0;
    const int p = n0 + threadIdx.x % BN;  // this thread's gather column
    ld.pixel_ok = p < P;
    const int img = ld.pixel_ok ? p / HWo : 0, rem = p - img * HWo;
    ld.xn = x + (long long)img * C * H * W;
    ld.iy0 = (rem / Wo) * stride - pad;
    ld.ix0 = (rem % Wo) * stride - pad;

    gemm_tile<BM, BN, MODE, KS>(ld, K, [&](int m, int n, float v) {
        const int o = m0 + m, q = n0 + n;
        if (o < O && q < P) {
            const int qi = q / HWo, qr = q - qi * HWo;
            const long long at = ((long long)qi * O + o) * HWo + qr;
            if (bias) v += bias[o];
            if (residual) v += residual[at];
            out[at] = v;
        }
    });
}
