"""Graded tests of lesson 10: the counter-based RNG, classifier-free guidance, fused DDIM and DDPM steps."""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
from course.grading import Out, assert_close, load
from minisd.ops.rng import key_of, normal_numpy
from minisd.schedulers import DDIMScheduler, DDPMScheduler

# The simulator runs uint64 math on numpy scalars, which warn when they wrap; a GPU wraps silently.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
ex = load("lesson10")
rng = grading.rng
MASK = (1 << 64) - 1


def _normal_python(seed, i):
    """Normal number i of ``seed`` with Python ints and math: no numpy, no kernels."""
    key = key_of(seed)

    def bits(c):
        z = (key + (c + 1) * 0x9E3779B97F4A7C15) & MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    p = i // 2
    u1 = ((bits(2 * p) >> 11) + 1) / 2**53
    u2 = (bits(2 * p + 1) >> 11) / 2**53
    r = math.sqrt(-2 * math.log(u1))
    return r * (math.cos if i % 2 == 0 else math.sin)(2 * math.pi * u2)


RANDN_HINTS = (
    "A counter-based generator: number i depends only on the key and i, so every thread computes its own pair "
    "of normals from two uniform numbers (Box-Muller), no state shared between threads.",
    "Thread p turns bits(2p) and bits(2p + 1) into u1 = ((bits >> 11) + 1) * 2**-53 and u2 = (bits >> 11) * "
    "2**-53, then writes out[2p] = r cos(theta) and, only if 2p + 1 < n, out[2p + 1] = r sin(theta) with "
    "r = sqrt(-2 log u1), theta = 2 pi u2.",
    "p = cuda.grid(1); if 2 * p < out.size: u1, u2 from the two counters as above; r = math.sqrt(-2.0 * "
    "math.log(u1)); out[2 * p] = r * math.cos(TWO_PI * u2); if 2 * p + 1 < out.size: out[2 * p + 1] = r * "
    "math.sin(TWO_PI * u2)",
)


