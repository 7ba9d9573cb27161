"""DDPM and DDIM noise schedulers, written to match Hugging Face diffusers.

Same config names, defaults and formulas as ``diffusers.DDPMScheduler`` / ``diffusers.DDIMScheduler``, so a
config saved by one loads in the other (``DDIMScheduler.from_config(ddpm.config)``) and tests can use diffusers
as the oracle. The tables (betas, alphas_cumprod) are numpy, and so are the timesteps unless
``set_timesteps(n, device=...)`` asks for a torch tensor there; ``step`` and ``add_noise`` only use arithmetic
operators and ``.clip`` on the arrays they get, so numpy, torch and cupy arrays all work and stay where they
are (a torch CUDA tensor stays on its GPU).

They are also drop-ins for diffusers' own in a diffusers pipeline (tests/test_schedulers.py runs
StableDiffusionPipeline with each): ``order``, ``init_noise_sigma``, ``scale_model_input``, step outputs that
index like diffusers' (``out[0]``, ``out["prev_sample"]``), a read-only ``config``, and
``save_pretrained``/``from_pretrained`` folders that diffusers reads and writes (scheduler_config.json).
"""

import inspect
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# diffusers' "learned"/"learned_range" need a model that also predicts variance; minisd's does not.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


CONFIG_NAME = "scheduler_config.json"  # diffusers' file name, so each reads the other's folders


@dataclass(frozen=True)
class StepCoefficients:
    """The scalars of one DDIM or DDPM step for an epsilon-predicting model, as diffusers computes them:

        x0   = (sample - sqrt_beta * eps) * inv_sqrt_alpha         (then clipped, if the config says so)
        prev = c_x0 * x0 + c_eps * eps + c_sample * sample + c_noise * noise

    ``step`` below applies them to any array; minisd's kernels apply them in one fused pass
    (minisd.ops.Ops.scheduler_step). ``kind`` and the inputs are kept so a lesson's own ddim_step can run.
    """

    kind: str  # "ddim" | "ddpm"
    alpha_prod_t: float
    alpha_prod_t_prev: float
    eta: float
    sqrt_beta: float
    inv_sqrt_alpha: float
    c_x0: float
    c_eps: float
    c_sample: float
    c_noise: float

    @property
    def terms(self):
        """(has an eps term, has a sample term). DDIM's prev has no sample term and DDPM's no eps term, as
        in diffusers: leaving them out, not multiplying them by 0, keeps an inf input from giving NaN."""
        return self.kind != "ddpm", self.kind != "ddim"

    def apply(self, sample, eps, noise=None, clip=None):
        """The step on numpy, torch or CuPy arrays (arithmetic and ``.clip`` only): the reference."""
        x0 = (sample - self.sqrt_beta * eps) * self.inv_sqrt_alpha
        if clip is not None:
            x0 = x0.clip(-clip, clip)
        with_eps, with_sample = self.terms
        prev = self.c_x0 * x0
        if with_eps:
            prev = prev + self.c_eps * eps
        if with_sample:
            prev = prev + self.c_sample * sample
        return prev if noise is None else prev + self.c_noise * noise


def _alphas(alpha_prod_t, alpha_prod_t_prev):
    a, ap = float(alpha_prod_t), float(alpha_prod_t_prev)
    # a = 0 is the last timestep of a zero-SNR schedule (pure noise): fine for v-prediction, whose x0 does
    # not divide by sqrt(a); an epsilon model's x0 there is inf, as in diffusers
    if not (0 <= a <= 1 and 0 < ap <= 1):
        raise ValueError(f"alpha_prod_t must be in [0, 1] and alpha_prod_t_prev in (0, 1], got {a} and {ap}")
    return a, ap


