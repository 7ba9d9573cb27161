"""Lesson 09 — diffusion from scratch: noise schedules, the forward process as a kernel, the training loss.

Fill in the three exercises, then grade them:  python -m pytest tests/exercises/test_lesson09.py
"""

import math

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np
import torch  # noqa: F401  (your diffusion_loss uses it)

from minisd.kernel_backend import cuda

THREADS = 256


# Exercise 09.1 — the two classic schedules, as alpha_bar_t = prod_{s<=t} (1 - beta_s), float64.
def linear_alphas_cumprod(T, beta_start=1e-4, beta_end=0.02):
    """alpha_bar (float64 array of length T) for betas spaced evenly from beta_start to beta_end.

    beta_t = beta_start + (beta_end − beta_start)·t/(T−1) for t = 0 … T−1, and
    alpha_bar_t = (1 − beta_0)(1 − beta_1)…(1 − beta_t).
    Raise ValueError when T < 1.

    Hint: np.linspace and np.cumprod do all the work.
    """
    raise NotImplementedError("Exercise 09.1: linear_alphas_cumprod")


def cosine_alphas_cumprod(T, s=0.008, max_beta=0.999):
    """alpha_bar (float64, length T) of the cosine schedule, diffusers' "squaredcos_cap_v2" (minisd's).

    f(u) = cos²((u + s)/(1 + s)·π/2) for u = 0, 1/T, …, 1;
    beta_t = min(1 − f((t+1)/T) / f(t/T), max_beta);  alpha_bar_t = prod_{s<=t} (1 − beta_s).
    Raise ValueError when T < 1.

    Hint: build f on T+1 points, divide neighbours (f[1:] / f[:-1]), clip with np.minimum, then cumprod.
    Why the cap? The last beta would be 1 (f(1) = 0): the sample would be all noise and sqrt(alpha_bar) 0.
    """
    raise NotImplementedError("Exercise 09.1: cosine_alphas_cumprod")


# Exercise 09.2 — q(x_t | x_0) for a batch: one thread per element, each sample b at its own timestep t[b].
@cuda.jit
def add_noise_kernel(x0, noise, sqrt_ab, sqrt_one_minus_ab, t, out):
    """out[b, j] = sqrt_ab[t[b]]·x0[b, j] + sqrt_one_minus_ab[t[b]]·noise[b, j].

    x0, noise, out: (B, N) float32.  sqrt_ab, sqrt_one_minus_ab: (T,) float32 tables.  t: (B,) int64.
    Launched with ONE thread per element of x0 (a 1-D grid of ceil(B·N / 256) blocks of 256), so:
      - i = cuda.grid(1) is the flat index; row b = i // N, column j = i − b·N;
      - the last block runs past the end: guard with `if i < B·N`.

    Graded: the answer on a ragged batch; one read of x0 and of noise and one write per thread.
    """
    i = cuda.grid(1)
    # TODO: guard, find (b, j), look up the timestep of row b, write out[b, j].
    pass


def add_noise(x0, noise, alphas_cumprod, t):
    """x_t = sqrt(alpha_bar[t])·x0 + sqrt(1 − alpha_bar[t])·noise for x0 of shape (B, ...) and t of shape (B,).

    Given (not an exercise): checks the inputs, flattens each sample to a row and launches add_noise_kernel.

    Graded: the answer against minisd.schedulers, the errors, and that it launches add_noise_kernel.
    """
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
    """The training loss of an epsilon-prediction model, as a differentiable torch scalar.

    x0, noise: tensors of shape (B, ...); t: (B,) long; alphas_cumprod: (T,) array or tensor.
      x_t  = sqrt(alpha_bar[t])·x0 + sqrt(1 − alpha_bar[t])·noise      (alpha_bar[t] broadcast over each sample)
      loss = mean over every element of (model(x_t, t) − noise)²

    Hints: torch.as_tensor(alphas_cumprod, dtype=x0.dtype, device=x0.device)[t] picks one alpha_bar per
    sample; reshape it to (B, 1, 1, …) with .reshape(-1, *[1] * (x0.ndim - 1)) so it broadcasts.
    Stay in torch (no numpy) so loss.backward() reaches the model's parameters.
    """
    raise NotImplementedError("Exercise 09.3: diffusion_loss")