@pytest.mark.exercise("10.1", hints=RANDN_HINTS)
def test_randn_kernel_matches_minisd():
    seed = int(rng.integers(0, 2**63))
    for n in (301, 2, 1):  # odd: the last thread has no partner
        blocks = max(1, math.ceil((n + 1) // 2 / 64))
        run = grading.launch(ex.randn_kernel, blocks, 64, np.uint64(key_of(seed)), Out(n))
        out = run.out
        some = sorted({0, n - 1, int(rng.integers(n))})
        assert_close(out[some], [_normal_python(seed, i) for i in some], rtol=1e-6, atol=1e-6, what=f"n={n}")
        assert_close(out, normal_numpy(n, seed), rtol=1e-6, atol=1e-6, what=f"randn_kernel (n={n}) vs minisd")
        run.budget(writes={"out": 2})  # a pair of normals per thread


@pytest.mark.exercise("10.1", hints=RANDN_HINTS)
def test_randn_is_standard_normal():
    with grading.launches() as seen:
        z = ex.randn((17, 59), seed=int(rng.integers(1 << 30)))  # 1003 numbers
    seen.expect(ex.randn_kernel, "randn()", threads_at_least=(17 * 59 + 1) // 2)
    assert z.shape == (17, 59) and z.dtype == np.float32
    assert not np.isnan(z).any(), "some numbers were never written"
    assert abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15, (
        f"mean {z.mean():.3f}, std {z.std():.3f}: not N(0, 1)"
    )
    assert np.array_equal(ex.randn(40, seed=7), ex.randn(40, seed=7)), "same seed must give the same numbers"
    assert not np.array_equal(ex.randn(40, seed=7), ex.randn(40, seed=8)), "different seeds, same numbers"


@pytest.mark.exercise(
    "10.2",
    hints=(
        "Classifier-free guidance moves from the unconditional prediction towards the conditional one, "
        "guidance_scale times as far: one thread per element.",
        "i = cuda.grid(1); guard i < out.size; out[i] = u + g * (c - u) with u = eps_uncond[i], c = eps_cond[i]; "
        "the host flattens both inputs, launches a thread per element and restores the shape.",
        "if i < out.size: u = eps_uncond[i]; out[i] = u + guidance_scale * (eps_cond[i] - u)",
    ),
)
def test_cfg_combine():
    n = 333
    u, c = rng.standard_normal((2, n)).astype(np.float32)
    for g in (0.0, 1.0, 7.5):
        run = grading.launch(ex.cfg_combine_kernel, 2, 256, u, c, np.float32(g), Out(n))
        ref = torch.from_numpy(u).double() * (1 - g) + g * torch.from_numpy(c).double()
        assert_close(run.out, ref.numpy(), rtol=1e-5, atol=1e-5, what=f"cfg_combine_kernel (g={g})")
        run.budget(reads={"eps_uncond": 1, "eps_cond": 1}, writes={"out": 1})
    with grading.launches() as seen:
        shaped = ex.cfg_combine(u[:330].reshape(2, 3, 5, 11), c[:330].reshape(2, 3, 5, 11), 3.0)
    assert shaped.shape == (2, 3, 5, 11)
    seen.expect(ex.cfg_combine_kernel, "cfg_combine()", threads_at_least=330)


def _ddim_oracle(x, eps, a, a_prev, eta, noise, clip, r):
    x, eps = torch.from_numpy(x).double(), torch.from_numpy(eps).double()
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    if clip:
        x0 = x0.clamp(-r, r)
    out = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
    if sigma > 0:
        out = out + sigma * torch.from_numpy(noise).double()
    return out.numpy()


DDIM_HINTS = (
    "One DDIM step per element: estimate the clean sample from the noise prediction, then step to the previous "
    "timestep along the predicted direction (plus fresh noise when sigma > 0).",
    "x0 = (x - sqrt(1 - a_t) * eps) / sqrt(a_t), clamped to [-clip_range, clip_range] if clip; then "
    "sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma**2) * eps, plus sigma * noise[i] only when sigma > 0.",
    "if i < out.size: x0 = (sample[i] - math.sqrt(1 - a) * eps[i]) / math.sqrt(a); if clip: x0 = min(max(x0, "
    "-r), r); v = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma * sigma) * eps[i]; if sigma > 0: "
    "v += sigma * noise[i]; out[i] = v",
)


@pytest.mark.exercise("10.3", hints=DDIM_HINTS)
def test_ddim_step_kernel():
    n = 299
    x = (2.5 * rng.standard_normal(n)).astype(np.float32)  # large enough that clipping happens
    eps, noise = rng.standard_normal((2, n)).astype(np.float32)
    a, a_prev = 0.31 + 0.1 * rng.random(), 0.72 + 0.1 * rng.random()
    for eta, clip, r in [(0.0, True, 1.0), (0.8, True, 1.5), (0.0, False, 1.0)]:
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        z = noise if sigma > 0 else np.zeros(1, np.float32)
        run = grading.launch(ex.ddim_step_kernel, 2, 256, x, eps, z, a, a_prev, sigma, clip, r, Out(n))
        ref = _ddim_oracle(x, eps, a, a_prev, eta, noise, clip, r)
        assert_close(
            run.out, ref, rtol=1e-5, atol=1e-5, what=f"ddim_step_kernel (eta={eta}, clip={clip}, range={r})"
        )
        run.budget(reads={"sample": 1, "eps": 1, "noise": 1}, writes={"out": 1})


@pytest.mark.exercise("10.3", hints=DDIM_HINTS)
def test_ddim_step_matches_scheduler():
    sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    sched.set_timesteps(25)
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    eps, noise = rng.standard_normal((2, *x.shape)).astype(np.float32)
    for t in (sched.timesteps[0], sched.timesteps[-1]):
        a, a_prev = sched.alpha_prods(t)
        with grading.launches() as seen:
            out = ex.ddim_step(x, eps, a, a_prev, eta=0.5, noise=noise)
        seen.expect(ex.ddim_step_kernel, "ddim_step()", threads_at_least=x.size)
        ref = sched.step(eps, t, x, eta=0.5, noise=noise).prev_sample
        assert_close(out, ref, rtol=1e-5, atol=1e-5, what=f"ddim_step vs minisd DDIMScheduler.step at t={t}")


@pytest.mark.exercise(
    "10.4",
    hints=(
        "A DDPM step samples the posterior q(x_prev | x_t, x0): its mean mixes the estimated clean sample and "
        "the current one, then noise of the posterior's spread is added.",
        "beta' = 1 - a_t / a_prev; x0 as in DDIM (clamped if clip); mean = sqrt(a_prev) * beta' / (1 - a_t) * x0 "
        "+ sqrt(1 - beta') * (1 - a_prev) / (1 - a_t) * x_t; add std * noise[i] only if std > 0.",
        "if i < out.size: b = 1 - a / a_prev; x0 = ...; v = math.sqrt(a_prev) * b / (1 - a) * x0 + math.sqrt(1 - "
        "b) * (1 - a_prev) / (1 - a) * sample[i]; if std > 0: v += std * noise[i]; out[i] = v",
    ),
)
def test_ddpm_step():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True)
    x = (2 * rng.standard_normal((3, 97))).astype(np.float32)
    eps, noise = rng.standard_normal((2, *x.shape)).astype(np.float32)
    for t in (999, int(rng.integers(1, 999)), 0):
        a = float(sched.alphas_cumprod[t])
        a_prev = float(sched.alphas_cumprod[t - 1]) if t > 0 else 1.0
        # oracle: torch float64, posterior mean written as in Ho et al. eq. 7
        xt, e = torch.from_numpy(x).double(), torch.from_numpy(eps).double()
        alpha_t = a / a_prev
        x0 = ((xt - math.sqrt(1 - a) * e) / math.sqrt(a)).clamp(-1, 1)
        mean = (math.sqrt(a_prev) * (1 - alpha_t) * x0 + math.sqrt(alpha_t) * (1 - a_prev) * xt) / (1 - a)
        std = math.sqrt((1 - a_prev) / (1 - a) * (1 - alpha_t)) if t > 0 else 0.0
        ref = (mean + std * torch.from_numpy(noise).double()).numpy()
        z = noise.reshape(-1) if std > 0 else np.zeros(1, np.float32)
        args = (x.reshape(-1), eps.reshape(-1), z, a, a_prev, std, True, 1.0, Out(x.size))
        run = grading.launch(ex.ddpm_step_kernel, 2, 256, *args)
        assert_close(run.out.reshape(x.shape), ref, rtol=1e-5, atol=1e-5, what=f"ddpm_step_kernel at t={t}")
        run.budget(reads={"sample": 1, "eps": 1, "noise": 1}, writes={"out": 1})
        with grading.launches() as seen:
            via_host = ex.ddpm_step(x, eps, a, a_prev, noise=noise if t > 0 else None)
        seen.expect(ex.ddpm_step_kernel, "ddpm_step()", threads_at_least=x.size)
        assert_close(
            via_host,
            sched.step(eps, t, x, noise=noise).prev_sample,
            rtol=1e-5,
            atol=1e-5,
            what=f"ddpm_step vs minisd DDPMScheduler.step at t={t}",
        )
