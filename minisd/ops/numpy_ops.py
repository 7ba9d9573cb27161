"""The CPU backend: every op in numpy, float32 throughout.

This is what ``python -m minisd sample`` runs on a machine without a GPU, so it is written for speed on
a couple of cores: convolutions become one matrix product (im2col on a strided view), attention is three
batched matrix products, and nothing loops over pixels in Python. ``minisd.ops.Ops`` has already checked
shapes and dtypes, made the inputs C-contiguous float32 and allocated ``out``; each function here fills
``out`` (computing into it where numpy can) and returns it.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from minisd.ops import rng


def conv2d(x, weight, bias, stride, padding, residual, *, out):
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    if padding:
        xp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), np.float32)
        xp[:, :, padding : padding + h, padding : padding + w] = x
    else:
        xp = x
    ho, wo = out.shape[2:]
    if kh == kw == 1 and stride == 1:
        cols = xp.reshape(n, c, ho * wo)  # a 1x1 conv is already a matrix product
    else:
        # im2col without a Python loop: a (n, c, kh, kw, ho, wo) view of the padded input, copied once
        # into the (c*kh*kw, ho*wo) matrix of each image.
        sn, sc, sh, sw = xp.strides
        view = as_strided(xp, (n, c, kh, kw, ho, wo), (sn, sc, sh, sw, sh * stride, sw * stride))
        cols = view.reshape(n, c * kh * kw, ho * wo)
    # (o, c*kh*kw) @ (n, c*kh*kw, ho*wo) -> (n, o, ho*wo): NCHW comes out directly, no transpose.
    flat = out.reshape(n, o, ho * wo)
    np.matmul(weight.reshape(o, -1), cols, out=flat)
    if bias is not None:
        flat += bias[:, None]
    if residual is not None:
        out += residual
    return out


def _silu(x, out):
    # x * sigmoid(x) with sigmoid = (1 + tanh(x/2)) / 2: no overflow warning for large |x|.
    gate = np.tanh(np.float32(0.5) * x)
    gate *= np.float32(0.5)
    gate += np.float32(0.5)
    return np.multiply(x, gate, out=out)


def silu(x, *, out):
    return _silu(x, out)


# Numerical Recipes' Chebyshev fit of erfc: ~1.2e-7 relative error everywhere (numpy has no erf).
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)  # fmt: skip


def gelu(x, *, out):
    """Exact GELU = x * Phi(x) = x/2 * erfc(-x/sqrt(2)).

    erfc keeps its relative accuracy in the left tail. Written with in-place float32 passes: the GEGLU
    hidden layer is the largest activation of the UNet, so temporaries here cost real time. (atleast_1d:
    numpy makes a 0-d result a scalar, which the in-place passes could not write into.)
    """
    x, y = np.atleast_1d(x, out)
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
    poly *= np.float32(0.5)
    np.multiply(poly, x, out=y)
    return out


def geglu(x, *, out):
    f = x.shape[-1] // 2
    gelu(x[..., f:], out=out)
    out *= x[..., :f]
    return out


def _normalize(xg, eps, out):
    """(x - mean) / sqrt(var + eps) over the last axis into ``out``, biased variance, like torch."""
    mean = xg.mean(axis=-1, keepdims=True)
    d = np.subtract(xg, mean, out=out)
    var = np.einsum("...k,...k->...", d, d)[..., None] / np.float32(xg.shape[-1])
    d *= 1.0 / np.sqrt(var + np.float32(eps))
    return d


def group_norm(x, num_groups, weight, bias, eps, silu, *, out):
    n, c = x.shape[:2]
    _normalize(x.reshape(n, num_groups, -1), eps, out.reshape(n, num_groups, -1))
    y = out.reshape(n, c, -1)
    if weight is not None:
        y *= weight[:, None]
    if bias is not None:
        y += bias[:, None]
    if silu:
        _silu(y, y)
    return out


def layer_norm(x, weight, bias, eps, *, out):
    _normalize(x, eps, out)
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    return out


def linear(x, weight, bias, residual, *, out):
    flat = out.reshape(-1, weight.shape[0])
    np.matmul(x.reshape(flat.shape[0], x.shape[-1]), weight.T, out=flat)  # not -1: in_features may be 0
    if bias is not None:
        flat += bias
    if residual is not None:
        out += residual
    return out


def _softmax_(x):
    """Softmax over the last axis, in place (attention's scores are a temporary anyway)."""
    if not x.shape[-1]:  # no keys: nothing to normalize, and attention's sum over them is zeros, as torch's
        return x
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def softmax(x, *, out):
    np.copyto(out, x)
    return _softmax_(out)


def _attention(q, k, v, scale, out):
    scores = np.matmul(q * scale, k.swapaxes(-1, -2))
    return np.matmul(_softmax_(scores), v, out=out)


def attention(q, k, v, heads, scale, *, out):
    if heads is None:  # (B, H, L, D)
        return _attention(q, k, v, scale, out)
    b, lq, hd = q.shape  # (B, L, H*D): (B, H, L, D) views, matmul copes with the strides

    def split(t):
        return t.reshape(b, t.shape[1], heads, hd // heads).transpose(0, 2, 1, 3)

    _attention(split(q), split(k), split(v), scale, split(out))
    return out


def upsample_nearest2x(x, *, out):
    n, c, h, w = x.shape
    out.reshape(n, c, h, 2, w, 2)[...] = x[:, :, :, None, :, None]
    return out


def concat_channels(a, b, *, out):
    ca = a.shape[1]
    out[:, :ca], out[:, ca:] = a, b
    return out


def to_tokens(x, *, out):
    b, c, h, w = x.shape
    out[...] = x.reshape(b, c, h * w).transpose(0, 2, 1)
    return out


def from_tokens(x, h, w, *, out):
    b, _, c = x.shape
    out.reshape(b, c, h * w)[...] = x.transpose(0, 2, 1)
    return out


def add(a, b, *, out):
    return np.add(a, b[:, :, None, None] if b.ndim == 2 and a.ndim == 4 else b, out=out)


def scale_add(a, b, alpha, beta, *, out):
    np.multiply(a, np.float32(alpha), out=out)
    out += np.float32(beta) * b
    return out


def cfg_combine(eps_uncond, eps_cond, guidance_scale, *, out):
    np.subtract(eps_cond, eps_uncond, out=out)
    out *= np.float32(guidance_scale)
    out += eps_uncond
    return out


def timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, *, out):
    # float64 inside: t * freq reaches ~1000 rad, where float32 would lose ~1e-4 of the angle.
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - downscale_freq_shift))
    args = timesteps.astype(np.float64)[:, None] * freqs[None, :]
    first, second = (np.cos(args), np.sin(args)) if flip_sin_to_cos else (np.sin(args), np.cos(args))
    out[:, :half], out[:, half : 2 * half], out[:, 2 * half :] = first, second, 0.0
    return out


