"""minisd's autoencoder: diffusers' AutoencoderKL by key, shape and number (diffusers is the oracle), the same
network on the course's kernels against the torch model in float64, its weights files, its training
(stopped, resumed, learning) and its diffusers export."""

import copy
import itertools
import os
import re
import signal

import numpy as np
import pytest
import torch

from minisd import architecture, export, train, train_vae, weights
from minisd.architecture import ConfigError
from minisd.model import MiniSD, VAEOnly
from minisd.ops import Ops
from minisd.ops.harness import assert_close
from minisd.vae_forward import VAEForward, prepare_vae_params

TORCH_TOLERANCE = 1e-5  # max |minisd - diffusers|, float32, same weights (measured <= 4e-6)
KERNEL_TOLERANCE = 2e-5  # rel_error of the kernels (float32) against torch float64 (measured <= 2e-6)


@pytest.fixture(scope="module")
def diffusers():
    """The oracle, for the tests that compare with it (the kernel tests also run where it is missing)."""
    return pytest.importorskip("diffusers", reason="diffusers (the test oracle) is not installed")


def vae_config(**changes):
    return {"vae": architecture.default_vae_config() | changes}


def levels(channels, **changes):
    n = len(channels)
    return vae_config(
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        **changes,
    )


def ragged_config():
    """Another shape of every part: 2 resnets a level (3 going up), 3 latent channels, RGB in and 2 out."""
    return levels([8, 16, 24], norm_num_groups=4, layers_per_block=2, latent_channels=3, out_channels=2)


def tiny_config():
    """Small enough for Numba's CUDA simulator (a Python thread per CUDA thread) and a CPU training test."""
    return levels([8, 8], norm_num_groups=4, latent_channels=2, sample_size=8)


def tiny_latent_config():
    """minisd's text encoder and UNet on tiny_config()'s autoencoder: the UNet denoises its latents."""
    config = architecture.default_config() | tiny_config()
    latent = config["vae"]["latent_channels"]
    config["unet"].update(in_channels=latent, out_channels=latent)
    return config