def ddim_coefficients(alpha_prod_t, alpha_prod_t_prev, eta=0.0, where=""):
    """DDIM (Song et al. 2021) eq. 12, with sigma_t(eta) of eq. 16:
    prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma noise.

    The step keeps sqrt(1 - a_prev - sigma^2) of the predicted noise, so sigma^2 may not exceed 1 - a_prev.
    Every eta in [0, 1] keeps within it (eta = 1 is DDPM's posterior variance); a larger eta may not, and then
    there is no real step: diffusers returns NaN, this refuses with a ValueError (``where`` names the step).
    """
    a, ap = _alphas(alpha_prod_t, alpha_prod_t_prev)
    if not 0 <= eta < math.inf:
        raise ValueError(f"eta must be a finite number >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    beta, beta_prev = 1.0 - a, 1.0 - ap
    variance = (beta_prev / beta) * (1.0 - a / ap) if beta > 0 else 0.0
    std = eta * math.sqrt(variance)
    if eta > 1 and std**2 > beta_prev:
        raise ValueError(
            f"eta={eta} is too large{where}: sigma_t² = {std**2:.4g} exceeds 1 − ᾱ_prev = {beta_prev:.4g}, so the "
            "step would take the square root of a negative number (diffusers returns NaN there); use eta <= "
            f"{math.sqrt(beta_prev / variance):.4g} for this step, or eta <= 1"
        )
    # max(., 0): at eta = 1 on a zero-SNR schedule this is 0, which rounding can make -1.1e-16 (complex)
    return StepCoefficients(
        "ddim", a, ap, float(eta), math.sqrt(beta), 1.0 / math.sqrt(a) if a > 0 else math.inf,
        c_x0=math.sqrt(ap), c_eps=math.sqrt(max(beta_prev - std**2, 0.0)), c_sample=0.0, c_noise=std,
    )  # fmt: skip


def ddpm_coefficients(alpha_prod_t, alpha_prod_t_prev, variance_type="fixed_small"):
    """DDPM (Ho et al. 2020): the posterior mean of x_{t-1} given x_0 and x_t, plus std * noise."""
    a, ap = _alphas(alpha_prod_t, alpha_prod_t_prev)
    beta, beta_prev = 1.0 - a, 1.0 - ap
    alpha_t = a / ap
    current_beta = 1.0 - alpha_t
    if variance_type == "fixed_large":
        std = math.sqrt(current_beta)
    else:  # fixed_small and fixed_small_log: the same number, reached two ways
        std = math.sqrt(max(beta_prev / beta * current_beta, 1e-20))
    return StepCoefficients(
        "ddpm", a, ap, 1.0, math.sqrt(beta), 1.0 / math.sqrt(a) if a > 0 else math.inf,
        c_x0=math.sqrt(ap) * current_beta / beta, c_eps=0.0, c_sample=math.sqrt(alpha_t) * beta_prev / beta,
        c_noise=std,
    )  # fmt: skip


@dataclass
class SchedulerOutput:
    """What ``step`` returns: x_{t-1} to feed the model next, and the model's current guess of x_0.

    Indexes like diffusers' outputs, which pipelines rely on: ``out[0]`` is ``out.prev_sample``, and so is
    ``out["prev_sample"]``; fields left None are skipped, as diffusers' ``BaseOutput`` skips them.
    """

    prev_sample: object
    pred_original_sample: object = None

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self):
        return tuple(getattr(self, key) for key in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]


