"""minisd.mode: one place decides GPU or simulator, and `python -m minisd info` reports it."""

import os
import subprocess
import sys

import pytest

import minisd.mode as mode


def _python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=1800
    )


def test_forced_simulator_is_reported():
    proc = _python("import minisd.mode as m; print(m.MODE); m.banner()", NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "simulator"
    assert "mode: simulator" in proc.stdout


@pytest.mark.skipif(mode.ON_GPU, reason="checks the automatic fallback on a machine without a GPU")
def test_no_gpu_switches_the_simulator_on_before_numba_cuda():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "import minisd, numpy; from numba import cuda; print(type(cuda.to_device(numpy.zeros(3))).__module__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert "simulator" in proc.stdout, proc.stdout


@pytest.mark.skipif(mode.ON_GPU, reason="needs a machine without a GPU")
def test_insisting_on_a_gpu_without_one_is_a_clear_error():
    proc = _python("import minisd.mode", NUMBA_ENABLE_CUDASIM="0")
    assert proc.returncode != 0
    assert "asks for a real GPU" in proc.stderr


def test_pick_follows_the_mode():
    assert mode.pick(gpu="big", simulator="small") == ("big" if mode.ON_GPU else "small")


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'cuda'.*numpy, numba, cupy"):
        mode.check_backend("cuda")


@pytest.mark.skipif(mode.ON_GPU, reason="needs a machine without a GPU")
def test_gpu_backends_without_gpu_say_why():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        mode.check_backend("cupy")
    with pytest.raises(RuntimeError, match="MINISD_ALLOW_SIMULATOR"):
        mode.check_backend("numba")


def test_default_backend_env_override(monkeypatch):
    monkeypatch.setenv("MINISD_BACKEND", "numpy")
    assert mode.default_backend() == "numpy"
    monkeypatch.setenv("MINISD_BACKEND", "tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        mode.default_backend()


def test_info_names_mode_versions_and_advice():
    text = mode.info()
    for word in ("mode:", "numba-cuda:", "numpy:", "torch:", "cupy usable:"):
        assert word in text
    if not mode.ON_GPU:
        assert "pip install -e '.[cuda13]'" in text
