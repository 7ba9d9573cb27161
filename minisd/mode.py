"""Decide once, before Numba is imported, where kernels run.

Three modes, one per machine:

* ``gpu``       a CUDA GPU answers: numba.cuda kernels (and CuPy kernels, if CuPy is installed) run on it.
* ``simulator`` no GPU: Numba's CUDA simulator runs each CUDA thread as a Python thread. Same code,
                right answers, about 0.1 ms per thread, so keep sizes to a few thousand threads.
* ``cpu``       minisd's numpy path (MINISD_BACKEND=numpy); the lessons still use the simulator.

The simulator must be chosen before ``numba.cuda`` is imported, so import this module (or ``minisd``,
or ``course``) first. ``NUMBA_ENABLE_CUDASIM=1`` forces the simulator; ``=0`` insists on a GPU.

Which Numba compiles the kernels is decided here too: ``MINISD_NUMBA_CUDA=mlir`` picks numba-cuda-mlir,
numba-cuda's successor, on a GPU (it has no simulator); the default is numba-cuda. minisd.kernel_backend
imports ``cuda`` from the one chosen.
"""

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import platform
import sys

BACKENDS = ("numpy", "numba", "cupy")


def _cuda_device_count():
    """Ask the driver directly (no Numba import) how many GPUs there are; 0 when there is no driver."""
    names = ["libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda") or "", "nvcuda.dll"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def _decide():
    forced = os.environ.get("NUMBA_ENABLE_CUDASIM")
    if forced == "1":
        return "simulator"
    if _cuda_device_count() > 0:
        return "gpu"
    if forced == "0":
        raise RuntimeError("NUMBA_ENABLE_CUDASIM=0 asks for a real GPU, but no CUDA driver or GPU answered.")
    if "numba.cuda" in sys.modules:
        raise RuntimeError(
            "No GPU found and numba.cuda was imported before minisd.mode could switch on the simulator: "
            "import minisd (or set NUMBA_ENABLE_CUDASIM=1) before numba.cuda."
        )
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    return "simulator"


MODE = _decide()
ON_GPU = MODE == "gpu"
SIMULATOR = MODE == "simulator"

NUMBA_CUDAS = ("numba-cuda", "mlir")


def _numba_cuda():
    chosen = os.environ.get("MINISD_NUMBA_CUDA") or "numba-cuda"
    if chosen not in NUMBA_CUDAS:
        raise ValueError(f"unknown MINISD_NUMBA_CUDA={chosen!r}: choose numba-cuda (the default) or mlir")
    if chosen == "mlir" and SIMULATOR:
        raise RuntimeError(
            "MINISD_NUMBA_CUDA=mlir needs a CUDA GPU: numba-cuda-mlir has no simulator. Unset MINISD_NUMBA_CUDA "
            "to run the kernels in numba-cuda's simulator."
        )
    if chosen == "mlir" and importlib.util.find_spec("numba_cuda_mlir") is None:
        raise RuntimeError(
            "MINISD_NUMBA_CUDA=mlir asks for numba-cuda-mlir, which is not installed: pip install "
            "'numba-cuda-mlir[cu13]' (or [cu12]), or unset MINISD_NUMBA_CUDA."
        )
    return chosen


NUMBA_CUDA = _numba_cuda()  # which Numba compiles the kernels: "numba-cuda" or "mlir" (numba-cuda-mlir)


def has_cupy():
    """CuPy is usable: installed, importable and on a GPU (it has no simulator)."""
    if not ON_GPU:
        return False
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def default_backend():
    """minisd's backend: MINISD_BACKEND if set, else the fastest one this machine has."""
    chosen = os.environ.get("MINISD_BACKEND")
    if chosen:
        check_backend(chosen)
        return chosen
    if has_cupy():
        return "cupy"
    return "numba" if ON_GPU else "numpy"


