"""minisd.architecture and the stored config: diffusers reads the shipped weights' config as it is.

``diffusers.UNet2DConditionModel.from_config``, ``diffusers.AutoencoderKL.from_config`` and
``diffusers.DDIMScheduler.from_config`` on the shipped file's "unet", "vae" and "scheduler" sections give
minisd's latent model, its decoder and its sampling, unchanged (diffusers is the independent oracle,
installed with the test extras)."""

import numpy as np
import pytest
import torch

from minisd import architecture, weights
from minisd.architecture import ConfigError, default_config
from minisd.model import MiniSD
from minisd.ops.harness import assert_close
from minisd.schedulers import DDIMScheduler

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test oracle) is not installed")


@pytest.fixture(scope="module")
def shipped():
    """The shipped weights: numpy state, config, and minisd's torch model holding them."""
    state, config = weights.load()
    model = MiniSD(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return state, config, model


def diffusers_model(cls, state, config, section):
    """diffusers' ``cls`` built from ``config[section]`` alone, holding the shipped ``section.*`` tensors."""
    module = cls.from_config(config[section]).eval()
    prefix = section + "."
    module.load_state_dict(
        {k.removeprefix(prefix): torch.from_numpy(v) for k, v in state.items() if k.startswith(prefix)},
        strict=True,  # every key, no more, no fewer
    )
    return module


def diffusers_unet(state, config):
    return diffusers_model(diffusers.UNet2DConditionModel, state, config, "unet")


def diffusers_vae(state, config):
    return diffusers_model(diffusers.AutoencoderKL, state, config, "vae")


def test_the_stored_config_is_minisds_default(shipped):
    """The shipped file is the latent model of default_config(); only the autoencoder's scaling factor
    differs: the training run measured it (1 / the latents' std) where the default says 1.0."""
    _, config, _ = shipped
    stored = {k: v for k, v in config.items() if k != "vocab"}
    scaling = stored["vae"]["scaling_factor"]
    assert isinstance(scaling, float) and scaling != 1.0 and 0.05 < scaling < 2, scaling
    expected = default_config()
    expected["vae"]["scaling_factor"] = scaling
    assert stored == expected
    assert config["unet"]["attention_head_dim"] == [2, 4, 4], "diffusers' heads per block, 32 channels each"
    assert (config["unet"]["sample_size"], config["unet"]["in_channels"]) == (16, 4), "4x16x16 latents"
    assert config["scheduler"]["timestep_spacing"] == "trailing"
    assert config["scheduler"]["clip_sample"] and config["scheduler"]["clip_sample_range"] == 2.5, (
        "x_0 of the latents is clipped to +-2.5 (minisd.architecture.SCHEDULER says why)"
    )


def test_diffusers_builds_minisds_unet_from_the_stored_config(shipped):
    state, config, model = shipped
    unet = diffusers_unet(state, config)
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 14, 64, generator=g)
    timesteps = torch.tensor([999, 421, 0])
    with torch.no_grad():
        theirs = unet(sample, timesteps, context).sample
        ours = model.unet(sample, timesteps, context)
    assert_close(ours, theirs, 1e-6, "minisd.model's UNet against diffusers' (same weights)")


def test_diffusers_builds_minisds_scheduler_from_the_stored_config(shipped):
    _, config, _ = shipped
    theirs, ours = (
        diffusers.DDIMScheduler.from_config(config["scheduler"]),
        DDIMScheduler.from_config(config["scheduler"]),
    )
    rng = np.random.default_rng(0)
    for steps in (1, 7, 25, 50):
        theirs.set_timesteps(steps)
        ours.set_timesteps(steps)
        np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy(), err_msg=f"{steps} steps")
    for t in ours.timesteps[[0, 24, 49]]:
        sample, eps = (
            torch.from_numpy(rng.standard_normal((2, 4, 5, 7)).astype(np.float32)) for _ in range(2)
        )
        want = theirs.step(eps, int(t), sample).prev_sample
        assert_close(
            ours.step(eps, int(t), sample).prev_sample, want, 2e-6 / ours.alpha_prods(t)[0] ** 0.5, f"t={t}"
        )


def test_diffusers_builds_minisds_autoencoder_from_the_stored_config(shipped):
    state, config, model = shipped
    vae = diffusers_vae(state, config)
    g = torch.Generator().manual_seed(1)
    images, latents = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean, logvar = model.vae.encode(images)
        decoded = vae.decode(latents).sample
        ours = model.vae.decode(latents)
    assert decoded.shape == (2, 3, 64, 64) and posterior.mean.shape == (2, 4, 16, 16)
    assert_close(mean, posterior.mean, 1e-5, "the latents' mean: minisd.model's encoder against diffusers'")
    assert_close(logvar, posterior.logvar, 1e-5, "the latents' log-variance")
    assert_close(ours, decoded, 1e-5, "minisd.model's decoder against diffusers' (same weights)")


def test_a_diffusers_sampling_loop_draws_minisds_picture(shipped):
    """diffusers' UNet, DDIMScheduler and AutoencoderKL, built from the stored config alone, with minisd's
    text encoder, noise and guidance: the latents, divided by the scaling factor and decoded, are the
    picture minisd.generate draws on its own numpy kernels."""
    import minisd
    from minisd.ops import Ops
    from minisd.pipeline import DEFAULT_GUIDANCE
    from minisd.text import tokenize

    state, config, model = shipped
    unet, vae = diffusers_unet(state, config), diffusers_vae(state, config)
    scheduler = diffusers.DDIMScheduler.from_config(config["scheduler"])
    prompts = [
        "a big red star on the left on a white background",
        "a small red star left of a big blue circle on a white background",
    ]
    steps, n = 10, len(prompts)
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(Ops("numpy").randn((n, 4, 16, 16), 0))
    with torch.no_grad():
        context = model.text_encoder(torch.from_numpy(tokenize([""] * n + prompts)))
        for t in scheduler.timesteps:
            uncond, cond = unet(torch.cat([x, x]), t, context).sample.chunk(2)
            x = scheduler.step(uncond + DEFAULT_GUIDANCE * (cond - uncond), t, x).prev_sample
        pixels = vae.decode(x / vae.config.scaling_factor).sample
    assert pixels.shape == (n, 3, 64, 64)
    theirs = minisd.pipeline.to_uint8(pixels.numpy()).astype(int)
    ours = minisd.generate(prompts, steps, seed=0, backend="numpy").astype(int)
    assert ours.shape == theirs.shape == (n, 64, 64, 3)
    difference = np.abs(ours - theirs)
    assert difference.max() <= 2, (
        f"diffusers, reading minisd's config, draws another picture ({difference.max()})"
    )


def test_configs_minisd_cannot_build_are_refused():
    def with_unet(**changes):
        config = default_config()
        config["unet"].update(changes)
        return config

    for config, message in [
        (with_unet(use_linear_projection=False), "use_linear_projection=False: minisd implements only True"),
        (with_unet(attention_head_dim=[2, 4]), "one head count per block"),
        (
            with_unet(attention_head_dim=[2, 3, 4]),
            "128 channels must split into norm_num_groups=8 and 3 heads",
        ),
        (with_unet(time_proj_dim=32), "unknown time_proj_dim"),
        (with_unet(down_block_types=["DownBlock2D"] * 2 + ["AttnDownBlock2D"]), "block types must be among"),
        ({"unet": {}}, "no 'text_encoder' section"),
    ]:
        with pytest.raises(ConfigError, match=message):
            architecture.read(config)