def scheduler_step(sample, eps, noise, coef, clip, *, out):
    """prev = c_x0 * clip(x0) + c_eps * eps + c_sample * sample + c_noise * noise, x0 from eps.

    ``coef`` is a minisd.schedulers.StepCoefficients: one formula covers DDIM and DDPM steps (each without
    the term it does not have, ``coef.terms``). atleast_1d: numpy makes 0-d results scalars, and a scalar
    cannot be clipped in place.
    """
    f = {
        k: np.float32(getattr(coef, k)) for k in ("sqrt_beta", "inv_sqrt_alpha", "c_x0", "c_eps", "c_sample")
    }
    sample, eps, y = np.atleast_1d(sample, eps, out)
    x0 = (sample - f["sqrt_beta"] * eps) * f["inv_sqrt_alpha"]
    if clip is not None:
        np.clip(x0, -np.float32(clip), np.float32(clip), out=x0)
    np.multiply(x0, f["c_x0"], out=y)
    with_eps, with_sample = coef.terms
    if with_eps:
        y += f["c_eps"] * eps
    if with_sample:
        y += f["c_sample"] * sample
    if noise is not None:
        y += np.float32(coef.c_noise) * noise
    return out


def randn(shape, seed, *, out):
    out[...] = rng.normal_numpy(out.size, seed).reshape(out.shape)
    return out
