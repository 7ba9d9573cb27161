"""Graded tests of lesson 09: schedules, the noising kernel, the training loss."""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
from course.grading import Out, assert_close, load
from minisd.schedulers import DDPMScheduler

ex = load("lesson09")
rng = grading.rng


def _cosine_oracle(T, s=0.008, max_beta=0.999):
    """torch float64, one timestep at a time: a different route to the same numbers."""
    alpha_bar = [1.0]
    for t in range(T):
        f0 = math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        f1 = math.cos(((t + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar.append(alpha_bar[-1] * (1 - min(1 - f1 / f0, max_beta)))
    return torch.tensor(alpha_bar[1:], dtype=torch.float64).numpy()


SCHEDULE_HINTS = (
    "alpha_bar_t is how much of the clean image survives t steps of noise: a running product of (1 - beta).",
    "linear: beta from lo to hi evenly over T steps; cosine: beta_t = min(1 - f((t+1)/T) / f(t/T), 0.999) with "
    "f(u) = cos((u + s) / (1 + s) * pi / 2)**2; then alpha_bar = cumprod(1 - beta), in float64.",
    "np.cumprod(1 - np.linspace(lo, hi, T)); for the cosine schedule build beta for t in range(T) with f as above "
    "and np.minimum(beta, 0.999); raise ValueError naming T when T < 1.",
)


@pytest.mark.exercise("09.1", hints=SCHEDULE_HINTS)
def test_linear_schedule():
    for T, lo, hi in [(1000, 1e-4, 0.02), (37, 1e-3, 0.3)]:
        out = ex.linear_alphas_cumprod(T, lo, hi)
        betas = torch.linspace(lo, hi, T, dtype=torch.float64)
        ref = torch.cumprod(1 - betas, 0).numpy()
        assert_close(out, ref, rtol=1e-12, atol=1e-14, what=f"linear_alphas_cumprod({T}, {lo}, {hi})")
    assert_close(ex.linear_alphas_cumprod(1000), DDPMScheduler().alphas_cumprod, rtol=1e-5, what="vs minisd")


@pytest.mark.exercise("09.1", hints=SCHEDULE_HINTS)
def test_cosine_schedule():
    for T in (1000, 53, 1):
        out = ex.cosine_alphas_cumprod(T)
        assert_close(out, _cosine_oracle(T), rtol=1e-10, atol=1e-14, what=f"cosine_alphas_cumprod({T})")
    minisd = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert_close(ex.cosine_alphas_cumprod(1000), minisd, rtol=1e-5, atol=1e-7, what="vs minisd's schedule")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="T"):
            ex.cosine_alphas_cumprod(bad)
        with pytest.raises(ValueError, match="T"):
            ex.linear_alphas_cumprod(bad)


NOISE_HINTS = (
    "One thread per element of the (B, N) batch; each sample b has its own timestep, so its own two factors.",
    "i = cuda.grid(1); b = i // N, j = i - b * N; guard i < B * N; out = sqrt_ab[t[b]] * x0 + "
    "sqrt_one_minus_ab[t[b]] * noise. The host flattens each sample to N values and launches one thread each.",
    "if i < x0.shape[0] * x0.shape[1]: b = i // N; j = i - b * N; out[b, j] = sqrt_ab[t[b]] * x0[b, j] + "
    "sqrt_one_minus_ab[t[b]] * noise[b, j]",
)


@pytest.mark.exercise("09.2", hints=NOISE_HINTS)
def test_add_noise_kernel_ragged():
    B, N, T = 3, 77, 50  # 231 threads in one block of 256: the guard matters
    x0 = rng.standard_normal((B, N)).astype(np.float32)
    noise = rng.standard_normal((B, N)).astype(np.float32)
    ab = np.cumprod(1 - rng.uniform(0.001, 0.1, T))
    t = rng.integers(0, T, B)
    factors = np.sqrt(ab).astype(np.float32), np.sqrt(1 - ab).astype(np.float32)
    run = grading.launch(ex.add_noise_kernel, 1, 256, x0, noise, *factors, t, Out((B, N)))
    ref = torch.from_numpy(ab)[t][:, None].sqrt() * torch.from_numpy(x0).double()
    ref = ref + (1 - torch.from_numpy(ab)[t][:, None]).sqrt() * torch.from_numpy(noise).double()
    assert_close(run.out, ref.numpy(), rtol=1e-5, atol=1e-6, what="add_noise_kernel out")
    run.budget(reads={"x0": 1, "noise": 1}, writes={"out": 1})


@pytest.mark.exercise("09.2", hints=NOISE_HINTS)
def test_add_noise_images_match_minisd():
    x0 = rng.uniform(-1, 1, (2, 3, 7, 5)).astype(np.float32)  # 210 elements over 2 samples
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    t = np.array([rng.integers(0, 500), rng.integers(500, 1000)])
    with grading.launches() as seen:
        out = ex.add_noise(x0, noise, sched.alphas_cumprod, t)
    seen.expect(ex.add_noise_kernel, "add_noise()", threads_at_least=x0.size)
    assert_close(
        out, sched.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6, what="add_noise vs minisd.schedulers"
    )
    with pytest.raises(ValueError, match="shape"):
        ex.add_noise(x0, noise[:, :2], sched.alphas_cumprod, t)
    with pytest.raises(ValueError, match="timesteps"):
        ex.add_noise(x0, noise, sched.alphas_cumprod, np.array([0, 1000]))


@pytest.mark.exercise(
    "09.3",
    hints=(
        "The training loss: noise the clean batch to step t, ask the model for the noise, compare.",
        "x_t = sqrt(ab[t]) * x0 + sqrt(1 - ab[t]) * noise with ab[t] shaped (B, 1, ...) to broadcast; loss = "
        "mean((model(x_t, t) - noise)**2); everything in torch, so gradients reach the model.",
        "a = torch.as_tensor(alphas_cumprod, dtype=x0.dtype)[t].view(-1, *[1] * (x0.ndim - 1)); x_t = a.sqrt() * "
        "x0 + (1 - a).sqrt() * noise; return ((model(x_t, t) - noise) ** 2).mean()",
    ),
)
def test_diffusion_loss():
    torch.manual_seed(int(rng.integers(1 << 30)))
    B, C, L, T = 5, 3, 11, 100
    x0 = torch.randn(B, C, L)
    noise = torch.randn(B, C, L)
    t = torch.randint(0, T, (B,))
    ab = np.cumprod(1 - np.linspace(1e-3, 0.05, T))
    weight = torch.nn.Parameter(torch.randn(C, C))

    def model(x_t, steps):  # something that depends on x_t AND t, with a parameter to differentiate
        return torch.einsum("oc,bcl->bol", weight, x_t) + steps[:, None, None].to(x_t.dtype) / T

    loss = ex.diffusion_loss(model, x0, noise, t, ab)
    assert loss.ndim == 0, f"the loss must be a scalar, got shape {tuple(loss.shape)}"
    loss.backward()
    assert weight.grad is not None, "no gradient reached the model: keep everything in torch"

    # oracle: numpy float64, element by element over the batch
    w, xs, ns = weight.detach().double().numpy(), x0.double().numpy(), noise.double().numpy()
    total = 0.0
    for b in range(B):
        a = ab[int(t[b])]
        x_t = math.sqrt(a) * xs[b] + math.sqrt(1 - a) * ns[b]
        total += (((w @ x_t + int(t[b]) / T) - ns[b]) ** 2).sum()
    assert_close(float(loss.detach()), total / x0.numel(), rtol=1e-4, atol=1e-6, what="diffusion_loss")
