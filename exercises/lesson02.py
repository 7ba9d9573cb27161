"""Lesson 02 — global memory: exercises.

Fill in the bodies, then grade yourself:

    python -m pytest tests/exercises/test_lesson02.py -q

Read lessons/02_memory.md first. In the simulator the tests wrap your arrays with course.traffic and check
not only the answer but how you touch memory: a warp's 32 loads must hit neighbouring addresses (coalesced).
"""

import math  # noqa: F401  (math.floor for 02.3)

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from minisd.kernel_backend import cuda


# 02.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def normalize_kernel(img, mean, std, out):
    """Exercise 02.1 — ``out[c, y, x] = (img[c, y, x] - mean[c]) / std[c]`` on a planar (C, H, W) image.

    This is the "normalise each channel" step of every image model. The test launches a 1-D grid with one
    thread per element: ``normalize_kernel[ceil(C*H*W / 64), 64](img, mean, std, out)``.

    Graded: the answer, one global read of ``img`` per thread, and coalesced loads and stores (thread i
    touches flat element i, so a warp touches 32 neighbours).

    Hints:
    * i = cuda.grid(1) is the flat index: c = i // (H * W), y = i % (H * W) // W, x = i % W.
    * The last block runs past the end: guard ``c < img.shape[0]``.
    """
    # TODO
    pass


# 02.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def column_sums_kernel(a, out):
    """Exercise 02.2 — ``out[j] = a[0, j] + a[1, j] + ... `` for a (rows, cols) row-major float32 matrix.

    One thread per COLUMN: thread j loops over the rows. At each step the warp reads a[i, j..j+31], 32
    neighbouring floats in one row: one 128-byte transaction. (One thread per ROW would read a[i, 0..] with
    neighbouring threads ``cols`` floats apart: 32 transactions for the same work. The test catches that.)

    Launch: ``column_sums_kernel[ceil(cols / 32), 32](a, out)``.

    Hints:
    * j = cuda.grid(1); guard ``j < a.shape[1]``; accumulate in a local variable and write out[j] once.

    Graded: the answer; each element of a read once, coalesced reads, one write per thread.
    """
    # TODO
    pass


# 02.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def chw_to_hwc_uint8_kernel(img, out):
    """Exercise 02.3 — the last step of an image generator: planar float32 (3, H, W) in [-1, 1] to an
    interleaved uint8 (H, W, 3) picture, ``out[y, x, c] = clamp(floor((img[c, y, x] + 1) * 127.5 + 0.5), 0, 255)``.

    One thread per pixel on a 2-D grid, x along a row:
    ``chw_to_hwc_uint8_kernel[(ceil(W / 8), ceil(H / 8)), (8, 8)](img, out)``.
    Values outside [-1, 1] must be clamped (a model's output overshoots a little).

    Graded: exact values (round half up, never truncate), at most 3 reads and 3 writes per thread.

    Hints:
    * x, y = cuda.grid(2); guard ``y < H and x < W`` (H = img.shape[1], W = img.shape[2]).
    * For each channel c, read img[c, y, x] (coalesced: neighbouring x are neighbours in each plane) and
      write out[y, x, c] (the three writes of a thread are neighbours).
    """
    # TODO
    pass


# 02.4 -------------------------------------------------------------------------------------------------
def effective_bandwidth(bytes_read, bytes_written, ms):
    """Exercise 02.4 — the effective bandwidth in GB/s (1 GB = 1e9 bytes) of a kernel that read
    ``bytes_read`` and wrote ``bytes_written`` bytes in ``ms`` milliseconds.

    A copy of n float32 reads 4n and writes 4n bytes. Compare the result with the H100's ~3000 GB/s.
    Raise ``ValueError`` naming the argument when ms <= 0 or a byte count is negative.
    """
    raise NotImplementedError("Exercise 02.4: effective_bandwidth")