class FrozenConfig(dict):
    """The config as a read-only dict that also reads as attributes (``scheduler.config.num_train_timesteps``).

    Read-only because the tables were built from it: changing ``beta_end`` afterwards would change nothing
    but the record. diffusers' FrozenDict refuses pop, update, setdefault and del, but lets ``config[k] = v``
    through; this one refuses every change.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no {name!r}") from None

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "a scheduler's config is read-only; make a new scheduler instead: "
            "DDIMScheduler.from_config(scheduler.config, name=value)"
        )

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # copy, deepcopy and pickle rebuild it whole instead of item by item
        return FrozenConfig, (dict(self),)


def torch_linspace_float32(start, end, steps):
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` bit for bit.

    torch steps in float32 and uses one rounding per element (a fused multiply-add), from ``start`` for the
    first half and back from ``end`` for the second. float64 holds the float32 product exactly, so one float64
    add and a cast reproduce it: the betas then equal diffusers' exactly, not just to 1 ulp.
    """
    start, end = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start], np.float32)
    step = np.float64((end - start) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    from_start = np.float64(start) + step * i
    from_end = np.float64(end) - step * (steps - 1 - i)
    return np.where(i < steps // 2, from_start, from_end).astype(np.float32)


def betas_for_alpha_bar(num_diffusion_timesteps, max_beta=0.999):
    """The cosine schedule ("squaredcos_cap_v2", Nichol & Dhariwal 2021): alpha_bar(t) = cos²((t+s)/(1+s)·π/2)."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=np.float32)


def rescale_zero_terminal_snr(betas):
    """Shift and scale sqrt(alpha_bar) so the last timestep is pure noise (Lin et al. 2023, Algorithm 1).

    In float32 throughout (cumprod accumulated in float64, as torch does), to reproduce diffusers' table.
    """
    alphas_bar_sqrt = np.sqrt(np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar = ((alphas_bar_sqrt - last) * (first / (first - last))) ** 2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


def _array_module_name(x):
    return type(x).__module__.split(".")[0]


def _table_like(table, like):
    """A numpy table as an array of ``like``'s kind, dtype and device, so it can index and broadcast there."""
    kind = _array_module_name(like)
    if kind == "torch":
        import torch

        return torch.as_tensor(table, dtype=like.dtype, device=like.device)
    if kind == "cupy":
        import cupy

        return cupy.asarray(table, dtype=like.dtype)
    return np.asarray(table, dtype=like.dtype)


def _index_like(indices, like):
    kind = _array_module_name(like)
    if kind == "torch":
        import torch

        return torch.as_tensor(indices, device=like.device).long()
    if kind == "cupy":
        import cupy

        return cupy.asarray(indices).astype(np.int64)
    if _array_module_name(indices) == "torch":
        return indices.cpu().numpy().astype(np.int64)
    return np.asarray(indices, dtype=np.int64)


def randn_like(x, generator=None):
    """Standard normal noise shaped like ``x``: a torch.Generator or numpy Generator makes it reproducible.

    A torch.Generator draws exactly what diffusers' ``randn_tensor`` draws with it (on the generator's device,
    then moved), which is what the tests rely on.
    """
    kind = _array_module_name(x)
    if kind == "torch":
        import torch

        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    if kind == "cupy":
        import cupy

        if generator is None:
            return cupy.random.standard_normal(x.shape, dtype=x.dtype)
        return cupy.asarray(generator.standard_normal(x.shape), dtype=x.dtype)
    generator = generator if generator is not None else np.random.default_rng()
    return np.asarray(generator.standard_normal(x.shape), dtype=x.dtype)


class _BetaScheduler:
    """What DDPM and DDIM share: config handling, the beta tables, timesteps and the forward process."""

    order = 1  # model evaluations per step (diffusers pipelines count progress with it; Heun's is 2)
    init_noise_sigma = 1.0  # std of the starting noise: x_T ~ N(0, 1) here (sigma-based schedulers use more)

    def __init__(self, **config):
        # diffusers' attribute name: its pipelines replace it to update old configs (StableDiffusionPipeline
        # sets steps_offset=1 and clip_sample=False this way), so this scheduler follows them as diffusers' does.
        self._internal_dict = FrozenConfig(config)
        self._check_config()
        self.betas = self._make_betas()
        self.alphas = (1.0 - self.betas).astype(np.float32)
        # torch's float32 cumprod accumulates in float64 on the CPU; doing the same keeps diffusers' values exactly.
        self.alphas_cumprod = np.cumprod(self.alphas.astype(np.float64)).astype(np.float32)
        self.num_inference_steps = None
        self.timesteps = np.arange(config["num_train_timesteps"])[::-1].copy().astype(np.int64)

    @property
    def config(self):
        return self._internal_dict

    @classmethod
    def from_config(cls, config, **overrides):
        """Build from a config dict (or another scheduler's ``.config``); keys this class does not use are
        ignored, as in diffusers, so ``DDIMScheduler.from_config(ddpm.config)`` works."""
        if isinstance(config, _BetaScheduler):
            config = config.config
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no config option(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        kwargs = {key: value for key, value in dict(config).items() if key in known}
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **overrides):
        """Build from a folder's scheduler_config.json, written by ``save_pretrained`` or by diffusers
        (``subfolder="scheduler"`` for a pipeline's folder). Local folders only: minisd downloads nothing."""
        folder = Path(pretrained_model_name_or_path) / (subfolder or "")
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {folder}: pass a local folder written by save_pretrained "
                "(minisd's or diffusers'); minisd does not download from the Hugging Face Hub"
            )
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from None
        return cls.from_config(config, **overrides)

    def save_pretrained(self, save_directory):
        """Write save_directory/scheduler_config.json as diffusers does (``_class_name`` first), so that
        ``diffusers.DDIMScheduler.from_pretrained(save_directory)`` reads it. Returns the file's path."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            key: value.tolist() if hasattr(value, "tolist") else value for key, value in self.config.items()
        }
        path = folder / CONFIG_NAME
        path.write_text(json.dumps({"_class_name": type(self).__name__, **config}, indent=2) + "\n")
        return path

    save_config = save_pretrained  # diffusers has both names; a scheduler's saved state is its config

    def _check_config(self):
        c = self.config
        if c["trained_betas"] is None and c["beta_schedule"] not in BETA_SCHEDULES:
            raise NotImplementedError(
                f"beta_schedule {c['beta_schedule']!r} is not implemented; choose one of {', '.join(BETA_SCHEDULES)}"
            )
        if c["prediction_type"] not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {c['prediction_type']!r} must be one of {', '.join(PREDICTION_TYPES)}"
            )
        if c["timestep_spacing"] not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing {c['timestep_spacing']!r} must be one of {', '.join(TIMESTEP_SPACINGS)}"
            )
        if c.get("thresholding"):
            raise NotImplementedError("thresholding=True (dynamic thresholding) is not implemented in minisd")

    def _make_betas(self):
        c = self.config
        n = c["num_train_timesteps"]
        if c["trained_betas"] is not None:
            betas = np.asarray(c["trained_betas"], dtype=np.float32)
        elif c["beta_schedule"] == "linear":
            betas = torch_linspace_float32(c["beta_start"], c["beta_end"], n)
        elif c["beta_schedule"] == "scaled_linear":
            # Stable Diffusion's schedule: linear in sqrt(beta).
            betas = torch_linspace_float32(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n) ** 2
        else:
            betas = betas_for_alpha_bar(n)
        if c.get("rescale_betas_zero_snr"):
            betas = rescale_zero_terminal_snr(betas)
        return betas

    def __len__(self):
        return self.config["num_train_timesteps"]

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"

    def scale_model_input(self, sample, timestep=None):
        """The model sees x_t as it is here; diffusers pipelines call this for schedulers (Euler, ...) that
        rescale it."""
        return sample

    def set_timesteps(self, num_inference_steps, device=None):
        """Choose the ``num_inference_steps`` timesteps to sample with, high to low (``self.timesteps``):
        int64 numpy, or with ``device`` (e.g. "cuda") a torch tensor there, as diffusers makes them."""
        n_train = self.config["num_train_timesteps"]
        if not 1 <= num_inference_steps <= n_train:
            raise ValueError(
                f"num_inference_steps must be between 1 and num_train_timesteps={n_train}, got {num_inference_steps}"
            )
        self.num_inference_steps = num_inference_steps
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            timesteps = np.linspace(0, n_train - 1, num_inference_steps).round()[::-1]
        elif spacing == "leading":
            step_ratio = n_train // num_inference_steps
            timesteps = (np.arange(num_inference_steps) * step_ratio)[::-1] + self.config["steps_offset"]
        else:  # trailing: start at the very last timestep, so sampling begins from pure noise
            step_ratio = n_train / num_inference_steps
            timesteps = np.round(np.arange(n_train, 0, -step_ratio)) - 1
        self.timesteps = timesteps.copy().astype(np.int64)
        if device is not None:
            import torch

            self.timesteps = torch.from_numpy(self.timesteps).to(device)

    def add_noise(self, original_samples, noise, timesteps):
        """Forward process q(x_t | x_0): sqrt(alpha_bar_t)·x_0 + sqrt(1 − alpha_bar_t)·noise, one t per sample."""
        alphas_cumprod = _table_like(self.alphas_cumprod, original_samples)
        t = _index_like(timesteps, original_samples).reshape(-1)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        sqrt_alpha_prod = (alphas_cumprod[t] ** 0.5).reshape(shape)
        sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[t]) ** 0.5).reshape(shape)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample, noise, timesteps):
        """The v-prediction target: sqrt(alpha_bar_t)·noise − sqrt(1 − alpha_bar_t)·x_0."""
        alphas_cumprod = _table_like(self.alphas_cumprod, sample)
        t = _index_like(timesteps, sample).reshape(-1)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        sqrt_alpha_prod = (alphas_cumprod[t] ** 0.5).reshape(shape)
        sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[t]) ** 0.5).reshape(shape)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    def _predict_original_sample(self, model_output, sample, alpha_prod_t):
        """x_0 from whatever the model predicts, clipped as configured."""
        beta_prod_t = 1 - alpha_prod_t
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            x0 = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        elif kind == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            x0 = x0.clip(-limit, limit)
        return x0

    @staticmethod
    def _check_step_inputs(model_output, sample):
        if tuple(model_output.shape) != tuple(sample.shape):
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} must equal sample shape {tuple(sample.shape)}"
            )


class DDPMScheduler(_BetaScheduler):
    """Ancestral sampling of Ho et al. 2020 (stochastic; every step adds fresh noise except the last)."""

    def __init__(
        self,
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        variance_type="fixed_small",
        clip_sample=True,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="leading",
        steps_offset=0,
        rescale_betas_zero_snr=False,
    ):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type {variance_type!r} must be one of {', '.join(VARIANCE_TYPES)}")
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.variance_type = variance_type

    def previous_timestep(self, timestep):
        """The timestep sampled after ``timestep`` (−1 after the last one)."""
        timestep = int(timestep)
        if self.num_inference_steps is None:
            return timestep - 1
        timesteps = self.timesteps.tolist()  # numpy or torch (set_timesteps with a device)
        if timestep not in timesteps:
            raise ValueError(f"timestep {timestep} is not one of this scheduler's timesteps {timesteps}")
        index = timesteps.index(timestep)
        return -1 if index == len(timesteps) - 1 else timesteps[index + 1]

    def alpha_prods(self, timestep):
        """(alpha_bar_t, alpha_bar_prev) as Python floats for ``timestep`` and the step after it."""
        t, prev_t = int(timestep), self.previous_timestep(timestep)
        alpha_prod_t = float(self.alphas_cumprod[t])
        alpha_prod_t_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
        return alpha_prod_t, alpha_prod_t_prev

    def step_coefficients(self, timestep):
        """The StepCoefficients of the step from ``timestep``."""
        return ddpm_coefficients(*self.alpha_prods(timestep), self.variance_type)

    def step(self, model_output, timestep, sample, generator=None, noise=None, return_dict=True):
        """x_t → x_{t-1}: the posterior mean q(x_{t-1} | x_t, x_0) from the predicted x_0, plus noise.

        ``noise`` (shaped like ``sample``) fixes the noise; else it is drawn with ``generator``.
        """
        self._check_step_inputs(model_output, sample)
        c = self.step_coefficients(timestep)
        x0 = self._predict_original_sample(model_output, sample, c.alpha_prod_t)
        prev_sample = c.c_x0 * x0 + c.c_sample * sample
        if int(timestep) > 0:
            if noise is None:
                noise = randn_like(model_output, generator)
            prev_sample = prev_sample + c.c_noise * noise
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class DDIMScheduler(_BetaScheduler):
    """Song et al. 2021: deterministic with eta=0 (what minisd samples with), DDPM-like noise with eta=1."""

    def __init__(
        self,
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        trained_betas=None,
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        thresholding=False,
        dynamic_thresholding_ratio=0.995,
        clip_sample_range=1.0,
        sample_max_value=1.0,
        timestep_spacing="leading",
        rescale_betas_zero_snr=False,
    ):
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        # The step after the last one has no alpha_bar: 1 means "clean", else reuse alpha_bar_0.
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])

    def previous_timestep(self, timestep):
        # diffusers steps back by train/inference steps whatever the spacing; kept so results match it.
        return int(timestep) - self.config["num_train_timesteps"] // self.num_inference_steps

    def alpha_prods(self, timestep):
        """(alpha_bar_t, alpha_bar_prev) as Python floats for ``timestep`` and the step after it."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        t, prev_t = int(timestep), self.previous_timestep(timestep)
        alpha_prod_t = float(self.alphas_cumprod[t])
        alpha_prod_t_prev = float(self.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod
        return alpha_prod_t, alpha_prod_t_prev

    def step_coefficients(self, timestep, eta=0.0):
        """The StepCoefficients of the step from ``timestep`` (what minisd's sampling loop applies)."""
        return ddim_coefficients(*self.alpha_prods(timestep), eta, where=f" at timestep {int(timestep)}")

    def std_dev(self, timestep, eta):
        """sigma_t = eta · sqrt((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)), the noise each step adds
        (ValueError where eta > 1 makes it too large: see ddim_coefficients)."""
        return self.step_coefficients(timestep, eta).c_noise

    def step(
        self,
        model_output,
        timestep,
        sample,
        eta=0.0,
        use_clipped_model_output=False,
        generator=None,
        noise=None,
        variance_noise=None,
        return_dict=True,
    ):
        """x_t → x_{t-1} = sqrt(ᾱ_prev)·x_0 + sqrt(1 − ᾱ_prev − σ²)·eps + σ·noise (DDIM eq. 12).

        ``noise`` (diffusers calls it ``variance_noise``) fixes the noise used when eta > 0; else it is drawn
        with ``generator``.
        """
        self._check_step_inputs(model_output, sample)
        if noise is not None and variance_noise is not None:
            raise ValueError("pass noise or variance_noise, not both (they are the same thing)")
        noise = noise if noise is not None else variance_noise
        if noise is not None and generator is not None:
            raise ValueError("pass a generator or fixed noise, not both")
        c = self.step_coefficients(timestep, eta)
        alpha_prod_t, beta_prod_t = c.alpha_prod_t, 1 - c.alpha_prod_t

        x0 = self._predict_original_sample(model_output, sample, alpha_prod_t)
        kind = self.config["prediction_type"]
        if use_clipped_model_output:  # eps consistent with the clipped x_0
            eps = (sample - alpha_prod_t**0.5 * x0) / beta_prod_t**0.5
        elif kind == "epsilon":
            eps = model_output
        elif kind == "sample":
            eps = (sample - alpha_prod_t**0.5 * model_output) / beta_prod_t**0.5
        else:  # v_prediction
            eps = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample

        prev_sample = c.c_x0 * x0 + c.c_eps * eps
        if eta > 0:
            if noise is None:
                noise = randn_like(model_output, generator)
            prev_sample = prev_sample + c.c_noise * noise
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
