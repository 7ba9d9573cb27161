"""Lesson 12 — performance engineering: occupancy, launch overhead, int8 quantisation, 2:4 pruning, fusion,
CUDA graph replay."""

import math
from dataclasses import dataclass

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda, float32


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
    """Resident blocks per SM, the occupancy (resident warps / max warps) and the limiting resource."""
    if not 1 <= threads_per_block <= gpu.max_threads_per_block:
        raise ValueError(f"threads_per_block must be 1..{gpu.max_threads_per_block}, got {threads_per_block}")
    if not 1 <= registers_per_thread <= gpu.max_registers_per_thread:
        raise ValueError(
            f"registers_per_thread must be 1..{gpu.max_registers_per_thread}, got {registers_per_thread}"
        )
    if not 0 <= shared_per_block <= gpu.max_shared_per_block:
        raise ValueError(
            f"shared_per_block must be 0..{gpu.max_shared_per_block} bytes, got {shared_per_block}"
        )
    warps = -(-threads_per_block // gpu.warp_size)
    regs_per_warp = _round_up(registers_per_thread * gpu.warp_size, gpu.register_alloc_unit)
    smem = _round_up(shared_per_block + gpu.shared_reserved_per_block, gpu.shared_alloc_unit)
    limits = {
        "blocks": gpu.max_blocks_per_sm,
        "warps": gpu.max_threads_per_sm // gpu.warp_size // warps,
        "registers": gpu.registers_per_sm // regs_per_warp // warps,
        "shared memory": gpu.shared_per_sm // smem,
    }
    limiter = min(limits, key=limits.get)
    blocks = limits[limiter]
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps,
        "occupancy": blocks * warps / (gpu.max_threads_per_sm // gpu.warp_size),
        "limiter": limiter,
    }


# Exercise 12.2 — the launch-overhead model: the CPU issues, the GPU runs, whichever is slower sets the pace.
def batched_time(n_launches, per_launch_us, work_us):
    """Microseconds for n back-to-back launches of a kernel that runs work_us, each costing per_launch_us of CPU.

    Launch k is issued at (k+1)·per_launch_us and starts when it is issued AND kernel k−1 is done.
    """
    if n_launches < 0 or per_launch_us < 0 or work_us < 0:
        raise ValueError("n_launches, per_launch_us and work_us must be non-negative")
    if n_launches == 0:
        return 0.0
    return per_launch_us + work_us + (n_launches - 1) * max(per_launch_us, work_us)


# Exercise 12.3 — int8 per-channel symmetric quantisation: q = round(w / s[o]), s[o] = max|w[o, :]| / 127.
def channel_scales(w):
    """One scale per output row: max |w[o, :]| / 127 (1.0 for an all-zero row, which quantises to zeros)."""
    peak = np.abs(np.asarray(w, np.float32)).max(axis=1)
    return np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)


@cuda.jit
def quantize_int8_kernel(w, scale, q):
    o, i = cuda.grid(2)
    if o < w.shape[0] and i < w.shape[1]:
        v = round(w[o, i] / scale[o])
        q[o, i] = min(max(v, -127), 127)


@cuda.jit
def dequantize_int8_kernel(q, scale, out):
    o, i = cuda.grid(2)
    if o < q.shape[0] and i < q.shape[1]:
        out[o, i] = q[o, i] * scale[o]


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
    row, g = cuda.grid(2)
    if row < w.shape[0] and g * 4 < w.shape[1]:
        base = g * 4
        for k in range(4):
            a = abs(w[row, base + k])
            larger = 0  # how many of the group beat element k (ties go to the lower index)
            for m in range(4):
                b = abs(w[row, base + m])
                if b > a or (b == a and m < k):
                    larger += 1
            out[row, base + k] = w[row, base + k] if larger < 2 else 0.0


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
def interleave_geglu(w, b):
    """torch's GEGLU projection (value rows, then gate rows) reordered value 0, gate 0, value 1, gate 1, ..."""
    w, b = np.asarray(w, np.float32), np.asarray(b, np.float32)
    if w.ndim != 2 or w.shape[0] % 2 or b.shape != (w.shape[0],):
        raise ValueError(
            f"interleave_geglu takes w (2F, K) and b (2F,) with an even 2F, got {w.shape} and {b.shape}"
        )
    f = w.shape[0] // 2
    order = np.stack([np.arange(f), f + np.arange(f)], axis=1).reshape(-1)
    return w[order], b[order]


@cuda.jit
def bias_geglu_kernel(h, bias, out):
    j, r = cuda.grid(2)  # x walks the features: neighbouring threads, neighbouring addresses
    if r < out.shape[0] and j < out.shape[1]:
        value = h[r, 2 * j] + bias[2 * j]
        gate = h[r, 2 * j + 1] + bias[2 * j + 1]
        gelu = float32(0.5) * gate * (float32(1.0) + math.erf(gate * float32(0.7071067811865476)))
        out[r, j] = value * gelu


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
def eager_step_us(work_us, launch_us):
    if launch_us < 0 or any(w < 0 for w in work_us):
        raise ValueError("launch_us and every kernel's work_us must be non-negative")
    end = 0.0
    for k, work in enumerate(work_us):
        end = max((k + 1) * launch_us, end) + work  # issued by the CPU AND the previous kernel done
    return end


def graph_step_us(work_us, graph_launch_us, per_kernel_us):
    if graph_launch_us < 0 or per_kernel_us < 0 or any(w < 0 for w in work_us):
        raise ValueError("graph_launch_us, per_kernel_us and every kernel's work_us must be non-negative")
    if len(work_us) == 0:
        return 0.0
    return graph_launch_us + sum(work_us) + len(work_us) * per_kernel_us


def gpu_bound_kernels(gpu_us, launch_us):
    if launch_us <= 0 or gpu_us < 0:
        raise ValueError(f"launch_us must be positive and gpu_us non-negative, got {launch_us} and {gpu_us}")
    # n kernels of gpu_us / n each keep the GPU busy while gpu_us / n >= launch_us
    return int(gpu_us // launch_us)
