"""Lesson 03 — shared memory and synchronisation: exercises.

Fill in the bodies, then grade yourself:

    python -m pytest tests/exercises/test_lesson03.py -q

Read lessons/03_shared_memory.md first. In the simulator the tests count your global-memory traffic with
course.traffic (GPU-Puzzles style): the right answer is not enough, each block must load its data once.

Rules of the simulator worth knowing: one ``cuda.shared.array`` per line (two on one line alias), and
every thread of a block must reach every ``cuda.syncthreads()`` (never put one inside ``if i < n``).
"""

import numpy as np  # noqa: F401  (np.float32, np.int32, -np.inf in the kernels)

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from course import warp  # noqa: F401  (03.4: warp.shfl_xor_sync, warp.FULL_MASK)
from minisd.kernel_backend import cuda

THREADS = 64  # threads per block of the 1-D kernels (the tests launch with exactly this many)
RADIUS = 3  # 03.1: out[i] averages x[i - RADIUS .. i + RADIUS]
TILE_X, TILE_Y = 16, 8  # 03.2: threads per block (x along a row, y down the image)
MAX_BINS = 64  # 03.5: a histogram has at most this many bins
# A shared array's shape must be a plain constant: Numba does not fold ``THREADS + 2 * RADIUS`` inside a
# kernel (the simulator accepts it, a GPU refuses to compile it), so the tile sizes are computed here.
HALO_LEN = THREADS + 2 * RADIUS  # 03.1: the 1-D tile with its halo
TILE_H, TILE_W = TILE_Y + 2, TILE_X + 2  # 03.2: the 2-D tile with its 1-pixel halo


# 03.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def blur1d_kernel(x, out):
    """Exercise 03.1 — 1-D box blur: ``out[i] = mean(x[i-RADIUS .. i+RADIUS])``, indices clamped to
    [0, n-1] (the edge value repeats), through a shared tile with a halo.

    Launch: ``blur1d_kernel[ceil(n / THREADS), THREADS](x, out)``.

    Each output needs 2*RADIUS+1 inputs, and neighbouring outputs share most of them. Load the block's
    THREADS elements plus RADIUS on each side ONCE into ``cuda.shared.array(HALO_LEN, np.float32)``
    (HALO_LEN = THREADS + 2 * RADIUS, precomputed: a shared array's shape must be a plain constant),
    synchronise, then read the neighbours from shared memory.

    Graded: the answer; at most THREADS + 2*RADIUS global reads per block, at most 3 per thread.

    Hints:
    * block start = blockIdx.x * THREADS; thread t stores x[min(start + t, n - 1)] at tile[t + RADIUS].
    * threads t < RADIUS also store the left halo x[max(start - RADIUS + t, 0)] at tile[t]; the last RADIUS
      threads store the right halo x[min(start + t + RADIUS, n - 1)] at tile[t + 2 * RADIUS].
    * cuda.syncthreads() must be reached by ALL threads, including those past the end of x.
    """
    # TODO
    pass


# 03.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def blur2d_kernel(img, out):
    """Exercise 03.2 — 3x3 box blur of an (H, W) float32 image, edges clamped, through a shared tile.

    Launch: ``blur2d_kernel[(ceil(W / TILE_X), ceil(H / TILE_Y)), (TILE_X, TILE_Y)](img, out)``.

    A block of TILE_X x TILE_Y threads needs a (TILE_H, TILE_W) = (TILE_Y + 2, TILE_X + 2) shared tile: its
    pixels plus a 1-pixel halo all round. That is more cells than threads, so some threads load two.

    Graded: the answer; at most (TILE_X + 2) * (TILE_Y + 2) global reads per block, at most 4 per thread.

    Hints:
    * tile[r, c] holds img[clamp(blockIdx.y * TILE_Y - 1 + r), clamp(blockIdx.x * TILE_X - 1 + c)].
    * Loop ``for k in range(ty * TILE_X + tx, TILE_H * TILE_W, TILE_X * TILE_Y)`` with
      r, c = k // TILE_W, k % TILE_W: every cell is loaded once, by some thread.
    * After cuda.syncthreads(), pixel (x, y) = cuda.grid(2) averages tile[ty .. ty+2, tx .. tx+2].
    """
    # TODO
    pass


