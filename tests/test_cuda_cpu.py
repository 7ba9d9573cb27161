"""course.cuda_cpu: CUDA C++ kernels run on the CPU with cupy.RawKernel's call style, right or with a clear error."""

import numpy as np
import pytest
import torch

from course import cuda_cpu
from course.cuda_cpu import CompileError, CpuRawKernel, CpuRawModule, LaunchError, NeedsGPU

ADD = r"""
extern "C" __global__ void add(const float* x, const float* y, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + y[i];
}
"""

BLOCK_SUM = r"""
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float buf[128];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, buf[0]);
}
"""

rng = np.random.default_rng(5)


def test_ragged_1d_launch_matches_torch():
    kernel = CpuRawKernel(ADD, "add")
    n = 1000 + int(rng.integers(1, 200))
    x, y = rng.standard_normal((2, n), dtype=np.float32)
    out = np.full(n, np.nan, np.float32)
    kernel((cuda_cpu.blocks(n, 128),), (128,), (x, y, out, np.int32(n)))
    np.testing.assert_array_equal(out, (torch.from_numpy(x) + torch.from_numpy(y)).numpy())


def test_2d_grid_and_block_indices():
    src = r"""
    extern "C" __global__ void where(int* out, int rows, int cols) {
        int c = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y * blockDim.y + threadIdx.y;
        if (r < rows && c < cols) out[r * cols + c] = 1000 * r + c + 1000000 * (gridDim.x * 10 + blockDim.y);
    }"""
    rows, cols = 37, 53
    out = np.full((rows, cols), -1, np.int32)
    CpuRawKernel(src, "where")(
        (cuda_cpu.blocks(cols, 16), cuda_cpu.blocks(rows, 8)), (16, 8), (out, rows, cols)
    )
    r, c = np.indices((rows, cols))
    np.testing.assert_array_equal(out, 1000 * r + c + 1000000 * (4 * 10 + 8))


def test_shared_memory_syncthreads_and_atomics():
    n = 3000 + int(rng.integers(1, 100))
    x = rng.random(n, dtype=np.float32)
    out = np.zeros(1, np.float32)
    CpuRawKernel(BLOCK_SUM, "block_sum")((cuda_cpu.blocks(n, 128),), (128,), (x, out, np.int32(n)))
    assert out[0] == pytest.approx(float(np.sum(x, dtype=np.float64)), rel=1e-5)


def test_syncthreads_really_waits_for_the_whole_block():
    # every thread reads the value its neighbour wrote before the barrier: wrong without a real barrier
    src = r"""
    extern "C" __global__ void rotate(const int* x, int* out) {
        __shared__ int buf[256];
        buf[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
        __syncthreads();
        out[blockIdx.x * blockDim.x + threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];
    }"""
    x = rng.integers(0, 1 << 30, 3 * 96).astype(np.int32)
    out = np.full_like(x, -1)
    CpuRawKernel(src, "rotate")((3,), (96,), (x, out))
    np.testing.assert_array_equal(out, np.roll(x.reshape(3, 96), -1, axis=1).reshape(-1))


def test_threads_that_return_early_do_not_block_syncthreads():
    src = r"""
    extern "C" __global__ void early(int* out, int n) {
        __shared__ int buf[64];
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= n) return;
        buf[threadIdx.x] = i;
        __syncthreads();
        out[i] = buf[threadIdx.x] * 2;
    }"""
    n = 150
    out = np.full(n, -1, np.int32)
    CpuRawKernel(src, "early")((3,), (64,), (out, n))
    np.testing.assert_array_equal(out, 2 * np.arange(n))


def test_integer_atomics_count_every_thread():
    src = r"""
    extern "C" __global__ void hist(const int* x, int* bins, int n) {
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
            atomicAdd(&bins[x[i]], 1);
    }"""
    x = rng.integers(0, 7, 5000).astype(np.int32)
    bins = np.zeros(7, np.int32)
    CpuRawKernel(src, "hist")((5,), (64,), (x, bins, np.int32(x.size)))
    np.testing.assert_array_equal(bins, np.bincount(x, minlength=7))


