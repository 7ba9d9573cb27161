"""Lesson 11 — assembling minisd from your kernels.

``python -m minisd sample --kernels solutions`` (or ``exercises``) runs minisd with the functions below in
place of its own ops, op by op: each takes and returns numpy float32 arrays with the signature of the
``minisd.ops`` function of the same name (docs/MINISD_SPEC.md). They are glue around the kernels of earlier
lessons — conv2d from lesson 06, the norms and softmax from lesson 07, attention from lesson 08, the sampling
kernels from lesson 10, the GEMM from lesson 04 — plus this lesson's exercises: linear, the activations, and
two UNet blocks composed from ops. minisd probes each function on a tiny input first: one that raises
NotImplementedError (a stub) is replaced by minisd's own op, with a note; one that gives a wrong answer is
reported and the run stops; one you delete from this file is minisd's.

Your exercises: 11.1 linear (+ bias_add_kernel), 11.2 silu/gelu/geglu kernels, 11.3 resnet_block,
11.4 transformer_block. Grade them with  python -m pytest tests/exercises/test_lesson11.py
Then:  python -m minisd sample --kernels exercises   (on a GPU; in the simulator it takes hours).
"""

import math

import minisd.mode as mode  # first: picks the simulator before numba.cuda loads when there is no GPU

# isort: split
import numpy as np

from minisd.kernel_backend import cuda

from . import lesson04, lesson06, lesson07, lesson08, lesson10

THREADS = 256
# The GEMM under linear and its square block: lesson 04's tiled kernel (04.2, TILE x TILE threads) on a GPU.
# In the simulator each cuda.syncthreads() switches every Python thread of the block, so the naive kernel
# (04.1, same grid layout) on small 8 x 8 blocks is ~10x faster there.
GEMM_KERNEL, GEMM_BLOCK = mode.pick(
    gpu=("matmul_tiled_kernel", lesson04.TILE), simulator=("matmul_naive_kernel", 8)
)


def _blocks(n):
    return max(1, math.ceil(n / THREADS))


def _host(x, what):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf")
    return x


def _check_written(out, who):
    """A kernel that is still a stub leaves the NaN poison: say so (minisd then reports the op as wrong)."""
    missing = int(np.isnan(out).sum())
    if missing:
        raise ValueError(f"{who} left {missing} of {out.size} outputs unwritten: finish that exercise first")
    return out


# --------------------------------------------------------------------------- ops of earlier lessons, as minisd calls them
def conv2d(x, weight, bias=None, stride=1, padding=0):
    """Lesson 06's convolution."""
    return lesson06.conv2d(x, weight, bias, stride, padding)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
    """Lesson 07's GroupNorm (with the fused SiLU)."""
    return lesson07.group_norm(x, num_groups, weight, bias, eps, silu)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Lesson 07's LayerNorm over the last axis."""
    return lesson07.layer_norm(x, weight, bias, eps)


def softmax(x):
    """Lesson 07's softmax over the last axis."""
    return lesson07.softmax(x)


def attention(q, k, v, heads=None, scale=None):
    """Lesson 08's fused attention."""
    return lesson08.attention(q, k, v, heads, scale)


def randn(shape, seed):
    """Lesson 10's counter-based normals: the same numbers as minisd's, so the same picture."""
    return _check_written(lesson10.randn(shape, seed), "lesson 10's randn_kernel")


def cfg_combine(eps_uncond, eps_cond, guidance_scale):
    """Lesson 10's classifier-free guidance."""
    return _check_written(
        lesson10.cfg_combine(eps_uncond, eps_cond, guidance_scale), "lesson 10's cfg_combine_kernel"
    )


def ddim_step(
    sample, eps, alpha_prod_t, alpha_prod_t_prev, eta=0.0, noise=None, clip_sample=True, clip_range=1.0
):
    """Lesson 10's fused DDIM step."""
    out = lesson10.ddim_step(
        sample, eps, alpha_prod_t, alpha_prod_t_prev, eta, noise, clip_sample, clip_range
    )
    return _check_written(out, "lesson 10's ddim_step_kernel")


# --------------------------------------------------------------------------- Exercise 11.1: linear on lesson 04's GEMM
@cuda.jit
def bias_add_kernel(out, bias):
    """out[r, c] += bias[c] for out (M, N): one thread per element (flat index i, r = i // N, c = i % N).

    Part of exercise 11.1. Guard i < M·N.

    Graded: the answer; one read of out and of bias and one write per thread.
    """
    i = cuda.grid(1)
    # TODO
    pass


def linear(x, weight, bias=None):
    """Exercise 11.1 — torch.nn.functional.linear on lesson 04's GEMM: x (..., in) → (..., out).

    y = x @ weight.T + bias, with weight (out, in) in torch's layout and bias (out,) or None.
    1. x, weight = _host(x, "x"), _host(weight, "weight"); raise ValueError (naming both shapes) unless
       weight is 2-D and x.shape[-1] == weight.shape[1]; check bias is (out,) likewise.
    2. A = x.reshape(-1, in) (every leading axis is just more rows), B = weight.T made contiguous (in, out),
       C = an (M, out) device array full of NaN (cuda.to_device(np.full(...))).
    3. Launch getattr(lesson04, GEMM_KERNEL) (the tiled kernel on a GPU, the naive one in the simulator) with
       blocks of (GEMM_BLOCK, GEMM_BLOCK) threads and a grid of (ceil(out / GEMM_BLOCK), ceil(M / GEMM_BLOCK)):
       x covers the columns of C, y its rows (see lesson 04).
    4. If bias is given, launch your bias_add_kernel on C.
    5. out = _check_written(C.copy_to_host(), f"lesson 04's {GEMM_KERNEL}") (a stub GEMM leaves NaN:
       it says so), reshaped to (*x.shape[:-1], out).

    Graded: the answer, the errors, and that it launches the GEMM and bias_add_kernel.
    """
    raise NotImplementedError("Exercise 11.1: linear")


