"""Text to image: prompts -> text encoder -> 25 DDIM steps of the UNet with classifier-free guidance, on
4x16x16 latents -> the autoencoder's decoder -> 64x64 pixels. Stable Diffusion's pipeline, small.

    images = minisd.generate(["a big red star on the left on a white background"], seed=0)  # uint8 (1, 64, 64, 3)

The sampling loop is written once, here (``SamplingPlan`` and ``denoise``): the timesteps and step
coefficients come from the scheduler config stored with the weights, the prompt rows are
[unconditional..., conditional...], the initial noise is ``randn(shape, seed)`` of minisd's counter-based
generator. The same loop samples the PyTorch model (minisd/torch_sampler.py: training's validation and the
bench's PyTorch contenders), so every number minisd reports comes from the loop that ships.

Everything here runs on the course's ops (minisd/forward.py), so the backend ("numpy", "numba", "cupy")
only changes where the arithmetic happens: a seed gives the same picture everywhere (up to float32
rounding). On a GPU with CuPy, the whole sampling loop of the CuPy and the Numba backends is replayed from
CUDA graphs (minisd/cuda_graphs.py).
"""

import contextlib
import numbers
import time
from dataclasses import dataclass, replace

import numpy as np

import minisd.mode as mode
from minisd import architecture, weights
from minisd.forward import Forward, one_hot_tokens, prepare_params
from minisd.ops import Ops
from minisd.schedulers import DDIMScheduler
from minisd.text import tokenize
from minisd.vae_forward import VAEForward, prepare_vae_params

DEFAULT_STEPS = 25
# Measured on the shipped weights with minisd's checker (benchmarks/training_h100.md, 1,024 images, 25 steps):
# guidance 1.5 follows prompts 100/100/99.9 % (colour/background/shape), 2.0 93/100/94 %, 3.0 52/68/57 %.
# Each prompt fixes the picture almost completely, so strong guidance pushes samples off the data.
# (Measured with the training run's own loop, which stepped 960 -> 0; `python -m minisd eval --guidance 1 1.5
# 2 3` re-measures it with this one.)
DEFAULT_GUIDANCE = 1.5
DEFAULT_PROMPT = "a small red star left of a big blue circle on a white background"
CPU_CHUNK = 16  # images per pass on numpy: larger batches outgrow the CPU caches (im2col) and run slower


@dataclass(frozen=True)
class SamplingPlan:
    """Everything about one sampling run except the prompts and the seed (what a CUDA graph bakes in)."""

    batch: int  # images
    height: int
    width: int
    timesteps: tuple  # high to low
    coefficients: tuple  # minisd.schedulers.StepCoefficients of each step
    guidance_scale: float
    clip_range: float | None  # x_0 clipping range, None = no clipping

    @classmethod
    def make(cls, scheduler, batch, num_inference_steps, guidance_scale, height, width):
        """The plan of ``scheduler`` (a DDIMScheduler built from the weights' config) for one run."""
        scheduler.set_timesteps(num_inference_steps)
        timesteps = tuple(int(t) for t in scheduler.timesteps)
        c = scheduler.config
        return cls(
            batch=batch,
            height=height,
            width=width,
            timesteps=timesteps,
            coefficients=tuple(scheduler.step_coefficients(t) for t in timesteps),
            guidance_scale=check_guidance(guidance_scale),
            clip_range=float(c.clip_sample_range) if c.clip_sample else None,
        )

    @property
    def guided(self):
        """Guidance 1 is the conditional model alone: skip the unconditional half of the batch."""
        return self.guidance_scale != 1.0

    @property
    def rows(self):
        """UNet batch: [unconditional..., conditional...] with guidance, as diffusers orders them."""
        return 2 * self.batch if self.guided else self.batch

    def prompt_rows(self, prompts):
        """The prompts of the UNet's rows, in that order ("" is the unconditional prompt)."""
        return ([""] * len(prompts) if self.guided else []) + list(prompts)

    def timestep_rows(self):
        """(steps * rows,) float32: each step's timestep once per UNet row."""
        return np.repeat(np.asarray(self.timesteps, np.float32), self.rows)

    def noise_shape(self, channels):
        return (self.batch, channels, self.height, self.width)


