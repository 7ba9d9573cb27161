// half_elementwise.cu: moving tensors into and out of the half path, and the UNet's skip concatenation.
// Grid-stride loops (GRID_STRIDE): any grid size covers any n.

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

template <int BF16>
__global__ void float_to_half_kernel(const float* __restrict__ x, half_t* __restrict__ out, long long n)
{
    GRID_STRIDE(i, n) out[i] = to_half<BF16>(x[i]);
}

template <int BF16>
__global__ void half_to_float_kernel(const half_t* __restrict__ x, float* __restrict__ out, long long n)
{
    GRID_STRIDE(i, n) out[i] = to_float<BF16>(x[i]);
}

// float32 (N, C, H, W) -> half (N, H, W, Cp), channels C .. Cp-1 zero (Cp: C rounded up to 8 for the GEMM).
template <int BF16>
__global__ void nchw_to_nhwc_kernel(const float* __restrict__ x, half_t* __restrict__ out, long long n, int C,
                                    int Cp, int HW)
{
    GRID_STRIDE(i, n)
    {
        const int c = (int)(i % Cp);
        const long long p = i / Cp, img = p / HW;
        out[i] = to_half<BF16>(c < C ? x[(img * C + c) * HW + p % HW] : 0.0f);
    }
}

// half (N, H, W, Cp) -> float32 (N, C, H, W): the first C channels.
template <int BF16>
__global__ void nhwc_to_nchw_kernel(const half_t* __restrict__ x, float* __restrict__ out, long long n, int C,
                                    int Cp, int HW)
{
    GRID_STRIDE(i, n)
    {
        const long long plane = i / HW, img = plane / C;
        const int c = (int)(plane % C);
        out[i] = to_float<BF16>(x[(img * HW + i % HW) * Cp + c]);
    }
}

// (P, Ca) and (P, Cb) -> (P, Ca + Cb) per pixel, 8 channels (16 bytes) at a time: Ca, Cb multiples of 8.
extern "C" __global__ void concat_nhwc_kernel(const uint4* __restrict__ a, const uint4* __restrict__ b, uint4* __restrict__ out,
                                   long long n, int ca8, int cb8)
{
    GRID_STRIDE(i, n)
    {
        const long long p = i / (ca8 + cb8);
        const int c = (int)(i - p * (ca8 + cb8));
        out[i] = c < ca8 ? a[p * ca8 + c] : b[p * cb8 + c - ca8];
    }
}
