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

from minisd import weights
from minisd.model import MiniSD, default_config
from minisd.text import VOCAB

REPO = Path(__file__).resolve().parents[1]


def minisd_cli(*args, env=None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("MINISD_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "minisd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    model = MiniSD(default_config())
    path = tmp_path_factory.mktemp("weights") / "minisd.safetensors"
    return weights.save(model.state_dict(), model.config, path, dtype="float16")


def test_sample_writes_a_captioned_grid(weights_file, tmp_path):
    out = tmp_path / "grid.png"
    prompts = ["a red star on a green background", "a blue heart on a white background"]
    args = ["sample", "--weights", weights_file, "--steps", 1, "--num-images", 3, "--out", out, "--scale", 2]
    result = minisd_cli(*args, "--prompt", prompts[0], "--prompt", prompts[1], "--backend", "numpy")
    assert result.returncode == 0, result.stderr
    assert "ms/step" in result.stdout and f"wrote {out}" in result.stdout
    assert "denoising" in result.stderr  # the tqdm bar
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 2 * 2 * 32 and image.shape[1] >= 3 * 2 * 32, image.shape  # 2 rows, 3 columns, x2
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "the grid should hold (noisy) pictures"


def test_unknown_word_exits_2_with_the_vocabulary():
    result = minisd_cli("sample", "--prompt", "a pink unicorn on a blue background")
    assert result.returncode == 2
    assert "unknown word 'pink'" in result.stderr
    assert all(word in result.stderr for word in VOCAB[1:])
    assert "Traceback" not in result.stderr


def test_bad_backend_is_a_clear_error():
    result = minisd_cli("sample", "--backend", "tpu")
    assert result.returncode == 2 and "invalid choice: 'tpu'" in result.stderr
    result = minisd_cli("sample", "--backend", "cupy")
    if result.returncode == 2:  # no GPU (or no CuPy) here
        assert "backend 'cupy' needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_numba_without_gpu_is_a_clear_error():
    result = minisd_cli("sample", "--backend", "numba", env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 2
    assert "backend 'numba' needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_missing_weights_is_a_clear_error(tmp_path):
    result = minisd_cli("sample", "--weights", tmp_path / "none.safetensors", "--backend", "numpy")
    assert result.returncode == 1
    assert "no minisd weights" in result.stderr and "Traceback" not in result.stderr


def test_bad_numbers_are_usage_errors():
    result = minisd_cli("sample", "--steps", 0)
    assert result.returncode == 2 and "--steps must be at least 1" in result.stderr


def test_info():
    result = minisd_cli("info")
    assert result.returncode == 0, result.stderr
    assert "mode:" in result.stdout and "backend:" in result.stdout


def test_help_lists_the_commands():
    result = minisd_cli("--help")
    assert result.returncode == 0
    assert "{sample,info,train,eval,bench}" in result.stdout


def test_bench_runs_what_this_machine_has(weights_file, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--batches", 1, "--steps", 4, "--numpy-steps", 2, "--only", "minisd-numpy"]
    result = minisd_cli("bench", *args, "--weights", weights_file, "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    numpy_run = report["results"]["minisd-numpy"]["1"]
    assert numpy_run["seconds"] > 0 and numpy_run["timed_steps"] == 2
    assert "| minisd, numpy on the CPU |" in result.stdout and "extrapolated to 4" in result.stdout
