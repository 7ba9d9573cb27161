"""The CPU backend: every op in numpy, float32 throughout.

This is what ``python -m minisd sample`` runs on a machine without a GPU, so it is written for speed on
a couple of cores: convolutions become one matrix product (im2col on a strided view), attention is three
batched matrix products, and nothing loops over pixels in Python. The dispatcher in ``minisd.ops`` has
already checked shapes and dtypes and made the inputs C-contiguous float32; these functions trust that.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from minisd.ops import rng


def conv2d(x, weight, bias=None, stride=1, padding=0):
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    if padding:
        xp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), np.float32)
        xp[:, :, padding : padding + h, padding : padding + w] = x
    else:
        xp = x
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    if kh == kw == 1 and stride == 1:
        cols = xp.reshape(n, c, ho * wo)  # a 1x1 conv is already a matrix product
    else:
        # im2col without a Python loop: a (n, c, kh, kw, ho, wo) view of the padded input, copied once
        # into the (c*kh*kw, ho*wo) matrix of each image.
        sn, sc, sh, sw = xp.strides
        view = as_strided(xp, (n, c, kh, kw, ho, wo), (sn, sc, sh, sw, sh * stride, sw * stride))
        cols = view.reshape(n, c * kh * kw, ho * wo)
    # (o, c*kh*kw) @ (n, c*kh*kw, ho*wo) -> (n, o, ho*wo): NCHW comes out directly, no transpose.
    out = np.matmul(weight.reshape(o, -1), cols)
    if bias is not None:
        out += bias[:, None]
    return out.reshape(n, o, ho, wo)


def _silu(x):
    # x * sigmoid(x) with sigmoid = (1 + tanh(x/2)) / 2: no overflow warning for large |x|.
    return x * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * x))


silu = _silu  # group_norm's argument ``silu`` shadows the name there


# Numerical Recipes' Chebyshev fit of erfc: ~1.2e-7 relative error everywhere (numpy has no erf).
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)  # fmt: skip


def gelu(x):
    """Exact GELU = x * Phi(x) = x/2 * erfc(-x/sqrt(2)).

    erfc keeps its relative accuracy in the left tail. Written with in-place float32 passes: the GEGLU
    hidden layer is the largest activation of the UNet, so temporaries here cost real time.
    """
    z = np.abs(x) * np.float32(1 / math.sqrt(2.0))
    t = np.float32(0.5) * z
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.full_like(x, _ERFC[-1])
    for c in _ERFC[-2::-1]:  # Horner
        poly *= t
        poly += np.float32(c)
    z *= z
    poly -= z
    np.exp(poly, out=poly)
    poly *= t  # erfc(|x|/sqrt 2)
    # erfc(-x/sqrt 2) = 2 - erfc(|x|/sqrt 2) for x > 0, erfc(|x|/sqrt 2) for x <= 0
    np.subtract(2.0, poly, out=poly, where=x > 0)
    poly *= x
    poly *= np.float32(0.5)
    return poly


def geglu(x):
    f = x.shape[-1] // 2
    out = gelu(x[..., f:])
    out *= x[..., :f]
    return out


def _normalize(xg, eps):
    """(x - mean) / sqrt(var + eps) over the last axis, biased variance, like torch."""
    mean = xg.mean(axis=-1, keepdims=True)
    d = xg - mean
    var = np.einsum("...k,...k->...", d, d)[..., None] / np.float32(xg.shape[-1])
    d *= 1.0 / np.sqrt(var + np.float32(eps))
    return d


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
    n, c = x.shape[:2]
    y = _normalize(x.reshape(n, num_groups, -1), eps).reshape(n, c, -1)
    if weight is not None:
        y *= weight[:, None]
    if bias is not None:
        y += bias[:, None]
    if silu:
        y = _silu(y)
    return y.reshape(x.shape)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    y = _normalize(x, eps)
    if weight is not None:
        y *= weight
    if bias is not None:
        y += bias
    return y


def linear(x, weight, bias=None):
    out = x.reshape(-1, x.shape[-1]) @ weight.T
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _softmax_(x):
    """Softmax over the last axis, in place (attention's scores are a temporary anyway)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def softmax(x):
    return _softmax_(x.copy())


def attention(q, k, v, heads=None, scale=None):
    if heads is not None:  # (B, L, H*D) -> (B, H, L, D) views; matmul copes with the strides
        b, lq, hd = q.shape
        split = lambda t: t.reshape(b, t.shape[1], heads, hd // heads).transpose(0, 2, 1, 3)  # noqa: E731
        out = attention(split(q), split(k), split(v), None, scale)
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(b, lq, hd)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.matmul(q * np.float32(scale), k.swapaxes(-1, -2))
    return np.matmul(_softmax_(scores), v)


def upsample_nearest2x(x):
    n, c, h, w = x.shape
    out = np.empty((n, c, h, 2, w, 2), np.float32)
    out[...] = x[:, :, :, None, :, None]
    return out.reshape(n, c, 2 * h, 2 * w)


def concat_channels(a, b):
    return np.concatenate([a, b], axis=1)


def to_tokens(x):
    b, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(b, c, h * w).transpose(0, 2, 1))


def from_tokens(x, h, w):
    b, _, c = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(b, c, h, w)


def add(a, b):
    if b.ndim == 2 and a.ndim == 4:
        return a + b[:, :, None, None]
    return a + b


def scale_add(a, b, alpha=1.0, beta=1.0):
    return np.float32(alpha) * a + np.float32(beta) * b


def cfg_combine(eps_uncond, eps_cond, guidance_scale):
    return eps_uncond + np.float32(guidance_scale) * (eps_cond - eps_uncond)


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0):
    # float64 inside: t * freq reaches ~1000 rad, where float32 would lose ~1e-4 of the angle.
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - downscale_freq_shift))
    args = timesteps.astype(np.float64)[:, None] * freqs[None, :]
    first, second = (np.cos(args), np.sin(args)) if flip_sin_to_cos else (np.sin(args), np.cos(args))
    out = np.zeros((timesteps.shape[0], dim), np.float32)
    out[:, :half] = first
    out[:, half : 2 * half] = second
    return out


def scheduler_step(sample, eps, noise, coef, clip):
    """prev = c_x0 * clip(x0) + c_eps * eps + c_sample * sample + c_noise * noise, x0 from eps.

    ``coef`` comes from ``minisd.ops.step_coefficients``: one formula covers DDIM and DDPM steps.
    """
    f = {k: np.float32(v) for k, v in coef.items()}
    x0 = (sample - f["sqrt_beta"] * eps) * f["inv_sqrt_alpha"]
    if clip is not None:
        np.clip(x0, -np.float32(clip), np.float32(clip), out=x0)
    out = f["c_x0"] * x0 + f["c_eps"] * eps + f["c_sample"] * sample
    if noise is not None:
        out += f["c_noise"] * noise
    return out


def randn(shape, seed):
    return rng.normal_numpy(int(np.prod(shape, dtype=np.int64)), seed).reshape(shape)
