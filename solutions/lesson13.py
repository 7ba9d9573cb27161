"""Lesson 13 — latent diffusion and the VAE decoder: reference answers (same API as exercises/lesson13.py).

minisd's UNet denoises 4 x 16 x 16 latents; an autoencoder (diffusers' AutoencoderKL) maps them to and from
64 x 64 RGB images. Sampling the latents of a picture, the KL term that keeps them Gaussian, and the
decoder's fused upsample + 3x3 convolution are kernels; the mid block's self-attention is lesson 11's ops.
Host wrappers take C-contiguous float32 numpy arrays and return numpy arrays.
"""

import math

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda, float32

from . import lesson11

THREADS = 256
MAX_BLOCKS = 1024  # a grid-stride loop needs no more: 1024 x 256 threads fill every SM of an H100 or H200
KL_THREADS = 128  # threads per image in kl_kernel: a power of two, so the tree halves evenly


def _blocks(n):
    return max(1, math.ceil(n / THREADS))


def _array(x, what, ndim=None):
    """``x`` if the kernels can take it as it is, else a clear refusal (nothing is silently copied)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{what} must be float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(
            f"{what} is not C-contiguous (a transposed or sliced view?): np.ascontiguousarray it"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------- Exercise 13.1: sampling latents
@cuda.jit
def sample_latents_kernel(mean, logvar, noise, scaling_factor, out):
    """out = (mean + exp(logvar / 2) · noise) · scaling_factor on flat arrays, grid-stride."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        std = math.exp(float32(0.5) * logvar[i])
        out[i] = (mean[i] + std * noise[i]) * scaling_factor


def sample_latents(mean, logvar, noise, scaling_factor):
    """The reparameterised latents z = (mean + σ·ε)·scaling_factor, σ = exp(logvar / 2), any shape."""
    mean, logvar, noise = _array(mean, "mean"), _array(logvar, "logvar"), _array(noise, "noise")
    if not mean.shape == logvar.shape == noise.shape:
        raise ValueError(
            f"mean {mean.shape}, logvar {logvar.shape} and noise {noise.shape} must have one shape"
        )
    if isinstance(scaling_factor, bool) or not np.isfinite(scaling_factor) or scaling_factor <= 0:
        raise ValueError(f"scaling_factor must be a positive number, got {scaling_factor!r}")
    out = np.full(mean.shape, np.nan, np.float32)
    grid = min(_blocks(out.size), MAX_BLOCKS)
    flat = (a.reshape(-1) for a in (mean, logvar, noise))
    sample_latents_kernel[grid, THREADS](*flat, np.float32(scaling_factor), out.reshape(-1))
    return out


# --------------------------------------------------------------------------- Exercise 13.2: the KL term
@cuda.jit
def kl_kernel(mean, logvar, out):
    """out[n] = 0.5 · Σ_j (mean² + exp(logvar) − 1 − logvar) over row n of (N, M): block n, KL_THREADS threads."""
    partial = cuda.shared.array(KL_THREADS, float32)
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    acc = float32(0.0)
    for j in range(t, mean.shape[1], KL_THREADS):  # a ragged row: the last pass leaves some threads idle
        m, lv = mean[n, j], logvar[n, j]
        acc += m * m + math.exp(lv) - float32(1.0) - lv
    partial[t] = acc
    cuda.syncthreads()
    stride = KL_THREADS // 2
    while stride > 0:  # every thread reaches every barrier; only the lower half adds
        if t < stride:
            partial[t] += partial[t + stride]
        cuda.syncthreads()
        stride //= 2
    if t == 0:
        out[n] = float32(0.5) * partial[0]


def kl_per_image(mean, logvar):
    """KL(N(mean, exp(logvar)) ‖ N(0, 1)) of each image of (N, C, H, W) latents: a float32 (N,) array."""
    mean, logvar = _array(mean, "mean", 4), _array(logvar, "logvar", 4)
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {mean.shape} and logvar {logvar.shape} must have one shape")
    n = mean.shape[0]
    out = np.full(n, np.nan, np.float32)
    kl_kernel[n, KL_THREADS](mean.reshape(n, -1), logvar.reshape(n, -1), out)
    return out


# --------------------------------------------------------------------------- Exercise 13.3: fused upsample + conv
@cuda.jit
def upsample_conv2d_kernel(x, w, b, out):
    """out = conv3x3(upsample_nearest2x(x), padding 1) + b, NCHW, without the upsampled image: one thread per
    element of out (N, O, 2H, 2W); upsampled pixel (uy, ux) is x[..., uy // 2, ux // 2]."""
    i = cuda.grid(1)
    N, O, OH, OW = out.shape
    if i >= N * O * OH * OW:
        return
    ox, oy = i % OW, (i // OW) % OH
    o, n = (i // (OW * OH)) % O, i // (OW * OH * O)
    acc = b[o]
    for c in range(x.shape[1]):
        for ky in range(3):
            uy = oy + ky - 1  # a row of the upsampled image: bound it there, BEFORE halving (C's -1 / 2 is 0)
            if 0 <= uy < OH:
                for kx in range(3):
                    ux = ox + kx - 1
                    if 0 <= ux < OW:
                        acc += x[n, c, uy // 2, ux // 2] * w[o, c, ky, kx]
    out[n, o, oy, ox] = acc


def upsample_conv2d(x, weight, bias=None):
    """The decoder's Upsample2D: conv2d(upsample_nearest2x(x), weight (O, C, 3, 3), bias (O,), padding=1)."""
    x, weight = _array(x, "x", 4), _array(weight, "weight", 4)
    n, c, h, w = x.shape
    o = weight.shape[0]
    if weight.shape[1:] != (c, 3, 3):
        raise ValueError(f"weight must be (O, {c}, 3, 3) for x {x.shape}, got {weight.shape}")
    bias = np.zeros(o, np.float32) if bias is None else _array(bias, "bias", 1)
    if bias.shape != (o,):
        raise ValueError(f"bias must have shape ({o},), one per output channel, got {bias.shape}")
    out = np.full((n, o, 2 * h, 2 * w), np.nan, np.float32)
    upsample_conv2d_kernel[_blocks(out.size), THREADS](x, weight, bias, out)
    return out


# --------------------------------------------------------------------------- Exercise 13.4: the mid block's attention
def vae_attention(x, p, groups, eps=1e-6, heads=1):
    """minisd.model.VAEAttention.forward on lesson 11's ops: x (N, C, H, W), ``p`` its state dict (numpy)."""
    n, c, h, w = x.shape
    normed = lesson11.group_norm(x, groups, p["group_norm.weight"], p["group_norm.bias"], eps)
    tokens = np.ascontiguousarray(normed.reshape(n, c, h * w).transpose(0, 2, 1))  # (N, HW, C)
    q, k, v = (lesson11.linear(tokens, p[f"to_{s}.weight"], p[f"to_{s}.bias"]) for s in "qkv")
    out = lesson11.linear(lesson11.attention(q, k, v, heads), p["to_out.0.weight"], p["to_out.0.bias"])
    return x + out.transpose(0, 2, 1).reshape(n, c, h, w)
