"""minisd.train on the CPU: options checked first, checkpoints that are one consistent unit, a run that is
never overwritten silently, and real training processes stopped by signals or killed mid-save, then resumed."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from minisd import files, text, train, train_vae, weights
from minisd.model import MiniSD, VAEOnly

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--batch-size", "2", "--workers", "0", "--val-images", "0", "--log-every", "1", "--device", "cpu"]
NEEDS_VAE = (
    "a new run needs --vae (the vae.safetensors of python -m minisd train-vae); a resumed run keeps its "
    "checkpoint's autoencoder: give --vae or --resume, not both"
)


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    """A new run's --vae: an untrained autoencoder, saved as train-vae saves its vae.safetensors (the EMA
    weights of a VAEOnly: "vae.*" tensors, a config with a "vae" section alone). Seconds, not minutes."""
    torch.manual_seed(0)
    model = VAEOnly()
    path = tmp_path_factory.mktemp("vae") / train_vae.WEIGHTS
    weights.save(model.state_dict(), model.config, path)
    weights.load_vae(path)  # what train's --vae reads
    return str(path)


def test_a_stopping_rule_is_required():
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x"])


def test_loss_is_finite_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = MiniSD()
    model.vae.requires_grad_(False)  # frozen, as train.prepare leaves it
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = train.to_latents(model.vae.encode(images), model.config["vae"]["scaling_factor"])
    assert latents.shape == (2, 4, 16, 16) and not latents.requires_grad
    ids = torch.from_numpy(text.tokenize(["a big red star on the left on a white background", ""]))
    assert ids.shape == (2, text.MAX_LENGTH)
    alphas_cumprod = torch.linspace(0.999, 0.001, 1000)
    loss = train.diffusion_loss(model, latents, ids, alphas_cumprod)
    loss.backward()
    assert torch.isfinite(loss) and 0.1 < loss.item() < 10
    trained = [(n, p) for n, p in model.named_parameters() if not n.startswith("vae.")]
    silent = [n for n, p in trained if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == [], "every weight must get a gradient: the text encoder and all UNet blocks"
    assert all(p.grad is None for p in model.vae.parameters()), "the autoencoder stays frozen"


def run_main(argv, capsys):
    """train.main in this process -> (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--minutes", "0"], "--minutes must be a finite number > 0, got 0"),
        (["--minutes", "inf"], "--minutes must be a finite number > 0, got inf"),
        (["--steps", "3", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--steps", "3", "--log-every", "0"], "--log-every must be at least 1, got 0"),
        (["--steps", "3", "--warmup", "0"], "--warmup must be at least 1, got 0"),
        (["--steps", "3", "--lr", "nan"], "--lr must be a finite number in (0, 1], got nan"),
        (["--steps", "3", "--ema-decay", "1.5"], "--ema-decay must be a finite number in [0, 1], got 1.5"),
        (["--steps", "3", "--seed", "-1"], "--seed must be at least 0, got -1"),
        (["--steps", "3", "--workers", "-1"], "--workers must be at least 0, got -1"),
        (["--steps", "3", "--val-guidance", "1.5", "1e39"], "--val-guidance must be a number from 0 to 100"),
        (["--steps", "3", "--save-every", "-1"], "--save-every must be a finite number >= 0, got -1"),
        (["--steps", "3", "--device", "tpu"], "--device 'tpu' is not a torch device"),
        (
            ["--steps", "3", "--resume", "x/ckpt.pt", "--overwrite"],
            "--resume continues a run and --overwrite",
        ),
        (["--steps", "3"], NEEDS_VAE),  # a new run without an autoencoder
        (["--steps", "3", "--vae", "v.safetensors", "--resume", "x/ckpt.pt"], NEEDS_VAE),
    ],
)
def test_bad_options_are_one_line_errors_before_any_file(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = run_main(["--out", str(out), *args], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists(), "nothing is written before the options are checked"


@pytest.mark.parametrize(
    "what,message",
    [
        ("missing", "--vae: no minisd weights at"),
        ("whole-model", "is not a VAE weights file: its config has"),
    ],
)
def test_a_bad_vae_file_is_one_line_before_any_file(tmp_path, capsys, what, message):
    path = tmp_path / "none.safetensors"
    if what == "whole-model":
        path = weights.save(MiniSD().state_dict(), MiniSD().config, tmp_path / "minisd.safetensors")
    out = tmp_path / "run"
    code, err = run_main(["--out", str(out), "--steps", "3", "--vae", str(path)], capsys)
    assert code == 1 and err.startswith("error: --vae: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def _checkpoint(folder, step=7, elapsed=12.5, seed=1):
    torch.manual_seed(seed)
    model, ema = MiniSD(), MiniSD()
    train.save_checkpoint(folder / "ckpt.pt", model, ema, step=step, elapsed=elapsed)
    return model, ema


def test_checkpoint_round_trip_in_small_parts(tmp_path):
    model, ema = _checkpoint(tmp_path)
    parts = sorted(tmp_path.glob("ckpt.step7.part*.pt"))
    assert len(parts) >= 2 and all(p.stat().st_size < 16 << 20 for p in parts)
    model2, ema2 = MiniSD(), MiniSD()
    assert train.load_checkpoint(tmp_path / "ckpt.pt", model2, ema2) == (7, 12.5)
    for a, b in ((model, model2), (ema, ema2)):
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), key
    assert files.leftovers(tmp_path) == []


def test_a_save_that_dies_before_its_index_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """One checkpoint is one unit: parts of a new save never mix with the index of the old one."""
    _checkpoint(tmp_path, step=1, seed=1)
    real_write = files.write_bytes

    def write_parts_then_die(path, data):
        if Path(path).name == "ckpt.pt":
            raise KeyboardInterrupt("killed before the index")
        return real_write(path, data)

    monkeypatch.setattr(files, "write_bytes", write_parts_then_die)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint(tmp_path, step=2, seed=2)
    monkeypatch.undo()
    assert sorted(tmp_path.glob("ckpt.step2.part*.pt")), "the new parts were written"
    index, tensors = train.read_checkpoint(tmp_path / "ckpt.pt")  # every part checked against the index
    assert index["step"] == 1 and all(name.startswith("ckpt.step1.") for name in index["parts"])
    torch.manual_seed(1)
    assert torch.equal(tensors["model.unet.conv_in.weight"], MiniSD().state_dict()["unet.conv_in.weight"])
    _checkpoint(tmp_path, step=3)  # the next whole save removes every other step's parts
    assert {p.name.split(".")[1] for p in tmp_path.glob("ckpt.*part*.pt")} == {"step3"}


@pytest.mark.parametrize(
    "damage,message",
    [
        ("safetensors", "is a safetensors weights file (EMA weights only, for sampling)"),
        ("garbage", "is not a readable checkpoint"),
        ("truncated", "is not a readable checkpoint"),
        ("missing-part", "is missing: the checkpoint"),
        ("changed-part", "does not match the checkpoint"),
        ("folder", "is not a file"),
        ("fifo", "is not a file"),
        ("nothing", "does not exist"),
    ],
)
def test_resume_from_a_bad_checkpoint_is_one_line(tmp_path, capsys, damage, message):
    _checkpoint(tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    if damage == "safetensors":
        ckpt = weights.save(MiniSD().state_dict(), MiniSD().config, tmp_path / "minisd.safetensors")
    elif damage == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    elif damage == "missing-part":
        next(tmp_path.glob("ckpt.step7.part1.pt")).unlink()
    elif damage == "changed-part":
        part = tmp_path / "ckpt.step7.part0.pt"
        raw = bytearray(part.read_bytes())
        raw[-50] ^= 0xFF
        part.write_bytes(bytes(raw))
    elif damage == "folder":
        ckpt = tmp_path / "a_folder"
        ckpt.mkdir()
    elif damage == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("POSIX only")
        ckpt = tmp_path / "pipe.pt"
        os.mkfifo(ckpt)
    else:
        ckpt = tmp_path / "none.pt"
    code, err = run_main(["--out", str(tmp_path / "new"), "--steps", "9", "--resume", str(ckpt)], capsys)
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "new").exists()


def test_resume_needs_steps_beyond_the_checkpoint(tmp_path, capsys):
    _checkpoint(tmp_path, step=7)
    code, err = run_main(
        ["--out", str(tmp_path), "--steps", "7", "--resume", str(tmp_path / "ckpt.pt")], capsys
    )
    assert code == 2 and "the checkpoint is at step 7 already" in err and "give more than 7" in err


@pytest.mark.parametrize("resume", [False, True], ids=["new-run", "resume-from-elsewhere"])
def test_an_existing_run_is_refused_and_left_alone(tmp_path, capsys, resume, vae):
    run = tmp_path / "run"
    run.mkdir()
    _checkpoint(run)
    weights.save(MiniSD().state_dict(), MiniSD().config, run / "minisd.safetensors")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args = ["--out", str(run), "--steps", "9"]
    if resume:
        _checkpoint(tmp_path, step=3)
        args += ["--resume", str(tmp_path / "ckpt.pt")]
    else:
        args += ["--vae", vae]
    code, err = run_main(args, capsys)
    assert code == 2 and f"--out {run} already holds a training run (ckpt.pt, minisd.safetensors)" in err
    assert "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_unwritable_out_is_reported_before_training(tmp_path, capsys, vae):
    target = tmp_path / "file"
    target.write_text("")
    code, err = run_main(["--out", str(target), "--steps", "1", "--vae", vae, *SMALL], capsys)
    assert code == 2 and "is a file; name a folder" in err
    if sys.platform.startswith("linux"):
        code, err = run_main(["--out", "/proc/minisd-run", "--steps", "1", "--vae", vae, *SMALL], capsys)
        assert code != 0 and "error: " in err and "Traceback" not in err


@pytest.mark.slow
def test_two_steps_resume_then_overwrite(tmp_path, vae):
    common = ["--batch-size", "2", "--workers", "0", "--device", "cpu"]
    train.main(["--steps", "2", "--out", str(tmp_path), "--val-images", "0", "--vae", vae, *common])
    state, config = weights.load(tmp_path / "minisd.safetensors")
    assert config["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    assert all(np.isfinite(v).all() for v in state.values())
    vae_state, vae_config = weights.load_vae(vae)
    assert config["vae"] == vae_config["vae"], (
        "the whole model: the autoencoder's config (scaling_factor too)"
    )
    assert all(np.array_equal(state[k], v) for k, v in vae_state.items()), "the frozen autoencoder, unchanged"
    resume = ["--resume", str(tmp_path / "ckpt.pt"), "--val-images", "2", "--val-guidance", "1.5"]
    train.main(
        ["--steps", "3", "--out", str(tmp_path), *resume, *common]
    )  # the only validation: slow on a CPU
    log = (tmp_path / "train.log").read_text()
    assert "from step 2" in log and "stopped at step 3" in log and "validation (2 images" in log
    overwrite = ["--overwrite", "--vae", vae, "--val-images", "0"]
    train.main(["--steps", "1", "--out", str(tmp_path), *overwrite, *common])
    assert train.read_checkpoint(tmp_path / "ckpt.pt")[0]["step"] == 1
    assert {p.name.split(".")[1] for p in tmp_path.glob("ckpt.*part*.pt")} == {"step1"}
    assert "from step 0" in (tmp_path / "train.log").read_text().split("from step 2")[-1]


# ------------------------------------------------------------------ real training processes, stopped and killed


@contextlib.contextmanager
def training(out, *args):
    """A training process in its own process group (so a signal to the group reaches its data workers too),
    killed with them if the test ends first."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "minisd", "train", "--out", str(out), *SMALL, *args]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_for(condition, proc, what, poll_s=0.05):
    while not condition():
        assert proc.poll() is None, f"training exited before {what}: {proc.communicate()}"
        time.sleep(poll_s)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum,workers", [(signal.SIGTERM, "0"), (signal.SIGINT, "1")], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_saves_and_exits_cleanly(tmp_path, signum, workers, vae):
    """SIGTERM to the trainer, or Ctrl-C's SIGINT to its whole process group (data workers included)."""
    log = tmp_path / "train.log"
    args = ["--steps", "100000", "--save-every", "1000", "--workers", workers, "--vae", vae]
    with training(tmp_path, *args) as proc:
        wait_for(lambda: log.exists() and "step      2" in log.read_text(), proc, "step 2")
        os.killpg(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=600)  # a hang guard
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    stopped = int(stdout.split(f"stopped by {name} at step ")[1].split()[0])
    assert stopped >= 2 and f"--resume {tmp_path / 'ckpt.pt'}" in stdout
    assert train.read_checkpoint(tmp_path / "ckpt.pt")[0]["step"] == stopped  # the last step, not an old save
    weights.load(tmp_path / "minisd.safetensors")


@pytest.mark.slow
def test_killed_mid_save_then_resumed(tmp_path, vae):
    """SIGKILL while a checkpoint part or the weights are being written: the run resumes from the last whole
    checkpoint. Saves every step, and kills the moment a temporary file of a save appears."""
    with training(tmp_path, "--steps", "100000", "--save-every", "0", "--vae", vae) as proc:
        wait_for(lambda: (tmp_path / "ckpt.pt").exists(), proc, "its first checkpoint")
        wait_for(
            lambda: files.leftovers(tmp_path), proc, "a second save", poll_s=0.002
        )  # a write takes longer
        proc.kill()
        proc.communicate(timeout=600)
    assert files.leftovers(tmp_path), "the kill landed mid-write: a temporary file is left behind"
    at = train.read_checkpoint(tmp_path / "ckpt.pt")[0]["step"]  # whole, every part matching its index
    assert at >= 1

    with training(tmp_path, "--steps", str(at + 2), "--resume", str(tmp_path / "ckpt.pt")) as proc:
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"from step {at}" in stdout and f"stopped at step {at + 2}" in stdout
    assert train.read_checkpoint(tmp_path / "ckpt.pt")[0]["step"] == at + 2
    weights.load(tmp_path / "minisd.safetensors")
    assert files.leftovers(tmp_path) == []
