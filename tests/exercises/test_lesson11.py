"""Graded tests of lesson 11: linear on the GEMM, the activation kernels, two UNet blocks composed from ops.

The blocks are checked against minisd.model's PyTorch modules (float64), so "your kernels compute minisd" is
tested layer by layer. They call the kernels of lessons 04, 06, 07 and 08: finish those first.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course.grading import assert_close, load, poison
from minisd.model import BasicTransformerBlock, ResnetBlock2D

ex = load("lesson11")
rng = np.random.default_rng()


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
    hint="A = x.reshape(-1, in), B = weight.T (contiguous), grid (ceil(out/TILE), "
    "ceil(M/TILE)) of (TILE, TILE) threads; then bias_add_kernel; reshape to (..., out).",
)
def test_linear():
    x = rng.standard_normal((2, 3, 19)).astype(np.float32)  # 6 rows, 19 in: not multiples of the 16x16 tile
    w = rng.standard_normal((21, 19)).astype(np.float32)
    b = rng.standard_normal(21).astype(np.float32)
    ref = F.linear(torch.from_numpy(x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double())
    out = ex.linear(x, w, b)
    assert_close(out, ref.numpy(), rtol=1e-4, atol=1e-4, what="linear(x (2, 3, 19), w (21, 19), b)")
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


@pytest.mark.exercise("11.1", hint="bias_add_kernel: i = cuda.grid(1); r, c = i // N, i % N; guard i < M·N.")
def test_bias_add_kernel():
    out = rng.standard_normal((7, 45)).astype(np.float32)
    bias = rng.standard_normal(45).astype(np.float32)
    ref = out + bias
    ex.bias_add_kernel[2, 256](out, bias)
    assert_close(out, ref, rtol=1e-6, atol=1e-6, what="bias_add_kernel")


@pytest.mark.exercise(
    "11.2",
    hint="silu: v / (1 + exp(−v)); GELU: 0.5·v·(1 + erf(v/√2)); geglu: thread i → "
    "(m, h) = (i // H, i % H), out = x[m, h]·GELU(x[m, H + h]).",
)
def test_activation_kernels():
    n = 301
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    xt = torch.from_numpy(x).double()
    for kernel, ref in [(ex.silu_kernel, F.silu(xt)), (ex.gelu_kernel, F.gelu(xt))]:
        out = poison(n)
        kernel[2, 256](x, out)
        assert_close(
            out,
            ref.numpy(),
            rtol=1e-5,
            atol=1e-6,
            what=kernel.__name__ if hasattr(kernel, "__name__") else "kernel",
        )
    rows = (2 * rng.standard_normal((7, 26))).astype(np.float32)  # H = 13
    out = poison((7, 13))
    ex.geglu_kernel[1, 256](rows, out)
    a, g = torch.from_numpy(rows).double().chunk(2, dim=-1)
    assert_close(out, (a * F.gelu(g)).numpy(), rtol=1e-5, atol=1e-6, what="geglu_kernel")
    shaped = ex.geglu(rows.reshape(7, 1, 26))
    assert shaped.shape == (7, 1, 13), f"geglu keeps the leading axes: got {shaped.shape}"


@pytest.mark.exercise(
    "11.3",
    hint="GroupNorm+SiLU → conv1 → + linear(silu(temb))[:, :, None, None] → "
    "GroupNorm+SiLU → conv2 → + shortcut (conv_shortcut only if it is in p).",
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
        out = ex.resnet_block(x, temb, p, groups=groups, eps=1e-5)
        assert_close(out, ref, rtol=1e-3, atol=1e-3, what=f"resnet_block {c_in}→{c_out} channels")


@pytest.mark.exercise(
    "11.4",
    hint="x += attn1(LN1(x)); x += attn2(LN2(x), context); x += ff(LN3(x)) with "
    "attn = to_out.0(attention(to_q(y), to_k(ctx), to_v(ctx), heads)).",
)
def test_transformer_block_matches_minisd():
    block, p = _randomised(BasicTransformerBlock(8, 2, 6))
    x = rng.standard_normal((1, 5, 8)).astype(np.float32)
    context = rng.standard_normal((1, 3, 6)).astype(np.float32)  # cross-attention: 3 keys for 5 queries
    with torch.no_grad():
        ref = block(torch.from_numpy(x).double(), torch.from_numpy(context).double()).numpy()
    out = ex.transformer_block(x, context, p, heads=2)
    assert_close(out, ref, rtol=1e-3, atol=1e-3, what="transformer_block")
