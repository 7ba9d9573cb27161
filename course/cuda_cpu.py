"""Run CUDA C++ kernels without a GPU: the call style of ``cupy.RawKernel``, compiled by the system C++ compiler.

On a GPU with CuPy, ``RawKernel`` and ``RawModule`` here ARE CuPy's (NVRTC compiles, the GPU runs). Without one,
the kernel source is compiled by ``g++ -std=c++20`` inside a small shim that defines what CUDA adds to C++
(``__global__``, ``threadIdx``, ``__shared__``, ``__syncthreads()``, ``atomicAdd``, ``__half``, warp shuffles...),
and launched through ctypes on numpy arrays::

    from course import cuda_cpu
    add = cuda_cpu.RawKernel(r'''
    extern "C" __global__ void add(const float* x, const float* y, float* out, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = x[i] + y[i];
    }''', "add")
    add((cuda_cpu.blocks(n, 256),), (256,), (x, y, out, np.int32(n)))   # x, y, out: cuda_cpu.xp arrays

How the CPU runs a launch: when the kernel synchronises (``__syncthreads``, shared memory, warp shuffles),
blocks run one after another and every CUDA thread of a block is a fiber (a ucontext with its own stack) on
one OS thread; ``__syncthreads()`` hands control back to a scheduler that resumes the block's threads once all
of them have arrived. Otherwise the threads of a block simply run in turn and blocks are spread over the cores. Every array travels
with guard zones on both sides, so a missing bounds check is reported as an error instead of corrupting memory,
and each argument is checked against the kernel's parameter types (CuPy would silently reinterpret the bytes).
Tensor cores (``nvcuda::wmma``) have no CPU stand-in: such code raises ``NeedsGPU``.

``COURSE_CUDA_CPU=1`` forces the CPU runner even where a GPU and CuPy are present.
"""

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import minisd.mode as mode

ON_GPU = mode.has_cupy() and os.environ.get("COURSE_CUDA_CPU") != "1"
BACKEND = "cupy" if ON_GPU else "cpu"

if ON_GPU:
    import cupy as xp
else:
    xp = np

MAX_THREADS_PER_BLOCK = 1024
GUARD_BYTES = 4096


class CompileError(RuntimeError):
    """The kernel source did not compile; the message holds the compiler's own words."""


class LaunchError(RuntimeError):
    """A launch was refused (bad configuration or arguments) or the kernel touched memory it should not."""


class NeedsGPU(RuntimeError):
    """The code uses hardware that has no CPU stand-in (tensor cores)."""


def blocks(n, threads):
    """How many blocks of ``threads`` threads cover ``n`` elements: ceil(n / threads)."""
    return (int(n) + threads - 1) // threads


def asnumpy(a):
    """Bring an array back to the host as numpy (a no-op for numpy arrays)."""
    if ON_GPU:
        return xp.asnumpy(a)
    return np.asarray(a)


def synchronize():
    """Wait for the GPU to finish (the CPU runner is synchronous already)."""
    if ON_GPU:
        xp.cuda.get_current_stream().synchronize()


def RawKernel(code, name, options=(), strict=False, **kwargs):  # noqa: N802  (named like cupy.RawKernel on purpose)
    """``cupy.RawKernel`` on a GPU; otherwise the same kernel compiled for the CPU.

    ``strict=True`` (the grader's, CPU only): after each launch ``kernel.counts`` holds every thread's global
    reads and writes per pointer parameter, and a block whose threads reach ``__syncthreads()`` different
    numbers of times raises LaunchError.
    """
    if ON_GPU:
        return xp.RawKernel(code, name, options=tuple(options), **kwargs)
    return CpuRawKernel(code, name, options, strict=strict)


def global_array(module, name, shape, dtype=np.float32):
    """An array viewing the module's ``__constant__`` array ``name``: fill it (``a[...] = w``) before a launch.

    On a GPU it wraps ``module.get_global(name)`` (constant memory); on the CPU, the array in the compiled code.
    """
    if isinstance(module, CpuRawModule):
        return module.get_global_array(name, shape, dtype)
    return xp.ndarray(shape, dtype, memptr=module.get_global(name))


def RawModule(code, options=(), name_expressions=None, **kwargs):  # noqa: N802
    """``cupy.RawModule`` on a GPU; otherwise a CPU module with the same ``get_function``."""
    if ON_GPU:
        return xp.RawModule(code=code, options=tuple(options), name_expressions=name_expressions, **kwargs)
    return CpuRawModule(code, options, name_expressions)


