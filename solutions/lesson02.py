"""Lesson 02 — global memory: reference solutions (same API as exercises/lesson02.py)."""

import math

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda


# 02.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def normalize_kernel(img, mean, std, out):
    """Exercise 02.1 — ``out[c, y, x] = (img[c, y, x] - mean[c]) / std[c]`` on a planar (C, H, W) image."""
    i = cuda.grid(1)
    plane = img.shape[1] * img.shape[2]
    c = i // plane
    if c < img.shape[0]:
        y = i % plane // img.shape[2]
        x = i % img.shape[2]
        out[c, y, x] = (img[c, y, x] - mean[c]) / std[c]


# 02.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def column_sums_kernel(a, out):
    """Exercise 02.2 — ``out[j] = sum_i a[i, j]``: thread j walks down column j, so a warp reads a row segment."""
    j = cuda.grid(1)
    if j < a.shape[1]:
        s = np.float32(0)  # not 0.0: that is a float64, and so would every addition be
        for i in range(a.shape[0]):
            s += a[i, j]
        out[j] = s


# 02.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def chw_to_hwc_uint8_kernel(img, out):
    """Exercise 02.3 — planar float (3, H, W) in [-1, 1] to interleaved uint8 (H, W, 3)."""
    x, y = cuda.grid(2)
    if y < img.shape[1] and x < img.shape[2]:
        for c in range(3):
            v = math.floor((img[c, y, x] + 1.0) * 127.5 + 0.5)
            out[y, x, c] = min(max(v, 0.0), 255.0)


# 02.4 -------------------------------------------------------------------------------------------------
def effective_bandwidth(bytes_read, bytes_written, ms):
    """Exercise 02.4 — GB/s (1 GB = 1e9 bytes) of a kernel that read and wrote these bytes in ``ms`` ms."""
    for name, value in (("bytes_read", bytes_read), ("bytes_written", bytes_written)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not ms > 0:
        raise ValueError(f"ms must be > 0, got {ms}")
    return (bytes_read + bytes_written) / (ms * 1e-3) / 1e9
