"""The half-precision kernels (minisd.ops.half_ops, fp16 and bf16) against torch in float64.

The oracle gets the same half-rounded inputs the kernels read, in float64: what is measured is the kernels'
own error (float32 accumulation, the rounding of the output), relative to max|ref|, within HALF_TOL. Every
output is allocated full of NaN (``poisoned_outputs``), so an element a kernel forgets fails the check.
Shapes are ragged: rows, pixels and keys that are not multiples of any tile. GPU only.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode as mode
from minisd.ops.harness import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mode.has_cupy(), reason="needs a CUDA GPU and CuPy"),
]

if mode.has_cupy():
    import cupy as cp

    from minisd.ops.half_ops import HalfOps, fold_layer_norm, interleave_geglu

# max|out - ref| / max|ref|: one rounding of the output to half (2^-11 fp16, 2^-8 bf16) plus float32 sums
# of half products and, in attention, P rounded to half before P V.
HALF_TOL = {"fp16": 2e-3, "bf16": 1.2e-2}
NAN_BITS = {"fp16": 0x7E00, "bf16": 0x7FC0}


@pytest.fixture(params=["fp16", "bf16"])
def ops(request, monkeypatch):
    """HalfOps whose every output starts as NaN."""
    ops = HalfOps(request.param)
    nan = NAN_BITS[request.param]

    def poisoned(shape):
        return cp.full(shape, nan, cp.uint16).view(ops.dtype)

    monkeypatch.setattr(ops, "_empty", poisoned)
    return ops


def half(ops, gen, *shape, scale=1.0, shift=0.0):
    """Random half values, and the float64 torch tensor of exactly those values."""
    x = ops.from_float32(cp.asarray((gen.standard_normal(shape) * scale + shift).astype(np.float32)))
    return x, t64(ops, x)


def t64(ops, x):
    return torch.from_numpy(cp.asnumpy(ops.to_float32(x))).double()


def f32(gen, *shape):
    x = gen.standard_normal(shape).astype(np.float32)
    return cp.asarray(x), torch.from_numpy(x).double()


def check(ops, out, ref, what):
    assert_close(ops.to_float32(out), ref, HALF_TOL[ops.precision], f"{what} [{ops.precision}]")


def nhwc(t):
    return t.permute(0, 2, 3, 1)


def nchw(t):
    return t.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- conv2d

CONV_CASES = [  # N, C, H, W, O, k, stride, padding, upsample
    (2, 16, 7, 5, 24, 3, 1, 1, False),
    (3, 8, 9, 7, 16, 3, 2, 1, False),  # downsampler
    (1, 24, 5, 6, 40, 1, 1, 0, False),  # 1x1
    (2, 32, 3, 5, 8, 3, 1, 1, True),  # upsampler: the 2x image exists only in the gather
    (2, 128, 8, 8, 128, 3, 1, 1, False),  # few pixels, deep K: split across a cluster (KS > 1)
    (32, 32, 32, 32, 64, 3, 1, 1, False),  # many pixels: the 128 x 64 tile
    (5, 40, 4, 3, 72, 3, 1, 0, False),  # no padding, O not a multiple of the tile
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(ops, gen, case):
    n, c, h, w, o, k, stride, padding, upsample = case
    x, x64 = half(ops, gen, n, h, w, c)
    wt, w64 = half(ops, gen, o, k, k, c, scale=1 / math.sqrt(c * k * k))
    bias, b64 = f32(gen, o)
    src = nchw(x64)
    if upsample:
        src = F.interpolate(src, scale_factor=2, mode="nearest")
    ref = nhwc(F.conv2d(src, nchw(w64), b64, stride=stride, padding=padding))
    out = ops.conv2d(x, wt, bias, stride, padding, upsample=upsample)
    check(ops, out, ref, f"conv2d {case}")


def test_conv2d_fused_epilogue(ops, gen):
    """bias + per-(image, channel) addend + residual, one pass."""
    x, x64 = half(ops, gen, 3, 6, 5, 16)
    wt, w64 = half(ops, gen, 24, 3, 3, 16, scale=0.1)
    bias, b64 = f32(gen, 24)
    add, a64 = f32(gen, 3, 24)
    res, r64 = half(ops, gen, 3, 6, 5, 24)
    ref = nhwc(F.conv2d(nchw(x64), nchw(w64), b64, padding=1)) + a64[:, None, None, :] + r64
    check(ops, ops.conv2d(x, wt, bias, 1, 1, residual=res, channel_add=add), ref, "conv2d epilogue")


# ---------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("rows, k, o", [(77, 40, 24), (2, 64, 64), (513, 128, 1024), (9, 256, 8)])
def test_linear(ops, gen, rows, k, o):
    x, x64 = half(ops, gen, rows, k)
    wt, w64 = half(ops, gen, o, k, scale=1 / math.sqrt(k))
    bias, b64 = f32(gen, o)
    res, r64 = half(ops, gen, rows, o)
    check(ops, ops.linear(x, wt, bias, residual=res), x64 @ w64.T + b64 + r64, f"linear {rows}x{k}->{o}")
    check(ops, ops.linear(x, wt), x64 @ w64.T, "linear, no bias")


@pytest.mark.parametrize("rows, k, f", [(75, 32, 128), (3, 64, 8)])
def test_linear_geglu(ops, gen, rows, k, f):
    x, x64 = half(ops, gen, 2, rows, k)
    w = (gen.standard_normal((2 * f, k)) / math.sqrt(k)).astype(np.float32)
    b = gen.standard_normal(2 * f).astype(np.float32)
    w_half = ops.from_float32(cp.asarray(interleave_geglu(w)))
    w64 = t64(ops, ops.from_float32(cp.asarray(w)))  # the same rounding, in torch's row order
    h = x64 @ w64.T + torch.from_numpy(b).double()
    ref = h[..., :f] * F.gelu(h[..., f:])
    check(ops, ops.linear_geglu(x, w_half, cp.asarray(interleave_geglu(b))), ref, "linear_geglu")


@pytest.mark.parametrize("geglu", [False, True])
@pytest.mark.parametrize("shift", [0.0, 40.0])  # |mean| >> std: mean * colsum must cancel what the mean adds
@pytest.mark.parametrize("rows, k, o", [(77, 40, 24), (3, 1024, 64), (130, 128, 384)])  # (3, 1024): split K
def test_layer_norm_linear(ops, gen, rows, k, o, shift, geglu):
    x, x64 = half(ops, gen, rows, k, scale=2.0, shift=shift)
    gamma, beta = gen.standard_normal(k) + 1, gen.standard_normal(k)
    w, b = gen.standard_normal((o, k)) / math.sqrt(k), gen.standard_normal(o)
    folded_w, folded_b = fold_layer_norm(gamma, beta, w, b)
    order = interleave_geglu if geglu else (lambda a: a)
    w_half = ops.from_float32(cp.asarray(order(folded_w), cp.float32))
    bias = cp.asarray(order(folded_b), cp.float32)
    out = ops.layer_norm_linear(x, w_half, bias, ops.layer_norm_colsum(w_half), 1e-5, geglu=geglu)

    def finish(h):
        return h[..., : o // 2] * F.gelu(h[..., o // 2 :]) if geglu else h

    what = f"layer_norm_linear {rows}x{k}->{o} shift {shift} geglu {geglu}"
    # what the kernel reads: the folded half weights (in torch's row order), the LayerNorm without affine
    w64 = t64(ops, ops.from_float32(cp.asarray(folded_w, cp.float32)))
    normed = F.layer_norm(x64, (k,), eps=1e-5)
    check(ops, out, finish(normed @ w64.T + torch.from_numpy(folded_b)), what)
    # and the layers as the model has them: the fold changes nothing but roundings
    g64, be64, wt64, bt64 = (torch.from_numpy(np.asarray(a, np.float64)) for a in (gamma, beta, w, b))
    check(
        ops,
        out,
        finish(F.linear(F.layer_norm(x64, (k,), g64, be64, 1e-5), wt64, bt64)),
        what + " vs unfolded",
    )


# ------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("b, lq, lk, heads, d", [(2, 77, 50, 2, 32), (3, 256, 8, 1, 32), (1, 19, 130, 2, 64)])
def test_attention(ops, gen, b, lq, lk, heads, d):
    q, q64 = half(ops, gen, b, lq, heads * d)
    k, k64 = half(ops, gen, b, lk, heads * d)
    v, v64 = half(ops, gen, b, lk, heads * d)

    def split(t, length):
        return t.reshape(b, length, heads, d).transpose(1, 2)

    ref = F.scaled_dot_product_attention(split(q64, lq), split(k64, lk), split(v64, lk))
    out = ops.attention(q, k, v, heads)
    check(ops, out, ref.transpose(1, 2).reshape(b, lq, heads * d), f"attention {lq}x{lk}")


def test_attention_without_keys_is_zero(ops, gen):
    q, _ = half(ops, gen, 1, 5, 32)
    kv = ops.from_float32(cp.zeros((1, 0, 32), cp.float32))
    assert float(cp.abs(ops.to_float32(ops.attention(q, kv, kv, 1))).max()) == 0.0


# ---------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "n, h, w, c, groups", [(3, 5, 7, 32, 8), (2, 6, 3, 96, 8), (1, 16, 16, 64, 8), (2, 32, 32, 32, 8)]
)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shift", [0.0, 40.0])  # |mean| >> std: the statistics must not cancel
def test_group_norm(ops, gen, n, h, w, c, groups, silu, shift):
    x, x64 = half(ops, gen, n, h, w, c, scale=3.0, shift=shift)
    weight, w64 = f32(gen, c)
    bias, b64 = f32(gen, c)
    ref = F.group_norm(nchw(x64), groups, w64, b64, 1e-5)
    ref = nhwc(F.silu(ref) if silu else ref)
    check(ops, ops.group_norm(x, groups, weight, bias, 1e-5, silu=silu), ref, f"group_norm {(n, h, w, c)}")


@pytest.mark.parametrize("rows, f", [(37, 64), (5, 40), (300, 128)])
def test_layer_norm(ops, gen, rows, f):
    x, x64 = half(ops, gen, rows, f, scale=2.0)
    weight, w64 = f32(gen, f)
    bias, b64 = f32(gen, f)
    ref = F.layer_norm(x64, (f,), w64, b64, 1e-5)
    check(ops, ops.layer_norm(x, weight, bias, 1e-5), ref, f"layer_norm {rows}x{f}")


# ---------------------------------------------------------------------------------------- data movement


def test_layouts_and_concat(ops, gen):
    x, x64 = f32(gen, 2, 3, 5, 7)
    img = ops.from_nchw(x, 8)
    assert img.shape == (2, 5, 7, 8)
    back = ops.to_nchw(img, 3)
    assert_close(back, x64, HALF_TOL[ops.precision], "NCHW -> NHWC -> NCHW")
    assert float(cp.abs(ops.to_float32(img)[..., 3:]).max()) == 0.0  # the padding channels are zero
    a, a64 = half(ops, gen, 2, 3, 5, 16)
    b, b64 = half(ops, gen, 2, 3, 5, 24)
    assert_close(ops.to_float32(ops.concat_channels(a, b)), torch.cat([a64, b64], -1), 0.0, "concat")


def test_refuses_what_it_cannot_do(ops, gen):
    x, _ = half(ops, gen, 1, 4, 4, 12)
    wt, _ = half(ops, gen, 8, 3, 3, 12)
    with pytest.raises(ValueError, match="multiples of 8"):
        ops.conv2d(x, wt, None, 1, 1)
    with pytest.raises(TypeError, match="CuPy"):
        ops.conv2d(cp.zeros((1, 4, 4, 16), cp.float32), wt, None, 1, 1)
    q, _ = half(ops, gen, 1, 4, 48)
    with pytest.raises(ValueError, match="head_dim"):
        ops.attention(q, q, q, 1)
    with pytest.raises(ValueError, match="colsum"):
        ops.layer_norm_linear(
            half(ops, gen, 5, 16)[0], half(ops, gen, 8, 16)[0], None, cp.zeros(3, cp.float32)
        )


def test_self_attention_reads_packed_qkv(ops, gen):
    """q, k, v as column slices of one (B, L, 3*H*D) projection output, read in place."""
    qkv, qkv64 = half(ops, gen, 2, 45, 3 * 64)
    q, k, v = (qkv64[..., i * 64 : (i + 1) * 64].reshape(2, 45, 2, 32).transpose(1, 2) for i in range(3))
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 45, 64)
    check(ops, ops.self_attention(qkv, 2), ref, "self_attention")


def test_skip_concatenation_is_read_in_place(ops, gen):
    """conv2d and group_norm read a ChannelConcat's two images where the concatenation would be; its groups
    may straddle the two (128 + 64 channels in 8 groups of 24)."""
    a, a64 = half(ops, gen, 2, 5, 3, 128)
    b, b64 = half(ops, gen, 2, 5, 3, 64, shift=2.0)
    both, both64 = ops.concat_channels(a, b), torch.cat([a64, b64], -1)
    assert both.shape == (2, 5, 3, 192)
    wt, w64 = half(ops, gen, 40, 3, 3, 192, scale=0.05)
    check(ops, ops.conv2d(both, wt, None, 1, 1), nhwc(F.conv2d(nchw(both64), nchw(w64), padding=1)), "conv2d")
    weight, w64 = f32(gen, 192)
    bias, b64 = f32(gen, 192)
    ref = nhwc(F.silu(F.group_norm(nchw(both64), 8, w64, b64, 1e-5)))
    check(ops, ops.group_norm(both, 8, weight, bias, 1e-5, silu=True), ref, "group_norm")
    w1, w164 = half(ops, gen, 192, 1, 1, 128, scale=0.1)  # a concatenation as a residual is copied first
    ref = nhwc(F.conv2d(nchw(a64), nchw(w164))) + both64
    check(ops, ops.conv2d(a, w1, None, residual=both), ref, "conv2d, concatenated residual")
