// half.cu: what every half-precision kernel shares (compiled after common.cu, before half_*.cu).
//
// Storage: 16-bit values in `unsigned short`, fp16 (BF16 = 0) or bf16 (BF16 = 1), chosen by a template
// argument, so one kernel source serves both. Arithmetic is float32: load, convert, compute, convert, store.
// Conversions and the tensor-core MMA are inline PTX, so NVRTC needs no CUDA headers.
//
//   fp16: 10-bit mantissa (3 decimal digits), max 65504: more precise, overflows sooner.
//   bf16:  7-bit mantissa (2 digits), float32's range: never overflows where float32 does not.
//
// Half-precision tensor cores (mma.sync m16n8k16) need sm_80 (Ampere) or newer; the host refuses older GPUs.

typedef unsigned short half_t;

template <int BF16>
__device__ __forceinline__ float to_float(half_t h)
{
    if (BF16) return __uint_as_float((unsigned)h << 16);  // bf16 is the top half of a float32
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

template <int BF16>
__device__ __forceinline__ half_t to_half(float f)  // round to nearest even
{
    half_t h;
    if (BF16) asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    else asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Two values in one 32-bit register, lo in the low half: the operand format of mma.sync.
template <int BF16>
__device__ __forceinline__ unsigned pack2(float lo, float hi)
{
    return (unsigned)to_half<BF16>(lo) | ((unsigned)to_half<BF16>(hi) << 16);
}

template <int BF16>
__device__ __forceinline__ float2 unpack2(unsigned v)
{
    return make_float2(to_float<BF16>((half_t)(v & 0xffffu)), to_float<BF16>((half_t)(v >> 16)));
}

// d += a * b on the tensor cores: one warp, a 16x16 (m x k) A, a 16x8 (k x n) B, float32 accumulators.
// Fragments (g = lane / 4, t = lane % 4; each register holds two neighbouring k or n):
//   a[0]: A[g][2t..2t+1]   a[1]: A[g+8][2t..]   a[2]: A[g][2t+8..]   a[3]: A[g+8][2t+8..]
//   b[0]: B[2t..2t+1][g]   b[1]: B[2t+8..][g]
//   d[0], d[1]: D[g][2t], D[g][2t+1]            d[2], d[3]: D[g+8][2t], D[g+8][2t+1]
template <int BF16>
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b)
{
#if __CUDA_ARCH__ >= 800
    if (BF16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

// Four 8x8 matrices of 16-bit values from shared memory into one warp's registers, one instruction: lane l
// gives the address of row l % 8 of matrix l / 8, and receives, in register j, elements 2(l%4), 2(l%4)+1
// of row l / 4 of matrix j: the layout of mma.sync's fragments. Row addresses must be 16-byte aligned.
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* smem)
{
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#else
    __trap();
#endif
}

// Asynchronous 16-byte copy global -> shared (sm_80+), bypassing registers; bytes = 0 writes 16 zeros
// instead (padding, or past the end of a matrix), reading nothing.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int bytes)
{
#if __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
#else
    __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// 8 halves (one 16-byte load) -> 8 floats.
template <int BF16>
__device__ __forceinline__ void load8(const half_t* p, float* f)
{
    const uint4 u = *(const uint4*)p;
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 v = unpack2<BF16>(w[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

template <int BF16>
__device__ __forceinline__ void store8(half_t* p, const float* f)
{
    *(uint4*)p = make_uint4(pack2<BF16>(f[0], f[1]), pack2<BF16>(f[2], f[3]), pack2<BF16>(f[4], f[5]),
                            pack2<BF16>(f[6], f[7]));
}
