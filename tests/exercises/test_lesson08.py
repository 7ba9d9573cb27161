"""Graded tests for lesson 08 (attention). Oracle: torch float64 (scaled_dot_product_attention's formula written
out with einsum and softmax) on fresh ragged inputs with Lq ≠ Lk; outputs poisoned."""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson08")
rng = grading.rng


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
    hints=(
        "One thread per score on a 3-D grid: x runs over the keys, y over the queries, z over the heads.",
        "j = blockIdx.x * blockDim.x + threadIdx.x, i likewise along y, bh = blockIdx.z; guard i < s.shape[1] "
        "and j < s.shape[2]; a float32 dot product over d.",
        "if i < s.shape[1] and j < s.shape[2]: acc = float32(0); for d in range(q.shape[2]): acc += q[bh, i, d] "
        "* k[bh, j, d]; s[bh, i, j] = acc * scale",
    ),
)
@pytest.mark.parametrize("BH,Lq,Lk,D", [(2, 11, 7, 5), (3, 9, 13, 4)])
def test_scores_kernel(BH, Lq, Lk, D):
    q, k, _ = _qkv(BH, Lq, Lk, D)
    grid = ((Lk + 7) // 8, (Lq + 7) // 8, BH)
    run = grading.launch(ex.scores_kernel, grid, (8, 8), q, k, Out((BH, Lq, Lk)), np.float32(0.5))
    ref = 0.5 * np.einsum("bid,bjd->bij", q.astype(np.float64), k.astype(np.float64))
    assert_close(run.out, ref, rtol=1e-5, atol=1e-5, what=f"scores (BH={BH}, Lq={Lq}, Lk={Lk}, D={D})")
    run.budget(reads={"q": D, "k": D}, writes={"s": 1})


@pytest.mark.exercise(
    "08.2",
    hints=(
        "One thread per query row, one pass over the keys: the online softmax of lesson 07 carries a running "
        "maximum, a running sum and a running weighted sum of V, so no score is ever stored.",
        "Keep m, s and acc[Dv] (cuda.local.array(DMAX, float32)) per thread; for each key: x = scale * q.k_j, "
        "m_new = max(m, x), rescale s and acc by alpha = exp(m - m_new) before adding p = exp(x - m_new) (and "
        "p * v_j); divide acc by s at the end.",
        "for j in range(Lk): x = scale * dot(q[bh, i], k[bh, j]); m_new = max(m, x); alpha = exp(m - m_new); "
        "p = exp(x - m_new); s = s * alpha + p; for d in range(Dv): acc[d] = acc[d] * alpha + p * v[bh, j, d]; "
        "m = m_new — then out[bh, i, d] = acc[d] * (float32(1) / s)",
    ),
)
@pytest.mark.parametrize(
    "BH,Lq,Lk,D,Dv,scale",
    [(2, 9, 6, 5, 5, 1.0), (1, 7, 11, 4, 6, 1.0), (2, 5, 8, 3, 3, 30.0), (1, 3, 1, 2, 3, 1.0)],
    ids=["self-ish", "cross-Dv", "huge-logits", "one-key"],
)
def test_attention_row_kernel(BH, Lq, Lk, D, Dv, scale):
    q, k, v = _qkv(BH, Lq, Lk, D, Dv, scale)
    sc = 1.0 / math.sqrt(D)
    n = BH * Lq
    run = grading.launch(
        ex.attention_row_kernel, (n + 31) // 32, 32, q, k, v, Out((BH, Lq, Dv)), np.float32(sc)
    )
    assert_close(
        run.out,
        _ref(q, k, v, sc),
        rtol=1e-4,
        atol=1e-5,
        what=f"attention rows (BH={BH}, Lq={Lq}, Lk={Lk}, D={D}, Dv={Dv}, logits ~{scale})",
    )
    run.budget(reads={"q": Lk * D, "k": Lk * D, "v": Lk * Dv}, writes={"out": Dv})  # one query row per thread


ATTENTION_HINTS = (
    "The host side: bring every head's (L, D) matrix into one (B*H, L, D) array, run your fused kernel with a "
    "thread per query row, and undo the layout on the way out.",
    "4-D: reshape to (B*H, L, D). 3-D (B, L, H*D) with heads=H: reshape to (B, L, H, D), transpose to "
    "(B, H, L, D), then flatten; default scale 1/sqrt(D); launch attention_row_kernel over B*H*Lq threads.",
    "qs = np.ascontiguousarray(q.reshape(B, Lq, H, D).transpose(0, 2, 1, 3).reshape(B * H, Lq, D)) (likewise "
    "k, v); attention_row_kernel[(B*H*Lq + 63) // 64, 64](qs, ks, vs, out, np.float32(scale)); reshape back.",
)


@pytest.mark.exercise("08.3", hints=ATTENTION_HINTS)
def test_attention_4d_cross():
    B, H, Lq, Lk, D = 2, 3, 7, 5, 4
    q, k, v = (a.reshape(B, H, -1, D) for a in _qkv(B * H, Lq, Lk, D))
    with grading.launches() as seen:
        got = ex.attention(q, k, v)
    seen.expect(ex.attention_row_kernel, "attention()", threads_at_least=B * H * Lq)
    assert isinstance(got, np.ndarray), f"attention should return a numpy array, got {type(got)}"
    assert_close(got, _ref(q, k, v, 1 / math.sqrt(D)), rtol=1e-4, atol=1e-5, what="attention 4-D, Lq != Lk")
    got = ex.attention(q, k, v, heads=H, scale=0.3)
    assert_close(got, _ref(q, k, v, 0.3), rtol=1e-4, atol=1e-5, what="attention 4-D with scale=0.3")


@pytest.mark.exercise("08.3", hints=ATTENTION_HINTS)
def test_attention_3d_heads():
    B, H, Lq, Lk, D = 2, 2, 6, 9, 3
    q = rng.standard_normal((B, Lq, H * D)).astype(np.float32)
    k = rng.standard_normal((B, Lk, H * D)).astype(np.float32)
    v = rng.standard_normal((B, Lk, H * D)).astype(np.float32)
    split = lambda a: a.reshape(B, a.shape[1], H, D).transpose(0, 2, 1, 3)  # noqa: E731
    ref = _ref(split(q), split(k), split(v), 1 / math.sqrt(D)).transpose(0, 2, 1, 3).reshape(B, Lq, H * D)
    got = ex.attention(q, k, v, heads=H)
    assert_close(got, ref, rtol=1e-4, atol=1e-5, what="attention 3-D (B, L, H*D) with heads=2, Lq != Lk")


@pytest.mark.exercise(
    "08.3",
    hints=(
        "Check the shapes before launching anything.",
        "All 4-D or all 3-D; q and k must share the head dimension; batch, heads and Lk must agree; 3-D needs "
        "heads, and heads must divide the feature sizes: raise ValueError with the shapes.",
        "if q.shape[-1] != k.shape[-1]: raise ValueError(f'q {q.shape} and k {k.shape} need the same head "
        "dimension') (and one such check per rule)",
    ),
)
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
