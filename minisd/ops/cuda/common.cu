// common.cu: device helpers every kernel file uses; cupy_ops compiles it first, before any other file.
// No #include: NVRTC compiles these files as they are, with no CUDA headers to find.

#define NEG_INF __int_as_float(0xff800000)  // -inf (NVRTC has no math.h, so no INFINITY)

// max that keeps a NaN, as torch's does: fmaxf(NaN, x) is x, so a softmax would quietly skip the NaN.
__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float silu_f(float v) { return v / (1.0f + __expf(-v)); }

// Exact GELU, x * Phi(x), with erfcf: it keeps its relative accuracy in the far left tail.
__device__ __forceinline__ float gelu_f(float v) { return 0.5f * v * erfcf(-v * 0.70710678118654752f); }

// Thread-block clusters (split-K reductions through distributed shared memory, see gemm_tile in gemm.cu).
// Clusters need sm_90 (Hopper) or newer; the host splits K only there (KS > 1), so older GPUs compile the
// kernels without the cluster attribute and never reach these helpers.
#if __CUDA_ARCH__ >= 900
#define CLUSTER_DIMS(ks) __cluster_dims__(1, 1, ks)

__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ unsigned cluster_rank()
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Read a float at the same shared-memory offset as p, in the block of rank `rank` of this cluster.
__device__ __forceinline__ float load_from_block(const float* p, unsigned rank)
{
    unsigned local = (unsigned)__cvta_generic_to_shared(p), remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

// The same for 4 floats at once (p 16-byte aligned): a quarter of the remote requests.
__device__ __forceinline__ float4 load4_from_block(const float* p, unsigned rank)
{
    unsigned local = (unsigned)__cvta_generic_to_shared(p), remote;
    float4 v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(remote)
                 : "memory");
    return v;
}
#else
#define CLUSTER_DIMS(ks)
__device__ __forceinline__ void cluster_sync() { __trap(); }
__device__ __forceinline__ unsigned cluster_rank() { return 0; }
__device__ __forceinline__ float load_from_block(const float* p, unsigned) { return *p; }
__device__ __forceinline__ float4 load4_from_block(const float* p, unsigned) { return *(const float4*)p; }
#endif
