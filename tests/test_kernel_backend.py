"""minisd.kernel_backend: every Numba kernel gets ``cuda`` from numba-cuda, or numba-cuda-mlir when asked."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minisd.mode as mode

ROOT = Path(__file__).resolve().parents[1]


def _import_backend(value):
    """Import minisd.kernel_backend in a fresh Python with MINISD_NUMBA_CUDA=value (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "MINISD_NUMBA_CUDA"}
    if value is not None:
        env["MINISD_NUMBA_CUDA"] = value
    code = "import numba, minisd.kernel_backend as k; print(k.cuda.__name__, k.float32 is numba.float32)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_default_is_numba_cuda():
    proc = _import_backend(None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numba.cuda", "True"]


def test_the_types_are_the_compilers():
    from minisd import kernel_backend

    for name in ("float32", "float64", "int32", "uint64"):
        assert getattr(kernel_backend, name) is getattr(kernel_backend.cuda, name), name


def test_unknown_choice_is_named():
    proc = _import_backend("fast")
    assert proc.returncode != 0
    assert "unknown MINISD_NUMBA_CUDA='fast': choose numba-cuda (the default) or mlir" in proc.stderr


@pytest.mark.skipif(mode.ON_GPU, reason="needs the simulator")
def test_mlir_in_the_simulator_is_a_clear_error():
    proc = _import_backend("mlir")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "MINISD_NUMBA_CUDA=mlir needs a CUDA GPU: numba-cuda-mlir has no simulator" in last, proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda_mlir") is not None, reason="numba-cuda-mlir is here")
def test_mlir_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mode, "SIMULATOR", False)  # as on a GPU: the next check is whether it is installed
    monkeypatch.setenv("MINISD_NUMBA_CUDA", "mlir")
    with pytest.raises(RuntimeError, match=r"numba-cuda-mlir, which is not installed: pip install"):
        mode._numba_cuda()


# Files that may import numba.cuda itself, and the imports they may use: numba-cuda's simulator (numba-cuda-mlir
# has none) and the tools that need the real numba-cuda. Everything else goes through minisd.kernel_backend.
ALLOWED = {
    "minisd/kernel_backend.py": ("from numba import cuda",),  # the seam itself
    "minisd/simulator.py": ("numba.cuda.simulator",),
    "course/warp.py": ("numba.cuda.simulator",),
    "course/grading.py": ("numba.cuda.simulator", "from numba.cuda import dispatcher"),
    "tests/test_ops.py": ("numba.cuda.simulator",),
    "tests/test_pipeline.py": ("numba.cuda.simulator",),
    "tests/test_mode.py": ("from numba import cuda",),  # that numba.cuda itself comes up as the simulator
    "benchmarks/compile_check.py": (
        "numba.cuda",
        "from numba import cuda",
    ),  # compiles with numba-cuda for a GPU it does not have
}
DIRECT = re.compile(
    r"from numba import [^\n\"]*\bcuda\b|import numba\.cuda\b|from numba\.cuda\b|numba\.cuda\.\w"
)
SKIP = (".venv", ".git", "build", "_build")


def _sources():
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if path.suffix not in (".py", ".ipynb") or any(part in SKIP for part in rel.parts):
            continue
        if rel.parts[0] == "benchmarks" and "notebooks" in rel.parts:  # GPU runs, kept as they ran
            continue
        yield rel.as_posix(), path


def test_no_file_imports_numba_cuda_past_the_seam():
    wrong = []
    for rel, path in _sources():
        if rel == "tests/test_kernel_backend.py":
            continue
        allowed = ALLOWED.get(rel, ())
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = DIRECT.search(line)
            if found and not any(a in line for a in allowed):
                wrong.append(f"{rel}:{n}: {line.strip()}")
    assert not wrong, "import cuda from minisd.kernel_backend instead:\n" + "\n".join(wrong)


def test_the_check_sees_a_direct_import():
    assert DIRECT.search("from numba import cuda, float32")
    assert DIRECT.search('    "from numba import cuda\\n",')  # a notebook's line
    assert DIRECT.search("import numba.cuda")
    assert not DIRECT.search("from numba import njit, prange")
    assert not DIRECT.search("imports minisd.mode before numba.cuda is imported here")
