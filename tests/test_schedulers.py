"""minisd.schedulers against Hugging Face diffusers, the independent oracle: same config → same tables,
timesteps and step outputs (within float32 rounding) for numpy and torch arrays."""

import copy
import inspect
import itertools
import json
import pickle

import numpy as np
import pytest
import torch

from minisd.schedulers import CONFIG_NAME, DDIMScheduler, DDPMScheduler, SchedulerOutput

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test oracle) is not installed")

SHAPE = (2, 3, 5, 7)  # ragged on purpose


def assert_close(ours, ref, what, amplification=1.0):
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    ref = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert np.isfinite(ours).all(), f"{what}: non-finite values"
    # float32 rounding, relative to the size of the numbers (x_0 can be ~1e4 before clipping at t≈T) and to
    # how much the formula amplifies it: x_0 = (x_t − sqrt(1−ᾱ)·eps)/sqrt(ᾱ) cancels, then divides by sqrt(ᾱ).
    atol = 2e-6 * max(1.0, float(np.abs(ref).max())) * amplification
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=atol, err_msg=what)


def amplification(scheduler, t):
    """How much a step can grow float32 rounding: it divides by sqrt(ᾱ_t), and DDPM's β_t = 1 − ᾱ_t/ᾱ_prev
    cancels where ᾱ barely changes (diffusers computes it in float32, we in float64)."""
    alpha_prod_t, alpha_prod_t_prev = scheduler.alpha_prods(t)
    amp = alpha_prod_t**-0.5
    if isinstance(scheduler, DDPMScheduler):
        amp += 0.05 / (1 - alpha_prod_t / alpha_prod_t_prev)
    return amp


def random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


DDIM_CONFIGS = [
    dict(
        beta_schedule=schedule,
        prediction_type=prediction,
        timestep_spacing=spacing,
        clip_sample=clip,
        set_alpha_to_one=alpha_one,
        steps_offset=offset,
    )
    for schedule, prediction, spacing, clip, alpha_one, offset in itertools.product(
        ["linear", "scaled_linear", "squaredcos_cap_v2"],
        ["epsilon", "sample", "v_prediction"],
        ["leading", "trailing", "linspace"],
        [True, False],
        [True, False],
        [0, 1],
    )
    # every schedule × prediction × spacing, with the boolean/offset options rotated through them
    if (clip, alpha_one, offset) in {(True, True, 0), (False, False, 1), (True, False, 1)}
]


def test_tables_match_diffusers_exactly():
    for schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        for n, start, end in [(1000, 0.0001, 0.02), (1000, 0.00085, 0.012), (37, 0.001, 0.05)]:
            kw = dict(num_train_timesteps=n, beta_start=start, beta_end=end, beta_schedule=schedule)
            ours, ref = DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
            np.testing.assert_array_equal(ours.betas, ref.betas.numpy(), err_msg=f"betas {kw}")
            np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), err_msg=f"{kw}")
            np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_trained_betas_and_zero_snr():
    betas = np.linspace(0.001, 0.03, 50)
    for kw in [dict(trained_betas=betas.tolist()), dict(rescale_betas_zero_snr=True)]:
        ours, ref = (
            DDIMScheduler(num_train_timesteps=50, **kw),
            diffusers.DDIMScheduler(num_train_timesteps=50, **kw),
        )
        # torch's vectorised float32 sqrt is off by an ulp at times, and the rescale divides small numbers
        np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 3, 7, 10, 25, 50, 999])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match(steps, spacing, offset):
    for cls, ref_cls in [(DDIMScheduler, diffusers.DDIMScheduler), (DDPMScheduler, diffusers.DDPMScheduler)]:
        ours = cls(timestep_spacing=spacing, steps_offset=offset)
        ref = ref_cls(timestep_spacing=spacing, steps_offset=offset)
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert ours.timesteps.dtype == np.int64
        np.testing.assert_array_equal(
            ours.timesteps, ref.timesteps.numpy(), err_msg=f"{cls.__name__} {spacing}"
        )


