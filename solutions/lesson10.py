"""Lesson 10 — sampling on the GPU: a counter-based RNG, classifier-free guidance, DDIM and DDPM steps.

Every kernel is elementwise: one thread per element (or per pair of elements for Box–Muller), a 1-D grid,
and a guard for the ragged last block. Host wrappers take numpy arrays (numpy out) or Numba device arrays
(device out, nothing copied) so a sampling loop can stay on the GPU.
"""

import math
import warnings

import minisd.mode as mode

# isort: split
import numpy as np

from minisd.kernel_backend import cuda
from minisd.ops.rng import GOLDEN, M1, M2, key_of

THREADS = 256
# The simulator runs uint64 math on numpy scalars, which warn when they wrap (the GPU never does).
if mode.SIMULATOR:
    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)


@cuda.jit(device=True)
def splitmix64(key, i):
    """Output i of SplitMix64 started at ``key`` (all uint64 math, wrapping mod 2**64): minisd's bit stream."""
    z = key + (np.uint64(i) + np.uint64(1)) * np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(M2)
    return z ^ (z >> np.uint64(31))


# Exercise 10.1 — Box–Muller on a counter-based stream: thread p makes normals 2p and 2p+1.
@cuda.jit
def randn_kernel(key, out):
    p = cuda.grid(1)
    n = out.size
    if 2 * p < n:
        u1 = ((splitmix64(key, 2 * p) >> np.uint64(11)) + np.uint64(1)) * 2.0**-53  # (0, 1]: log is finite
        u2 = (splitmix64(key, 2 * p + 1) >> np.uint64(11)) * 2.0**-53
        r = math.sqrt(-2.0 * math.log(u1))
        theta = 2.0 * math.pi * u2
        out[2 * p] = r * math.cos(theta)
        if 2 * p + 1 < n:
            out[2 * p + 1] = r * math.sin(theta)


def _blocks(n):
    return max(1, math.ceil(n / THREADS))


def _is_device(x):
    """A Numba device array (wrap torch/CuPy GPU tensors with cuda.as_cuda_array first)."""
    return hasattr(x, "copy_to_host")


def _empty_like(x):
    return cuda.device_array(x.shape, np.float32) if _is_device(x) else np.full(x.shape, np.nan, np.float32)


