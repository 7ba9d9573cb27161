"""Lesson 01 — threads, blocks and grids: reference answers (same API as exercises/lesson01.py)."""

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda

MAX_THREADS_PER_BLOCK = 1024  # every NVIDIA GPU since 2010
# float32 constants: a bare 0.299 or 1.0 is a float64 and drags the kernel's arithmetic into float64
WR, WG, WB = np.float32(0.299), np.float32(0.587), np.float32(0.114)
ZERO, ONE = np.float32(0), np.float32(1)


# 01.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def add_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


# 01.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def grayscale_kernel(img, gray):
    col, row = cuda.grid(2)  # x runs along a row (columns), y down the image (rows)
    if row < gray.shape[0] and col < gray.shape[1]:
        gray[row, col] = WR * img[row, col, 0] + WG * img[row, col, 1] + WB * img[row, col, 2]


# 01.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def saxpy_grid_stride_kernel(a, x, y, out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a * x[i] + y[i]


# 01.4 -------------------------------------------------------------------------------------------------
def _check_count(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def blocks_for(n, threads):
    _check_count("n", n, 1)
    _check_count("threads", threads, 1, MAX_THREADS_PER_BLOCK)
    return (n + threads - 1) // threads  # ceil(n / threads) in integers: exact for any n


def grid_2d(h, w, threads=(16, 16)):
    tx, ty = threads
    blocks = (blocks_for(w, tx), blocks_for(h, ty))  # x counts columns (w), y counts rows (h)
    if tx * ty > MAX_THREADS_PER_BLOCK:
        raise ValueError(
            f"threads={threads} is {tx * ty} threads per block; the limit is {MAX_THREADS_PER_BLOCK}"
        )
    return blocks, (tx, ty)


# 01.5 -------------------------------------------------------------------------------------------------
@cuda.jit
def brighten_kernel(img, amount, out):
    col0, row0 = cuda.grid(2)
    cols, rows = cuda.gridsize(2)
    for row in range(row0, out.shape[0], rows):
        for col in range(col0, out.shape[1], cols):
            for c in range(out.shape[2]):
                out[row, col, c] = min(max(img[row, col, c] + amount, ZERO), ONE)