# 03.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def block_sum_kernel(x, partial):
    """Exercise 03.3 — each block sums 2*THREADS elements: ``partial[b] = sum(x[b*2*THREADS : (b+1)*2*THREADS])``
    (missing elements past the end count as 0). The host adds the few partial sums.

    Launch: ``block_sum_kernel[ceil(n / (2 * THREADS)), THREADS](x, partial)``.

    Graded: the answer; each element of x read once, at most 2 reads per thread, one write per block, and
    every thread reaching every cuda.syncthreads() (the grader counts them).

    Hints:
    * Thread t loads x[i] + x[i + THREADS] (i = blockIdx.x * 2 * THREADS + t, each guarded) into a
      shared array of THREADS floats: the first addition happens on the way in.
    * Tree: for stride = THREADS // 2, ..., 1: threads t < stride do buf[t] += buf[t + stride];
      cuda.syncthreads() after every step (by all threads, outside the ``if``).
    * Thread 0 writes buf[0].
    """
    # TODO
    pass


# 03.4 -------------------------------------------------------------------------------------------------
@cuda.jit
def row_max_kernel(a, out):
    """Exercise 03.4 — ``out[r] = max(a[r, :])`` for a (rows, cols) float32 matrix: one warp per row, the
    lanes combined with warp shuffles (the first step of a softmax, lesson 07).

    Launch: ``row_max_kernel[rows, 32](a, out)`` — block r is one warp, it handles row r.

    Graded: the answer (any cols, also fewer than 32), each element read once, at most ceil(cols / 32)
    reads per lane, one write per row, and no
    shared memory: use ``warp.shfl_xor_sync`` from course.warp (Numba's ``cuda.shfl_xor_sync`` on a GPU).

    Hints:
    * Lane l (= threadIdx.x) starts from -inf and takes the max over columns l, l + 32, l + 64, ...
    * Butterfly: for offset in 16, 8, 4, 2, 1: m = max(m, warp.shfl_xor_sync(warp.FULL_MASK, m, offset)).
      Afterwards EVERY lane holds the row's max; lane 0 writes it.
    """
    # TODO
    pass


# 03.5 -------------------------------------------------------------------------------------------------
@cuda.jit
def histogram_kernel(x, hist):
    """Exercise 03.5 — ``hist[v] += 1`` for every value v of the int32 array x (0 <= v < hist.size <= MAX_BINS).
    hist starts at zero.

    Launch: a FIXED grid, e.g. ``histogram_kernel[3, 64](x, hist)``, whatever the size of x: grid-stride.

    Atomics on global memory from every thread serialise on hot bins. Privatise: each block counts into its
    own shared histogram (shared atomics are cheap), then adds it to the global one: one global atomic per
    bin per block.

    Graded: exact counts; each element of x read once, no thread past its share of x; at most hist.size
    global updates per block.

    Hints:
    * local = cuda.shared.array(MAX_BINS, np.int32); threads zero bins t, t + blockDim.x, ... ; syncthreads.
    * for i in range(cuda.grid(1), x.size, cuda.gridsize(1)): cuda.atomic.add(local, x[i], 1).
    * syncthreads; then each thread adds some of the bins: cuda.atomic.add(hist, b, local[b]) (skip zeros).
    """
    # TODO
    pass


# 03.6 -------------------------------------------------------------------------------------------------
@cuda.jit
def block_scan_kernel(x, out):
    """Exercise 03.6 — inclusive prefix sum within each block of THREADS elements:
    ``out[i] = x[start] + x[start + 1] + ... + x[i]`` with start = blockIdx.x * THREADS.

    Launch: ``block_scan_kernel[ceil(n / THREADS), THREADS](x, out)``.

    Graded: the answer; one read and one write per thread.

    Hints (Hillis–Steele, log2(THREADS) steps):
    * Load x[i] (0.0 past the end) into a shared array buf of THREADS floats; syncthreads.
    * for offset = 1, 2, 4, ... < THREADS: v = buf[t - offset] if t >= offset else 0; syncthreads (all reads
      done before any write); buf[t] += v; syncthreads.
    * Write buf[t] to out[i] if i < n.
    """
    # TODO
    pass
