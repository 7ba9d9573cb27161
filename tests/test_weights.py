"""minisd.weights: a round trip keeps every tensor, and every kind of bad file gets a clear WeightsError."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from minisd import architecture, weights
from minisd.model import MiniSD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MiniSD()


@pytest.fixture
def saved(model, tmp_path):
    return weights.save(model.state_dict(), model.config, tmp_path / "minisd.safetensors", dtype="float32")


def _rewrite(path, tensors=None, metadata=None):
    """Write a changed file in place and give it a VALID checksum, so only the change itself is at fault."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        old_metadata = f.metadata()
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata or old_metadata)
    weights.checksum_path(path).write_text(f"{weights.sha256_of(path)}  {path.name}\n")


def test_round_trip_float32(model, saved):
    state, config = weights.load(saved)
    expected = model.state_dict()
    assert set(state) == set(expected)
    for key, value in state.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected[key].numpy(), err_msg=key)
    assert (
        config["unet"] == model.config["unet"] and config["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    )
    assert config["vocab"][0] == "<pad>"


def test_float16_file_is_half_the_size_and_close(model, tmp_path):
    path = weights.save(model.state_dict(), model.config, tmp_path / "half.safetensors")
    state, _ = weights.load(path)
    w = model.state_dict()["unet.conv_in.weight"].numpy()
    np.testing.assert_allclose(state["unet.conv_in.weight"], w, rtol=1e-3, atol=1e-4)
    assert path.stat().st_size < 0.55 * 4 * sum(v.numel() for v in model.state_dict().values())


def test_checksum_file_reads_like_sha256sum(saved):
    digest, name = weights.checksum_path(saved).read_text().split()
    assert name == saved.name and digest == weights.sha256_of(saved) and len(digest) == 64


def test_missing_file(tmp_path):
    with pytest.raises(weights.WeightsError, match="no minisd weights at .*python -m minisd train"):
        weights.load(tmp_path / "nothing.safetensors")


def test_missing_checksum(saved):
    weights.checksum_path(saved).unlink()
    with pytest.raises(weights.WeightsError, match="sha256 is missing"):
        weights.load(saved)


def test_corrupted_byte_fails_the_checksum(saved):
    raw = bytearray(saved.read_bytes())
    raw[-100] ^= 0xFF
    saved.write_bytes(bytes(raw))
    with pytest.raises(weights.WeightsError, match="corrupt or was changed"):
        weights.load(saved)


def test_not_a_safetensors_file(saved):
    saved.write_bytes(b"this is not a tensor file at all")
    weights.checksum_path(saved).write_text(f"{weights.sha256_of(saved)}  {saved.name}\n")
    with pytest.raises(weights.WeightsError, match="not a readable safetensors file"):
        weights.load(saved)


def test_wrong_format_tag(saved):
    _rewrite(saved, metadata={"format": "pt", "config": "{}", "vocab": "[]"})
    with pytest.raises(weights.WeightsError, match="format 'pt'"):
        weights.load(saved)


def test_bad_config_json(saved):
    _rewrite(saved, metadata={"format": weights.FORMAT, "config": "{not json", "vocab": "[]"})
    with pytest.raises(weights.WeightsError, match="no valid 'config'/'vocab' JSON"):
        weights.load(saved)


def test_other_vocabulary(saved, model):
    meta = {"format": weights.FORMAT, "config": json.dumps(model.config), "vocab": json.dumps(["<pad>", "x"])}
    _rewrite(saved, metadata=meta)
    with pytest.raises(weights.WeightsError, match="another vocabulary"):
        weights.load(saved)


def test_missing_key(saved):
    tensors = load_file(str(saved))
    del tensors["unet.conv_out.bias"]
    _rewrite(saved, tensors)
    with pytest.raises(weights.WeightsError, match=r"1 missing \(e.g. unet.conv_out.bias\)"):
        weights.load(saved)


def test_unexpected_key(saved):
    tensors = load_file(str(saved))
    tensors["unet.extra.weight"] = np.zeros(3, np.float32)
    _rewrite(saved, tensors)
    with pytest.raises(weights.WeightsError, match=r"1 unexpected \(e.g. unet.extra.weight\)"):
        weights.load(saved)


def test_wrong_shape(saved):
    tensors = load_file(str(saved))
    tensors["unet.conv_in.weight"] = np.zeros((64, 3, 5, 5), np.float32)  # the pixel model's 3 channels
    _rewrite(saved, tensors)
    with pytest.raises(
        weights.WeightsError, match=r"unet.conv_in.weight: \(64, 3, 5, 5\) instead of \(64, 4, 3, 3\)"
    ):
        weights.load(saved)


def test_wrong_dtype(saved):
    tensors = load_file(str(saved))
    tensors["unet.conv_out.bias"] = np.zeros(4, np.int32)
    _rewrite(saved, tensors)
    with pytest.raises(weights.WeightsError, match="unet.conv_out.bias is int32"):
        weights.load(saved)


def test_nan_weights(saved):
    tensors = load_file(str(saved))
    tensors["unet.conv_out.bias"] = np.array([0, np.nan, 0, 0], np.float32)
    _rewrite(saved, tensors)
    with pytest.raises(weights.WeightsError, match="unet.conv_out.bias contains NaN or inf"):
        weights.load(saved)
    tensors["unet.conv_out.bias"][1] = 0
    tensors["vae.decoder.conv_out.bias"] = np.array([0, 0, np.inf], np.float32)  # the autoencoder's too
    _rewrite(saved, tensors)
    with pytest.raises(weights.WeightsError, match="vae.decoder.conv_out.bias contains NaN or inf"):
        weights.load(saved)


def test_config_that_is_not_minisd(saved):
    meta = {
        "format": weights.FORMAT,
        "config": json.dumps({"unet": {}}),
        "vocab": json.dumps(weights_vocab()),
    }
    _rewrite(saved, metadata=meta)
    with pytest.raises(weights.WeightsError, match="does not describe a minisd model"):
        weights.load(saved)


def weights_vocab():
    from minisd.text import VOCAB

    return VOCAB


# ---------------------------------------------- files that are not what they claim: one clear WeightsError each


def _load_in_thread(path):
    """weights.load(path) -> the exception it raised; a load that blocks (a FIFO, /dev/zero) fails the test
    instead of hanging the run (a daemon thread: a blocked read cannot be interrupted)."""
    import threading

    outcome = []

    def run():
        try:
            weights.load(path)
            outcome.append(None)
        except Exception as err:  # noqa: BLE001  (the test inspects what was raised)
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)  # a hang guard, not a speed budget
    assert outcome, f"weights.load({path}) hung"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX only")
@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path, kind):
    path = tmp_path / "minisd.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
        expected = "is a named pipe (FIFO)"
    else:
        path.symlink_to("/dev/zero")
        expected = "is a character device (a link to /dev/zero)"
    err = _load_in_thread(path)
    assert isinstance(err, weights.WeightsError) and expected in str(err), err