# ----------------------------------------------------------------------------------------------------------
# The shim: what nvcc/NVRTC know and g++ does not. Kept small on purpose: read it to see what CUDA adds to C++.
# ----------------------------------------------------------------------------------------------------------
SHIM = r"""
#include <algorithm>
#include <cassert>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static          /* blocks run one at a time, so one copy serves the running block */
#define __constant__
#define __restrict__ __restrict

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
static constexpr int warpSize = 32;

// When threads synchronise, every CUDA thread of the block is a fiber (ucontext) on one OS thread:
// __syncthreads() and warp operations hand control back to a scheduler, which resumes the waiting threads
// once every thread that has not returned has arrived (threads that returned no longer count, as on a GPU).
namespace cuda_cpu {
enum Wait { READY, AT_BLOCK, AT_WARP, DONE };
struct Fiber { ucontext_t ctx; int wait; unsigned barriers; };
thread_local ucontext_t scheduler;
thread_local Fiber* current = nullptr;                   // the running fiber; null when threads need no sync
thread_local unsigned long long* warp_slots = nullptr;  // 32 exchange slots of this thread's warp
thread_local unsigned lane = 0;
char* dynamic_smem = nullptr;                             // extern __shared__ arrays point here
inline void wait_at(int where) { current->wait = where; swapcontext(&current->ctx, &scheduler); }

// Strict mode (the grader's): kernel pointer parameters become gptr<T>, which count each thread's global reads
// and writes, and a block whose threads reached __syncthreads() different numbers of times fails.
inline unsigned* traffic = nullptr;                        // [parameter][thread of the grid][read, write]
inline unsigned long long traffic_threads = 0;
inline bool count_barriers = false;
inline long long barrier_report[4];                        // thread, its count, other thread, its count
inline unsigned long long grid_thread() {
    unsigned long long b = ((unsigned long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    return b * blockDim.x * blockDim.y * blockDim.z + (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
}
inline void count(int slot, int kind) {
    if (traffic) traffic[(slot * traffic_threads + grid_thread()) * 2 + kind]++;
}
template <class T> struct gref {                           // one element of global memory, counted when used
    T* p; int slot;
    operator T() const { count(slot, 0); return *p; }
    template <class U> gref& operator=(const U& v) { count(slot, 1); *p = v; return *this; }
    gref& operator=(const gref& o) { return *this = static_cast<T>(o); }
    template <class U> gref& operator+=(const U& v) { return *this = static_cast<T>(*this) + v; }
    template <class U> gref& operator-=(const U& v) { return *this = static_cast<T>(*this) - v; }
    template <class U> gref& operator*=(const U& v) { return *this = static_cast<T>(*this) * v; }
    template <class U> gref& operator/=(const U& v) { return *this = static_cast<T>(*this) / v; }
    T* operator&() const { return p; }                     // &x[i]: a plain pointer, no longer counted
};
template <class T> struct gptr {                           // a kernel's pointer parameter
    using element = T;
    T* p; int slot;
    gref<T> operator[](long long i) const { return {p + i, slot}; }
    gref<T> operator*() const { return {p, slot}; }
    gptr operator+(long long i) const { return {p + i, slot}; }
    gptr operator-(long long i) const { return {p - i, slot}; }
    operator T*() const { return p; }
};
template <class T> struct is_gptr : std::false_type {};
template <class T> struct is_gptr<gptr<T>> : std::true_type {};
}

inline void __syncthreads() {
    if (cuda_cpu::current) { cuda_cpu::current->barriers++; cuda_cpu::wait_at(cuda_cpu::AT_BLOCK); }
}
inline void __syncwarp(unsigned = 0xffffffffu) { if (cuda_cpu::current) cuda_cpu::wait_at(cuda_cpu::AT_WARP); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- warp shuffles: every lane writes its value, the warp meets, every lane reads another lane's slot
template <class T> T cuda_cpu_shfl(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type larger than 8 bytes");
    if (!cuda_cpu::current) return v;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    cuda_cpu::warp_slots[cuda_cpu::lane] = bits;
    cuda_cpu::wait_at(cuda_cpu::AT_WARP);   // every lane has written its slot
    bits = cuda_cpu::warp_slots[src];
    cuda_cpu::wait_at(cuda_cpu::AT_WARP);   // every lane has read before anyone writes again
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
template <class T> T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int base = cuda_cpu::lane & ~(width - 1);
    return cuda_cpu_shfl(v, base + (src % width));
}
template <class T> T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    int l = cuda_cpu::lane, base = l & ~(width - 1);
    return cuda_cpu_shfl(v, (l - base + (int)d < width) ? l + (int)d : l);
}
template <class T> T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
    int l = cuda_cpu::lane, base = l & ~(width - 1);
    return cuda_cpu_shfl(v, (l - base >= (int)d) ? l - (int)d : l);
}
template <class T> T __shfl_xor_sync(unsigned, T v, int m, int width = 32) {
    int l = cuda_cpu::lane, base = l & ~(width - 1);
    int src = l ^ m;
    return cuda_cpu_shfl(v, (src - base < width && src >= base) ? src : l);
}

// ---- atomics (GCC/Clang builtins: they work on float through compare-and-swap)
template <class T> T atomicAdd(T* p, T v) {
    if constexpr (std::is_integral_v<T>) return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    T old = *p, next;
    do { next = old + v; } while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
template <class T> T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <class T> T atomicExch(T* p, T v) { T old; __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST); return old; }
template <class T> T atomicCAS(T* p, T cmp, T v) {
    __atomic_compare_exchange(p, &cmp, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
template <class T> T atomicMax(T* p, T v) {
    T old = *p;
    while (old < v && !__atomic_compare_exchange(p, &old, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
template <class T> T atomicMin(T* p, T v) {
    T old = *p;
    while (old > v && !__atomic_compare_exchange(p, &old, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
// strict mode: an atomic on a counted pointer reads and writes that element once
#define CUDA_CPU_COUNTED(op) template <class T, class V> T op(cuda_cpu::gptr<T> p, V v) { \
    cuda_cpu::count(p.slot, 0); cuda_cpu::count(p.slot, 1); return op(p.p, (T)v); }
CUDA_CPU_COUNTED(atomicAdd) CUDA_CPU_COUNTED(atomicSub) CUDA_CPU_COUNTED(atomicExch)
CUDA_CPU_COUNTED(atomicMax) CUDA_CPU_COUNTED(atomicMin)

// ---- math intrinsics that CUDA has and C++ spells differently
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
template <class T> T __ldg(const T* p) { return *p; }

// ---- __half: 16-bit IEEE storage, float arithmetic (what the GPU's fp16 units round to, op by op)
struct __half {
    uint16_t bits;
    __half() = default;
    __half(float f);
    operator float() const;
};
inline uint16_t cuda_cpu_f2h(float f) {  // round to nearest even, like __float2half_rn
    uint32_t x; std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (exp == 0xffu) return sign | 0x7c00u | (man ? 0x200u : 0u);
    int e = (int)exp - 127 + 15;
    if (e >= 31) return sign | 0x7c00u;
    if (e <= 0) {
        if (e < -10) return sign;
        man |= 0x800000u;
        int shift = 14 - e;
        uint32_t half_man = man >> shift, rest = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (half_man & 1u))) half_man++;
        return sign | half_man;
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (man >> 13), rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)h;
}
inline float cuda_cpu_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
    if (exp == 0) {
        if (man == 0) x = sign;
        else { float f = std::ldexp((float)man, -24); std::memcpy(&x, &f, 4); x |= sign; }
    } else if (exp == 31) x = sign | 0x7f800000u | (man << 13);
    else x = sign | ((exp - 15 + 127) << 23) | (man << 13);
    float f; std::memcpy(&f, &x, 4);
    return f;
}
inline __half::__half(float f) : bits(cuda_cpu_f2h(f)) {}
inline __half::operator float() const { return cuda_cpu_h2f(bits); }
typedef __half half;
struct __half2 { __half x, y; };
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline __half __hadd(__half a, __half b) { return __half((float)a + (float)b); }
inline __half __hsub(__half a, __half b) { return __half((float)a - (float)b); }
inline __half __hmul(__half a, __half b) { return __half((float)a * (float)b); }
inline __half __hdiv(__half a, __half b) { return __half((float)a / (float)b); }
inline __half __hfma(__half a, __half b, __half c) { return __half(std::fma((float)a, (float)b, (float)c)); }
inline __half __hneg(__half a) { __half r = a; r.bits ^= 0x8000u; return r; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }
inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __hdiv(a, b); }

// ---- the launcher: how each kernel parameter is read from CuPy-style void* args, and how blocks run
namespace cuda_cpu {
template <class T> struct raw { using type = T; };
template <class T> struct raw<gptr<T>> { using type = T*; };
template <class T> void describe_one(char* out) {
    using U = typename raw<std::remove_cv_t<T>>::type;
    using V = std::remove_cv_t<std::remove_pointer_t<U>>;
    out[0] = std::is_pointer_v<U> ? 'p' : 's';
    out[1] = std::is_same_v<V, __half> || std::is_floating_point_v<V> ? 'f'
           : std::is_same_v<V, bool> ? 'b'
           : std::is_integral_v<V> ? (std::is_signed_v<V> ? 'i' : 'u') : 'v';
    out[2] = std::is_void_v<V> ? '0' : (char)('0' + (int)sizeof(std::conditional_t<std::is_void_v<V>, char, V>));
}
template <class... A> void describe(void (*)(A...), char* out) {
    int i = 0;
    ((describe_one<A>(out + 3 * i), i++), ...);
    out[3 * i] = 0;
}
template <class A> A argument(void* cell, int slot) {
    using U = std::remove_cv_t<std::remove_reference_t<A>>;
    if constexpr (is_gptr<U>::value) return U{*static_cast<typename U::element**>(cell), slot};
    else return *static_cast<U*>(cell);
}
template <class... A, std::size_t... I> void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(argument<A>(args[I], (int)I)...);
}
inline void set_index(unsigned t, const dim3& block, uint3& idx) {
    idx.x = t % block.x; idx.y = (t / block.x) % block.y; idx.z = t / (block.x * block.y);
}

thread_local std::function<void()>* fiber_body = nullptr;
inline void fiber_entry() { (*fiber_body)(); current->wait = DONE; }

// Runs one block's threads as fibers until all return: 0, or 1 on a deadlock (threads waiting at different
// barriers), or 2 when counting barriers and its threads reached __syncthreads() different numbers of times.
inline int run_block(std::vector<Fiber>& fibers, char* stacks, size_t stack_size, const dim3& block,
                      std::vector<unsigned long long>& slots, std::function<void()>& body) {
    unsigned nt = fibers.size(), nwarps = (nt + 31) / 32;
    fiber_body = &body;
    for (unsigned t = 0; t < nt; t++) {
        Fiber& f = fibers[t];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks + t * stack_size;
        f.ctx.uc_stack.ss_size = stack_size;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, fiber_entry, 0);
        f.wait = READY;
        f.barriers = 0;
    }
    for (;;) {
        for (unsigned t = 0; t < nt; t++) {  // run every ready thread until it waits or returns
            if (fibers[t].wait != READY) continue;
            set_index(t, block, threadIdx);
            lane = t % 32;
            warp_slots = slots.data() + 32 * (t / 32);
            current = &fibers[t];
            swapcontext(&scheduler, &fibers[t].ctx);
        }
        current = nullptr;
        bool all_done = true, all_at_block = true, released = false;
        for (auto& f : fibers) {
            all_done &= f.wait == DONE;
            all_at_block &= f.wait == DONE || f.wait == AT_BLOCK;
        }
        if (all_done) {
            for (unsigned t = 1; count_barriers && t < nt; t++) {
                if (fibers[t].barriers != fibers[0].barriers) {
                    barrier_report[0] = 0, barrier_report[1] = fibers[0].barriers;
                    barrier_report[2] = t, barrier_report[3] = fibers[t].barriers;
                    return 2;
                }
            }
            return 0;
        }
        if (all_at_block) {
            for (auto& f : fibers) if (f.wait == AT_BLOCK) f.wait = READY;
            continue;
        }
        for (unsigned w = 0; w < nwarps; w++) {  // a warp whose live lanes all wait at a warp operation goes on
            bool any = false, all = true;
            for (unsigned t = 32 * w; t < std::min(nt, 32 * w + 32); t++) {
                any |= fibers[t].wait == AT_WARP;
                all &= fibers[t].wait == AT_WARP || fibers[t].wait == DONE;
            }
            if (any && all) {
                for (unsigned t = 32 * w; t < std::min(nt, 32 * w + 32); t++)
                    if (fibers[t].wait == AT_WARP) fibers[t].wait = READY;
                released = true;
            }
        }
        if (!released) return 1;
    }
}

// threads == true: the kernel synchronises, so a block's threads run as fibers; otherwise they simply run in turn.
// Returns 0, or b + 1 when block b deadlocked, or -(b + 1) when its threads reached different barrier counts.
template <class... A>
int launch(void (*f)(A...), dim3 grid, dim3 block, void** args, char* smem, bool threads) {
    auto seq = std::index_sequence_for<A...>{};
    unsigned nt = block.x * block.y * block.z, nb = grid.x * grid.y * grid.z;
    dynamic_smem = smem;
    if (!threads) {  // no synchronisation: spread blocks over the cores
        unsigned nw = std::max(1u, std::min(nb, std::thread::hardware_concurrency()));
        std::vector<std::thread> pool;
        for (unsigned w = 0; w < nw; w++)
            pool.emplace_back([=] {
                blockDim = block; gridDim = grid;
                for (unsigned b = w; b < nb; b += nw) {
                    set_index(b, grid, blockIdx);
                    for (unsigned t = 0; t < nt; t++) { set_index(t, block, threadIdx); call(f, args, seq); }
                }
            });
        for (auto& th : pool) th.join();
        return 0;
    }
    const size_t stack_size = 256 * 1024;
    std::vector<Fiber> fibers(nt);
    std::unique_ptr<char[]> stacks(new char[nt * stack_size]);  // not zeroed: untouched pages cost nothing
    std::vector<unsigned long long> slots(32 * ((nt + 31) / 32));
    std::function<void()> body = [&] { call(f, args, seq); };
    blockDim = block; gridDim = grid;
    for (unsigned b = 0; b < nb; b++) {
        set_index(b, grid, blockIdx);
        int status = run_block(fibers, stacks.get(), stack_size, block, slots, body);
        if (status) return status == 1 ? (int)b + 1 : -(int)b - 1;
    }
    return 0;
}
}  // namespace cuda_cpu
"""

