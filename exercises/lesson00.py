"""Lesson 00 — why GPUs: exercises.

Fill in the bodies, then grade yourself:

    python -m pytest tests/exercises/test_lesson00.py -q

Each test says which exercise it grades and prints a hint when it fails. Read lessons/00_why_gpus.md first.
"""

import math  # noqa: F401  (you will want math.ceil in 00.5)

import minisd.mode  # noqa: F401  (decides GPU or simulator before numba.cuda is imported)

# isort: split
from minisd.kernel_backend import cuda  # numba.cuda (numba-cuda-mlir's if MINISD_NUMBA_CUDA=mlir)


# 00.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def fill_kernel(out, value):
    """Exercise 00.1 — your first kernel: set every element of the 1-D array ``out`` to ``value``.

    Launched as ``fill_kernel[blocks, threads](out, value)`` with blocks * threads >= out.size, usually more
    (the last block sticks out past the end).

    Hints:
    * ``i = cuda.grid(1)`` is this thread's global index, blockIdx.x * blockDim.x + threadIdx.x.
    * Threads with ``i >= out.size`` must do nothing: guard with ``if i < out.size:``.

    Graded: every element written, one element per thread (in the simulator a thread may write out at most
    once).
    """
    # TODO: one element per thread
    pass


# 00.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def scale_kernel(x, alpha, out):
    """Exercise 00.2 — ``out[i] = alpha * x[i]`` for every i (1-D float32 arrays of the same size).

    Launched as ``scale_kernel[blocks, threads](x, alpha, out)``, again with more threads than elements.

    Graded: the answer against torch; at most one read of x and one write of out per thread.
    """
    # TODO: like fill_kernel, but read x[i]
    pass


# 00.3 -------------------------------------------------------------------------------------------------
def time_floor_ms(bytes_moved, flops, peak_bandwidth, peak_flops):
    """Exercise 00.3 — the roofline in two numbers: no kernel can beat this time.

    A kernel must move ``bytes_moved`` bytes through memory (at most ``peak_bandwidth`` bytes/s) and do
    ``flops`` floating-point operations (at most ``peak_flops`` FLOP/s). Both happen at the same time at
    best, so the time floor is the larger of the two times.

    Returns ``(milliseconds, bound)`` where ``bound`` is ``"compute"`` when the FLOPs take longer than the
    bytes, else ``"memory"``.

    Raise ``ValueError`` naming the argument when bytes_moved or flops is negative, or a peak is <= 0.

    Example (H100: 3.0e12 B/s, 52e12 FLOP/s): saxpy on 2**24 floats moves 201 MB and does 33.5 MFLOP:
    ``time_floor_ms(201_326_592, 33_554_432, 3.0e12, 52e12) == (0.0671..., "memory")``.
    """
    raise NotImplementedError("Exercise 00.3: time_floor_ms")


# 00.4 -------------------------------------------------------------------------------------------------
def saxpy_cost(n, itemsize=4):
    """Exercise 00.4 — ``(bytes, flops)`` of ``out = a * x + y`` on n elements of ``itemsize`` bytes.

    Count the minimum traffic: every input element read once, every output element written once.
    Count a multiply and an add as 2 FLOPs. Raise ``ValueError`` if n < 0 or itemsize <= 0.
    """
    raise NotImplementedError("Exercise 00.4: saxpy_cost")


def gemm_cost(m, n, k, itemsize=4):
    """Exercise 00.4 — ``(bytes, flops)`` of ``C = A @ B`` with A (m, k), B (k, n), C (m, n).

    Minimum traffic again (each matrix crosses memory exactly once: read A and B, write C) and 2 FLOPs per
    multiply-add. Raise ``ValueError`` if a size is < 0 or itemsize <= 0.
    """
    raise NotImplementedError("Exercise 00.4: gemm_cost")


def intensity(bytes_moved, flops):
    """Exercise 00.4 — arithmetic intensity in FLOP per byte. ``ValueError`` if bytes_moved <= 0."""
    raise NotImplementedError("Exercise 00.4: intensity")


# 00.5 -------------------------------------------------------------------------------------------------
def bytes_in_flight(bandwidth, latency_s):
    """Exercise 00.5 — Little's law: how many bytes must be on their way to sustain ``bandwidth`` (B/s)
    when each request takes ``latency_s`` seconds to come back. ``ValueError`` if either is <= 0.

    H100: 3.0e12 B/s * 600e-9 s = 1.8 MB in flight, all the time.
    """
    raise NotImplementedError("Exercise 00.5: bytes_in_flight")


def threads_needed(bandwidth, latency_s, bytes_per_thread):
    """Exercise 00.5 — how many threads, each with ``bytes_per_thread`` bytes of loads outstanding, it takes
    to keep that many bytes in flight (a whole number: round up). ``ValueError`` if bytes_per_thread <= 0.
    """
    raise NotImplementedError("Exercise 00.5: threads_needed")