def test_an_empty_path_is_refused_not_the_default(tmp_path):
    with pytest.raises(weights.WeightsError, match="the weights path is empty"):
        weights.load("")


def test_an_empty_file(tmp_path):
    path = tmp_path / "minisd.safetensors"
    path.touch()
    with pytest.raises(weights.WeightsError, match=r"is empty \(0 bytes\)"):
        weights.load(path)


def test_bfloat16_weights_say_what_to_do(model, tmp_path):
    from safetensors.torch import save_file as save_torch

    path = tmp_path / "bf16.safetensors"
    metadata = {
        "format": weights.FORMAT,
        "config": json.dumps(model.config),
        "vocab": json.dumps(weights_vocab()),
    }
    save_torch({k: v.bfloat16() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    weights.checksum_path(path).write_text(f"{weights.sha256_of(path)}  {path.name}\n")
    with pytest.raises(
        weights.WeightsError, match=r"is bfloat16; minisd weights are float16 or float32\. Convert"
    ):
        weights.load(path)


def test_checksum_that_is_a_folder(saved):
    sums = weights.checksum_path(saved)
    sums.unlink()
    sums.mkdir()
    with pytest.raises(weights.WeightsError, match=r"\.sha256 is a folder, not a checksum file"):
        weights.load(saved)


def test_checksum_that_is_binary(saved):
    weights.checksum_path(saved).write_bytes(bytes(range(256)) * 100)
    with pytest.raises(weights.WeightsError, match="does not start with a 64-digit hex sha256"):
        weights.load(saved)


def test_upper_case_checksum_is_accepted_as_sha256sum_does(saved):
    sums = weights.checksum_path(saved)
    digest, name = sums.read_text().split()
    sums.write_text(f"{digest.upper()}  {name}\n")
    weights.load(saved)
    if shutil.which("sha256sum"):  # the tool the format comes from agrees
        check = subprocess.run(["sha256sum", "-c", sums.name], cwd=saved.parent, capture_output=True)
        assert check.returncode == 0, check.stderr
    sums.write_text(digest.upper())  # a bare digest, no name: still the first word of the first line
    weights.load(saved)


def _with_config(saved, model, change):
    config = model.config | {"unet": dict(model.config["unet"]), "scheduler": dict(model.config["scheduler"])}
    change(config)
    meta = {"format": weights.FORMAT, "config": json.dumps(config), "vocab": json.dumps(weights_vocab())}
    _rewrite(saved, metadata=meta)
    return saved


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c.pop("scheduler"), "has no 'scheduler' section"),
        (
            lambda c: c["unet"].update(block_out_channels="32"),
            "block_out_channels '32', not a list of positive ints",
        ),
        (lambda c: c["unet"].update(block_out_channels=[]), r"block_out_channels \[\], not a list"),
        (lambda c: c["unet"].update(block_out_channels=[32, -64, 128]), r"\[32, -64, 128\], not a list"),
        (lambda c: c["unet"].update(block_out_channels=[32, 64]), "down_block_types .* one entry per"),
        (
            lambda c: c["scheduler"].update(clip_sample=True, clip_sample_range=0),
            "clip_sample_range 0: x0 clipping needs a range > 0",
        ),
        (lambda c: c["scheduler"].update(num_train_timesteps=0), "num_train_timesteps 0, not a positive int"),
        (lambda c: c["scheduler"].update(beta_schedule="cosine"), "scheduler minisd cannot build"),
    ],
    ids=[
        "no-scheduler",
        "channels-str",
        "channels-empty",
        "channels-negative",
        "channels-short",
        "clip-0",
        "timesteps-0",
        "beta-schedule",
    ],
)
def test_malformed_config_is_refused_before_the_model_is_built(saved, model, change, message):
    _with_config(saved, model, change)
    for read in (weights.load, weights.peek_config):
        with pytest.raises(weights.WeightsError, match=f"does not describe a minisd model: it .*{message}"):
            read(saved)


