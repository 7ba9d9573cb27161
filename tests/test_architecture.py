"""minisd.architecture and the stored config: diffusers reads the shipped weights' config as it is.

``diffusers.UNet2DConditionModel.from_config`` and ``diffusers.DDIMScheduler.from_config`` on the shipped
file's "unet" and "scheduler" sections give minisd's model and sampling, unchanged (diffusers is the
independent oracle, installed with the test extras)."""

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


def diffusers_unet(state, config):
    unet = diffusers.UNet2DConditionModel.from_config(config["unet"]).eval()
    unet.load_state_dict(
        {k.removeprefix("unet."): torch.from_numpy(v) for k, v in state.items() if k.startswith("unet.")},
        strict=True,  # every key, no more, no fewer
    )
    return unet


def test_the_stored_config_is_minisds_default(shipped):
    _, config, _ = shipped
    assert {k: v for k, v in config.items() if k != "vocab"} == default_config()
    assert config["unet"]["attention_head_dim"] == [1, 2, 4], "diffusers' heads per block, 32 channels each"
    assert config["scheduler"]["timestep_spacing"] == "trailing"


def test_diffusers_builds_minisds_unet_from_the_stored_config(shipped):
    state, config, model = shipped
    unet = diffusers_unet(state, config)
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 8, 64, generator=g)
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
            torch.from_numpy(rng.standard_normal((2, 3, 5, 7)).astype(np.float32)) for _ in range(2)
        )
        want = theirs.step(eps, int(t), sample).prev_sample
        assert_close(
            ours.step(eps, int(t), sample).prev_sample, want, 2e-6 / ours.alpha_prods(t)[0] ** 0.5, f"t={t}"
        )


def test_a_diffusers_sampling_loop_draws_minisds_picture(shipped):
    """diffusers' UNet and DDIMScheduler, built from the stored config alone, with minisd's text encoder,
    noise and guidance: the picture minisd.generate draws on its own numpy kernels."""
    import minisd
    from minisd.ops import Ops
    from minisd.pipeline import DEFAULT_GUIDANCE
    from minisd.text import tokenize

    state, config, model = shipped
    unet, scheduler = diffusers_unet(state, config), diffusers.DDIMScheduler.from_config(config["scheduler"])
    prompts = ["a red circle on a blue background", "a white star on a purple background"]
    steps, n = 10, len(prompts)
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(Ops("numpy").randn((n, 3, 32, 32), 0))
    with torch.no_grad():
        context = model.text_encoder(torch.from_numpy(tokenize([""] * n + prompts)))
        for t in scheduler.timesteps:
            uncond, cond = unet(torch.cat([x, x]), t, context).sample.chunk(2)
            x = scheduler.step(uncond + DEFAULT_GUIDANCE * (cond - uncond), t, x).prev_sample
    theirs = minisd.pipeline.to_uint8(x.numpy()).astype(int)
    ours = minisd.generate(prompts, steps, seed=0, backend="numpy").astype(int)
    assert np.abs(ours - theirs).max() <= 2, "diffusers, reading minisd's config, draws another picture"


def test_configs_minisd_cannot_build_are_refused():
    def with_unet(**changes):
        config = default_config()
        config["unet"].update(changes)
        return config

    for config, message in [
        (with_unet(use_linear_projection=False), "use_linear_projection=False: minisd implements only True"),
        (with_unet(attention_head_dim=[1, 2]), "one head count per block"),
        (
            with_unet(attention_head_dim=[1, 3, 4]),
            "64 channels must split into norm_num_groups=8 and 3 heads",
        ),
        (with_unet(time_proj_dim=32), "unknown time_proj_dim"),
        (with_unet(down_block_types=["DownBlock2D"] * 2 + ["AttnDownBlock2D"]), "block types must be among"),
        ({"unet": {}}, "no 'text_encoder' section"),
    ]:
        with pytest.raises(ConfigError, match=message):
            architecture.read(config)