LAUNCHER = r"""
extern "C" void cuda_cpu_describe_{i}(char* out) {{ cuda_cpu::describe(&{expr}, out); }}
extern "C" int cuda_cpu_launch_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                   void** args, char* smem, int threads) {{
    return cuda_cpu::launch(&{expr}, dim3(gx, gy, gz), dim3(bx, by, bz), args, smem, threads != 0);
}}
"""

STRICT_HOOKS = r"""
extern "C" void cuda_cpu_strict(unsigned* traffic, unsigned long long threads, int barriers) {
    cuda_cpu::traffic = traffic; cuda_cpu::traffic_threads = threads; cuda_cpu::count_barriers = barriers != 0;
}
extern "C" void cuda_cpu_barrier_report(long long* out) { for (int k = 0; k < 4; k++) out[k] = cuda_cpu::barrier_report[k]; }
"""

GLOBAL = r"""
extern "C" void* cuda_cpu_global_{name}(unsigned long long* size) {{ *size = sizeof({name}); return (void*)&{name}; }}
"""

_SIGNATURE = r"(__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+{name}\s*\()([^)]*)\)"
_POINTER = re.compile(r"^(?P<type>[\w\s:]+?)\s*\*\s*(?:__restrict__\s*)?(?P<name>\w+)$")
_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;"
)
_SYNCS = re.compile(r"__syncthreads|__syncwarp|__shfl|__shared__")
_CONSTANTS = re.compile(r"__constant__\s+(?:const\s+)?[\w:]+\s+(\w+)\s*\[")
_TENSOR_CORES = re.compile(r"\bwmma\b|<mma\.h>|\bmma\.sync\b")
_FAKE_HEADERS = ("cuda_fp16.h", "cuda_runtime.h", "cuda.h", "stdint.h", "cstdint", "math.h", "cmath")


