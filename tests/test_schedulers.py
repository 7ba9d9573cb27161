"""minisd.schedulers against Hugging Face diffusers, the independent oracle: same config → same tables,
timesteps and step outputs (within float32 rounding) for numpy and torch arrays."""

import itertools

import numpy as np
import pytest
import torch

from minisd.schedulers import DDIMScheduler, DDPMScheduler

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