def test_warp_shuffle_reduction():
    src = r"""
    extern "C" __global__ void warp_sum(const float* x, float* out) {
        float v = x[blockIdx.x * blockDim.x + threadIdx.x];
        for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffff, v, d);
        if (threadIdx.x % 32 == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
    }"""
    x = rng.standard_normal(2 * 64).astype(np.float32)
    out = np.full(4, np.nan, np.float32)
    CpuRawKernel(src, "warp_sum")((2,), (64,), (x, out))
    np.testing.assert_allclose(out, x.reshape(4, 32).sum(1), rtol=1e-5, atol=1e-5)


def test_dynamic_shared_memory_and_templates():
    src = r"""
    template <typename T>
    __global__ void reverse(const T* x, T* out, int n) {
        extern __shared__ T buf[];
        int t = threadIdx.x;
        if (t < n) buf[t] = x[t];
        __syncthreads();
        if (t < n) out[t] = buf[n - 1 - t];
    }"""
    module = CpuRawModule(src, name_expressions=["reverse<float>", "reverse<double>"])
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(50).astype(dtype)
        out = np.full_like(x, np.nan)
        name = f"reverse<{'float' if dtype == np.float32 else 'double'}>"
        module.get_function(name)((1,), (64,), (x, out, np.int32(50)), shared_mem=64 * x.itemsize)
        np.testing.assert_array_equal(out, x[::-1])
    with pytest.raises(LaunchError, match="name_expressions"):
        module.get_function("reverse<int>")


def test_half_conversion_rounds_like_numpy():
    src = r"""
    #include <cuda_fp16.h>
    extern "C" __global__ void to_half(const float* x, __half* out, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = __float2half(x[i]);
    }"""
    x = np.concatenate(
        [
            rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 2000),
            np.array([0.0, -0.0, 65504, 65520, 1e6, -1e6, 6e-8, 3e-8, np.inf, -np.inf], np.float32),
        ]
    ).astype(np.float32)
    out = np.zeros(x.size, np.float16)
    CpuRawKernel(src, "to_half")((cuda_cpu.blocks(x.size, 256),), (256,), (x, out, np.int32(x.size)))
    with np.errstate(over="ignore"):  # numpy warns when it rounds 1e6 to inf, as it should
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))


def test_out_of_bounds_write_is_reported_not_a_crash():
    src = ADD.replace("if (i < n) ", "")
    n = 1000
    x = y = np.ones(n, np.float32)
    out = np.zeros(n, np.float32)
    with pytest.raises(LaunchError, match=r"past the end of argument 2.*element 1000.*bounds check"):
        CpuRawKernel(src, "add")((cuda_cpu.blocks(n, 128),), (128,), (x, y, out, np.int32(n)))


def test_compile_error_carries_the_compilers_message():
    with pytest.raises(CompileError) as err:
        CpuRawKernel(ADD.replace("out[i] = x[i] + y[i];", "out[i] = x[i] + undefined_thing;"), "add")
    assert "undefined_thing" in str(err.value) and "kernel.cu:" in str(err.value)


def test_missing_extern_c_and_wrong_name_are_explained():
    with pytest.raises(CompileError, match='extern "C"'):
        CpuRawKernel(ADD.replace('extern "C" ', ""), "add")
    with pytest.raises(CompileError, match="spelled"):
        CpuRawKernel(ADD, "addd")


def test_argument_checks():
    kernel = CpuRawKernel(ADD, "add")
    x = np.ones(10, np.float32)
    with pytest.raises(LaunchError, match="float64 array"):
        kernel((1,), (32,), (x, x.astype(np.float64), x, np.int32(10)))
    with pytest.raises(LaunchError, match="takes 4 arguments"):
        kernel((1,), (32,), (x, x, x))
    with pytest.raises(LaunchError, match="at most 1024"):
        kernel((1,), (2048,), (x, x, x, np.int32(10)))
    scale = CpuRawKernel(
        r"""extern "C" __global__ void scale(float a, float* x, int n) {
            int i = threadIdx.x; if (i < n) x[i] *= a; }""",
        "scale",
    )
    with pytest.raises(LaunchError, match=r"np\.float32"):
        scale((1,), (32,), (2.0, x, 10))  # a Python float travels as a double: garbage on a GPU
    scale((1,), (32,), (np.float32(2.0), x, 10))  # a Python int for an int parameter is fine
    np.testing.assert_array_equal(x, np.full(10, 2.0, np.float32))


