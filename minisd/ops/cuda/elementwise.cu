// elementwise.cu: the memory-bound ops. Each reads its inputs once and writes its output once, so the time
// is bytes / bandwidth (plus ~2 us of launch for minisd's small tensors); fusing two of them saves a pass.
// Grid-stride loops: any grid size covers any n, so the host sizes the grid for the GPU, not for n.

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void silu_kernel(const float* __restrict__ x, float* __restrict__ out, long long n)
{
    GRID_STRIDE(i, n) out[i] = silu_f(x[i]);
}

extern "C" __global__ void gelu_kernel(const float* __restrict__ x, float* __restrict__ out, long long n)
{
    GRID_STRIDE(i, n) out[i] = gelu_f(x[i]);
}

// x (rows, 2f) -> out (rows, f): out = x[:, :f] * gelu(x[:, f:]).
extern "C" __global__ void geglu_kernel(const float* __restrict__ x, float* __restrict__ out, long long n, int f)
{
    GRID_STRIDE(i, n)
    {
        const long long r = i / f, j = i - r * f;
        const float* xr = x + r * 2 * f;
        out[i] = xr[j] * gelu_f(xr[f + j]);
    }
}

// out = alpha * a + beta * b[i / inner]: inner = 1 for same shapes, H*W to add (B, C) onto (B, C, H, W)
// (the time embedding added to every pixel of a channel).
extern "C" __global__ void add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ out, long long n, long long inner, float alpha,
                                      float beta)
{
    GRID_STRIDE(i, n) out[i] = alpha * a[i] + beta * b[i / inner];
}

// Classifier-free guidance: eps = eps_u + g * (eps_c - eps_u), written as the numpy backend writes it.
extern "C" __global__ void cfg_kernel(const float* __restrict__ eu, const float* __restrict__ ec,
                                      float* __restrict__ out, long long n, float g)
{
    GRID_STRIDE(i, n) out[i] = eu[i] + g * (ec[i] - eu[i]);
}

// (NC, H, W) -> (NC, 2H, 2W): each output pixel reads its parent; consecutive threads write consecutive
// pixels (coalesced), and two neighbours read the same input (one transaction, cached).
extern "C" __global__ void upsample2x_kernel(const float* __restrict__ x, float* __restrict__ out, long long n,
                                             int H, int W)
{
    GRID_STRIDE(i, n)
    {
        const int W2 = 2 * W, H2 = 2 * H;
        const long long plane = i / ((long long)H2 * W2);
        const int r = (int)(i - plane * H2 * W2), oy = r / W2, ox = r - oy * W2;
        out[i] = x[(plane * H + oy / 2) * W + ox / 2];
    }
}

// out (N, Ca + Cb, HW) = [a (N, Ca, HW), b (N, Cb, HW)] along channels.
extern "C" __global__ void concat_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                         float* __restrict__ out, long long n, int Ca, int Cb, int HW)
{
    GRID_STRIDE(i, n)
    {
        const int C = Ca + Cb;
        const long long img = i / ((long long)C * HW);
        const int r = (int)(i - img * C * HW), c = r / HW, p = r - c * HW;
        out[i] = c < Ca ? a[(img * Ca + c) * HW + p] : b[(img * Cb + (c - Ca)) * HW + p];
    }
}

// Batched transpose (B, R, S) -> (B, S, R) through a 32 x 33 shared tile: both the read and the write are
// coalesced, and the +1 column keeps the column read free of bank conflicts. to_tokens is (B, C, HW) ->
// (B, HW, C), from_tokens the reverse. Block (32, 8); grid (ceil(S/32), ceil(R/32), B).
extern "C" __global__ void transpose_kernel(const float* __restrict__ x, float* __restrict__ out, int R, int S)
{
    __shared__ float tile[32][33];
    const long long base = (long long)blockIdx.z * R * S;
    const int r0 = blockIdx.y * 32, s0 = blockIdx.x * 32;
    for (int dy = threadIdx.y; dy < 32; dy += 8) {
        const int r = r0 + dy, s = s0 + threadIdx.x;
        if (r < R && s < S) tile[dy][threadIdx.x] = x[base + (long long)r * S + s];
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < 32; dy += 8) {
        const int s = s0 + dy, r = r0 + threadIdx.x;
        if (r < R && s < S) out[base + (long long)s * R + r] = tile[threadIdx.x][dy];
    }
}

// diffusers' sinusoidal embedding: out[b] = [cos(t f_j) | sin(t f_j)] (flip) or [sin | cos],
// f_j = exp(-ln(10000) j / (half - shift)); odd dim leaves a zero last column. Double inside: t * f reaches
// ~1000 rad, where a float32 angle is off by ~1e-4.
extern "C" __global__ void timestep_embedding_kernel(const float* __restrict__ t, float* __restrict__ out, int B,
                                                     int dim, int half, float shift, int flip)
{
    GRID_STRIDE(i, (long long)B * dim)
    {
        const int b = (int)(i / dim), j = (int)(i - (long long)b * dim);
        float v = 0.0f;
        if (j < 2 * half) {
            const int k = j < half ? j : j - half;
            const double arg = (double)t[b] * exp(-9.210340371976184 * k / (half - (double)shift));
            const bool first = j < half;
            v = (float)((first == (flip != 0)) ? cos(arg) : sin(arg));
        }
        out[i] = v;
    }
}

// One scheduler step (DDIM or DDPM, the host works out the coefficients):
//   x0 = (sample - sqrt_beta * eps) * inv_sqrt_alpha, clipped to [-clip, clip] when clip > 0
//   out = c_x0 * x0 + c_eps * eps + c_sample * sample + c_noise * noise
// without the eps term (DDPM) or the sample term (DDIM) the formula does not have: 0 * inf would be NaN.
extern "C" __global__ void scheduler_step_kernel(const float* __restrict__ sample, const float* __restrict__ eps,
                                                 const float* __restrict__ noise, float* __restrict__ out,
                                                 long long n, float sqrt_beta, float inv_sqrt_alpha, float clip,
                                                 float c_x0, float c_eps, float c_sample, float c_noise,
                                                 int with_eps, int with_sample)
{
    GRID_STRIDE(i, n)
    {
        const float s = sample[i], e = eps[i];
        float x0 = (s - sqrt_beta * e) * inv_sqrt_alpha;
        if (clip > 0.0f) x0 = x0 < -clip ? -clip : (x0 > clip ? clip : x0);  // NaN stays NaN (fminf drops it)
        float v = c_x0 * x0;
        if (with_eps) v += c_eps * e;
        if (with_sample) v += c_sample * s;
        if (noise) v += c_noise * noise[i];
        out[i] = v;
    }
}