def _compiler():
    for cand in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise RuntimeError(
        "No C++ compiler found: without a GPU, course.cuda_cpu compiles CUDA C++ for the CPU with a C++20 "
        "compiler. Install one (Debian/Ubuntu: `sudo apt-get install g++`; Fedora: `sudo dnf install gcc-c++`; "
        "macOS: `xcode-select --install`; conda: `conda install -c conda-forge cxx-compiler`) or point the "
        "CXX environment variable at it."
    )


def _cache_dir():
    root = os.environ.get("COURSE_CUDA_CPU_CACHE") or os.path.join(
        tempfile.gettempdir(), f"course-cuda-cpu-{getattr(os, 'getuid', lambda: 0)()}"
    )
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(root)


def _shim_header(cxx, flags):
    """The shim as a header in the cache, precompiled once when the compiler is g++ (halves each compile)."""
    key = hashlib.sha256("\0".join([cxx, *flags, SHIM]).encode()).hexdigest()[:16]
    header = _cache_dir() / f"shim_{key}.h"
    if not header.exists():
        tmp = header.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(SHIM)
        os.replace(tmp, header)
    pch = header.with_name(header.name + ".gch")
    is_gcc = "g++" in Path(cxx).name or "Free Software" in _version(cxx)
    if is_gcc and not pch.exists():
        tmp = pch.with_name(f"{pch.name}.{os.getpid()}.tmp")
        proc = subprocess.run(
            [cxx, *flags, "-x", "c++-header", str(header), "-o", str(tmp)], capture_output=True
        )
        if proc.returncode == 0:
            os.replace(tmp, pch)
        else:
            tmp.unlink(missing_ok=True)  # no precompiled header: every compile reads the shim, a bit slower
    return header