def test_peek_config_reads_the_header_only(saved, model):
    raw = bytearray(saved.read_bytes())
    raw[-100] ^= 0xFF  # a tensor byte: load refuses the checksum, the header is still fine
    saved.write_bytes(bytes(raw))
    assert weights.peek_config(saved)["scheduler"] == model.config["scheduler"]


@pytest.mark.parametrize("make", ["default", "ragged"])
def test_the_loader_checks_shapes_against_the_model_it_describes(make):
    """Drift guard: the loader checks shapes from minisd.architecture (no torch), the torch model builds
    from the same description; both must name the same keys with the same shapes."""
    config = architecture.default_config()
    if make == "ragged":
        config["unet"].update(
            block_out_channels=[16, 32, 48], layers_per_block=2, attention_head_dim=[1, 2, 3]
        )
        config["text_encoder"].update(num_layers=3, intermediate_size=40)
    torch_shapes = {k: tuple(v.shape) for k, v in MiniSD(config).state_dict().items()}
    assert weights.expected_shapes(config) == torch_shapes


def pixel_config():
    """The 32x32 pixel-space model minisd shipped before it was latent (no "vae" section), in today's form."""
    config = {k: v for k, v in architecture.default_config().items() if k != "vae"}
    config["unet"].update(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=[32, 64, 128],
        attention_head_dim=[1, 2, 4],
    )
    config["scheduler"].update(clip_sample=True, clip_sample_range=1.0)  # pixels are bounded to [-1, 1]
    return config


def test_a_minisd_1_file_still_loads(tmp_path):
    """minisd-1 stored minisd's own config (head width 32, time_proj_dim, no timestep spacing), and only the
    pixel-space model existed then: such a file reads as today's config of it, with no autoencoder."""
    torch.manual_seed(0)
    model = MiniSD(pixel_config())
    assert model.vae is None
    old = {
        "text_encoder": model.config["text_encoder"],
        "unet": {
            k: v
            for k, v in model.config["unet"].items()
            if k not in ("mid_block_type", "use_linear_projection")
        }
        | {"attention_head_dim": 32, "time_proj_dim": 32},
        "scheduler": {
            "num_train_timesteps": 1000,
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "epsilon",
            "clip_sample": True,
        },
    }
    path = weights.save(model.state_dict(), model.config, tmp_path / "old.safetensors", dtype="float32")
    _rewrite(
        path, metadata={"format": "minisd-1", "config": json.dumps(old), "vocab": json.dumps(weights_vocab())}
    )
    state, config = weights.load(path)
    assert {k: v for k, v in config.items() if k != "vocab"} == model.config
    assert (
        config["unet"]["attention_head_dim"] == [1, 2, 4]
        and config["scheduler"]["timestep_spacing"] == "trailing"
    )
    assert set(state) == set(model.state_dict()) and not any(k.startswith("vae.") for k in state)


def test_loading_does_not_import_torch(saved):
    import subprocess
    import sys

    code = f"import sys; from minisd import weights; weights.load({str(saved)!r}); assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
