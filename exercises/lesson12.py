"""Lesson 12 — performance engineering: occupancy, launch overhead, int8 quantisation, 2:4 pruning, fusion,
CUDA graph replay."""

import math
from dataclasses import dataclass

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda, float32  # noqa: F401  (float32: constants in your kernels)


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


# Exercise 12.5 — fusion: the GEMM's bias and GEGLU in one pass, on value/gate columns interleaved.
# GEGLU's projection gives h = x @ w.T + b of width 2F: value = h[:, :F], gate = h[:, F:], out = value·gelu(gate).
# Unfused, that is three passes over memory (write h, add the bias, GEGLU). In a tensor-core GEMM each thread
# holds two NEIGHBOURING columns of the accumulator (c0, c1 of lesson 05's fragments): interleave the weight's
# rows so that value j and gate j are neighbours, and one thread has both in registers to finish the job.
def interleave_geglu(w, b):
    """torch's GEGLU projection w (2F, K), b (2F,) — value rows 0..F-1, then gate rows F..2F-1 — reordered
    value 0, gate 0, value 1, gate 1, ...: row 2j of the result is w[j], row 2j + 1 is w[F + j] (b likewise).

    Returns (w', b') as float32. Raise ValueError unless w is 2-D with an even number of rows and b matches.
    Hint: one index array, numpy fancy indexing; no loop.
    """
    raise NotImplementedError("Exercise 12.5: interleave_geglu")


@cuda.jit
def bias_geglu_kernel(h, bias, out):
    """out[r, j] = (h[r, 2j] + bias[2j]) · gelu(h[r, 2j+1] + bias[2j+1]): h = x @ w'.T WITHOUT its bias (rows, 2F),
    bias = b' (2F,), out (rows, F). gelu(v) = 0.5·v·(1 + erf(v/√2)), the exact form (math.erf; float32 constants).

    One thread per output element: j, r = cuda.grid(2) — x walks the features, so neighbouring threads touch
    neighbouring addresses; guard r < out.shape[0] and j < out.shape[1].

    Graded: the torch float64 GEGLU of the original (not interleaved) weight; per thread two reads of h, two of
    bias, one write of out; every element of h read once in all; each warp's accesses coalesced.
    """
    j, r = cuda.grid(2)
    # TODO: guard, add the bias to the value and the gate, write value * gelu(gate).
    pass


GEGLU_BLOCK = (32, 8)


def bias_geglu(h, bias):
    """out (rows, F) from h (rows, 2F), the product with interleave_geglu's weight, and its bias (2F,)."""
    h = np.ascontiguousarray(h, dtype=np.float32)
    if h.ndim != 2 or h.shape[1] % 2 or np.shape(bias) != (h.shape[1],):
        raise ValueError(f"bias_geglu takes h (rows, 2F) and bias (2F,), got {h.shape} and {np.shape(bias)}")
    out = np.full((h.shape[0], h.shape[1] // 2), np.nan, np.float32)
    grid = (math.ceil(out.shape[1] / GEGLU_BLOCK[0]), math.ceil(out.shape[0] / GEGLU_BLOCK[1]))
    bias_geglu_kernel[grid, GEGLU_BLOCK](h, np.ascontiguousarray(bias, np.float32), out)
    return out


# Exercise 12.6 — CUDA graphs: one sampling step launched kernel by kernel, or replayed from a graph.
# work_us is a list: the GPU time of each kernel of the step, in order (they differ: a conv runs far longer
# than a bias add).
def eager_step_us(work_us, launch_us):
    """Microseconds from the first launch to the end of the last kernel when the CPU launches them one by one.

    Launching costs the CPU launch_us per kernel (Python, argument handling, the driver), so kernel k is issued
    at (k+1)·launch_us; it starts once it is issued AND kernel k−1 has ended, and runs work_us[k].
    No kernels: 0. Raise ValueError if launch_us or any work_us is negative.
    Hint: 12.2's loop, with each kernel's own work. A long kernel lets the CPU run ahead: later launches
    are already waiting when it ends, so a sum of max(launch_us, work) per kernel is wrong.
    """
    raise NotImplementedError("Exercise 12.6: eager_step_us")


def graph_step_us(work_us, graph_launch_us, per_kernel_us):
    """The same step replayed from a captured CUDA graph: ONE call costs the CPU graph_launch_us, then the GPU
    runs the kernels back to back, each after a gap of per_kernel_us (the GPU's own launch latency).

    No kernels: 0. Raise ValueError if any argument (or work_us) is negative.
    """
    raise NotImplementedError("Exercise 12.6: graph_step_us")


def gpu_bound_kernels(gpu_us, launch_us):
    """The most kernels a step of gpu_us of GPU work can be split into (equal kernels, launched eagerly at
    launch_us each) while the GPU stays the bottleneck: each kernel must run at least as long as the CPU
    needs to launch the next one. 0 if even one kernel is shorter than a launch.
    Raise ValueError unless launch_us > 0 and gpu_us >= 0.
    Example: 1000 µs of work, 30 µs per launch (Numba) → 33 kernels; 6 µs (CuPy) → 166.
    """
    raise NotImplementedError("Exercise 12.6: gpu_bound_kernels")