def random_vae(config, seed=0):
    """Random weights whose norm scales and biases are not 1 and 0 (so they are tested too)."""
    torch.manual_seed(seed)
    model = VAEOnly(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def diffusers_vae(diffusers, model):
    theirs = diffusers.AutoencoderKL(**model.config["vae"]).eval()
    theirs.load_state_dict(  # every key, no more, no fewer
        {k.removeprefix("vae."): v for k, v in model.state_dict().items()}, strict=True
    )
    return theirs


def normal(gen, *shape):
    return gen.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------- the architecture


@pytest.mark.parametrize(
    "config",
    [vae_config(), ragged_config(), vae_config(mid_block_add_attention=False)],
    ids=["minisd", "ragged", "no-attention"],
)
def test_parameter_shapes_are_diffusers_autoencoderkl(config, diffusers):
    spec = architecture.read_vae(config)
    theirs = {k: tuple(v.shape) for k, v in diffusers.AutoencoderKL(**config["vae"]).state_dict().items()}
    assert {k.removeprefix("vae."): s for k, s in spec.parameter_shapes().items()} == theirs
    assert {k: tuple(v.shape) for k, v in VAEOnly(config).state_dict().items()} == spec.parameter_shapes()


def test_minisds_vae_config_is_a_diffusers_config(diffusers):
    """Every key diffusers' AutoencoderKL stores, at minisd's values, and 954,567 parameters."""
    ours = architecture.default_vae_config()
    theirs = diffusers.AutoencoderKL.from_config(ours)
    assert {k: v for k, v in theirs.config.items() if not k.startswith("_")} == ours
    assert sum(p.numel() for p in theirs.parameters()) == 954_567
    spec = architecture.read_vae({"vae": ours})
    assert spec.sample_size // 2**spec.downsamplings == 16 and spec.latent_channels == 4  # 64x64 -> 4x16x16


def test_the_pixel_space_model_has_no_vae_and_a_latent_one_has_one():
    pixel = {
        k: v for k, v in architecture.default_config().items() if k != "vae"
    }  # minisd before it was latent
    pixel["unet"].update(sample_size=32, in_channels=3, out_channels=3)
    assert architecture.read(pixel).vae is None and MiniSD(pixel).vae is None
    assert not any(k.startswith("vae.") for k in weights.expected_shapes(pixel))
    state, config = weights.load()  # the shipped file: the latent model, its autoencoder included
    shipped = architecture.read(config).vae
    assert shipped is not None and shipped.latent_channels == config["unet"]["in_channels"] == 4
    assert {k for k in state if k.startswith("vae.")} == set(shipped.parameter_shapes())
    latent = tiny_latent_config()
    model = MiniSD(latent)
    keys = {k for k in model.state_dict() if k.startswith("vae.")}
    assert keys == set(architecture.read_vae(latent).parameter_shapes())
    assert weights.expected_shapes(latent) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"norm_num_groups": 12}, "norm_num_groups=12 must divide every block_out_channels"),
        ({"down_block_types": ["DownEncoderBlock2D"] * 2}, "must be 3 x 'DownEncoderBlock2D'"),
        ({"up_block_types": ["UpBlock2D"] * 3}, "must be 3 x 'UpDecoderBlock2D'"),
        ({"block_out_channels": 32}, "must be a list of channel counts"),
        ({"act_fn": "gelu"}, "act_fn='gelu': minisd implements only 'silu'"),
        ({"use_quant_conv": False}, "use_quant_conv=False: minisd implements only True"),
        ({"scaling_factor": 0}, "scaling_factor must be a finite number > 0"),
        ({"mid_block_add_attention": "yes"}, "mid_block_add_attention must be true or false"),
        ({"latent_channels": 0}, "latent_channels must be a positive int"),
        ({"time_proj_dim": 4}, "unknown time_proj_dim"),
    ],
)
def test_configs_minisd_cannot_build_are_refused(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        architecture.read_vae(vae_config(**change))
    with pytest.raises(ConfigError, match=re.escape(message)):
        architecture.read(architecture.default_config() | vae_config(**change))


# ---------------------------------------------------------------------------------- torch vs diffusers


@pytest.mark.parametrize("make_config", [vae_config, ragged_config], ids=["minisd", "ragged"])
def test_torch_autoencoder_is_diffusers_own(make_config, gen, diffusers):
    """Same weights, same numbers: encode's mean and log-variance, decode, and the reconstruction, on a
    ragged batch (odd, non-square sizes: the encoder's one-sided padding shows there)."""
    model = random_vae(make_config())
    theirs = diffusers_vae(diffusers, model)
    images, latents = normal(gen, 3, 3, 22, 18), normal(gen, 3, model.vae.post_quant_conv.in_channels, 5, 7)
    images, latents = torch.from_numpy(images), torch.from_numpy(latents)
    with torch.no_grad():
        mean, logvar = model.vae.encode(images)
        posterior = theirs.encode(images).latent_dist
        pairs = [
            (mean, posterior.mean, "mean"),
            (logvar, posterior.logvar, "log-variance"),
            (model.vae.decode(latents), theirs.decode(latents).sample, "decode"),
            (model(images), theirs(images).sample, "reconstruction"),
        ]
    for ours, want, what in pairs:
        assert ours.shape == want.shape, what
        torch.testing.assert_close(ours, want, rtol=0, atol=TORCH_TOLERANCE, msg=what)


# --------------------------------------------------------------------------------- the course's kernels


def kernel_vae(ops, model):
    spec = architecture.read_vae(model.config)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return VAEForward(ops, prepare_vae_params(state, spec, ops), spec)


def torch64(model, images, latents):
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        mean = m.vae.encode(torch.from_numpy(images).double())[0]
        return mean.numpy(), m.vae.decode(torch.from_numpy(latents).double()).numpy()


@pytest.mark.parametrize("make_config", [vae_config, ragged_config], ids=["minisd", "ragged"])
def test_numpy_vae_matches_torch_float64(make_config, gen):
    """minisd's decoder on 4 latents of 16x16 (4 images of 64x64), and its encoder on odd sizes."""
    model = random_vae(make_config())
    images, latents = normal(gen, 3, 3, 22, 18), normal(gen, 4, model.vae.post_quant_conv.in_channels, 16, 16)
    net = kernel_vae(Ops("numpy"), model)
    want_mean, want_images = torch64(model, images, latents)
    assert_close(net.decode(latents), want_images, KERNEL_TOLERANCE, "decode (numpy)")
    assert_close(net.encode(images), want_mean, KERNEL_TOLERANCE, "encode's mean (numpy)")


@pytest.mark.slow
def test_numba_vae_in_simulator_matches_torch_float64(gen, monkeypatch, numba_ops_poisoned):
    """The whole tiny decoder and encoder on the Numba backend, every output poisoned with NaN first. The
    simulator runs one Python thread per CUDA thread, so the ops run their v1 kernels, which launch the
    fewest (~2.5x faster there than the latest); tests/test_ops.py checks every version against torch."""
    import minisd.ops.numba as numba_ops

    for op in ("conv2d", "group_norm", "linear", "attention"):
        monkeypatch.setitem(numba_ops.VERSIONS, op, {1: numba_ops.VERSIONS[op][1]})
    model = random_vae(tiny_config())
    ops = Ops("numba")
    net = kernel_vae(ops, model)
    images, latents = normal(gen, 2, 3, 7, 6), normal(gen, 2, 2, 3, 2)
    want_mean, want_images = torch64(model, images, latents)
    assert_close(net.decode(ops.to_device(latents)), want_images, KERNEL_TOLERANCE, "decode (numba)")
    assert_close(net.encode(ops.to_device(images)), want_mean, KERNEL_TOLERANCE, "encode's mean (numba)")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_gpu_vae_matches_torch_float64(backend, gen):
    """minisd's autoencoder at its size on a GPU: 4 images of 64x64 encoded, 4 latents decoded."""
    import minisd.mode as mode

    if not mode.ON_GPU or (backend == "cupy" and not mode.has_cupy()):
        pytest.skip(f"backend {backend} needs a GPU" + (" and CuPy" if backend == "cupy" else ""))
    model = random_vae(vae_config())
    ops = Ops(backend)
    net = kernel_vae(ops, model)
    images, latents = normal(gen, 4, 3, 64, 64), normal(gen, 4, 4, 16, 16)
    want_mean, want_images = torch64(model, images, latents)
    assert_close(net.decode(ops.to_device(latents)), want_images, 1e-4, f"decode ({backend})")
    assert_close(net.encode(ops.to_device(images)), want_mean, 1e-4, f"encode's mean ({backend})")


# --------------------------------------------------------------------------------------- weights files


def test_a_vae_weights_file_loads_with_load_vae_only(tmp_path):
    model = random_vae(tiny_config())
    path = weights.save(model.state_dict(), model.config, tmp_path / "vae.safetensors")
    state, config = weights.load_vae(path)
    assert config == model.config  # no vocabulary: an autoencoder reads no prompts
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy().astype(np.float16).astype(np.float32))
    assert weights.holds_vae_only(path) and not weights.holds_vae_only(weights.DEFAULT_PATH)
    with pytest.raises(
        weights.WeightsError, match="holds minisd's autoencoder alone .* minisd.weights.load_vae"
    ):
        weights.load(path)
    with pytest.raises(
        weights.WeightsError, match="is not a VAE weights file: its config has 'text_encoder'"
    ):
        weights.load_vae(weights.DEFAULT_PATH)
    broken = VAEOnly(levels([8, 16], norm_num_groups=4))  # a config the tensors do not fit
    weights.save(model.state_dict(), broken.config, path)
    with pytest.raises(weights.WeightsError, match="does not match the minisd model"):
        weights.load_vae(path)