def denoising_step(ops, plan, i, x, predict_noise):
    """Step ``i`` of the loop: the model's noise prediction for the rows, guidance, one DDIM step.

    ``ops`` needs concat_batch, cfg_combine and scheduler_step (minisd.ops.Ops, or torch_sampler.TorchOps);
    ``predict_noise(i, rows)`` is the UNet at step i's timestep."""
    model_input = ops.concat_batch(x, x) if plan.guided else x
    eps = predict_noise(i, model_input)
    if plan.guided:
        eps = ops.cfg_combine(eps[: plan.batch], eps[plan.batch :], plan.guidance_scale)
    return ops.scheduler_step(x, eps, None, plan.coefficients[i], plan.clip_range)


def denoise(ops, plan, x, predict_noise, progress=None):
    """The sampling loop: every step of ``plan`` from the initial noise ``x``; ``progress(i, n)`` after each."""
    for i in range(len(plan.timesteps)):
        x = denoising_step(ops, plan, i, x, predict_noise)
        if progress is not None:
            progress(i, len(plan.timesteps))
    return x


PRECISIONS = ("fp32", "fp16", "bf16")
# On CuPy. Measured on an H200 (benchmarks/h200/bench.txt): bf16 and fp16 sample equally fast (1.0x), 3.1x the
# images/s of fp32 at batch 64 and in 0.7x its time at batch 1; bf16 keeps float32's range (no overflow
# past 65504) and follows prompts as well as fp32 (benchmarks/h200/eval_bf16.txt), so it is the default.
DEFAULT_PRECISION = "bf16"


def check_precision(precision, backend, kernels=None):
    """The precision to sample in: half precision only on CuPy with minisd's own kernels."""
    if precision is None:
        return DEFAULT_PRECISION if backend == "cupy" and kernels in (None, "minisd") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and (backend != "cupy" or kernels not in (None, "minisd")):
        raise ValueError(
            f"precision {precision} runs on the CuPy backend's half-precision kernels; "
            f"backend {backend!r}{'' if kernels in (None, 'minisd') else f' with --kernels {kernels}'} is fp32 only"
        )
    return precision


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_guidance(guidance_scale):
    """guidance_scale is a number >= 0, finite in float32 (0: unconditional, 1: conditional only, > 1: guided);
    the kernels compute in float32, where 1e39 is inf and the image would come out black."""
    if not isinstance(guidance_scale, numbers.Real) or not 0 <= guidance_scale <= FLOAT32_MAX:
        raise ValueError(
            f"guidance_scale must be a number from 0 to {FLOAT32_MAX:.3g} (float32), got {guidance_scale!r}"
        )
    return float(guidance_scale)


