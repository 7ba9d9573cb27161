// random.cu: minisd's counter-based normal generator (the algorithm is defined in minisd/ops/rng.py).
//
// Number i of a seed is a pure function of (key, i): SplitMix64 output i, i.e. mix64(key + (i + 1) * GOLDEN).
// No state, no sequence: thread p computes pair p (two uniforms -> two normals by Box-Muller) on its own,
// and the numpy backend computes the very same bits. Box-Muller runs in float64 and rounds to float32,
// so CUDA's and numpy's log/cos/sin (which may differ in the last float64 bit) agree after rounding.
// Compiled with -fmad=false: a fused multiply-add would round differently from numpy's two operations.

#define GOLDEN 0x9E3779B97F4A7C15ull

__device__ __forceinline__ unsigned long long mix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;  // unsigned arithmetic wraps mod 2^64, as in rng.py
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void randn_kernel(float* __restrict__ out, long long n, unsigned long long key)
{
    const long long pairs = (n + 1) / 2;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < pairs;
         p += (long long)gridDim.x * blockDim.x) {
        const unsigned long long i = 2ull * (unsigned long long)p;
        const unsigned long long b1 = mix64(key + (i + 1ull) * GOLDEN);
        const unsigned long long b2 = mix64(key + (i + 2ull) * GOLDEN);
        const double u1 = ((double)(b1 >> 11) + 1.0) * 0x1p-53;  // (0, 1]: log never sees 0
        const double u2 = (double)(b2 >> 11) * 0x1p-53;
        const double r = sqrt(-2.0 * log(u1));
        const double theta = 2.0 * 3.141592653589793 * u2;
        out[i] = (float)(r * cos(theta));
        if (i + 1 < (unsigned long long)n) out[i + 1] = (float)(r * sin(theta));
    }
}
