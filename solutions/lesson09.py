"""Lesson 09 — diffusion from scratch: noise schedules, the forward process as a kernel, the training loss."""

import math

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np
import torch

from minisd.kernel_backend import cuda

THREADS = 256


# Exercise 09.1 — the two classic schedules, as alpha_bar_t = prod_{s<=t} (1 - beta_s), float64.
def linear_alphas_cumprod(T, beta_start=1e-4, beta_end=0.02):
    """alpha_bar for betas spaced evenly from beta_start to beta_end (Ho et al. 2020)."""
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def cosine_alphas_cumprod(T, s=0.008, max_beta=0.999):
    """alpha_bar of the cosine schedule (diffusers' "squaredcos_cap_v2"): f(u) = cos²((u+s)/(1+s)·π/2),
    beta_t = min(1 − f((t+1)/T) / f(t/T), max_beta), alpha_bar_t = prod (1 − beta)."""
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return np.cumprod(1.0 - betas)


# Exercise 09.2 — q(x_t | x_0) for a batch: one thread per element, each sample b at its own timestep t[b].
@cuda.jit
def add_noise_kernel(x0, noise, sqrt_ab, sqrt_one_minus_ab, t, out):
    i = cuda.grid(1)
    per_sample = x0.shape[1]
    if i < x0.shape[0] * per_sample:
        b = i // per_sample
        j = i - b * per_sample
        tb = t[b]
        out[b, j] = sqrt_ab[tb] * x0[b, j] + sqrt_one_minus_ab[tb] * noise[b, j]


def add_noise(x0, noise, alphas_cumprod, t):
    """x_t = sqrt(alpha_bar[t])·x0 + sqrt(1 − alpha_bar[t])·noise for x0 of shape (B, ...) and t of shape (B,)."""
    x0 = np.ascontiguousarray(x0, dtype=np.float32)
    noise = np.ascontiguousarray(noise, dtype=np.float32)
    t = np.ascontiguousarray(t, dtype=np.int64).reshape(-1)
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {noise.shape}, but x0 has shape {x0.shape}: they must match")
    if x0.ndim < 1 or t.size != x0.shape[0]:
        raise ValueError(
            f"t has {t.size} timesteps for a batch of {x0.shape[0] if x0.ndim else 0}: one per sample"
        )
    if t.size and (t.min() < 0 or t.max() >= alphas_cumprod.size):
        raise ValueError(f"timesteps must lie in [0, {alphas_cumprod.size - 1}], got {t.min()}..{t.max()}")
    flat, flat_noise = x0.reshape(x0.shape[0], -1), noise.reshape(x0.shape[0], -1)
    out = np.full_like(flat, np.nan)
    sqrt_ab = np.sqrt(alphas_cumprod).astype(np.float32)
    sqrt_one_minus_ab = np.sqrt(1.0 - alphas_cumprod).astype(np.float32)
    blocks = max(1, math.ceil(flat.size / THREADS))
    add_noise_kernel[blocks, THREADS](flat, flat_noise, sqrt_ab, sqrt_one_minus_ab, t, out)
    return out.reshape(x0.shape)


# Exercise 09.3 — the epsilon-prediction objective (Ho et al. 2020, "L_simple").
def diffusion_loss(model, x0, noise, t, alphas_cumprod):
    """mean((model(x_t, t) − noise)²) with x_t = sqrt(ab[t])·x0 + sqrt(1 − ab[t])·noise; differentiable in model."""
    ab = torch.as_tensor(alphas_cumprod, dtype=x0.dtype, device=x0.device)[t]
    ab = ab.reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return ((model(x_t, t) - noise) ** 2).mean()
