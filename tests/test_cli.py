"""``python -m minisd``: run as a user would, in a subprocess, and read what it prints and writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import minisd.mode as mode
from minisd import weights
from minisd.architecture import default_config
from minisd.data import COLORS, SHAPES
from minisd.model import MiniSD
from minisd.scenes import SIZES

REPO = Path(__file__).resolve().parents[1]
P1 = "a big red star on the left on a green background"
P2 = "a small blue heart left of a big red circle on a white background"


def minisd_cli(*args, env=None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("MINISD_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "minisd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=1800,  # a hang guard, not a speed budget
    )


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    model = MiniSD(default_config())
    path = tmp_path_factory.mktemp("weights") / "minisd.safetensors"
    return weights.save(model.state_dict(), model.config, path, dtype="float16")


def test_sample_writes_a_captioned_grid(weights_file, tmp_path):
    out = tmp_path / "grid.png"
    prompts = ["An  BIG orange star at the top on a green background.", P2]  # variants ok
    args = ["sample", "--weights", weights_file, "--steps", 1, "--num-images", 3, "--out", out, "--scale", 2]
    result = minisd_cli(*args, "--prompt", prompts[0], "--prompt", prompts[1], "--backend", "numpy")
    assert result.returncode == 0, result.stderr
    assert "ms/step" in result.stdout and f"wrote {out}" in result.stdout
    assert result.stdout.startswith("sampling 6 images, 1 step, numpy on the CPU")
    assert "simulator" not in result.stdout and "sizes are small" not in result.stdout  # it runs on numpy
    assert "denoising" in result.stderr  # the tqdm bar
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 2 * 2 * 64 and image.shape[1] >= 3 * 2 * 64, image.shape  # 2 rows, 3 columns, x2
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "the grid should hold (noisy) pictures"


def test_unknown_word_exits_2_naming_it_and_what_is_allowed():
    result = minisd_cli("sample", "--prompt", "a big pink star on the left on a blue background")
    assert result.returncode == 2
    assert "word 3 is 'pink', but a colour goes there: " + ", ".join(COLORS) in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_backend_is_a_clear_error():
    result = minisd_cli("sample", "--backend", "tpu")
    assert result.returncode == 2 and "invalid choice: 'tpu'" in result.stderr
    result = minisd_cli("sample", "--backend", "cupy")
    if result.returncode == 2:  # no GPU (or no CuPy) here
        assert "backend 'cupy' needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("allow_simulator", ["0", "1"])
def test_numba_without_gpu_is_a_clear_error(allow_simulator):
    """Even with MINISD_ALLOW_SIMULATOR=1: the simulator cannot finish the full model, so it is not offered."""
    env = {"NUMBA_ENABLE_CUDASIM": "1", "MINISD_ALLOW_SIMULATOR": allow_simulator}
    for command in ("sample", "eval"):
        result = minisd_cli(command, "--backend", "numba", env=env)
        assert result.returncode == 2
        assert (
            "backend 'numba' needs a CUDA GPU to run minisd" in result.stderr
            and "Traceback" not in result.stderr
        )
        assert "use backend 'numpy'" in result.stderr and "MINISD_ALLOW_SIMULATOR" not in result.stderr


def test_missing_weights_is_a_clear_error(tmp_path):
    result = minisd_cli("sample", "--weights", tmp_path / "none.safetensors", "--backend", "numpy")
    assert result.returncode == 1
    assert "no minisd weights" in result.stderr and "Traceback" not in result.stderr


def test_bad_numbers_are_usage_errors():
    result = minisd_cli("sample", "--steps", 0)
    assert result.returncode == 2 and "--steps must be at least 1" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--guidance", -1], "--guidance must be a number from 0 to 100, got -1"),
        (["--guidance", "nan"], "--guidance must be a number from 0 to 100"),
        (["--guidance", "1e39"], "--guidance must be a number from 0 to 100, got 1e+39"),
        (["--out", "no_such_folder/grid.png"], "the folder no_such_folder does not exist"),
        (["--out", "grid.jpg"], "--out must name a .png file"),
        (["--steps", 1001], "--steps must be at most 1000, the timesteps this model was trained on"),
        (["--steps", 5000], "--steps must be at most 1000"),
        (["--scale", 100000], "--scale must be at most 16, got 100000"),
        (["--scale", 0], "--scale must be at least 1"),
        (["--num-images", 0], "--num-images must be at least 1"),
        (
            ["--num-images", 1000000000000],
            "--num-images must be at most 1024 with 1 prompt (1024 images a run",
        ),
        (
            ["--num-images", 600, "--prompt", P1, "--prompt", P2],
            "--num-images must be at most 512 with 2 prompts",
        ),
        (
            ["--num-images", 200, "--scale", 16],
            "the grid would be 211232 x 1104 pixels, more than the 89 million",  # 64x64 images
        ),
        (["--prompt", "red circle"], "prompt 'red circle': word 1 is 'red', but 'a' goes there"),
        (
            ["--prompt", "a red circle on a blue background"],  # the old grammar: no size, no place
            "prompt 'a red circle on a blue background': word 2 is 'red', but a size goes there: small, big",
        ),
        (
            ["--prompt", "a big red circle on a blue background"],
            "word 6 is 'a', but a place or a relation goes there: on the left, on the right",  # "on" fits
        ),
        (
            ["--prompt", "a big red circle in the middle on a blue background"],
            "word 7 is 'middle', but a place or a relation goes there: in the centre",
        ),
        (
            ["--prompt", "a big red circle on the left on a blue background in a field"],
            "word 12 'in' comes after the end; nothing may follow 'background'",
        ),
        (
            ["--prompt", "a big red circle left of a small red circle on a blue background"],
            "word 10 'circle' makes the second object a red circle like the first; allowed there: another "
            "shape (square, triangle, star, heart), or give it another colour",
        ),
        (
            ["--prompt", "a small red star above a big"],
            "prompt 'a small red star above a big' ends after word 7 'big', but a colour goes there",
        ),
        (
            ["--prompt", ""],
            "prompt '' has no words; write a SIZE COLOR SHAPE PLACE on a COLOR background, or",
        ),
        (
            ["--prompt", "a big red circle on the left on a red background"],
            "word 3 'red' is the background's colour (word 10), so the object would not show",
        ),
        (["--weights", ""], "--weights is empty: give a .safetensors file, or leave --weights out"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_work(weights_file, monkeypatch, capsys, args, message):
    """In this process, with the weights load replaced by a failure: every check comes before it."""
    import minisd
    from minisd.__main__ import main

    def too_late(*args, **kwargs):
        raise AssertionError("the model was loaded before every option was checked")

    monkeypatch.setattr(minisd.MiniSDPipeline, "from_pretrained", too_late)
    argv = ["sample", "--weights", weights_file, "--backend", "numpy", *args]
    if "--weights" in args:
        argv = ["sample", "--backend", "numpy", *args]
    with pytest.raises(SystemExit) as exit_:
        main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert message in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (REPO / "no_such_folder").exists(), "a mistyped --out folder must not be created"


def test_unwritable_out_is_reported_before_sampling(weights_file, tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    elif sys.platform.startswith("linux"):
        folder = Path("/proc")  # root writes through permission bits, but nobody creates files in /proc
    else:
        pytest.skip("needs a folder this user cannot write to")
    result = minisd_cli(
        "sample", "--weights", weights_file, "--backend", "numpy", "--out", folder / "grid.png"
    )
    assert result.returncode == 2, result.stderr
    assert f"--out {folder / 'grid.png'}: cannot create files in {folder}" in result.stderr
    assert "denoising" not in result.stderr, "refused before sampling"


def test_sample_help_shows_the_prompt_grammar():
    result = minisd_cli("sample", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "a SIZE COLOR SHAPE PLACE on a COLOR background, or a SIZE COLOR SHAPE RELATION a SIZE" in text
    assert "PLACE is on the left, on the right, at the top, at the bottom or in the centre" in text
    assert "RELATION is left of, right of, above or below" in text
    # the words allowed for COLOR and SHAPE too (as before the scenes), and the one rule on colours
    assert all(word in text for word in [*COLORS, *SHAPES, *SIZES]) and "trailing full stop" in text
    assert "the background's colour" in text, "and the rule on colours"


def _broken(weights_file, tmp_path, how):
    """A copy of the weights, broken in one way; its .sha256 is rewritten where the checksum should pass."""
    path = tmp_path / "broken.safetensors"
    data = bytearray(Path(weights_file).read_bytes())
    if how == "corrupt":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)
        weights.checksum_path(path).write_text(weights.checksum_path(weights_file).read_text())
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
        weights.checksum_path(path).write_text(f"{weights.sha256_of(path)}  {path.name}\n")
    else:  # mismatched: a valid file of a model with other shapes
        torch.manual_seed(0)
        model = MiniSD(default_config())
        state = model.state_dict()
        state["unet.conv_in.weight"] = torch.zeros(16, 3, 3, 3)  # a pixel model's, on 3 channels
        weights.save(state, model.config, path)
    return path


@pytest.mark.parametrize(
    "how,message",
    [
        ("corrupt", "is corrupt or was changed"),
        ("truncated", "is not a readable safetensors file"),
        ("mismatched", "unet.conv_in.weight: (16, 3, 3, 3) instead of (64, 4, 3, 3)"),  # 4 latent channels
    ],
)
def test_broken_weights_are_one_line_errors(weights_file, tmp_path, how, message):
    path = _broken(weights_file, tmp_path, how)
    for command in (["sample", "--out", tmp_path / "x.png"], ["eval", "--num-images", 1]):
        result = minisd_cli(*command, "--weights", path, "--backend", "numpy", "--steps", 1)
        assert result.returncode == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "x.png").exists()


def test_untouched_lesson_stubs_are_an_error(weights_file, tmp_path, monkeypatch, capsys):
    """--kernels exercises where every op still raises NotImplementedError: said after the probe (seconds),
    before any sampling; no picture passed off as theirs."""
    import types

    from minisd.__main__ import main

    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise 11.1: linear")

    lesson = types.ModuleType("exercises.lesson11")
    lesson.linear = lesson.gelu = lesson.conv2d = stub
    monkeypatch.setitem(sys.modules, "exercises.lesson11", lesson)
    out = tmp_path / "x.png"
    argv = ["sample", "--kernels", "exercises", "--weights", weights_file, "--backend", "numpy"]
    with pytest.raises(SystemExit) as exit_:
        main([*map(str, argv), "--steps", "2", "--num-images", "1", "--size", "16", "--out", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "exercises/lesson11.py implements none of minisd's ops yet" in err
    assert not out.exists()


@pytest.mark.skipif(mode.ON_GPU, reason="checks the no-GPU message")
def test_lesson_kernels_without_a_gpu_say_the_cost_first(weights_file):
    """Without a GPU a full-size run on a lesson's Numba kernels takes hours: say so before any work, and
    offer the small size that finishes here."""
    result = minisd_cli("sample", "--kernels", "solutions")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "a full 64x64 sample takes hours and needs a GPU" in result.stderr
    assert "python -m minisd sample --kernels solutions --size 16 --steps 1" in result.stderr
    args = ["--kernels", "solutions", "--size", "24", "--backend", "numpy", "--weights", weights_file]
    result = minisd_cli("sample", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--size: height must be a multiple of 16 (the UNet halves the latents 2x" in result.stderr


def test_eval_and_bench_options_are_checked():
    result = minisd_cli("eval", "--num-images", 0)
    assert result.returncode == 2 and "--num-images must be at least 1" in result.stderr
    result = minisd_cli("eval", "--guidance", -1)
    assert result.returncode == 2 and "--guidance must be a number from 0 to 100, got -1" in result.stderr
    result = minisd_cli("eval", "--num-images", 1000000000000)
    assert result.returncode == 2 and "--num-images must be at most 10000" in result.stderr
    result = minisd_cli("eval", "--steps", 5000)
    assert result.returncode == 2 and "--steps must be at most 1000" in result.stderr
    result = minisd_cli("eval", "--help")
    assert result.returncode == 0 and "`" not in result.stdout and "%%" not in result.stdout
    result = minisd_cli("bench", "--steps", 3, "--numpy-steps", 5)
    assert result.returncode == 2 and "--numpy-steps must be between 1 and --steps (3)" in result.stderr
    for command in ("eval", "bench"):
        result = minisd_cli(command, "--weights", "none.safetensors")
        assert result.returncode == 1 and "error: no minisd weights at none.safetensors" in result.stderr


@pytest.mark.skipif(mode.ON_GPU, reason="checks the no-GPU message")
def test_gpu_only_options_fail_clearly_without_a_gpu():
    result = minisd_cli("eval", "--backend", "cupy")
    assert result.returncode == 2 and "backend 'cupy' needs a CUDA GPU" in result.stderr
    result = minisd_cli("bench", "--only", "minisd-cupy-graphs-bf16")
    assert (
        result.returncode == 1 and "cannot run minisd-cupy-graphs-bf16 here (no GPU found)" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_info():
    result = minisd_cli("info")
    assert result.returncode == 0, result.stderr
    assert "mode:" in result.stdout and "backend:" in result.stdout


def test_help_lists_the_commands():
    result = minisd_cli("--help")
    assert result.returncode == 0
    assert "{sample,info,profile,train,train-vae,eval,bench,export}" in result.stdout


def test_bench_runs_what_this_machine_has(weights_file, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--batches", 1, "--steps", 4, "--numpy-steps", 2, "--only", "minisd-numpy"]
    result = minisd_cli("bench", *args, "--weights", weights_file, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "FAILED" not in result.stdout, result.stdout
    report = json.loads(out.read_text())
    numpy_run = report["results"]["minisd-numpy"]["1"]
    assert numpy_run["seconds"] > 0 and numpy_run["timed_steps"] == 2
    assert "| minisd, numpy on the CPU (fp32) |" in result.stdout and "extrapolated to 4" in result.stdout
