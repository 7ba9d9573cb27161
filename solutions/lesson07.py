"""Lesson 07 — softmax and normalisation: reference answers (same API as exercises/lesson07.py)."""

import math

import minisd.mode as mode

# isort: split
import numpy as np

from course import warp
from minisd.kernel_backend import cuda, float32, int32

WARP = 32
NORM_THREADS = mode.pick(gpu=256, simulator=32)  # threads per block of the normalisation kernels


def _on_device(a):
    return hasattr(a, "copy_to_host")  # a Numba device array (real or simulated)


def _device(a, what):
    if a is None:
        return None
    if _on_device(a):
        if a.dtype != np.float32:
            raise TypeError(f"{what} must be float32, got {a.dtype}")
        return a
    return cuda.to_device(np.ascontiguousarray(a, dtype=np.float32))


# 07.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def softmax_kernel(x, out):
    """One warp (a block of 32 threads) per row of x (R, D): online max/sum per lane, combined by shuffles."""
    row = cuda.blockIdx.x
    lane = cuda.threadIdx.x
    if row >= x.shape[0]:
        return
    D = x.shape[1]
    m = float32(-math.inf)  # float32 throughout: no slow float64 on the GPU
    s = float32(0.0)
    for j in range(lane, D, WARP):  # one pass: running max m and sum s of exp(x - m)
        v = x[row, j]
        m_new = max(m, v)
        s = s * math.exp(m - m_new) + math.exp(v - m_new)
        m = m_new
    offset = 16
    while offset > 0:  # butterfly: after 5 steps every lane holds the row's (max, sum)
        m_o = warp.shfl_xor_sync(warp.FULL_MASK, m, offset)
        s_o = warp.shfl_xor_sync(warp.FULL_MASK, s, offset)
        m_new = max(m, m_o)
        if m_new != -math.inf:  # two lanes without elements: -inf - -inf would be NaN
            s = s * math.exp(m - m_new) + s_o * math.exp(m_o - m_new)
        m = m_new
        offset //= 2
    inv = float32(1.0) / s  # a bare 1.0 is a float64 literal: it would make the last pass float64
    for j in range(lane, D, WARP):
        out[row, j] = math.exp(x[row, j] - m) * inv


# 07.2 -------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def welford_combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries (Chan et al.): exact, no cancellation."""
    n = n_a + n_b
    if n == 0:
        return 0, float32(0.0), float32(0.0)
    delta = mean_b - mean_a
    frac_b = float32(n_b) / float32(n)
    return n, mean_a + delta * frac_b, m2_a + m2_b + delta * delta * float32(n_a) * frac_b


@cuda.jit
def group_norm_kernel(x, w, b, out, num_groups, eps, silu):
    """x, out (N, C, S) with S = H·W; w, b (C,). One block per (n, group): Welford statistics over the group's
    C/G·S values, then out = (x − mean)/sqrt(var + eps)·w[c] + b[c], then SiLU if silu."""
    cnt = cuda.shared.array(NORM_THREADS, int32)
    mean = cuda.shared.array(NORM_THREADS, float32)
    m2 = cuda.shared.array(NORM_THREADS, float32)
    t = cuda.threadIdx.x
    n = cuda.blockIdx.x // num_groups
    g = cuda.blockIdx.x % num_groups
    C, S = x.shape[1], x.shape[2]
    cpg = C // num_groups
    size = cpg * S
    c0 = g * cpg
    k, mu, acc = 0, float32(0.0), float32(0.0)
    for i in range(t, size, NORM_THREADS):  # per-thread Welford update
        v = x[n, c0 + i // S, i % S]
        k += 1
        d = v - mu
        mu += d / float32(k)
        acc += d * (v - mu)
    cnt[t], mean[t], m2[t] = k, mu, acc
    cuda.syncthreads()
    stride = NORM_THREADS // 2
    while stride > 0:  # tree of Welford merges in shared memory
        if t < stride:
            cnt[t], mean[t], m2[t] = welford_combine(
                cnt[t], mean[t], m2[t], cnt[t + stride], mean[t + stride], m2[t + stride]
            )
        cuda.syncthreads()
        stride //= 2
    mu = mean[0]
    rstd = float32(1.0) / math.sqrt(m2[0] / float32(size) + eps)  # biased variance, like torch
    for i in range(t, size, NORM_THREADS):
        c = c0 + i // S
        y = (x[n, c, i % S] - mu) * rstd * w[c] + b[c]
        if silu:
            y = y / (float32(1.0) + math.exp(-y))
        out[n, c, i % S] = y


# 07.3 -------------------------------------------------------------------------------------------------
def softmax(x):
    """Numerically stable softmax over the last axis of a float32 array of any shape (numpy in, numpy out)."""
    on_device = _on_device(x)
    shape = tuple(x.shape)  # a tuple: the simulator's device-array shape does not take negative indices
    if len(shape) == 0:
        raise ValueError("softmax needs at least one axis, got a 0-d array")
    if shape[-1] == 0:
        raise ValueError(f"softmax over an empty last axis (shape {shape})")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    d_x = _device(x, "x").reshape(rows, shape[-1])
    out = cuda.device_array(d_x.shape, np.float32)
    if d_x.shape[0]:
        softmax_kernel[d_x.shape[0], WARP](d_x, out)
    out = out.reshape(shape)
    return out if on_device else out.copy_to_host()


# 07.4 -------------------------------------------------------------------------------------------------
def _affine(a, n, what, default):
    if a is None:
        return cuda.to_device(np.full(n, default, np.float32))
    if tuple(a.shape) != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {tuple(a.shape)}")
    return _device(a, what)


def _norm(x, rows, channels, spatial, num_groups, weight, bias, eps, silu):
    d_x = _device(x, "x").reshape(rows, channels, spatial)
    out = cuda.device_array(d_x.shape, np.float32)
    w = _affine(weight, channels, "weight", 1.0)
    b = _affine(bias, channels, "bias", 0.0)
    if rows * num_groups:
        group_norm_kernel[rows * num_groups, NORM_THREADS](
            d_x, w, b, out, num_groups, np.float32(eps), bool(silu)
        )
    return out.reshape(tuple(x.shape))


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
    """torch.nn.functional.group_norm for x (N, C, *spatial), then SiLU when silu=True (fused, one kernel)."""
    if len(x.shape) < 2:
        raise ValueError(f"x must be (N, C, ...), got shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    N, C = shape[0], shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups={num_groups!r} must be a positive int that divides the {C} channels")
    spatial = int(np.prod(shape[2:], dtype=np.int64))
    out = _norm(x, N, C, spatial, int(num_groups), weight, bias, eps, silu)
    return out if _on_device(x) else out.copy_to_host()


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm over the last axis: a GroupNorm with one group and one "pixel" per row."""
    shape = tuple(x.shape)
    if len(shape) < 1 or shape[-1] == 0:
        raise ValueError(f"layer_norm needs a non-empty last axis, got shape {shape}")
    D = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    out = _norm(x, rows, D, 1, 1, weight, bias, eps, False)
    return out if _on_device(x) else out.copy_to_host()