# --------------------------------------------------------------------------- Exercise 11.2: the activations
@cuda.jit
def silu_kernel(x, out):
    """Exercise 11.2 — out[i] = x[i] · sigmoid(x[i]) = x[i] / (1 + exp(−x[i])) on flat arrays, guarded.

    Graded: one read and one write per thread.
    """
    i = cuda.grid(1)
    # TODO
    pass


@cuda.jit(device=True)
def _gelu(v):
    # TODO (exercise 11.2): 0.5·v·(1 + erf(v / sqrt(2))); math.erf works in kernels
    return v


@cuda.jit
def gelu_kernel(x, out):
    """Exercise 11.2 — out[i] = GELU(x[i]), the exact (erf) form used by minisd, on flat arrays, guarded.

    Graded: one read and one write per thread.
    """
    i = cuda.grid(1)
    # TODO: use the device function _gelu above
    pass


@cuda.jit
def geglu_kernel(x, out):
    """Exercise 11.2 — x (M, 2H) → out (M, H): out[m, h] = x[m, h] · GELU(x[m, H + h]).

    One thread per OUTPUT element: i → (m, h) = (i // H, i % H) with H = out.shape[1]; guard i < M·H.

    Graded: two reads and one write per thread.
    """
    i = cuda.grid(1)
    # TODO
    pass


def _elementwise(kernel, x, who):
    x = _host(x, "x")
    out = np.full(x.shape, np.nan, np.float32)
    kernel[_blocks(x.size), THREADS](x.reshape(-1), out.reshape(-1))
    return _check_written(out, who)


def silu(x):
    return _elementwise(silu_kernel, x, "silu_kernel")


def gelu(x):
    return _elementwise(gelu_kernel, x, "gelu_kernel")


def geglu(x):
    """Split the last axis in two halves a, b and return a · GELU(b) (diffusers' GEGLU after its projection)."""
    x = _host(x, "x")
    if x.ndim < 1 or x.shape[-1] % 2:
        raise ValueError(f"geglu needs an even last axis, got shape {x.shape}")
    rows = x.reshape(-1, x.shape[-1])
    out = np.full((rows.shape[0], x.shape[-1] // 2), np.nan, np.float32)
    geglu_kernel[_blocks(out.size), THREADS](rows, out)
    return _check_written(out, "geglu_kernel").reshape(*x.shape[:-1], x.shape[-1] // 2)


# --------------------------------------------------------------------------- Exercise 11.3: a UNet ResnetBlock2D
def resnet_block(x, temb, p, groups=8, eps=1e-5):
    """Exercise 11.3 — minisd.model.ResnetBlock2D.forward composed from this module's ops (numpy in/out).

    x (N, C_in, H, W), temb (N, T); p is the block's state_dict as numpy arrays:
      h = SiLU(GroupNorm(x; norm1))                          group_norm(..., silu=True): one fused kernel
      h = conv1(h)                                           3x3, padding 1
      h = h + time_emb_proj(SiLU(temb))[:, :, None, None]    linear → (N, C_out), broadcast over H, W
      h = conv2(SiLU(GroupNorm(h; norm2)))
      return shortcut + h, shortcut = conv_shortcut(x) (1x1) if "conv_shortcut.weight" in p else x
    Hints: keys are "norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "time_emb_proj.weight", …;
    numpy's + does the two additions (minisd's CuPy backend fuses them into the conv's epilogue).

    Graded: against minisd's block, and that it runs on your kernels (the norms, convolutions, GEMM and
    SiLU are launched).
    """
    raise NotImplementedError("Exercise 11.3: resnet_block")


# --------------------------------------------------------------------------- Exercise 11.4: a BasicTransformerBlock
def _attention_layer(p, pre, x, context, heads):
    raise NotImplementedError("Exercise 11.4: _attention_layer")


def transformer_block(x, context, p, heads):
    """Exercise 11.4 — minisd.model.BasicTransformerBlock.forward from ops: x (B, L, C) tokens, context (B, Lc, Cc).

      x = x + attn1(LayerNorm1(x))                 self-attention: q, k, v all from the normalised x
      x = x + attn2(LayerNorm2(x), context)        cross-attention: q from the image tokens, k, v from the prompt
      x = x + ff(LayerNorm3(x))                    ff = Linear(4C → C) ∘ GEGLU ∘ Linear(C → 8C)
    attn(y, ctx) = to_out.0( attention(to_q(y), to_k(ctx), to_v(ctx), heads=heads) ); to_q/k/v have no bias.
    Keys: "norm1.weight", "attn1.to_q.weight", "attn1.to_out.0.bias", "ff.net.0.proj.weight", "ff.net.2.bias", …
    Hint: write the helper _attention_layer(p, "attn1.", y, ctx, heads) above first.

    Graded: against minisd's block, and that it runs on your kernels (norms, attention, GEMMs and GEGLU
    are launched).
    """
    raise NotImplementedError("Exercise 11.4: transformer_block")
