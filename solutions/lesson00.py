"""Lesson 00 — why GPUs: reference answers (same API as exercises/lesson00.py)."""

import math

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from minisd.kernel_backend import cuda  # numba.cuda (numba-cuda-mlir's if MINISD_NUMBA_CUDA=mlir)


# 00.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def fill_kernel(out, value):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = value


# 00.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def scale_kernel(x, alpha, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = alpha * x[i]


# 00.3 -------------------------------------------------------------------------------------------------
def _check_nonnegative(**values):
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_positive(**values):
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def time_floor_ms(bytes_moved, flops, peak_bandwidth, peak_flops):
    _check_nonnegative(bytes_moved=bytes_moved, flops=flops)
    _check_positive(peak_bandwidth=peak_bandwidth, peak_flops=peak_flops)
    memory_s = bytes_moved / peak_bandwidth
    compute_s = flops / peak_flops
    return 1e3 * max(memory_s, compute_s), ("compute" if compute_s > memory_s else "memory")


# 00.4 -------------------------------------------------------------------------------------------------
def saxpy_cost(n, itemsize=4):
    _check_nonnegative(n=n)
    _check_positive(itemsize=itemsize)
    return 3 * n * itemsize, 2 * n  # read x, read y, write out; one multiply + one add per element


def gemm_cost(m, n, k, itemsize=4):
    _check_nonnegative(m=m, n=n, k=k)
    _check_positive(itemsize=itemsize)
    return (m * k + k * n + m * n) * itemsize, 2 * m * n * k


def intensity(bytes_moved, flops):
    _check_positive(bytes_moved=bytes_moved)
    return flops / bytes_moved


# 00.5 -------------------------------------------------------------------------------------------------
def bytes_in_flight(bandwidth, latency_s):
    _check_positive(bandwidth=bandwidth, latency_s=latency_s)
    return bandwidth * latency_s


def threads_needed(bandwidth, latency_s, bytes_per_thread):
    _check_positive(bytes_per_thread=bytes_per_thread)
    return math.ceil(bytes_in_flight(bandwidth, latency_s) / bytes_per_thread)