@pytest.mark.parametrize("config", DDIM_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_ddim_step_matches(config):
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    ours.set_timesteps(13)
    ref.set_timesteps(13)
    for i, t in enumerate(ref.timesteps):
        model_output, sample = random_inputs(i)
        expected = ref.step(model_output, t, sample)
        got = ours.step(model_output.numpy(), int(t), sample.numpy())
        assert isinstance(got.prev_sample, np.ndarray) and got.prev_sample.dtype == np.float32
        amp = amplification(ours, t)
        assert_close(got.prev_sample, expected.prev_sample, f"prev_sample t={int(t)}", amp)
        assert_close(got.pred_original_sample, expected.pred_original_sample, f"x0 t={int(t)}", amp)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("use_clipped", [False, True])
def test_ddim_eta_noise_matches(eta, use_clipped):
    config = dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    for i, t in enumerate(ref.timesteps):
        model_output, sample = random_inputs(100 + i)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i))
        expected = ref.step(
            model_output, t, sample, eta=eta, use_clipped_model_output=use_clipped, variance_noise=noise
        )
        got = ours.step(model_output.numpy(), t, sample.numpy(), eta=eta, use_clipped_model_output=use_clipped,
                        noise=noise.numpy())  # fmt: skip
        amp = amplification(ours, t)
        assert_close(got.prev_sample, expected.prev_sample, f"eta={eta} t={int(t)}", amp)
        # the same torch.Generator draws the same noise as diffusers' randn_tensor
        expected = ref.step(model_output, t, sample, eta=eta, generator=torch.Generator().manual_seed(7))
        got = ours.step(model_output, t, sample, eta=eta, generator=torch.Generator().manual_seed(7))
        assert isinstance(got.prev_sample, torch.Tensor)
        assert_close(got.prev_sample, expected.prev_sample, f"eta={eta} t={int(t)} generator", amp)


@pytest.mark.parametrize("eta", [1.05, 1.5, 3.0])
def test_ddim_eta_above_one_matches_diffusers_or_refuses(eta):
    """eta > 1 can make sigma_t² exceed 1 − ᾱ_prev: there diffusers returns NaN and minisd refuses; at every
    other step minisd equals diffusers, in float32 for torch and numpy inputs (never complex)."""
    ours, ref = DDIMScheduler(), diffusers.DDIMScheduler()
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    matched = refused = 0
    for i, t in enumerate(ref.timesteps):
        model_output, sample = random_inputs(300 + i)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i))
        expected = ref.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample
        inputs = [(model_output, sample, noise), (model_output.numpy(), sample.numpy(), noise.numpy())]
        if torch.isnan(expected).any():
            for x, s, z in inputs:
                with pytest.raises(ValueError, match=f"eta={eta} is too large at timestep {int(t)}"):
                    ours.step(x, t, s, eta=eta, noise=z)
            refused += 1
            continue
        for x, s, z in inputs:
            got = ours.step(x, t, s, eta=eta, noise=z).prev_sample
            assert type(got) is type(x) and str(got.dtype).endswith("float32"), f"t={int(t)}: {got.dtype}"
            assert_close(got, expected, f"eta={eta} t={int(t)}", amplification(ours, t))
        matched += 1
    assert matched and refused, (matched, refused)  # both kinds of step were met


def test_ddim_eta_one_zero_snr_stays_real():
    """eta = 1 on a zero-SNR schedule: 1 − ᾱ_prev − sigma² is 0 in exact arithmetic, −1.1e-16 in float64
    here; the step must still be real (it was complex64). diffusers 0.42 takes the square root of that rounding
    and returns NaN, so the oracle is the step in closed form, on diffusers' own ᾱ table: at t = 999 ᾱ_t = 0,
    so x0 = −v (clipped to ±1), sigma² = 1 − ᾱ_prev and the direction term vanishes."""
    config = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    ours.set_timesteps(3)
    ref.set_timesteps(3)
    assert ref.alphas_cumprod[ref.timesteps[0]] == 0
    model_output, sample = random_inputs(5)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    got = ours.step(model_output, 999, sample, eta=1.0, noise=noise).prev_sample
    ab_prev = ref.alphas_cumprod[ref.timesteps[1]].double()
    x0 = (-model_output.double()).clamp(-1, 1)
    expected = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * noise.double()
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("steps", [None, 9])
def test_ddpm_step_matches(variance_type, prediction_type, steps):
    config = dict(
        num_train_timesteps=100,
        beta_schedule="squaredcos_cap_v2",
        variance_type=variance_type,
        prediction_type=prediction_type,
        clip_sample=prediction_type != "sample",
    )
    ours, ref = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    if steps:
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
    for i, t in enumerate(ref.timesteps):
        model_output, sample = random_inputs(200 + i)
        expected = ref.step(model_output, t, sample, generator=torch.Generator().manual_seed(i))
        got = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(i))
        amp = amplification(ours, t)
        assert_close(got.prev_sample, expected.prev_sample, f"torch t={int(t)}", amp)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)).numpy()
        got = ours.step(model_output.numpy(), int(t), sample.numpy(), noise=noise)
        assert_close(got.prev_sample, expected.prev_sample, f"numpy t={int(t)}", amp)
        assert_close(got.pred_original_sample, expected.pred_original_sample, f"x0 t={int(t)}", amp)