def randn(shape, seed, on_device=False):
    """Standard normals of ``seed``, the same numbers as minisd.ops.randn on every backend."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    out = cuda.device_array(n, np.float32) if on_device else np.full(n, np.nan, np.float32)
    randn_kernel[_blocks((n + 1) // 2), THREADS](np.uint64(key_of(seed)), out)
    return out.reshape(shape)


# Exercise 10.2 — classifier-free guidance: eps = eps_u + g·(eps_c − eps_u).
@cuda.jit
def cfg_combine_kernel(eps_uncond, eps_cond, guidance_scale, out):
    i = cuda.grid(1)
    if i < out.size:
        u = eps_uncond[i]
        out[i] = u + guidance_scale * (eps_cond[i] - u)


def _flat_pair(a, b, what):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} must be equal")
    if not _is_device(a):
        a = np.ascontiguousarray(a, dtype=np.float32)
    if not _is_device(b):
        b = np.ascontiguousarray(b, dtype=np.float32)
    return a.reshape(-1), b.reshape(-1)


def cfg_combine(eps_uncond, eps_cond, guidance_scale):
    u, c = _flat_pair(eps_uncond, eps_cond, "cfg_combine")
    out = _empty_like(u)
    cfg_combine_kernel[_blocks(u.size), THREADS](u, c, np.float32(guidance_scale), out)
    return out.reshape(eps_uncond.shape)


# Exercise 10.3 — one fused DDIM step (Song et al. 2021, eq. 12; diffusers' DDIMScheduler.step).
@cuda.jit
def ddim_step_kernel(sample, eps, noise, alpha_prod_t, alpha_prod_t_prev, sigma, clip, clip_range, out):
    i = cuda.grid(1)
    if i < out.size:
        e = eps[i]
        x0 = (sample[i] - math.sqrt(1.0 - alpha_prod_t) * e) / math.sqrt(alpha_prod_t)
        if clip:
            x0 = min(max(x0, -clip_range), clip_range)
        direction = math.sqrt(1.0 - alpha_prod_t_prev - sigma * sigma) * e
        x = math.sqrt(alpha_prod_t_prev) * x0 + direction
        if sigma > 0:
            x += sigma * noise[i]
        out[i] = x


def _noise_or_dummy(noise, like, needed):
    if not needed:
        return cuda.device_array(1, np.float32) if _is_device(like) else np.zeros(1, np.float32)
    if noise is None:
        raise ValueError("this step adds noise (eta > 0 or a DDPM step before the last): pass noise=")
    if tuple(noise.shape) != tuple(like.shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(like.shape)}")
    return noise.reshape(-1) if _is_device(noise) else np.ascontiguousarray(noise, np.float32).reshape(-1)


def ddim_step(
    sample, eps, alpha_prod_t, alpha_prod_t_prev, eta=0.0, noise=None, clip_sample=True, clip_range=1.0
):
    """x_{t-1} from x_t and the model's eps: diffusers' DDIMScheduler.step(...).prev_sample, fused."""
    x, e = _flat_pair(sample, eps, "ddim_step sample/eps")
    var = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    sigma = eta * math.sqrt(max(var, 0.0))
    z = _noise_or_dummy(noise, sample, sigma > 0)
    out = _empty_like(x)
    args = (alpha_prod_t, alpha_prod_t_prev, sigma, bool(clip_sample), float(clip_range))
    ddim_step_kernel[_blocks(x.size), THREADS](x, e, z, *args, out)
    return out.reshape(sample.shape)


# Exercise 10.4 — one fused DDPM step (Ho et al. 2020; diffusers' DDPMScheduler.step, variance "fixed_small").
@cuda.jit
def ddpm_step_kernel(sample, eps, noise, alpha_prod_t, alpha_prod_t_prev, std, clip, clip_range, out):
    i = cuda.grid(1)
    if i < out.size:
        x = sample[i]
        beta_prod_t = 1.0 - alpha_prod_t
        current_alpha = alpha_prod_t / alpha_prod_t_prev
        x0 = (x - math.sqrt(beta_prod_t) * eps[i]) / math.sqrt(alpha_prod_t)
        if clip:
            x0 = min(max(x0, -clip_range), clip_range)
        x0_coeff = math.sqrt(alpha_prod_t_prev) * (1.0 - current_alpha) / beta_prod_t
        x_coeff = math.sqrt(current_alpha) * (1.0 - alpha_prod_t_prev) / beta_prod_t
        mean = x0_coeff * x0 + x_coeff * x
        if std > 0:
            mean += std * noise[i]
        out[i] = mean


def ddpm_std(alpha_prod_t, alpha_prod_t_prev):
    """The noise scale of a DDPM step: sqrt of the posterior variance beta~_t (diffusers' "fixed_small")."""
    beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
    return math.sqrt(max((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta_t, 1e-20))


def ddpm_step(sample, eps, alpha_prod_t, alpha_prod_t_prev, noise=None, clip_sample=True, clip_range=1.0):
    """x_{t-1} from x_t and eps: DDPMScheduler.step(...).prev_sample. noise=None means the last step (no noise)."""
    x, e = _flat_pair(sample, eps, "ddpm_step sample/eps")
    std = ddpm_std(alpha_prod_t, alpha_prod_t_prev) if noise is not None else 0.0
    z = _noise_or_dummy(noise, sample, noise is not None)
    out = _empty_like(x)
    args = (alpha_prod_t, alpha_prod_t_prev, std, bool(clip_sample), float(clip_range))
    ddpm_step_kernel[_blocks(x.size), THREADS](x, e, z, *args, out)
    return out.reshape(sample.shape)
