"""Lesson 03 — shared memory and synchronisation: reference solutions (same API as exercises/lesson03.py)."""

import numpy as np

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from course import warp
from minisd.kernel_backend import cuda

THREADS = 64  # threads per block of the 1-D kernels (the tests launch with exactly this many)
RADIUS = 3  # 03.1: out[i] averages x[i - RADIUS .. i + RADIUS]
TILE_X, TILE_Y = 16, 8  # 03.2: threads per block (x along a row, y down the image)
MAX_BINS = 64  # 03.5: a histogram has at most this many bins
# A shared array's shape must be a plain constant: Numba does not fold ``THREADS + 2 * RADIUS`` inside a
# kernel (the simulator accepts it, a GPU refuses to compile it), so the tile sizes are computed here.
HALO_LEN = THREADS + 2 * RADIUS  # 03.1: the 1-D tile with its halo
TILE_H, TILE_W = TILE_Y + 2, TILE_X + 2  # 03.2: the 2-D tile with its 1-pixel halo
# float32 constants: a bare 0.0 (or a division by an int) makes the kernels' arithmetic float64
ZERO = np.float32(0)
WIDTH = np.float32(2 * RADIUS + 1)  # 03.1: values averaged per output


# 03.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def blur1d_kernel(x, out):
    """Exercise 03.1 — 1-D box blur of width 2*RADIUS+1 with clamped edges, through a shared tile + halo."""
    tile = cuda.shared.array(HALO_LEN, np.float32)
    n = x.size
    t = cuda.threadIdx.x
    start = cuda.blockIdx.x * THREADS
    i = start + t
    tile[t + RADIUS] = x[min(i, n - 1)]
    if t < RADIUS:
        tile[t] = x[max(start - RADIUS + t, 0)]
    if t >= THREADS - RADIUS:
        tile[t + 2 * RADIUS] = x[min(i + RADIUS, n - 1)]
    cuda.syncthreads()
    if i < n:
        s = ZERO
        for k in range(2 * RADIUS + 1):
            s += tile[t + k]
        out[i] = s / WIDTH


# 03.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def blur2d_kernel(img, out):
    """Exercise 03.2 — 3x3 box blur of an (H, W) image with clamped edges, through a (TILE_H, TILE_W) tile."""
    tile = cuda.shared.array((TILE_H, TILE_W), np.float32)
    h, w = img.shape
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    x0 = cuda.blockIdx.x * TILE_X - 1  # image column of tile[:, 0]
    y0 = cuda.blockIdx.y * TILE_Y - 1
    # the tile has more cells than the block has threads: each thread loads every (TILE_X*TILE_Y)-th cell
    for k in range(ty * TILE_X + tx, TILE_H * TILE_W, TILE_X * TILE_Y):
        r, c = k // TILE_W, k % TILE_W
        tile[r, c] = img[min(max(y0 + r, 0), h - 1), min(max(x0 + c, 0), w - 1)]
    cuda.syncthreads()
    x, y = cuda.grid(2)
    if y < h and x < w:
        s = ZERO
        for dy in range(3):
            for dx in range(3):
                s += tile[ty + dy, tx + dx]
        out[y, x] = s / np.float32(9)


# 03.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def block_sum_kernel(x, partial):
    """Exercise 03.3 — ``partial[b] = sum of x[b*2*THREADS : (b+1)*2*THREADS]``: a shared-memory tree."""
    buf = cuda.shared.array(THREADS, np.float32)
    t = cuda.threadIdx.x
    i = cuda.blockIdx.x * 2 * THREADS + t
    s = ZERO
    if i < x.size:
        s = x[i]
    if i + THREADS < x.size:
        s += x[i + THREADS]
    buf[t] = s
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()
        stride //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = buf[0]


# 03.4 -------------------------------------------------------------------------------------------------
@cuda.jit
def row_max_kernel(a, out):
    """Exercise 03.4 — ``out[r] = max(a[r, :])``, one warp (block of 32) per row, combined with shuffles."""
    r = cuda.blockIdx.x
    lane = cuda.threadIdx.x
    m = np.float32(-np.inf)  # a float32 start keeps max() and the shuffles in float32
    for c in range(lane, a.shape[1], 32):
        m = max(m, a[r, c])
    offset = 16
    while offset > 0:
        m = max(m, warp.shfl_xor_sync(warp.FULL_MASK, m, offset))
        offset //= 2
    if lane == 0:
        out[r] = m


# 03.5 -------------------------------------------------------------------------------------------------
@cuda.jit
def histogram_kernel(x, hist):
    """Exercise 03.5 — ``hist[v] += 1`` for every v in x: a private shared histogram per block, then merge."""
    local = cuda.shared.array(MAX_BINS, np.int32)
    t = cuda.threadIdx.x
    nbins = hist.size
    for b in range(t, nbins, cuda.blockDim.x):
        local[b] = 0
    cuda.syncthreads()
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        cuda.atomic.add(local, x[i], 1)
    cuda.syncthreads()
    for b in range(t, nbins, cuda.blockDim.x):
        if local[b] > 0:
            cuda.atomic.add(hist, b, local[b])


# 03.6 -------------------------------------------------------------------------------------------------
@cuda.jit
def block_scan_kernel(x, out):
    """Exercise 03.6 — inclusive prefix sum within each block of THREADS elements (Hillis–Steele)."""
    buf = cuda.shared.array(THREADS, np.float32)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    buf[t] = x[i] if i < x.size else ZERO
    cuda.syncthreads()
    offset = 1
    while offset < THREADS:
        v = buf[t - offset] if t >= offset else ZERO
        cuda.syncthreads()  # everyone has read before anyone writes
        buf[t] += v
        cuda.syncthreads()
        offset *= 2
    if i < x.size:
        out[i] = buf[t]