def test_last_ddpm_step_adds_no_noise():
    s = DDPMScheduler(num_train_timesteps=10)
    x = np.ones(SHAPE, np.float32)
    a = s.step(x, 0, x, noise=np.full(SHAPE, 1e6, np.float32)).prev_sample
    b = s.step(x, 0, x, noise=np.zeros(SHAPE, np.float32)).prev_sample
    np.testing.assert_array_equal(a, b)


def test_add_noise_and_velocity_match():
    ours = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ref = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0, noise = random_inputs(3)
    t = torch.tensor([0, 999])
    expected = ref.add_noise(x0, noise, t)
    assert_close(ours.add_noise(x0.numpy(), noise.numpy(), t.numpy()), expected, "add_noise numpy")
    got = ours.add_noise(x0, noise, t)
    assert isinstance(got, torch.Tensor)
    assert_close(got, expected, "add_noise torch")
    assert_close(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), "get_velocity")


def test_from_config_round_trips_with_diffusers():
    ddpm = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=500)
    # diffusers' config carries _class_name, variance_type, ...: DDIM ignores what it does not use, as diffusers does
    ours = DDIMScheduler.from_config(ddpm.config, timestep_spacing="trailing")
    assert ours.config.num_train_timesteps == 500 and ours.config["timestep_spacing"] == "trailing"
    back = diffusers.DDIMScheduler.from_config(dict(ours.config))
    ours.set_timesteps(10)
    back.set_timesteps(10)
    np.testing.assert_array_equal(ours.timesteps, back.timesteps.numpy())
    np.testing.assert_array_equal(ours.alphas_cumprod, back.alphas_cumprod.numpy())
    assert DDPMScheduler.from_config(ours).config.beta_schedule == "squaredcos_cap_v2"


def test_clear_errors():
    with pytest.raises(NotImplementedError, match="beta_schedule 'cosine'"):
        DDIMScheduler(beta_schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type 'eps'"):
        DDIMScheduler(prediction_type="eps")
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDPMScheduler(timestep_spacing="even")
    with pytest.raises(ValueError, match="variance_type"):
        DDPMScheduler(variance_type="learned")
    with pytest.raises(TypeError, match="no config option"):
        DDIMScheduler.from_config({}, eta=0.5)
    s = DDIMScheduler()
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 10, x)
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps"):
        s.set_timesteps(1001)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="shape"):
        s.step(x[:1], 900, x)
    with pytest.raises(ValueError, match="not one of"):
        d = DDPMScheduler()
        d.set_timesteps(10)
        d.step(x, 901, x, noise=x)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        s.step(x, 900, x, eta=-0.5)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        s.step(x, 900, x, eta=float("nan"))


# ------------------------------------------------------------------ drop-in for diffusers' schedulers


PAIRS = [(DDIMScheduler, diffusers.DDIMScheduler), (DDPMScheduler, diffusers.DDPMScheduler)]


@pytest.mark.parametrize("cls, ref_cls", PAIRS)
def test_pipeline_attributes_match_diffusers(cls, ref_cls):
    ours, ref = cls(), ref_cls()
    assert ours.order == ref.order == 1
    assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0
    x = torch.randn(SHAPE)
    assert ours.scale_model_input(x, 10) is x and torch.equal(ref.scale_model_input(x, 10), x)
    # what StableDiffusionPipeline.prepare_extra_step_kwargs looks for in step's signature
    for name in ("eta", "generator"):
        assert (name in inspect.signature(ours.step).parameters) == (
            name in inspect.signature(ref.step).parameters
        )