# ------------------------------------------------------------------------------------------- training


def squares(n, rng):
    """A stand-in for minisd.scenes.make_batch: a flat square on a flat background, 8x8, in [-1, 1]."""
    images = np.empty((n, 3, 8, 8), np.float32)
    images[:] = rng.uniform(-1, 1, (n, 3, 1, 1))
    for image in images:
        x, y = rng.integers(0, 5, 2)
        image[:, y : y + 4, x : x + 4] = rng.uniform(-1, 1, (3, 1, 1))
    return images, [""] * n


def options(out, *more):
    args = ["--out", str(out), "--batch-size", "4", "--workers", "0", "--val-images", "6", "--log-every", "1"]
    return train_vae.parse_args([*args, "--device", "cpu", *more])


def checkpoint_vae(path, prefix):
    _, tensors = train.read_checkpoint(path)
    model = VAEOnly(tiny_config())
    model.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval()


def test_stopped_by_a_signal_then_resumed(tmp_path):
    """Ctrl-C mid-run saves a whole checkpoint and the weights with their measured scaling_factor; --resume
    starts from exactly that checkpoint and goes on to --steps."""
    calls = itertools.count()

    def interrupting(n, rng):  # call 0 draws the held-out images, then one call a step
        if next(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return squares(n, rng)

    assert (
        train_vae.train_vae(options(tmp_path, "--steps", "50"), interrupting, tiny_config()) == signal.SIGINT
    )
    log = (tmp_path / "train.log").read_text()
    stopped = int(log.split("stopped by SIGINT at step ")[1].split()[0])
    assert stopped == 3 and f"--resume {tmp_path / 'ckpt.pt'}" in log
    assert train.read_checkpoint(tmp_path / "ckpt.pt")[0]["step"] == stopped

    state, config = weights.load_vae(tmp_path / "vae.safetensors")
    held_out = train_vae.held_out_images(squares, 6, seed=0)
    std, psnr = train_vae.measure(checkpoint_vae(tmp_path / "ckpt.pt", "ema.").vae, held_out)
    assert config["vae"]["scaling_factor"] == pytest.approx(1 / std, rel=1e-6)
    assert f"PSNR {psnr:.2f} dB on 6 held-out images" in log

    resume = options(tmp_path, "--steps", str(stopped + 2), "--resume", str(tmp_path / "ckpt.pt"))
    _, model, ema, step, _ = train_vae.prepare(resume, None)
    assert step == stopped
    for prefix, module in (("model.", model), ("ema.", ema)):
        saved = checkpoint_vae(tmp_path / "ckpt.pt", prefix).state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items()), prefix
    assert train_vae.train_vae(resume, squares) is None
    log = (tmp_path / "train.log").read_text()
    assert f"from step {stopped}" in log and f"stopped at step {stopped + 2}" in log
    assert train.read_checkpoint(tmp_path / "ckpt.pt")[0]["step"] == stopped + 2
    weights.load_vae(tmp_path / "vae.safetensors")