def test_tensor_cores_need_a_gpu():
    with pytest.raises(NeedsGPU, match="tensor cores"):
        CpuRawKernel('#include <mma.h>\nextern "C" __global__ void k() { nvcuda::wmma::fill_fragment; }', "k")


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(cuda_cpu.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="No C\\+\\+ compiler found.*apt-get install g\\+\\+"):
        CpuRawKernel(ADD + "// uncached", "add")


def test_front_door_picks_the_cpu_runner_without_a_gpu():
    if cuda_cpu.ON_GPU:
        pytest.skip("a GPU with CuPy is present: RawKernel is cupy.RawKernel")
    assert cuda_cpu.xp is np
    assert isinstance(cuda_cpu.RawKernel(ADD, "add"), CpuRawKernel)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_cpu.ON_GPU, reason="needs a GPU with CuPy")
def test_cpu_runner_agrees_with_cupy():
    import cupy

    n = 5000 + int(rng.integers(1, 100))
    x = rng.random(n, dtype=np.float32)
    out_cpu = np.zeros(1, np.float32)
    CpuRawKernel(BLOCK_SUM, "block_sum")((cuda_cpu.blocks(n, 128),), (128,), (x, out_cpu, np.int32(n)))
    out_gpu = cupy.zeros(1, np.float32)
    cuda_cpu.RawKernel(BLOCK_SUM, "block_sum")(
        (cuda_cpu.blocks(n, 128),), (128,), (cupy.asarray(x), out_gpu, np.int32(n))
    )
    assert float(out_gpu.get()[0]) == pytest.approx(float(out_cpu[0]), rel=1e-5)
    src = 'extern "C" __global__ void get(float* out) { out[threadIdx.x] = c[threadIdx.x]; }'
    module = cuda_cpu.RawModule("__constant__ float c[8];\n" + src)
    cuda_cpu.global_array(module, "c", (8,))[...] = cupy.arange(8, dtype=np.float32)
    out = cupy.zeros(8, np.float32)
    module.get_function("get")((1,), (8,), (out,))
    np.testing.assert_array_equal(out.get(), np.arange(8, dtype=np.float32))


def test_mismatched_barriers_are_a_clear_error_not_a_hang():
    src = r"""
    extern "C" __global__ void bad(float* x) {
        float v = x[threadIdx.x];
        if (threadIdx.x < 16) v += __shfl_down_sync(0xffffffff, v, 1);  // half the warp shuffles...
        else __syncthreads();                                            // ...the other half waits here
        x[threadIdx.x] = v;
    }"""
    with pytest.raises(LaunchError, match="deadlocked in block 0"):
        CpuRawKernel(src, "bad")((1,), (32,), (np.zeros(32, np.float32),))


def test_constant_memory_is_filled_from_the_host():
    src = r"""
    __constant__ float coeffs[16];
    extern "C" __global__ void poly(const float* x, float* out, int n, int degree) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= n) return;
        float acc = 0.0f;
        for (int d = degree; d >= 0; d--) acc = acc * x[i] + coeffs[d];   // Horner
        out[i] = acc;
    }"""
    module = CpuRawModule(src)
    c = rng.standard_normal(4).astype(np.float32)
    cuda_cpu.global_array(module, "coeffs", (4,))[...] = c
    x = rng.uniform(-1, 1, 300).astype(np.float32)
    out = np.full_like(x, np.nan)
    module.get_function("poly")((cuda_cpu.blocks(300, 64),), (64,), (x, out, np.int32(300), np.int32(3)))
    np.testing.assert_allclose(out, np.polyval(c[::-1], x), rtol=1e-5, atol=1e-5)
    with pytest.raises(LaunchError, match="too few"):
        cuda_cpu.global_array(module, "coeffs", (17,))
