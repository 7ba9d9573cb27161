"""Text to image: prompts -> text encoder -> 25 DDIM steps of the UNet with classifier-free guidance -> pixels.

    images = minisd.generate(["a red circle on a blue background"], seed=0)   # uint8 (1, 32, 32, 3)

Everything runs on the course's ops (minisd/forward.py), so the backend ("numpy", "numba", "cupy") only
changes where the arithmetic happens: the initial noise comes from ``ops.randn(shape, seed)``, the same
numbers on every backend, so a seed gives the same picture everywhere (up to float32 rounding). On CuPy the
whole sampling loop is replayed from CUDA graphs (minisd/cuda_graphs.py).
"""

import contextlib
import math
import numbers
import time
from dataclasses import dataclass, replace

import numpy as np

import minisd.mode as mode
from minisd import forward, weights
from minisd.opset import OpSet
from minisd.schedulers import DDIMScheduler
from minisd.text import tokenize

DEFAULT_STEPS = 25
# Measured on the shipped weights with minisd's checker (benchmarks/training_h100.md, 1,024 images, 25 steps):
# guidance 1.5 follows prompts 100/100/99.9 % (colour/background/shape), 2.0 93/100/94 %, 3.0 52/68/57 %.
# Each prompt fixes the picture almost completely, so strong guidance pushes samples off the data.
DEFAULT_GUIDANCE = 1.5
DEFAULT_PROMPT = "a red circle on a blue background"
CPU_CHUNK = 16  # images per pass on numpy: larger batches outgrow the CPU caches (im2col) and run slower


@dataclass(frozen=True)
class SamplingPlan:
    """Everything about one sampling run except the prompts and the seed (what a CUDA graph bakes in)."""

    batch: int  # images
    timesteps: tuple  # DDIM timesteps, high to low
    alpha_prods: tuple  # (alpha_bar_t, alpha_bar_prev) per step
    guidance_scale: float
    clip_range: float | None  # x_0 clipping range, None = no clipping

    @property
    def guided(self):
        """Guidance 1 is the conditional model alone: skip the unconditional half of the batch."""
        return self.guidance_scale != 1.0

    @property
    def rows(self):
        """UNet batch: [unconditional..., conditional...] with guidance, as diffusers orders them."""
        return 2 * self.batch if self.guided else self.batch

    def timestep_rows(self):
        """(steps * rows,) float32: each step's timestep once per UNet row."""
        return np.repeat(np.asarray(self.timesteps, np.float32), self.rows)


def check_guidance(guidance_scale):
    """guidance_scale is a finite number >= 0 (0: unconditional, 1: conditional only, > 1: guided)."""
    if not isinstance(guidance_scale, numbers.Real) or not 0 <= guidance_scale < math.inf:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    return float(guidance_scale)


def concat_batch(ops, a, b):
    """(N, ...) and (N, ...) -> (2N, ...): one channel concat of (1, N*C, H, W) views (no batch op needed)."""
    n, c, h, w = a.shape
    both = ops.concat_channels(a.reshape(1, n * c, h, w), b.reshape(1, n * c, h, w))
    return both.reshape(2 * n, c, h, w)


class Sampler:
    """The sampling loop in two parts, so CUDA graphs can capture each: ``prologue`` (prompt and timestep
    work, once per run) and ``step`` (one UNet evaluation, guidance, one DDIM step)."""

    def __init__(self, ops, params, config):
        self.ops, self.params, self.config = ops, params, config

    def prologue(self, one_hot, timestep_rows, plan):
        ops = self.ops
        context = forward.text_encoder_forward(ops, self.params, self.config, one_hot)
        kv = forward.cross_attention_kv(ops, self.params, context)
        temb = forward.time_projections(ops, self.params, self.config, timestep_rows)
        steps = len(plan.timesteps)
        # (steps * rows, C) -> one (rows, C) slice per step: contiguous views, no copies
        per_step = [
            {k: v.reshape(steps, plan.rows, v.shape[-1])[i] for k, v in temb.items()} for i in range(steps)
        ]
        return kv, per_step

    def step(self, i, x, state, plan):
        ops = self.ops
        kv, temb = state
        model_input = concat_batch(ops, x, x) if plan.guided else x
        eps = forward.unet_forward(ops, self.params, self.config, model_input, temb[i], kv)
        if plan.guided:
            eps = ops.cfg_combine(eps[: plan.batch], eps[plan.batch :], plan.guidance_scale)
        alpha_prod_t, alpha_prod_t_prev = plan.alpha_prods[i]
        clip = plan.clip_range is not None
        return ops.ddim_step(x, eps, alpha_prod_t, alpha_prod_t_prev, 0.0, None, clip, plan.clip_range or 1.0)

    def run(self, one_hot, noise, plan, progress=None):
        """Eager: every op launched from Python. Returns the final sample (on the ops' device)."""
        state = self.prologue(self.ops.to_device(one_hot), self.ops.to_device(plan.timestep_rows()), plan)
        x = noise
        for i in range(len(plan.timesteps)):
            x = self.step(i, x, state, plan)
            if progress is not None:
                progress(i, len(plan.timesteps))
        return x