def test_the_loss_falls_on_a_fixed_batch(tmp_path):
    """60 steps on the same 4 images: the L1 reconstruction error must fall below 40 % of where it starts
    (it falls to about 24 %; a run that does not learn stays near 100 %)."""
    fixed = squares(4, np.random.default_rng(0))

    def same_images(n, rng):
        return fixed[0][:n], fixed[1][:n]

    args = options(tmp_path, "--steps", "60", "--lr", "1e-2", "--warmup", "1")
    assert train_vae.train_vae(args, same_images, tiny_config()) is None
    l1 = [float(x) for x in re.findall(r"L1 ([0-9.]+)", (tmp_path / "train.log").read_text())]
    assert len(l1) == 60
    assert np.mean(l1[-5:]) < 0.4 * np.mean(l1[:5]), l1


@pytest.mark.parametrize(
    "more,message",
    [
        (["--kl-weight", "-1"], "--kl-weight must be a finite number >= 0, got -1"),
        (["--val-images", "0"], "--val-images must be at least 1, got 0"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_file(tmp_path, capsys, more, message):
    with pytest.raises(SystemExit) as exit_:
        train_vae.main(["--out", str(tmp_path / "run"), "--steps", "2", *more])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "run").exists()


def test_images_the_autoencoder_cannot_take_are_refused(tmp_path):
    def odd(n, rng):
        return np.zeros((n, 3, 7, 10), np.float32), [""] * n

    with pytest.raises(train_vae.CliError, match=r"shape \(6, 3, 7, 10\); .* multiples of 2"):
        train_vae.train_vae(options(tmp_path, "--steps", "2"), odd, tiny_config())


# ---------------------------------------------------------------------------------------------- export


def exported_decoders(diffusers, tmp_path, model):
    """Export ``model``'s weights file with --diffusers -> (diffusers' AutoencoderKL read back, minisd's
    torch VAE and kernel VAE from the same file)."""
    path = weights.save(
        model.state_dict(), {k: v for k, v in model.config.items()}, tmp_path / "w.safetensors"
    )
    assert export.main(["--diffusers", str(tmp_path / "out"), "--weights", str(path)]) == 0
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / "out", subfolder="vae").eval()
    ours, config = export.load_model(path)
    spec = architecture.read_vae(config)
    state = {k: v.numpy() for k, v in ours.state_dict().items()}
    return theirs, ours, VAEForward(Ops("numpy"), prepare_vae_params(state, spec, Ops("numpy")), spec)


@pytest.mark.parametrize("whole", [True, False], ids=["minisd-with-vae", "vae-alone"])
def test_diffusers_export_of_the_vae_decodes_as_minisd(tmp_path, capsys, gen, whole, diffusers):
    vae = random_vae(tiny_config())
    model = vae
    if whole:
        torch.manual_seed(1)
        model = MiniSD(tiny_latent_config())
        model.vae.load_state_dict(vae.vae.state_dict())
    theirs, ours, kernels = exported_decoders(diffusers, tmp_path, model)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == (["scheduler", "unet", "vae"] if whole else ["vae"])
    assert "wrote" in capsys.readouterr().out
    assert theirs.config.scaling_factor == model.config["vae"]["scaling_factor"]
    latents = normal(gen, 3, 2, 5, 4)
    with torch.no_grad():
        want = theirs.decode(torch.from_numpy(latents)).sample
        torch.testing.assert_close(
            ours.vae.decode(torch.from_numpy(latents)), want, rtol=0, atol=TORCH_TOLERANCE
        )
    assert_close(kernels.decode(latents), want, KERNEL_TOLERANCE, "minisd's numpy decoder vs diffusers'")
    if not whole:
        with pytest.raises(SystemExit, match="--onnx writes the text encoder and UNet"):
            export.main(["--onnx", str(tmp_path / "onnx"), "--weights", str(tmp_path / "w.safetensors")])