def check_backend(backend, whole_model=False):
    """Raise a clear error when ``backend`` is unknown or cannot run on this machine.

    ``whole_model``: the caller runs the full model (sampling, eval), which the CUDA simulator cannot finish,
    so the simulator is no way out for it: a step's 3x3 convolutions alone compute 10^6 outputs, at 1-3 ms
    each there (measured on 2 CPU cores). Ops and lesson-sized shapes may use it (MINISD_ALLOW_SIMULATOR=1).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "cupy" and not has_cupy():
        why = "no GPU was found" if not ON_GPU else "CuPy is not installed (pip install -e '.[cuda13]')"
        raise RuntimeError(f"backend 'cupy' needs a CUDA GPU and CuPy, but {why}.")
    if backend == "numba" and not ON_GPU and whole_model:
        raise RuntimeError(
            "backend 'numba' needs a CUDA GPU to run minisd and none was found: use backend 'numpy' (the "
            "same model and pictures, on the CPU). Numba's CUDA simulator runs one Python thread per CUDA "
            "thread: about an hour for one sampling step, so it is for the lessons' small shapes only."
        )
    if backend == "numba" and not ON_GPU and os.environ.get("MINISD_ALLOW_SIMULATOR") != "1":
        raise RuntimeError(
            "backend 'numba' needs a CUDA GPU and none was found. Use backend 'numpy', or, for small shapes "
            "(single ops, as the tests do), set MINISD_ALLOW_SIMULATOR=1 to run the Numba kernels in the "
            "(very slow) CUDA simulator."
        )


def pick(gpu, simulator):
    """Choose a size by mode: ``n = pick(gpu=1 << 24, simulator=1000)``."""
    return gpu if ON_GPU else simulator


def gpu_name():
    if not ON_GPU:
        return None
    from minisd.kernel_backend import cuda

    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else name


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe():
    """One line for notebook banners: which mode, on what."""
    if ON_GPU:
        return f"mode: gpu ({gpu_name()}) — kernels run on the GPU at full size"
    return "mode: simulator (no GPU) — Numba's CUDA simulator runs every thread in Python; sizes are small"


def describe_backend(backend):
    """Where a minisd backend runs, for the first line a command prints."""
    if backend == "numpy":
        return "numpy on the CPU" + ("" if ON_GPU else " (no GPU found)")
    where = f"the GPU ({gpu_name()})" if ON_GPU else "Numba's CUDA simulator (no GPU found)"
    return f"{backend} kernels on {where}"


def banner():
    print(describe())


NO_GPU_ADVICE = """
No GPU: the lessons run in Numba's CUDA simulator and minisd samples with numpy, which is enough for the
whole course at small sizes. On a machine with an NVIDIA GPU and driver, install the GPU extras:
pip install -e '.[cuda13]' (CUDA 13 driver) or pip install -e '.[cuda12]' (CUDA 12 driver)."""

NO_CUPY_ADVICE = """
CuPy is missing: pip install -e '.[cuda13]' (or '.[cuda12]') for the CUDA C++ lessons and minisd's fastest
backend."""


def _numba_cuda_line():
    if NUMBA_CUDA == "mlir":
        return f"numba-cuda-mlir {_version('numba-cuda-mlir')} (MINISD_NUMBA_CUDA=mlir)"
    mlir = _version("numba-cuda-mlir")
    other = f"numba-cuda-mlir {mlir} is installed" if mlir else "numba-cuda-mlir is not installed"
    return f"numba-cuda (MINISD_NUMBA_CUDA=mlir switches to its successor; {other})"


def info():
    """The report printed by ``python -m minisd info``."""
    lines = [
        f"mode:         {MODE}",
        f"backend:      {default_backend()} (minisd's default; MINISD_BACKEND overrides)",
        f"kernels by:   {_numba_cuda_line()}",
    ]
    if ON_GPU:
        from minisd.kernel_backend import cuda

        dev = cuda.get_current_device()
        cc, sms = ".".join(map(str, dev.compute_capability)), dev.MULTIPROCESSOR_COUNT
        lines.append(f"gpu:          {gpu_name()} (compute capability {cc}, {sms} SM{'s' * (sms != 1)})")
    else:
        lines.append("gpu:          none found (no CUDA driver answered)")
    lines.append(f"python:       {platform.python_version()} on {platform.machine()}")
    for dist in ("numpy", "numba", "numba-cuda", "torch", "cupy-cuda12x", "cupy-cuda13x"):
        lines.append(f"{dist + ':':<14}{_version(dist) or 'not installed'}")
    lines.append(f"cupy usable:  {'yes' if has_cupy() else 'no'}")
    if not ON_GPU:
        lines.append(NO_GPU_ADVICE)
    elif not has_cupy():
        lines.append(NO_CUPY_ADVICE)
    else:
        lines.append("\nEverything is in place: GPU, Numba and CuPy.")
    return "\n".join(lines)