@pytest.mark.parametrize("cls, ref_cls", PAIRS)
def test_step_output_indexes_like_diffusers(cls, ref_cls):
    ours, ref = cls(num_train_timesteps=100), ref_cls(num_train_timesteps=100)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    model_output, sample = random_inputs(9)
    t = ref.timesteps[3]
    noise_kw = dict(noise=torch.zeros(SHAPE)) if cls is DDPMScheduler else {}
    got = ours.step(model_output, t, sample, **noise_kw)
    expected = ref.step(model_output, t, sample, generator=torch.Generator().manual_seed(0))
    if cls is DDPMScheduler:  # diffusers' DDPM step adds its own noise: compare the noise-free x_0 only
        assert_close(got["pred_original_sample"], expected["pred_original_sample"], "x0")
    else:
        for key in (0, -1, "prev_sample", "pred_original_sample"):
            assert_close(got[key], expected[key], f"out[{key!r}]")
        assert_close(got[:1][0], expected[:1][0], "out[:1]")
    assert got.keys() == list(expected.keys()) == ["prev_sample", "pred_original_sample"]
    assert len(got.to_tuple()) == len(expected.to_tuple()) == 2
    as_tuple = ours.step(model_output, t, sample, return_dict=False, **noise_kw)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    # a field left None is skipped by index and by key, in both
    ours_half = SchedulerOutput(prev_sample=sample)
    ref_half = type(expected)(prev_sample=sample)
    assert ours_half.keys() == list(ref_half.keys()) == ["prev_sample"]
    for out in (ours_half, ref_half):
        with pytest.raises(IndexError):
            out[1]
        with pytest.raises(KeyError):
            out["pred_original_sample"]


@pytest.mark.parametrize("cls, ref_cls", PAIRS)
def test_timesteps_on_the_requested_device(cls, ref_cls):
    ours, ref = cls(), ref_cls()
    for device in ("cpu", "meta"):  # meta: a device that is not the CPU, on any machine
        ours.set_timesteps(10, device=device)
        ref.set_timesteps(10, device=device)
        assert isinstance(ours.timesteps, torch.Tensor)
        assert (ours.timesteps.device, ours.timesteps.dtype) == (ref.timesteps.device, ref.timesteps.dtype)
    ours.set_timesteps(10, device="cpu")
    ref.set_timesteps(10, device="cpu")
    assert torch.equal(ours.timesteps, ref.timesteps)
    model_output, sample = random_inputs(4)
    t = ours.timesteps[2]  # a 0-d tensor, as a pipeline's loop hands it over
    got = ours.step(model_output, t, sample, noise=torch.zeros(SHAPE)).pred_original_sample
    assert_close(got, ref.step(model_output, ref.timesteps[2], sample).pred_original_sample, "x0")
    ours.set_timesteps(10)  # no device: numpy, the tables' own kind
    assert isinstance(ours.timesteps, np.ndarray)


def test_config_is_read_only_like_diffusers():
    ours, ref = DDIMScheduler(), diffusers.DDIMScheduler()
    refused_by_both = {
        "del": lambda c: c.__delitem__("beta_end"),
        "pop": lambda c: c.pop("beta_end"),
        "update": lambda c: c.update(beta_end=0.5),
        "setdefault": lambda c: c.setdefault("eta", 0.5),
    }
    # diffusers' FrozenDict lets these through (its frozen flag is checked under a mangled name); minisd
    # refuses them too, since changing the record would not change the tables built from it
    refused_by_minisd = {
        "item": lambda c: c.__setitem__("beta_end", 0.5),
        "attribute": lambda c: setattr(c, "beta_end", 0.5),
        "clear": lambda c: c.clear(),
        "|=": lambda c: c.__ior__({"beta_end": 0.5}),
        "popitem": lambda c: c.popitem(),
    }
    for change in refused_by_both.values():
        with pytest.raises(Exception, match="You cannot use"):
            change(ref.config)
        with pytest.raises(TypeError, match="read-only; make a new scheduler"):
            change(ours.config)
    for change in refused_by_minisd.values():
        with pytest.raises(TypeError, match="read-only"):
            change(ours.config)
    assert ours.config == DDIMScheduler().config and ours.config.beta_end == 0.02
    for scheduler in (ours, ref):
        with pytest.raises(AttributeError):
            scheduler.config = {}
    assert DDIMScheduler.from_config(ours.config, beta_end=0.5).config.beta_end == 0.5  # the way to change it
    for twin in (copy.copy(ours.config), copy.deepcopy(ours.config), pickle.loads(pickle.dumps(ours.config))):
        assert twin == ours.config and type(twin) is type(ours.config)