class Sampler:
    """The loop on the course's ops in three parts, so CUDA graphs can capture each: ``prologue`` (prompt and
    timestep work, once per run), ``step`` (one ``denoising_step``) and ``finish`` (the autoencoder's
    decoder, once per run, where ``decode`` is given: latents -> images)."""

    def __init__(self, ops, net, decode=None):
        self.ops, self.net, self.decode = ops, net, decode

    def prologue(self, one_hot, timestep_rows, plan):
        context = self.net.text_encoder(one_hot)
        kv = self.net.cross_attention_kv(context)
        temb = self.net.time_projections(timestep_rows)
        steps = len(plan.timesteps)
        # (steps * rows, C) -> one (rows, C) slice per step: contiguous views, no copies
        per_step = [
            {k: v.reshape(steps, plan.rows, tuple(v.shape)[-1])[i] for k, v in temb.items()}
            for i in range(steps)
        ]
        return kv, per_step

    def step(self, i, x, state, plan):
        kv, temb = state
        return denoising_step(self.ops, plan, i, x, lambda i, rows: self.net.unet(rows, temb[i], kv))

    def finish(self, x):
        return x if self.decode is None else self.decode(x)

    def run(self, one_hot, noise, plan, progress=None):
        """Eager: every op launched from Python. Returns the images (on the ops' device)."""
        kv, temb = self.prologue(self.ops.to_device(one_hot), self.ops.to_device(plan.timestep_rows()), plan)
        x = denoise(self.ops, plan, noise, lambda i, rows: self.net.unet(rows, temb[i], kv), progress)
        return self.finish(x)


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
    """Weights on a backend, ready to sample. ``MiniSDPipeline.from_pretrained()`` loads the trained file.

    ``kernels``: None or "minisd" (the course's finished kernels on ``backend``), or "solutions" /
    "exercises": that lesson11.py's functions, probed first (minisd/lesson_kernels.py), on numpy arrays.
    ``graphs``: replay the sampling loop from CUDA graphs where it can be captured (the CuPy and Numba
    backends, on a GPU with CuPy); False runs it eagerly, every kernel launched from Python.
    ``precision``: the UNet's arithmetic on CuPy, "fp32" (float32 accuracy: the reference) or "fp16" /
    "bf16" (half-precision tensor cores, minisd/half_precision.py); None is DEFAULT_PRECISION there and
    "fp32" on every other backend."""

    def __init__(self, state, config, backend=None, kernels=None, log=print, graphs=True, precision=None):
        self.config = config
        try:
            self.arch = architecture.read(config)
        except architecture.ConfigError as err:
            raise weights.WeightsError(f"the config does not describe a minisd model: {err}") from err
        # the stored scheduler config as it is: its timestep_spacing ("trailing") and every other setting
        self.scheduler = DDIMScheduler.from_config(config["scheduler"])
        if self.scheduler.config.prediction_type != "epsilon":
            raise ValueError(
                f"minisd samples epsilon-prediction models, not {self.scheduler.config.prediction_type!r}"
            )
        if kernels in (None, "minisd"):
            self.ops, forward_class = Ops(backend), Forward
        else:
            from minisd import lesson_kernels

            self.ops, forward_class = lesson_kernels.load(kernels, log)
        self.backend = self.ops.backend
        self.precision = check_precision(precision, self.backend, kernels)
        if self.precision == "fp32":
            self.net = forward_class(self.ops, prepare_params(state, self.arch, self.ops), self.arch)
        else:
            from minisd.half_precision import HalfPrecisionNet

            self.net = HalfPrecisionNet(state, self.arch, self.ops, self.precision)
        # The decoder runs in float32 on every backend (also beside a half-precision UNet), once per image:
        # it costs about two UNet steps' multiply-adds (lesson 13).
        vae = self.arch.vae
        self.vae = (
            None if vae is None else VAEForward(self.ops, prepare_vae_params(state, vae, self.ops), vae)
        )
        self.sampler = Sampler(self.ops, self.net, None if vae is None else self.vae.decode_scaled)
        self.graphs = None
        # Eager on numpy, without CuPy (the simulator cannot capture) and for a lesson's kernels (numpy in and
        # out: minisd/lesson_kernels.py says why a graph cannot hold them).
        if graphs and self.backend != "numpy" and mode.has_cupy():
            from minisd.cuda_graphs import GraphedSampler

            self.graphs = GraphedSampler(self.sampler)
        self.last_timings = {}

    @classmethod
    def from_pretrained(cls, path=None, backend=None, kernels=None, log=print, graphs=True, precision=None):
        state, config = weights.load(path)
        return cls(
            state, config, backend=backend, kernels=kernels, log=log, graphs=graphs, precision=precision
        )

    @property
    def latent_scale(self):
        """Image pixels per latent, along each side (1 for a pixel-space model)."""
        return 1 if self.vae is None else 2**self.arch.vae.downsamplings

    @property
    def image_size(self):
        return self.arch.unet.sample_size * self.latent_scale

    def plan(self, batch, num_inference_steps, guidance_scale, height=None, width=None):
        """The plan for images of ``height`` x ``width`` pixels (default: the model's); it samples latents."""
        u, scale = self.arch.unet, self.latent_scale
        height = self.image_size if height is None else height
        width = self.image_size if width is None else width
        multiple = 2**u.downsamplings * scale
        why = f"the UNet halves the {'latents' if scale > 1 else 'image'} {u.downsamplings}x"
        why += f", which are {scale}x smaller than the image" if scale > 1 else ""
        for name, size in (("height", height), ("width", width)):
            if not isinstance(size, numbers.Integral) or size < multiple or size % multiple:
                raise ValueError(f"{name} must be a multiple of {multiple} ({why})")
        plan_args = (batch, num_inference_steps, guidance_scale, height // scale, width // scale)
        return SamplingPlan.make(self.scheduler, *plan_args)

    def decode(self, latents):
        """Latents as the UNet samples them (numpy float32, N x 4 x h x w, scaled) -> images (N x 3 x 4h x 4w)
        in about [-1, 1], as ``sample`` ends (to decode latents made elsewhere)."""
        if self.vae is None:
            return latents
        return self.ops.to_numpy(self.sampler.finish(self.ops.to_device(np.ascontiguousarray(latents))))

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

    def __call__(
        self,
        prompts,
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE,
        seed=0,
        progress=None,
        height=None,
        width=None,
    ):
        """Prompts -> uint8 images (N, height, width, 3); height and width default to the model's size."""
        args = (num_inference_steps, guidance_scale, seed, progress, height, width)
        return to_uint8(self.sample(prompts, *args))

    def sample(
        self,
        prompts,
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE,
        seed=0,
        progress=None,
        height=None,
        width=None,
    ):
        """What ``__call__`` turns into pixels: the decoded samples, numpy float32 (N, 3, height, width)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: pass at least one prompt")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        plan = self.plan(len(prompts), num_inference_steps, guidance_scale, height, width)
        one_hot = one_hot_tokens(tokenize(plan.prompt_rows(prompts)), self.arch.text_encoder.vocab_size)
        shape = plan.noise_shape(self.arch.unet.in_channels)
        start = time.perf_counter()
        if self.graphs is not None:
            sample = self.graphs.run(one_hot, shape, seed, plan, progress)
        else:
            with host_threads(self.backend):
                sample = self._sample_in_chunks(one_hot, self.ops.randn(shape, seed), plan, progress)
        total = time.perf_counter() - start
        self.last_timings = {"total_s": total, "per_step_s": total / num_inference_steps}
        return sample


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
    precision=None,
):
    """Prompts (a str or a list) -> uint8 images (N, 64, 64, 3), one per prompt.

    ``backend``: "numpy" | "numba" | "cupy" (None: the fastest this machine has). ``kernels``: None or
    "minisd" (the course's finished kernels), "solutions" or "exercises" (solutions/ or exercises/lesson11.py
    in place of minisd's, op by op, each probed first). ``progress(i, n)`` is called after each step. The
    loaded pipeline is kept, so later calls skip loading (and on CuPy replay captured CUDA graphs).
    """
    backend = mode.default_backend() if backend is None else backend
    mode.check_backend(backend)  # before the (slow) weights load
    key = (backend, kernels or "minisd", str(weights_path), check_precision(precision, backend, kernels))
    if key not in _PIPELINES:
        _PIPELINES[key] = MiniSDPipeline.from_pretrained(
            weights_path, backend=backend, kernels=kernels, precision=precision
        )
    return _PIPELINES[key](prompts, num_inference_steps, guidance_scale, seed, progress)
