"""Lesson 08 — attention: reference answers (same API as exercises/lesson08.py).

Kernels work on (BH, L, D) arrays: batch and heads flattened into one axis, one (L, D) matrix per head.
"""

import math

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda, float32

DMAX = 128  # longest head dimension the fused kernel keeps in registers (local arrays need a fixed size)
THREADS = 64


# 08.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def scores_kernel(q, k, s, scale):
    """s[bh, i, j] = scale · q[bh, i, :] · k[bh, j, :] — one thread per score, 3-D grid (j, i, bh)."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    bh = cuda.blockIdx.z
    if i < s.shape[1] and j < s.shape[2]:
        acc = float32(0.0)
        for d in range(q.shape[2]):
            acc += q[bh, i, d] * k[bh, j, d]
        s[bh, i, j] = acc * scale


# 08.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def attention_row_kernel(q, k, v, out, scale):
    """One thread per query row (bh, i): scores, online softmax and the weighted sum of V in one pass over the
    keys; nothing of size Lq × Lk is ever stored."""
    r = cuda.grid(1)
    BH, Lq, D = q.shape
    Lk, Dv = k.shape[1], v.shape[2]
    if r >= BH * Lq:
        return
    bh, i = r // Lq, r % Lq
    acc = cuda.local.array(DMAX, float32)
    for d in range(Dv):
        acc[d] = 0.0
    m = float32(-math.inf)  # float32 throughout: no slow float64 on the GPU
    s = float32(0.0)
    for j in range(Lk):
        x = float32(0.0)
        for d in range(D):
            x += q[bh, i, d] * k[bh, j, d]
        x *= scale
        m_new = max(m, x)
        alpha = math.exp(m - m_new)  # rescales what was accumulated under the old max
        p = math.exp(x - m_new)
        s = s * alpha + p
        for d in range(Dv):
            acc[d] = acc[d] * alpha + p * v[bh, j, d]
        m = m_new
    inv = float32(1.0) / s  # float32(1.0): a bare 1.0 is float64 and would turn the output pass float64
    for d in range(Dv):
        out[bh, i, d] = acc[d] * inv


# 08.3 -------------------------------------------------------------------------------------------------
@cuda.jit
def _split_heads(x, out):
    """(B, L, H·D) → (B·H, L, D)."""
    i = cuda.grid(1)
    BH, L, D = out.shape
    if i < out.size:
        d, li, bh = i % D, (i // D) % L, i // (D * L)
        H = BH // x.shape[0]
        out[bh, li, d] = x[bh // H, li, (bh % H) * D + d]


@cuda.jit
def _merge_heads(x, out):
    """(B·H, L, D) → (B, L, H·D)."""
    i = cuda.grid(1)
    BH, L, D = x.shape
    if i < x.size:
        d, li, bh = i % D, (i // D) % L, i // (D * L)
        H = BH // out.shape[0]
        out[bh // H, li, (bh % H) * D + d] = x[bh, li, d]


def _on_device(a):
    return hasattr(a, "copy_to_host")  # a Numba device array (real or simulated)


def _launch(kernel, n, *args):
    kernel[(n + THREADS - 1) // THREADS, THREADS](*args)


def attention(q, k, v, heads=None, scale=None):
    """softmax(q·kᵀ·scale)·v per head; scale defaults to 1/sqrt(head_dim). Lk may differ from Lq.

    4-D: q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) → (B, H, Lq, Dv)   (heads must be None or H)
    3-D: q (B, Lq, H·D), k (B, Lk, H·D), v (B, Lk, H·Dv) with heads=H → (B, Lq, H·Dv)
    Numpy in → numpy out; Numba device arrays in → a device array out.
    """
    qs, ks, vs = tuple(q.shape), tuple(k.shape), tuple(v.shape)
    shapes = f"q {qs}, k {ks}, v {vs}"
    nd = len(qs)
    if not (len(ks) == len(vs) == nd) or nd not in (3, 4):
        raise ValueError(f"q, k, v must all be 4-D (B, H, L, D) or all 3-D (B, L, H·D); got {shapes}")
    if nd == 3:
        if heads is None or not isinstance(heads, (int, np.integer)) or heads < 1:
            raise ValueError(f"3-D inputs need heads=H (a positive int) to split H·D; got heads={heads!r}")
        B, Lq, HD = qs
        Lk, HDv = ks[1], vs[2]
        if HD % heads or HDv % heads:
            raise ValueError(f"heads={heads} does not divide the feature sizes of {shapes}")
        H, D, Dv = int(heads), HD // heads, HDv // heads
        if ks != (B, Lk, HD) or vs[:2] != (B, Lk):
            raise ValueError(f"shapes do not match: {shapes} (k must be (B, Lk, H·D), v (B, Lk, H·Dv))")
    else:
        B, H, Lq, D = qs
        Lk, Dv = ks[2], vs[3]
        if heads is not None and heads != H:
            raise ValueError(f"heads={heads} but the 4-D inputs have {H} heads: {shapes}")
        if ks != (B, H, Lk, D) or vs[:3] != (B, H, Lk):
            raise ValueError(f"shapes do not match: {shapes} (k must be (B, H, Lk, D), v (B, H, Lk, Dv))")
    if min(B, H, Lq, Lk, D, Dv) < 1:
        raise ValueError(f"empty attention: {shapes}")
    if Dv > DMAX:
        raise ValueError(f"head dimension {Dv} is larger than the kernel's DMAX={DMAX}")
    scale = np.float32(1.0 / math.sqrt(D) if scale is None else scale)
    on_device = _on_device(q)
    if on_device:
        if nd == 4:
            qh, kh, vh = q.reshape(B * H, Lq, D), k.reshape(B * H, Lk, D), v.reshape(B * H, Lk, Dv)
        else:
            qh, kh, vh = (
                cuda.device_array((B * H, L, d), np.float32) for L, d in ((Lq, D), (Lk, D), (Lk, Dv))
            )
            for src, dst in ((q, qh), (k, kh), (v, vh)):
                _launch(_split_heads, dst.size, src, dst)
    else:

        def heads_first(a, L, d):
            a = np.asarray(a, dtype=np.float32)
            a = a.reshape(B, L, H, d).transpose(0, 2, 1, 3) if nd == 3 else a
            return cuda.to_device(np.ascontiguousarray(a).reshape(B * H, L, d))

        qh, kh, vh = heads_first(q, Lq, D), heads_first(k, Lk, D), heads_first(v, Lk, Dv)
    out = cuda.device_array((B * H, Lq, Dv), np.float32)
    _launch(attention_row_kernel, B * H * Lq, qh, kh, vh, out, scale)
    if on_device:
        if nd == 4:
            return out.reshape(B, H, Lq, Dv)
        merged = cuda.device_array((B, Lq, H * Dv), np.float32)
        _launch(_merge_heads, out.size, out, merged)
        return merged
    host = out.copy_to_host().reshape(B, H, Lq, Dv)
    return host.transpose(0, 2, 1, 3).reshape(B, Lq, H * Dv) if nd == 3 else host