@pytest.mark.parametrize("cls, ref_cls", PAIRS)
def test_save_and_load_folders_with_diffusers(cls, ref_cls, tmp_path):
    config = dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=False)
    ours = cls(**config)
    path = ours.save_pretrained(tmp_path / "ours")
    assert (
        path == tmp_path / "ours" / CONFIG_NAME
        and json.loads(path.read_text())["_class_name"] == cls.__name__
    )
    ref = ref_cls.from_pretrained(tmp_path / "ours")
    assert {key: ref.config[key] for key in ours.config} == dict(ours.config)
    ref.save_pretrained(tmp_path / "pipe" / "scheduler")
    assert sorted(p.name for p in (tmp_path / "pipe" / "scheduler").iterdir()) == [CONFIG_NAME]
    back = cls.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    assert back.config == ours.config
    for a, b in [(ours, ref), (back, ref)]:
        a.set_timesteps(12)
        b.set_timesteps(12)
        np.testing.assert_array_equal(a.timesteps, b.timesteps.numpy())
        np.testing.assert_array_equal(a.alphas_cumprod, b.alphas_cumprod.numpy())
    assert cls.from_pretrained(tmp_path / "ours", beta_schedule="linear").config.beta_schedule == "linear"
    ours.save_config(tmp_path / "again")  # diffusers' other name for it
    assert (tmp_path / "again" / CONFIG_NAME).read_text() == path.read_text()
    # trained betas (a numpy array) are written as a JSON list, as diffusers writes them
    trained = cls(num_train_timesteps=20, trained_betas=np.linspace(0.001, 0.02, 20))
    ref = ref_cls.from_pretrained(trained.save_pretrained(tmp_path / "trained").parent)
    np.testing.assert_allclose(trained.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {CONFIG_NAME} in .*does not download"):
        DDIMScheduler.from_pretrained("runwayml/stable-diffusion-v1-5", subfolder="scheduler")
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        DDIMScheduler.from_pretrained(tmp_path)


def test_stable_diffusion_pipeline_gives_the_same_latents_with_minisd_scheduler():
    """diffusers' own StableDiffusionPipeline loop, once with diffusers' DDIMScheduler and once with minisd's:
    init_noise_sigma, set_timesteps(device=...), scale_model_input, order, step(eta, generator)[0], and the
    pipeline's own config update (steps_offset -> 1, clip_sample -> False through ``_internal_dict``)."""
    pytest.importorskip("transformers", reason="StableDiffusionPipeline needs transformers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    ).eval()
    config = dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )  # steps_offset 0, clip on

    def sample(scheduler):
        pipe = diffusers.StableDiffusionPipeline(
            vae=None,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(1)
        prompt, negative = torch.randn(2, 2, 5, 16, generator=g)
        latents = torch.randn(2, 3, 8, 8, generator=g)
        with torch.no_grad():
            images = pipe(
                prompt_embeds=prompt,
                negative_prompt_embeds=negative,
                latents=latents,
                height=64,  # 8 latent pixels: without a VAE the pipeline assumes its 8x downscale
                width=64,
                num_inference_steps=7,
                guidance_scale=3.0,
                eta=0.5,
                generator=torch.Generator().manual_seed(2),
                output_type="latent",
            ).images
        return images, pipe.scheduler

    with pytest.warns(FutureWarning, match="steps_offset"):
        expected, ref = sample(diffusers.DDIMScheduler(**config))
    with pytest.warns(FutureWarning, match="steps_offset"):
        got, ours = sample(DDIMScheduler(**config))
    assert isinstance(ours, DDIMScheduler)
    assert (ours.config.steps_offset, ours.config.clip_sample) == (
        ref.config.steps_offset,
        ref.config.clip_sample,
    )
    assert ours.config.steps_offset == 1  # the pipeline's update reached minisd's scheduler
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert_close(got, expected, "StableDiffusionPipeline latents", amplification=10)