def _version(cxx):
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def _translate(code):
    """The few source rewrites the shim cannot do with macros."""
    if _TENSOR_CORES.search(code):
        raise NeedsGPU(
            "this kernel uses tensor cores (nvcuda::wmma / mma.sync): they are GPU hardware with no CPU stand-in. "
            "Run it on a machine with an NVIDIA GPU and CuPy."
        )
    code = _DYNAMIC_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(cuda_cpu::dynamic_smem);", code)
    # headers NVRTC provides are in the shim already
    for header in _FAKE_HEADERS:
        code = re.sub(rf"#\s*include\s*[<\"]{re.escape(header)}[>\"]", f"/* {header}: in the shim */", code)
    return code


def _counted(code, name):
    """``code`` with kernel ``name``'s pointer parameters turned into counting ``cuda_cpu::gptr<T>``, and the
    parameters' names; ``(code, None)`` when the signature is not found."""
    found = re.search(_SIGNATURE.format(name=re.escape(name)), code)
    if found is None:
        return code, None
    params = [p.strip() for p in found.group(2).split(",") if p.strip()]
    counted, names = [], []
    for param in params:
        pointer = _POINTER.match(param)
        if pointer:
            counted.append(f"cuda_cpu::gptr<{pointer['type'].strip()}> {pointer['name']}")
        else:
            counted.append(param)
        names.append(re.findall(r"\w+", param)[-1])
    return code[: found.start(2)] + ", ".join(counted) + code[found.end(2) :], names


