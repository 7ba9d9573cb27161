"""Graded tests for lesson 08 (attention). Oracle: torch float64 (scaled_dot_product_attention's formula written
out with einsum and softmax) on fresh ragged inputs with Lq ≠ Lk; outputs poisoned."""

import math

import numpy as np
import pytest
import torch

import minisd.mode  # noqa: F401  (before numba.cuda)

# isort: split
from numba import cuda

from course.grading import assert_close, load, poison

ex = load("lesson08")
rng = np.random.default_rng()


def _qkv(BH, Lq, Lk, D, Dv=None, scale=1.0):
    q = (scale * rng.standard_normal((BH, Lq, D))).astype(np.float32)
    k = (scale * rng.standard_normal((BH, Lk, D))).astype(np.float32)
    v = rng.standard_normal((BH, Lk, Dv or D)).astype(np.float32)
    return q, k, v


def _ref(q, k, v, scale):
    q, k, v = (torch.from_numpy(np.ascontiguousarray(a)).double() for a in (q, k, v))
    p = torch.softmax(torch.einsum("...id,...jd->...ij", q, k) * scale, dim=-1)
    return torch.einsum("...ij,...jd->...id", p, v).numpy()


@pytest.mark.exercise(
    "08.1",
    hint="j = blockIdx.x*blockDim.x + threadIdx.x (keys), i from the y axis (queries), "
    "bh = blockIdx.z; guard i < s.shape[1] and j < s.shape[2].",
)
@pytest.mark.parametrize("BH,Lq,Lk,D", [(2, 11, 7, 5), (3, 9, 13, 4)])
def test_scores_kernel(BH, Lq, Lk, D):
    q, k, _ = _qkv(BH, Lq, Lk, D)
    s = cuda.to_device(poison((BH, Lq, Lk)))
    ex.scores_kernel[((Lk + 7) // 8, (Lq + 7) // 8, BH), (8, 8)](
        cuda.to_device(q), cuda.to_device(k), s, np.float32(0.5)
    )
    ref = 0.5 * np.einsum("bid,bjd->bij", q.astype(np.float64), k.astype(np.float64))
    assert_close(
        s.copy_to_host(), ref, rtol=1e-5, atol=1e-5, what=f"scores (BH={BH}, Lq={Lq}, Lk={Lk}, D={D})"
    )


@pytest.mark.exercise(
    "08.2",
    hint="Keep m, s and acc[Dv] per thread; for each key rescale by alpha = exp(m - m_new) "
    "before adding p = exp(x - m_new); divide by s at the end.",
)
@pytest.mark.parametrize(
    "BH,Lq,Lk,D,Dv,scale",
    [(2, 9, 6, 5, 5, 1.0), (1, 7, 11, 4, 6, 1.0), (2, 5, 8, 3, 3, 30.0), (1, 3, 1, 2, 3, 1.0)],
    ids=["self-ish", "cross-Dv", "huge-logits", "one-key"],
)
def test_attention_row_kernel(BH, Lq, Lk, D, Dv, scale):
    q, k, v = _qkv(BH, Lq, Lk, D, Dv, scale)
    out = cuda.to_device(poison((BH, Lq, Dv)))
    sc = 1.0 / math.sqrt(D)
    n = BH * Lq
    ex.attention_row_kernel[(n + 31) // 32, 32](
        cuda.to_device(q), cuda.to_device(k), cuda.to_device(v), out, np.float32(sc)
    )
    assert_close(
        out.copy_to_host(),
        _ref(q, k, v, sc),
        rtol=1e-4,
        atol=1e-5,
        what=f"attention rows (BH={BH}, Lq={Lq}, Lk={Lk}, D={D}, Dv={Dv}, logits ~{scale})",
    )


@pytest.mark.exercise(
    "08.3",
    hint="4-D: reshape to (B*H, L, D). 3-D: reshape (B, L, H, D), transpose to (B, H, L, D), "
    "then flatten; undo it on the way out. Default scale 1/sqrt(D).",
)
def test_attention_4d_cross():
    B, H, Lq, Lk, D = 2, 3, 7, 5, 4
    q, k, v = (a.reshape(B, H, -1, D) for a in _qkv(B * H, Lq, Lk, D))
    got = ex.attention(q, k, v)
    assert isinstance(got, np.ndarray), f"attention should return a numpy array, got {type(got)}"
    assert_close(got, _ref(q, k, v, 1 / math.sqrt(D)), rtol=1e-4, atol=1e-5, what="attention 4-D, Lq != Lk")
    got = ex.attention(q, k, v, heads=H, scale=0.3)
    assert_close(got, _ref(q, k, v, 0.3), rtol=1e-4, atol=1e-5, what="attention 4-D with scale=0.3")


@pytest.mark.exercise("08.3", hint="3-D inputs (B, L, H*D): head h owns features h*D:(h+1)*D.")
def test_attention_3d_heads():
    B, H, Lq, Lk, D = 2, 2, 6, 9, 3
    q = rng.standard_normal((B, Lq, H * D)).astype(np.float32)
    k = rng.standard_normal((B, Lk, H * D)).astype(np.float32)
    v = rng.standard_normal((B, Lk, H * D)).astype(np.float32)
    split = lambda a: a.reshape(B, a.shape[1], H, D).transpose(0, 2, 1, 3)  # noqa: E731
    ref = _ref(split(q), split(k), split(v), 1 / math.sqrt(D)).transpose(0, 2, 1, 3).reshape(B, Lq, H * D)
    got = ex.attention(q, k, v, heads=H)
    assert_close(got, ref, rtol=1e-4, atol=1e-5, what="attention 3-D (B, L, H*D) with heads=2, Lq != Lk")


@pytest.mark.exercise("08.3", hint="Validate shapes first: ValueError naming the shapes.")
def test_attention_rejects_bad_input():
    q = np.ones((1, 2, 4, 3), np.float32)
    with pytest.raises(ValueError):
        ex.attention(q, q[:, :, :, :2], q)  # head dims differ between q and k
    with pytest.raises(ValueError):
        ex.attention(q, q[:, :1], q[:, :1])  # heads differ
    with pytest.raises(ValueError):
        ex.attention(q.reshape(1, 4, 6), q.reshape(1, 4, 6), q.reshape(1, 4, 6))  # 3-D without heads
    with pytest.raises(ValueError):
        ex.attention(
            q.reshape(1, 4, 6), q.reshape(1, 4, 6), q.reshape(1, 4, 6), heads=4
        )  # 4 does not divide 6
