"""Lesson 08 — attention: your exercises.

Kernels work on (BH, L, D) arrays: batch and heads flattened into one axis, one (L, D) matrix per head.
Fill in the TODOs, then run ``pytest tests/exercises/test_lesson08.py``. Lesson 11 plugs ``attention`` into minisd:
keep its signature.
"""

import math  # noqa: F401  (math.exp, math.inf in your kernel)

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np  # noqa: F401  (for your attention)

from minisd.kernel_backend import cuda, float32  # noqa: F401  (float32 for your accumulators)

DMAX = 128  # longest head dimension the fused kernel keeps in registers (local arrays need a fixed size)
THREADS = 64


# 08.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def scores_kernel(q, k, s, scale):
    """The naive first step: s[bh, i, j] = scale * sum_d q[bh, i, d] * k[bh, j, d] for q (BH, Lq, D), k (BH, Lk, D),
    s (BH, Lq, Lk). Lq and Lk differ (cross-attention).

    ONE THREAD PER SCORE on a 3-D grid: x over keys j, y over queries i, z over bh (blockIdx.z, one head per
    z-slice). The grader launches blocks of (8, 8) threads; guard i < Lq and j < Lk.

    Graded: the answer; at most D reads of q and of k and one write per thread.
    """
    # TODO
    pass


# 08.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def attention_row_kernel(q, k, v, out, scale):
    """Fused attention, ONE THREAD PER QUERY ROW r = bh * Lq + i (1-D launch over BH * Lq threads):

        out[bh, i, :] = sum_j softmax_j(scale * q[bh, i] . k[bh, j]) * v[bh, j, :]

    in ONE pass over the keys with the online softmax of lesson 07, never storing a score:
      for each key j:  x = scale * q.k_j;  m_new = max(m, x);  alpha = exp(m - m_new);  p = exp(x - m_new)
                       s = s * alpha + p;   acc[:] = acc[:] * alpha + p * v[bh, j, :];  m = m_new
      finally out[bh, i, :] = acc / s
    acc is a per-thread array: cuda.local.array(DMAX, float32) (only the first Dv entries are used; Dv = v.shape[2]
    may differ from D = q.shape[2]). Start with m = float32(-inf), s = 0, acc = 0 (float32 everywhere: float64 is slow on GPUs).

    Graded: the answer (Dv != D, logits that overflow a naive exp); per thread at most Lk*D reads of q and
    of k, Lk*Dv of v and Dv writes: one query row each.
    """
    r = cuda.grid(1)
    # TODO
    pass


# 08.3 -------------------------------------------------------------------------------------------------
def attention(q, k, v, heads=None, scale=None):
    """softmax(q·kᵀ·scale)·v per head, numpy float32 in and out; scale defaults to 1/sqrt(head_dim).

    4-D: q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> (B, H, Lq, Dv)   (heads None, or equal to H)
    3-D: q (B, Lq, H*D), k (B, Lk, H*D), v (B, Lk, H*Dv) with heads=H -> (B, Lq, H*Dv)
         (features are split head-major: head h owns columns h*D ... (h+1)*D - 1, as in PyTorch/diffusers)
    Lk may differ from Lq (cross-attention: image tokens attend to text tokens).

    1. Validate: all 4-D or all 3-D; 3-D needs heads dividing the feature sizes; batch, heads and Lk must agree;
       raise ValueError with the shapes in the message.
    2. Bring each of q, k, v to (B*H, L, D) contiguous float32 (numpy reshape/transpose), copy to the device.
    3. Launch your attention_row_kernel over B*H*Lq threads, copy back, restore the input's layout.

    Graded: the answer in both layouts, the errors, and that it launches attention_row_kernel with a
    thread per query row.
    """
    raise NotImplementedError("Exercise 08.3: attention")