def _defines(options):
    flags = []
    for opt in options:
        if opt.startswith(("-D", "-I", "-U")):
            flags.append(opt)
    return flags


class CpuRawModule:
    """A module of CUDA C++ kernels compiled for the CPU; ``get_function(name)`` gives a launchable kernel.

    ``name_expressions`` (like CuPy's) lists the template instances to build, e.g. ``["scale<float>"]``.
    """

    def __init__(self, code, options=(), name_expressions=None, *, _names=None, strict=False):
        self.code = code
        self.options = tuple(options)
        self.name_expressions = list(name_expressions or [])
        extern_c = re.findall(
            r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(\w+)', code
        )
        self._names = list(dict.fromkeys([*(_names or []), *self.name_expressions, *extern_c]))
        self._threads = bool(_SYNCS.search(code))
        self._constants = _CONSTANTS.findall(code)
        self.strict = strict
        self.param_names = {}  # kernel -> its parameters' names, for the kernels whose traffic is counted
        self._lib = self._build_strict() if strict else self._build(code)
        self._kernels = {}

    def _build_strict(self):
        """Build with counted pointers; code the counting cannot express (casts of a pointer, say) builds
        without them, and then only the barriers are checked."""
        code = self.code
        for name in self._names:
            code, names = _counted(code, name)
            if names is not None:
                self.param_names[name] = names
        try:
            return self._build(code)
        except CompileError:
            self.param_names = {}
            return self._build(self.code)

    def _build(self, code):
        body = _translate(code)
        launchers = "".join(LAUNCHER.format(i=i, expr=expr) for i, expr in enumerate(self._names))
        launchers += "".join(GLOBAL.format(name=name) for name in self._constants) + STRICT_HOOKS
        cxx = _compiler()
        flags = ["-std=c++20", "-O2", "-fPIC", "-pthread", "-w"]
        shim = _shim_header(cxx, flags)
        source = (
            f'#include "{shim}"\n#line 1 "kernel.cu"\n{body}\n#line 1 "cuda_cpu_launchers.cpp"\n{launchers}'
        )
        flags += ["-shared", *_defines(self.options)]
        key = hashlib.sha256("\0".join([cxx, *flags, source]).encode()).hexdigest()[:24]
        lib_path = _cache_dir() / f"k_{key}.so"
        if not lib_path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "kernel.cpp"
                src.write_text(source)
                out = Path(tmp) / "kernel.so"
                proc = subprocess.run([cxx, *flags, str(src), "-o", str(out)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise CompileError(self._explain(proc.stderr))
                os.replace(out, lib_path)  # atomic: parallel test workers never load half a file
        return ctypes.CDLL(str(lib_path))

    def _explain(self, stderr):
        lines = [
            ln
            for ln in stderr.splitlines()
            if "kernel.cu" in ln or "cuda_cpu_launchers" in ln or "error" in ln
        ]
        text = "\n".join(lines[:40]) or stderr[-4000:]
        hint = ""
        if "cuda_cpu_launchers" in stderr:
            hint = f"\n(looked for the kernel(s) {self._names}: is the name spelled as in the source?)"
        return f"CUDA C++ source failed to compile (lines are those of your kernel source):\n{text}{hint}"

    def get_global_array(self, name, shape, dtype=np.float32):
        """A numpy view of the ``__constant__`` array ``name`` (what ``cupy.RawModule.get_global`` points to)."""
        if name not in self._constants:
            raise LaunchError(
                f"no __constant__ array named {name!r} in this module (it has {self._constants})"
            )
        size = ctypes.c_ulonglong(0)
        getter = getattr(self._lib, f"cuda_cpu_global_{name}")
        getter.restype = ctypes.c_void_p
        addr = getter(ctypes.byref(size))
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > size.value:
            raise LaunchError(f"{name!r} holds {size.value} bytes, too few for {shape} of {dtype}")
        raw = (ctypes.c_char * size.value).from_address(addr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def get_function(self, name):
        if name not in self._names:
            if "<" in name:
                raise LaunchError(
                    f"{name!r} is a template instance: list it in name_expressions=[...] when building the module "
                    "(CuPy needs that too, to tell NVRTC which instances to compile)."
                )
            raise LaunchError(f"no kernel named {name!r} in this module (it has {self._names})")
        if name not in self._kernels:
            self._kernels[name] = _CpuKernel(self, name, self._names.index(name))
        return self._kernels[name]


class CpuRawKernel:
    """``cupy.RawKernel`` for the CPU: ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, code, name, options=(), strict=False):
        if "<" not in name and not re.search(r'extern\s+"C"', code):
            raise CompileError(
                f'kernel {name!r} is not declared extern "C": C++ mangles its name and CuPy\'s RawKernel could '
                f'not find it on a GPU. Write `extern "C" __global__ void {name}(...)`, or use RawModule with '
                "name_expressions for templates."
            )
        self.name = name
        self._kernel = CpuRawModule(code, options, _names=[name], strict=strict).get_function(name)

    def __call__(self, grid, block, args, shared_mem=0, **kwargs):
        return self._kernel(grid, block, args, shared_mem=shared_mem, **kwargs)

    @property
    def counts(self):
        """After a strict launch: {pointer parameter: uint32 array (threads of the grid, [reads, writes])}."""
        return self._kernel.counts

    @property
    def last_launch(self):
        """(grid, block) of the last launch, as 3-tuples."""
        return self._kernel.last_launch


def _dims(value, what):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise LaunchError(f"{what} must be a tuple of 1 to 3 positive ints, got {value!r}")
    return [int(d) for d in dims] + [1] * (3 - len(dims))


_KIND = {"f": "floating-point", "i": "signed integer", "u": "unsigned integer", "b": "bool", "v": "struct"}


def _describe_param(p):
    kind = _KIND[p[1]] if p[2] != "0" else "void"
    size = int(p[2]) if p[2] != "0" else 0
    return f"{size * 8}-bit {kind}{'*' if p[0] == 'p' else ''}"


class _CpuKernel:
    def __init__(self, module, name, index):
        self.module, self.name = module, name
        buf = ctypes.create_string_buffer(3 * 256 + 1)
        getattr(module._lib, f"cuda_cpu_describe_{index}")(buf)
        spec = buf.value.decode()
        self.params = [spec[i : i + 3] for i in range(0, len(spec), 3)]
        self._launch = getattr(module._lib, f"cuda_cpu_launch_{index}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self._strict = module._lib.cuda_cpu_strict
        self._strict.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_int]
        self.counts, self.last_launch = None, None

    def __call__(self, grid, block, args, shared_mem=0, **kwargs):
        g, b = _dims(grid, "grid"), _dims(block, "block")
        threads = b[0] * b[1] * b[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise LaunchError(
                f"block {tuple(block)} has {threads} threads: a block holds at most 1024 on NVIDIA GPUs"
            )
        args = tuple(args)
        if len(args) != len(self.params):
            raise LaunchError(f"kernel {self.name!r} takes {len(self.params)} arguments, got {len(args)}")
        holders, guarded, pointers = [], [], (ctypes.c_void_p * max(1, len(args)))()
        # room for every thread of the grid to run past the end by one 8-byte element
        span = min(g[0] * g[1] * g[2] * threads * 8, 64 << 20) + GUARD_BYTES
        by_buffer = {}
        for i, (arg, param) in enumerate(zip(args, self.params, strict=True)):
            if param[0] == "p":
                addr, keep = self._pointer(i, arg, param, span, by_buffer, guarded)
                cell = ctypes.c_void_p(addr)
                holders.append(keep)
            else:
                cell = self._scalar(i, arg, param)
            holders.append(cell)
            pointers[i] = ctypes.addressof(cell)
        smem = np.zeros(int(shared_mem) + 64, np.uint8)
        counts = self._start_counting(g, b)
        try:
            stuck = self._launch(
                *g, *b, ctypes.cast(pointers, ctypes.c_void_p), smem.ctypes.data, int(self.module._threads)
            )
        finally:
            self._strict(None, 0, 0)
        self.last_launch = (tuple(g), tuple(b))
        if counts is not None:
            names = self.module.param_names[self.name]
            self.counts = {names[i]: counts[i] for i, p in enumerate(self.params) if p[0] == "p"}
        if stuck < 0:
            report = (ctypes.c_longlong * 4)()
            self.module._lib.cuda_cpu_barrier_report(report)
            t0, n0, t1, n1 = list(report)
            raise LaunchError(
                f"kernel {self.name!r}, block {-stuck - 1}: thread {t0} reached __syncthreads() {n0} times but "
                f"thread {t1} {n1} times. Every thread of the block must reach every __syncthreads(): a barrier "
                "inside an `if` that only some threads take hangs a GPU, or silently misbehaves. Do the "
                "guarded work around the barrier."
            )
        if stuck:
            raise LaunchError(
                f"kernel {self.name!r} deadlocked in block {stuck - 1}: some threads wait in __syncthreads() while "
                "others of the same warp wait in a warp shuffle or __syncwarp() (a GPU would hang). Every thread "
                "of a warp must reach the same warp operation, and no warp operation may sit between a "
                "__syncthreads() and code that only part of the block runs."
            )
        for i, arr, padded, lo in guarded:
            self._check_guards(i, arr, padded, lo)

    def _start_counting(self, g, b):
        """Strict launches: point the kernel at fresh counters (None when its traffic is not counted)."""
        if not self.module.strict:
            return None
        if self.name not in self.module.param_names:
            self._strict(None, 0, 1)
            return None
        threads = int(np.prod(g) * np.prod(b))
        counts = np.zeros((len(self.params), threads, 2), np.uint32)
        self._strict(counts.ctypes.data, threads, 1)
        return counts

    def _pointer(self, i, arg, param, span, by_buffer, guarded):
        if isinstance(arg, np.ndarray):
            want = (param[1], int(param[2]))
            have = (arg.dtype.kind, arg.dtype.itemsize)
            if param[2] != "0" and param[1] != "v" and have != want:
                raise LaunchError(
                    f"argument {i} of {self.name!r} is a {arg.dtype} array but the parameter is "
                    f"{_describe_param(param)}: CuPy would reinterpret its bytes. Convert it, e.g. "
                    f"x.astype(np.{_numpy_name(want)})."
                )
            if not arg.flags.c_contiguous:
                raise LaunchError(
                    f"argument {i} of {self.name!r} is not C-contiguous: pass np.ascontiguousarray(x)"
                )
            key = (arg.ctypes.data, arg.nbytes)
            if key not in by_buffer:
                lo = GUARD_BYTES
                padded = np.full(lo + arg.nbytes + span, 0xA5, np.uint8)
                padded[lo : lo + arg.nbytes] = arg.reshape(-1).view(np.uint8)
                by_buffer[key] = padded
                guarded.append((i, arg, padded, lo))
            padded = by_buffer[key]
            return padded.ctypes.data + GUARD_BYTES, padded
        if arg is None or (isinstance(arg, int) and arg == 0):
            return 0, None
        raise LaunchError(
            f"argument {i} of {self.name!r} should be an array (the parameter is {_describe_param(param)}), got "
            f"{type(arg).__name__}"
        )

    def _check_guards(self, i, arr, padded, lo):
        n = arr.nbytes
        before, after = padded[:lo], padded[lo + n :]
        for zone, where in ((before, "before the start"), (after, "past the end")):
            touched = np.flatnonzero(zone != 0xA5)
            if touched.size:
                offset = (touched[-1] - lo) if where.startswith("before") else touched[0] + n
                elem = offset // max(1, arr.itemsize)
                raise LaunchError(
                    f"kernel {self.name!r} wrote {where} of argument {i} ({arr.size} elements of {arr.dtype}): "
                    f"element {elem} was written. Is there a bounds check like `if (i < n)`?"
                )
        if arr.flags.writeable:
            arr.reshape(-1).view(np.uint8)[:] = padded[lo : lo + n]

    def _scalar(self, i, arg, param):
        kind, size = param[1], int(param[2])
        if isinstance(arg, np.ndarray):
            raise LaunchError(
                f"argument {i} of {self.name!r} is an array but the parameter is {_describe_param(param)}"
            )
        if isinstance(arg, (bool, np.bool_)):
            value = np.array(arg, np.bool_)
        elif isinstance(arg, np.generic):
            value = np.array(arg)
        elif isinstance(arg, int):
            value = np.array(arg, np.int64)  # what CuPy does with a Python int
        elif isinstance(arg, float):
            value = np.array(arg, np.float64)  # ... and with a Python float
        else:
            raise LaunchError(
                f"argument {i} of {self.name!r}: cannot pass a {type(arg).__name__} to a kernel"
            )
        have = (value.dtype.kind, value.dtype.itemsize)
        if kind == "v":
            raise LaunchError(
                f"argument {i} of {self.name!r}: struct parameters are not supported on the CPU runner"
            )
        if have != (kind, size):
            if value.dtype.kind == "i" and kind in "iu" and size <= 8 and isinstance(arg, int):
                # a Python int into a narrower int parameter: CuPy's int64 bytes read right (little-endian)
                value = np.array(arg, np.dtype(f"{kind}{size}"))
            else:
                raise LaunchError(
                    f"argument {i} of {self.name!r} is {value.dtype} but the parameter is {_describe_param(param)}: "
                    f"CuPy passes the bytes as they are and the kernel would read garbage. Pass "
                    f"np.{_numpy_name((kind, size))}(value)."
                )
        buf = (ctypes.c_char * value.nbytes).from_buffer_copy(value.tobytes())
        return buf


def _numpy_name(kind_size):
    kind, size = kind_size
    return {"f": f"float{size * 8}", "i": f"int{size * 8}", "u": f"uint{size * 8}", "b": "bool_"}.get(
        kind, "?"
    )
