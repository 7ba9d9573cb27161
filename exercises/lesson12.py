"""Lesson 12 — performance engineering: occupancy, launch overhead, int8 quantisation, 2:4 pruning."""

import math
from dataclasses import dataclass

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda


@dataclass(frozen=True)
class GPULimits:
    """Per-SM resources that decide occupancy (defaults: H100, compute capability 9.0)."""

    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    max_threads_per_block: int = 1024
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    register_alloc_unit: int = 256  # registers are handed out per warp, rounded up to 256
    shared_per_sm: int = 233472  # 228 KiB
    max_shared_per_block: int = 232448  # 227 KiB
    shared_reserved_per_block: int = 1024  # the driver keeps 1 KiB of each block's shared memory
    shared_alloc_unit: int = 128
    warp_size: int = 32


H100 = GPULimits()


def _round_up(x, unit):
    return -(-x // unit) * unit


# Exercise 12.1 — the occupancy calculator: how many blocks fit on one SM, and what stops the next one.
def occupancy(threads_per_block, registers_per_thread, shared_per_block=0, gpu=H100):
    """Resident blocks per SM, the occupancy (resident warps / max warps) and the limiting resource.

    Returns {"blocks_per_sm": int, "warps_per_sm": int, "occupancy": float in [0, 1], "limiter": str}.
    0 blocks is a real answer: such a launch fails with "too many resources requested for launch".
    A block is resident only if ALL its resources fit, so blocks_per_sm is the smallest of four limits:
      "blocks"        gpu.max_blocks_per_sm
      "warps"         (max_threads_per_sm / 32) // warps_per_block, warps_per_block = ceil(threads / 32)
      "registers"     registers_per_sm // regs_per_warp // warps_per_block, where
                      regs_per_warp = registers_per_thread·32 rounded UP to a multiple of register_alloc_unit
      "shared memory" shared_per_sm // (shared_per_block + shared_reserved_per_block, rounded UP to a
                      multiple of shared_alloc_unit)
    limiter is the name of the smallest limit (on a tie, the first in the order above).
    Raise ValueError for threads_per_block outside 1..1024, registers outside 1..255, or shared memory
    outside 0..max_shared_per_block.
    Example (H100): 256 threads × 64 registers: 64·32 = 2048 registers a warp, 8 warps a block →
    65536 // 2048 // 8 = 4 blocks = 32 warps = occupancy 0.5, limited by "registers".
    """
    raise NotImplementedError("Exercise 12.1: occupancy")


# Exercise 12.2 — the launch-overhead model: the CPU issues, the GPU runs, whichever is slower sets the pace.
def batched_time(n_launches, per_launch_us, work_us):
    """Microseconds for n back-to-back launches of a kernel that runs work_us, each costing per_launch_us of CPU.

    Launch k is issued at (k+1)·per_launch_us and starts when it is issued AND kernel k−1 is done.
    0 launches take 0. Raise ValueError if any argument is negative.
    Hint: simulate it with a loop first (start = max(issued, previous end)), then find the closed form:
    after the first launch, each one adds max(per_launch_us, work_us).
    """
    raise NotImplementedError("Exercise 12.2: batched_time")


# Exercise 12.3 — int8 per-channel symmetric quantisation: q = round(w / s[o]), s[o] = max|w[o, :]| / 127.
def channel_scales(w):
    """One scale per output row: max |w[o, :]| / 127 (1.0 for an all-zero row, which quantises to zeros)."""
    peak = np.abs(np.asarray(w, np.float32)).max(axis=1)
    return np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)


@cuda.jit
def quantize_int8_kernel(w, scale, q):
    """q[o, i] = round(w[o, i] / scale[o]) clamped to [−127, 127] (int8), one thread per element.

    2-D grid: o, i = cuda.grid(2); guard both (o < rows, i < cols). round() of a float gives an int.

    Graded: exact rounding; one read of w and one write per thread.
    """
    o, i = cuda.grid(2)
    # TODO: guard, divide by this row's scale, round, clamp, store.
    pass


@cuda.jit
def dequantize_int8_kernel(q, scale, out):
    """out[o, i] = q[o, i] · scale[o] (float32), one thread per element, guarded."""
    o, i = cuda.grid(2)
    # TODO: guard and store.
    pass


def _grid2d(shape, block=(8, 32)):
    return (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])), block


def quantize_int8(w):
    """(q int8, scales float32) for a weight matrix w (out, in); w ≈ q · scales[:, None]."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8 takes a 2-D weight (out, in), got shape {w.shape}")
    scale = channel_scales(w)
    q = np.full(w.shape, -128, np.int8)  # -128 is never a valid output: an unwritten element shows
    grid, block = _grid2d(w.shape)
    quantize_int8_kernel[grid, block](w, scale, q)
    return q, scale


def dequantize_int8(q, scale):
    out = np.full(q.shape, np.nan, np.float32)
    grid, block = _grid2d(q.shape)
    dequantize_int8_kernel[grid, block](q, scale, out)
    return out


# Exercise 12.4 — 2:4 structured sparsity: in every group of 4 neighbours in a row keep the 2 largest |w|.
@cuda.jit
def prune_2_4_kernel(w, out):
    """2:4 sparsity: thread (row, g) owns w[row, 4g : 4g+4] and keeps its 2 largest |w|, zeroing the other 2.

    out[row, 4g+k] = w[row, 4g+k] if fewer than 2 of the group's elements beat it, else 0.0, where m beats k
    when |w_m| > |w_k|, or |w_m| == |w_k| and m < k (ties go to the lower index, so exactly 2 survive).
    Grid: (rows, cols/4) threads; guard row < w.shape[0] and 4g < w.shape[1].
    Why: NVIDIA's sparse tensor cores skip the zeros of exactly this pattern — half the weights, up to 2× math.

    Graded: the torch oracle; at most 4 writes per thread (its group).
    """
    row, g = cuda.grid(2)
    # TODO: for each k of the 4: count who beats it, then write w or 0.
    pass


def prune_2_4(w):
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % 4:
        raise ValueError(
            f"2:4 pruning needs a 2-D weight whose rows are a multiple of 4 long, got shape {w.shape}"
        )
    out = np.full(w.shape, np.nan, np.float32)
    grid, block = _grid2d((w.shape[0], w.shape[1] // 4))
    prune_2_4_kernel[grid, block](w, out)
    return out