def host_threads(backend):
    """numpy samples with one BLAS thread (threadpoolctl). On 2 idle cores a second thread saves ~15 %, but
    OpenBLAS threads spin while they wait for each other: with another process on the cores, one descheduled
    thread stalls the rest, and 2 threads ran a step 4.7x slower than 1 (benchmarks/cpu_under_load.md)."""
    if backend != "numpy":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def to_uint8(sample):
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    pixels = np.clip((np.asarray(sample, np.float32) + 1.0) * 127.5, 0.0, 255.0)
    return np.round(pixels).astype(np.uint8).transpose(0, 2, 3, 1)


class MiniSDPipeline:
    """Weights on a backend, ready to sample. ``MiniSDPipeline.from_pretrained()`` loads the trained file."""

    def __init__(self, state, config, backend=None, kernels=None, log=print):
        self.backend = mode.default_backend() if backend is None else backend
        mode.check_backend(self.backend)
        self.config = config
        scheduler_config = dict(config["scheduler"])
        # "trailing" starts at t = T-1 (pure noise); diffusers' "leading" would start at 960 of 1000.
        scheduler_config.setdefault("timestep_spacing", "trailing")
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        if self.scheduler.config.prediction_type != "epsilon":
            raise ValueError(
                f"minisd samples epsilon-prediction models, not {self.scheduler.config.prediction_type!r}"
            )
        self.ops = OpSet(self.backend, kernels, log)
        self.params = forward.prepare_params(state, config, self.ops)
        self.sampler = Sampler(self.ops, self.params, config)
        self.graphs = None
        if self.backend == "cupy" and self.ops.fused_epilogues:
            from minisd.cuda_graphs import GraphedSampler

            self.graphs = GraphedSampler(self.sampler)
        self.last_timings = {}

    def _sample_in_chunks(self, one_hot, noise, plan, progress):
        """The eager loop, on the CPU a chunk of images at a time (same noise, so the same images)."""
        chunk = CPU_CHUNK if self.backend == "numpy" else plan.batch
        starts = range(0, plan.batch, chunk)
        steps, parts = len(plan.timesteps), []
        for c, start in enumerate(starts):
            rows = slice(start, min(start + chunk, plan.batch))
            part = replace(plan, batch=rows.stop - rows.start)
            cond = one_hot[plan.rows - plan.batch :][
                rows
            ]  # [unconditional..., conditional...] as in the plan
            part_one_hot = np.concatenate([one_hot[: plan.batch][rows], cond]) if plan.guided else cond
            report = (
                None if progress is None else (lambda i, n, c=c: progress(c * steps + i, len(starts) * steps))
            )
            parts.append(self.ops.to_numpy(self.sampler.run(part_one_hot, noise[rows], part, report)))
        return np.concatenate(parts)

    @classmethod
    def from_pretrained(cls, path=None, backend=None, kernels=None, log=print):
        state, config = weights.load(path)
        return cls(state, config, backend=backend, kernels=kernels, log=log)

    def plan(self, batch, num_inference_steps, guidance_scale):
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = tuple(int(t) for t in self.scheduler.timesteps)
        c = self.scheduler.config
        return SamplingPlan(
            batch=batch,
            timesteps=timesteps,
            alpha_prods=tuple(self.scheduler.alpha_prods(t) for t in timesteps),
            guidance_scale=float(guidance_scale),
            clip_range=float(c.clip_sample_range) if c.clip_sample else None,
        )

    def __call__(
        self,
        prompts,
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE,
        seed=0,
        progress=None,
    ):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: pass at least one prompt")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        check_guidance(guidance_scale)
        plan = self.plan(len(prompts), num_inference_steps, guidance_scale)
        ids = tokenize(([""] * len(prompts) if plan.guided else []) + prompts)
        one_hot = forward.one_hot_tokens(ids, self.config["text_encoder"]["vocab_size"])
        shape = (plan.batch, self.config["unet"]["in_channels"], *(2 * [self.config["unet"]["sample_size"]]))
        start = time.perf_counter()
        if self.graphs is not None:
            sample = self.graphs.run(one_hot, shape, seed, plan, progress)
        else:
            with host_threads(self.backend):
                sample = self._sample_in_chunks(one_hot, self.ops.randn(shape, seed), plan, progress)
        total = time.perf_counter() - start
        self.last_timings = {"total_s": total, "per_step_s": total / num_inference_steps}
        return to_uint8(sample)


_PIPELINES = {}


def generate(
    prompts,
    num_inference_steps=DEFAULT_STEPS,
    guidance_scale=DEFAULT_GUIDANCE,
    seed=0,
    backend=None,
    kernels=None,
    progress=None,
    weights_path=None,
):
    """Prompts (a str or a list) -> uint8 images (N, 32, 32, 3), one per prompt.

    ``backend``: "numpy" | "numba" | "cupy" (None: the fastest this machine has). ``kernels``: None or
    "minisd" (the course's finished kernels), "solutions" or "exercises" (solutions/ or exercises/lesson11.py
    in place of minisd's, op by op). ``progress(i, n)`` is called after each step. The loaded pipeline is
    kept, so later calls skip loading (and on CuPy replay captured CUDA graphs).
    """
    backend = mode.default_backend() if backend is None else backend
    mode.check_backend(backend)  # before the (slow) weights load
    key = (backend, kernels or "minisd", str(weights_path))
    if key not in _PIPELINES:
        _PIPELINES[key] = MiniSDPipeline.from_pretrained(weights_path, backend=backend, kernels=kernels)
    return _PIPELINES[key](prompts, num_inference_steps, guidance_scale, seed, progress)
