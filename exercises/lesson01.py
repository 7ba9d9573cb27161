"""Lesson 01 — threads, blocks and grids: exercises.

Fill in the bodies, then grade yourself:

    python -m pytest tests/exercises/test_lesson01.py -q

Read lessons/01_threads_blocks_grids.md first; the notebook draws every index pattern used here.
"""

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
import numpy as np  # noqa: F401  (np.float32 in the kernels)

from minisd.kernel_backend import cuda

MAX_THREADS_PER_BLOCK = 1024  # every NVIDIA GPU since 2010


# 01.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def add_kernel(a, b, out):
    """Exercise 01.1 — ``out[i] = a[i] + b[i]``, one thread per element, 1-D float32 arrays.

    The test launches ``add_kernel[blocks, threads](a, b, out)`` with ``blocks = ceil(n / threads)``, so
    the last block usually sticks out past the end of the arrays.

    Hints:
    * i = blockIdx.x * blockDim.x + threadIdx.x, or ``cuda.grid(1)`` for short.
    * The threads with i >= out.size must not touch memory at all (not even read a[i]).

    Graded: the answer on ragged n; at most one read of a and of b and one write per thread, nothing out
    of bounds.
    """
    # TODO
    pass


# 01.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def grayscale_kernel(img, gray):
    """Exercise 01.2 — ``gray[row, col] = 0.299 R + 0.587 G + 0.114 B`` for an (H, W, 3) float32 image.

    One thread per pixel on a 2-D grid. The convention (the same in every lesson): the grid's x dimension
    runs along a row (x = column, 0..W-1), y runs down the image (y = row, 0..H-1). The test launches

        grayscale_kernel[(ceil(W / tx), ceil(H / ty)), (tx, ty)](img, gray)

    Hints:
    * ``col, row = cuda.grid(2)`` — note the order: cuda.grid(2) returns (x, y).
    * H and W are not multiples of the block size: guard both.

    Graded: the answer; at most 3 reads of img and 1 write of gray per thread.
    """
    # TODO
    pass


# 01.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def saxpy_grid_stride_kernel(a, x, y, out):
    """Exercise 01.3 — ``out[i] = a * x[i] + y[i]`` that is right for ANY launch configuration.

    The test launches it with a single thread, with 3 blocks of 5 threads, with far more threads than
    elements, ... Each thread starts at its global index and strides by the total number of threads in the
    grid until it runs off the end.

    Hints:
    * ``cuda.grid(1)`` is where this thread starts; ``cuda.gridsize(1)`` (= gridDim.x * blockDim.x) is the stride.
    * ``for i in range(start, out.size, stride):`` needs no separate guard.

    Graded: the answer for every launch, each element written exactly once, and no thread past its share
    (ceil(n / threads in the grid) elements): striding by blockDim.x alone gets the numbers right and
    still fails.
    """
    # TODO
    pass


# 01.4 -------------------------------------------------------------------------------------------------
def blocks_for(n, threads):
    """Exercise 01.4 — how many blocks of ``threads`` threads cover ``n`` elements: the smallest b with
    b * threads >= n.

    Use integer arithmetic (``math.ceil(n / threads)`` goes wrong once n is too big for a float to hold).
    Raise ``TypeError`` when n or threads is not an int, and ``ValueError`` (naming the argument) when
    n < 1 (a launch needs at least one block) or threads is not between 1 and MAX_THREADS_PER_BLOCK.
    """
    raise NotImplementedError("Exercise 01.4: blocks_for")


def grid_2d(h, w, threads=(16, 16)):
    """Exercise 01.4 — the launch configuration ``(blocks, threads)`` covering an h x w image with one
    thread per pixel, in the course's convention: x counts columns (w), y counts rows (h).

    ``threads = (tx, ty)``; returns ``((blocks_x, blocks_y), (tx, ty))``. Use blocks_for for each axis, and
    raise ``ValueError`` when tx * ty exceeds MAX_THREADS_PER_BLOCK.

    Example: ``grid_2d(1080, 1920, (32, 8)) == ((60, 135), (32, 8))``.
    """
    raise NotImplementedError("Exercise 01.4: grid_2d")


# 01.5 -------------------------------------------------------------------------------------------------
@cuda.jit
def brighten_kernel(img, amount, out):
    """Exercise 01.5 — ``out = clip(img + amount, 0, 1)`` on an (H, W, 3) image, right for ANY 2-D launch.

    A 2-D grid-stride loop: each thread starts at (col, row) = cuda.grid(2) and strides by
    cuda.gridsize(2) = (threads along x in the whole grid, threads along y) in each direction. Each pixel's
    thread does all 3 channels. ``amount`` may be negative (darken).

    Hints:
    * Two nested loops: rows outside, columns inside, like the 1-D grid-stride loop in each direction.
    * ``min(max(v, np.float32(0)), np.float32(1))`` clips inside a kernel (a bare ``0.0`` is a float64).

    Graded: the answer for every launch, each element written exactly once, no thread past its share of
    the pixels.
    """
    # TODO
    pass
