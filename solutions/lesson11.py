"""Lesson 11 — assembling minisd from your kernels.

``python -m minisd sample --kernels solutions`` (or ``exercises``) runs minisd with the functions below in
place of its own ops, op by op: each takes and returns numpy float32 arrays with the signature of the
``minisd.ops`` function of the same name (docs/MINISD_SPEC.md). They are glue around the kernels of earlier
lessons — conv2d from lesson 06, the norms and softmax from lesson 07, attention from lesson 08, the sampling
kernels from lesson 10, the GEMM from lesson 04 — plus this lesson's exercises: linear, the activations, and
two UNet blocks composed from ops. minisd probes each function on a tiny input first: one that raises
NotImplementedError (a stub) is replaced by minisd's own op, with a note; one that gives a wrong answer is
reported and the run stops; one you delete from this file is minisd's.
"""

import math

import minisd.mode as mode  # first: picks the simulator before numba.cuda loads when there is no GPU

# isort: split
import numpy as np

from minisd.kernel_backend import cuda, float32

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
    """out[r, c] += bias[c] for out (M, N): one thread per element."""
    i = cuda.grid(1)
    n = out.shape[1]
    if i < out.shape[0] * n:
        out[i // n, i % n] += bias[i % n]


def linear(x, weight, bias=None):
    """torch.nn.functional.linear: x (..., in) @ weight(out, in).T + bias(out,) → (..., out)."""
    x, weight = _host(x, "x"), _host(weight, "weight")
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: x {x.shape} and weight {weight.shape} do not fit: need x (..., in), weight (out, in)"
        )
    n_out, n_in = weight.shape
    if bias is not None:
        bias = _host(bias, "bias")
        if bias.shape != (n_out,):
            raise ValueError(f"linear: bias must have shape ({n_out},), got {bias.shape}")
    a = cuda.to_device(x.reshape(-1, n_in))  # (M, in)
    b = cuda.to_device(np.ascontiguousarray(weight.T))  # (in, out): C = A @ B is (M, out)
    c = cuda.to_device(np.full((a.shape[0], n_out), np.nan, np.float32))
    grid = (math.ceil(n_out / GEMM_BLOCK), math.ceil(a.shape[0] / GEMM_BLOCK))  # x: columns of C, y: rows
    getattr(lesson04, GEMM_KERNEL)[grid, (GEMM_BLOCK, GEMM_BLOCK)](a, b, c)
    if bias is not None:
        bias_add_kernel[_blocks(c.size), THREADS](c, cuda.to_device(bias))
    out = _check_written(c.copy_to_host(), f"lesson 04's {GEMM_KERNEL}")
    return out.reshape(*x.shape[:-1], n_out)


# --------------------------------------------------------------------------- Exercise 11.2: the activations
@cuda.jit
def silu_kernel(x, out):
    """out = x · sigmoid(x) on flat arrays."""
    i = cuda.grid(1)
    if i < out.size:
        v = x[i]
        out[i] = v / (float32(1.0) + math.exp(-v))  # float32 constants: a bare 1.0 is float64


@cuda.jit(device=True)
def _gelu(v):
    return float32(0.5) * v * (float32(1.0) + math.erf(v * float32(0.7071067811865476)))


@cuda.jit
def gelu_kernel(x, out):
    """out = GELU(x), the exact (erf) form, on flat arrays."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = _gelu(x[i])


@cuda.jit
def geglu_kernel(x, out):
    """x (M, 2H) → out (M, H): out[m, h] = x[m, h] · GELU(x[m, H + h])."""
    i = cuda.grid(1)
    hidden = out.shape[1]
    if i < out.shape[0] * hidden:
        m, h = i // hidden, i % hidden
        out[m, h] = x[m, h] * _gelu(x[m, hidden + h])


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
    """minisd.model.ResnetBlock2D.forward from ops; ``p`` is its state_dict as numpy arrays."""
    h = group_norm(x, groups, p["norm1.weight"], p["norm1.bias"], eps, silu=True)
    h = conv2d(h, p["conv1.weight"], p["conv1.bias"], padding=1)
    h = h + linear(silu(temb), p["time_emb_proj.weight"], p["time_emb_proj.bias"])[:, :, None, None]
    h = group_norm(h, groups, p["norm2.weight"], p["norm2.bias"], eps, silu=True)
    h = conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1)
    shortcut = (
        conv2d(x, p["conv_shortcut.weight"], p["conv_shortcut.bias"]) if "conv_shortcut.weight" in p else x
    )
    return shortcut + h


# --------------------------------------------------------------------------- Exercise 11.4: a BasicTransformerBlock
def _attention_layer(p, pre, x, context, heads):
    q = linear(x, p[pre + "to_q.weight"])
    k, v = linear(context, p[pre + "to_k.weight"]), linear(context, p[pre + "to_v.weight"])
    return linear(attention(q, k, v, heads=heads), p[pre + "to_out.0.weight"], p[pre + "to_out.0.bias"])


def transformer_block(x, context, p, heads):
    """minisd.model.BasicTransformerBlock.forward from ops: x (B, L, C) tokens, context (B, Lc, Cc)."""
    n = layer_norm(x, p["norm1.weight"], p["norm1.bias"])
    x = x + _attention_layer(p, "attn1.", n, n, heads)
    n = layer_norm(x, p["norm2.weight"], p["norm2.bias"])
    x = x + _attention_layer(p, "attn2.", n, context, heads)
    n = layer_norm(x, p["norm3.weight"], p["norm3.bias"])
    ff = geglu(linear(n, p["ff.net.0.proj.weight"], p["ff.net.0.proj.bias"]))
    return x + linear(ff, p["ff.net.2.weight"], p["ff.net.2.bias"])
