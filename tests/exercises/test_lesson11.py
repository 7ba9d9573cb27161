"""Graded tests of lesson 11: linear on the GEMM, the activation kernels, two UNet blocks composed from ops.

The blocks are checked against minisd.model's PyTorch modules (float64), so "your kernels compute minisd" is
tested layer by layer. They call the kernels of lessons 04, 06, 07 and 08: finish those first.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course.grading as grading
from course.grading import Out, assert_close, load
from minisd.model import BasicTransformerBlock, ResnetBlock2D

ex = load("lesson11")
rng = grading.rng


def _randomised(module, std=0.3):
    """A module with every parameter drawn afresh (default inits leave biases and norms trivial)."""
    torch.manual_seed(int(rng.integers(1 << 30)))
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    params = {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    return module.double(), params


@pytest.mark.exercise(
    "11.1",
    hints=(
        "A linear layer is one matrix product: every leading axis of x is just more rows, and lesson 04's GEMM "
        "does the work; the bias is a second, element-wise kernel.",
        "A = x.reshape(-1, in), B = weight.T made contiguous (in, out), C an (M, out) device array; launch "
        "getattr(lesson04, GEMM_KERNEL) on a (ceil(out / GEMM_BLOCK), ceil(M / GEMM_BLOCK)) grid of (GEMM_BLOCK, "
        "GEMM_BLOCK) threads, then bias_add_kernel; reshape to (..., out).",
        "c = cuda.to_device(np.full((M, N), np.nan, np.float32)); getattr(lesson04, GEMM_KERNEL)[grid, "
        "(GEMM_BLOCK, GEMM_BLOCK)](a, b, c); if bias is not None: bias_add_kernel[_blocks(c.size), THREADS](c, "
        "cuda.to_device(bias)); return _check_written(c.copy_to_host(), ...).reshape(*x.shape[:-1], N)",
    ),
)
def test_linear():
    x = rng.standard_normal((2, 3, 19)).astype(np.float32)  # 6 rows, 19 in: not multiples of the 16x16 tile
    w = rng.standard_normal((21, 19)).astype(np.float32)
    b = rng.standard_normal(21).astype(np.float32)
    ref = F.linear(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double())
    with grading.launches() as seen:
        out = ex.linear(x, w, b)
    assert_close(out, ref.numpy(), rtol=1e-4, atol=1e-4, what="linear(x (2, 3, 19), w (21, 19), b)")
    seen.expect(ex.GEMM_KERNEL, "linear()", threads_at_least=6 * 21).expect(ex.bias_add_kernel, "linear()")
    out = ex.linear(x[0], w)
    assert_close(
        out,
        (torch.from_numpy(x[0]).double() @ torch.from_numpy(w).double().T).numpy(),
        rtol=1e-4,
        atol=1e-4,
        what="linear without bias",
    )
    with pytest.raises(ValueError, match="19"):
        ex.linear(x, w[:, :18])
    with pytest.raises(ValueError, match="bias"):
        ex.linear(x, w, b[:20])


@pytest.mark.exercise(
    "11.1",
    hints=(
        "One thread per element of out adds its column's bias, in place.",
        "i = cuda.grid(1); r, c = i // N, i % N with N = out.shape[1]; guard i < M * N.",
        "i = cuda.grid(1); if i < out.size: r, c = i // out.shape[1], i % out.shape[1]; out[r, c] += bias[c]",
    ),
)
def test_bias_add_kernel():
    out = rng.standard_normal((7, 45)).astype(np.float32)
    bias = rng.standard_normal(45).astype(np.float32)
    ref = out + bias
    run = grading.launch(ex.bias_add_kernel, 2, 256, out, bias)
    assert_close(run.values["out"], ref, rtol=1e-6, atol=1e-6, what="bias_add_kernel")
    run.budget(reads={"out": 1, "bias": 1}, writes={"out": 1})


@pytest.mark.exercise(
    "11.2",
    hints=(
        "Element-wise kernels, one thread per output element; GEGLU gates one half of each row with the GELU "
        "of the other half.",
        "silu: v / (1 + exp(-v)); GELU: 0.5 * v * (1 + erf(v / sqrt(2))) (math.erf works in kernels, float32 "
        "constants); geglu: thread i -> (m, h) = (i // H, i % H), H = out.shape[1].",
        "silu_kernel: if i < out.size: v = x[i]; out[i] = v / (ONE + math.exp(-v)); geglu_kernel: if i < "
        "out.size: m, h = i // H, i % H; out[m, h] = x[m, h] * _gelu(x[m, H + h])",
    ),
)
def test_activation_kernels():
    n = 301
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    xt = torch.from_numpy(x).double()
    for kernel, ref in [(ex.silu_kernel, F.silu(xt)), (ex.gelu_kernel, F.gelu(xt))]:
        run = grading.launch(kernel, 2, 256, x, Out(n))
        assert_close(run.out, ref.numpy(), rtol=1e-5, atol=1e-6, what=run.name)
        run.budget(reads={"x": 1}, writes={"out": 1})
    rows = (2 * rng.standard_normal((7, 26))).astype(np.float32)  # H = 13
    run = grading.launch(ex.geglu_kernel, 1, 256, rows, Out((7, 13)))
    a, g = torch.from_numpy(rows).double().chunk(2, dim=-1)
    assert_close(run.out, (a * F.gelu(g)).numpy(), rtol=1e-5, atol=1e-6, what="geglu_kernel")
    run.budget(reads={"x": 2}, writes={"out": 1})
    with grading.launches() as seen:
        shaped = ex.geglu(rows.reshape(7, 1, 26))
    assert shaped.shape == (7, 1, 13), f"geglu keeps the leading axes: got {shaped.shape}"
    seen.expect(ex.geglu_kernel, "geglu()", threads_at_least=7 * 13)


@pytest.mark.exercise(
    "11.3",
    hints=(
        "Compose the block from the ops above, in the order of minisd.model.ResnetBlock2D.forward: two "
        "norm-activation-convolution stages, the time embedding added between them, a shortcut at the end.",
        "GroupNorm+SiLU -> conv1 (padding 1) -> + linear(silu(temb))[:, :, None, None] -> GroupNorm+SiLU -> conv2 "
        "-> + shortcut (conv_shortcut, a 1x1 conv, only if 'conv_shortcut.weight' is in p).",
        "h = group_norm(x, groups, p['norm1.weight'], p['norm1.bias'], eps, silu=True); h = conv2d(h, "
        "p['conv1.weight'], p['conv1.bias'], padding=1); h = h + linear(silu(temb), p['time_emb_proj.weight'], "
        "p['time_emb_proj.bias'])[:, :, None, None]; ... return shortcut + h",
    ),
)
def test_resnet_block_matches_minisd():
    for c_in, c_out, groups, (h, w) in [
        (8, 16, 8, (5, 6)),
        (4, 4, 4, (3, 4)),
    ]:  # with and without conv_shortcut
        block, p = _randomised(ResnetBlock2D(c_in, c_out, 12, groups, 1e-5))
        x = rng.standard_normal((1, c_in, h, w)).astype(np.float32)
        temb = rng.standard_normal((1, 12)).astype(np.float32)
        with torch.no_grad():
            ref = block(torch.from_numpy(x).double(), torch.from_numpy(temb).double()).numpy()
        with grading.launches() as seen:
            out = ex.resnet_block(x, temb, p, groups=groups, eps=1e-5)
        assert_close(out, ref, rtol=1e-3, atol=1e-3, what=f"resnet_block {c_in}→{c_out} channels")
        what = "resnet_block() (on your kernels)"
        seen.expect("group_norm_kernel", what, times=2).expect("conv2d_kernel", what, times=2)
        seen.expect(ex.GEMM_KERNEL, what).expect(ex.silu_kernel, what)


@pytest.mark.exercise(
    "11.4",
    hints=(
        "Compose the block from the ops above, as minisd.model.BasicTransformerBlock.forward does: three "
        "residual steps, each on a LayerNorm of the tokens: self-attention, cross-attention, feed-forward.",
        "x += attn1(LN1(x)); x += attn2(LN2(x), context); x += ff(LN3(x)), with attn(y, ctx) = to_out.0(attention("
        "to_q(y), to_k(ctx), to_v(ctx), heads)) and ff = Linear(4C -> C)(GEGLU(Linear(C -> 8C)(y))).",
        "_attention_layer: q = linear(x, p[pre + 'to_q.weight']); k, v likewise from context; return linear("
        "attention(q, k, v, heads=heads), p[pre + 'to_out.0.weight'], p[pre + 'to_out.0.bias'])",
    ),
)
def test_transformer_block_matches_minisd():
    block, p = _randomised(BasicTransformerBlock(8, 2, 6))
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    context = rng.standard_normal((1, 3, 6)).astype(np.float32)  # cross-attention: 3 keys for 5 queries
    with torch.no_grad():
        ref = block(torch.from_numpy(x).double(), torch.from_numpy(context).double()).numpy()
    with grading.launches() as seen:
        out = ex.transformer_block(x, context, p, heads=2)
    assert_close(out, ref, rtol=1e-3, atol=1e-3, what="transformer_block")
    what = "transformer_block() (on your kernels)"
    seen.expect("group_norm_kernel", what, times=3).expect("attention_row_kernel", what, times=2)
    seen.expect(ex.GEMM_KERNEL, what, times=10).expect(ex.geglu_kernel, what)
