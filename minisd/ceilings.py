"""The two roofs of a roofline, measured on this machine: how fast memory streams, how fast a matrix product runs.

    roofs = ceilings.measure("cupy")   # "numpy": the host CPU's, with one BLAS thread, as minisd's numpy path
    roofs.bandwidth                    # B/s: a large copy, bytes read + bytes written
    roofs.matmul["float16"]            # FLOP/s: a large matrix product in that precision
    roofs.ridge("float16")             # FLOP/byte where the two roofs meet

Measured, not the datasheet's: no kernel reaches a datasheet number (an H200's HBM3e is sold as 4.8 TB/s, a
copy moves ~4.3), so "% of the roof" against the datasheet would hide how close a kernel really is.
(course.peaks does the same for the lessons' fp32 kernels.) ``load`` reads them back from the JSON a profile
wrote (``to_json``), so a later profile on the same machine can reuse them.
"""

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field

import numpy as np

import minisd.mode as mode
from minisd.ops.harness import time_cpu, time_gpu

COPY_BYTES = 1 << 27  # 128 MiB a buffer: larger than any L2 (and most L3s), so the copy streams from DRAM
GPU_N = 8192  # matrix side on the GPU: 1.1 TFLOP a product, long enough that the launch does not count
CPU_N = 1024  # on the CPU: 2.1 GFLOP, ~0.05 s on one core
DTYPES = ("float32", "float16", "bfloat16")


class CannotMeasure(RuntimeError):
    """This machine lacks what a measurement needs (a GPU, a library with a matrix product)."""


@dataclass(frozen=True)
class Ceilings:
    device: str
    bandwidth: float  # B/s
    matmul: dict  # dtype name -> FLOP/s
    how: dict = field(default_factory=dict)  # "bandwidth" or a dtype name -> how it was measured

    def compute(self, dtype):
        """(FLOP/s, dtype) of the matrix roof for ``dtype``: float32's when that precision was not measured."""
        return (self.matmul[dtype], dtype) if dtype in self.matmul else (self.matmul["float32"], "float32")

    def ridge(self, dtype):
        """The arithmetic intensity (FLOP/byte) above which an op can be compute-bound rather than memory-bound."""
        return self.compute(dtype)[0] / self.bandwidth

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, data, source="the ceilings"):
        """From ``to_json``'s dict, or a whole profile JSON holding one under "ceilings"; ValueError otherwise."""
        data = data.get("ceilings", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not {"device", "bandwidth", "matmul"} <= data.keys():
            raise ValueError(f"{source} must hold device, bandwidth and matmul (as --json writes them)")
        matmul = data["matmul"]
        if not isinstance(matmul, dict) or "float32" not in matmul:
            raise ValueError(f"{source}: matmul must map dtypes to FLOP/s, float32 at least")
        for name, value in [
            ("bandwidth", data["bandwidth"]),
            *((f"matmul {k}", v) for k, v in matmul.items()),
        ]:
            if not _positive(value):
                raise ValueError(f"{source}: {name} must be a positive number, got {value!r}")
        return cls(str(data["device"]), float(data["bandwidth"]), dict(matmul), dict(data.get("how", {})))


def _positive(value):
    return type(value) in (int, float) and math.isfinite(value) and value > 0  # JSON's numbers, not true


def load(path):
    """The ceilings in a JSON file (a profile's or a ceilings file); ValueError naming the problem."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg}, line {err.lineno})") from None
    return Ceilings.from_json(data, str(path))


def measure(backend):
    """The roofs of the processor ``backend`` computes on: the host CPU for "numpy", else the GPU."""
    return _host() if backend == "numpy" else _gpu()


def _host():
    from minisd.pipeline import host_threads

    src = np.ones(COPY_BYTES // 4, np.float32)  # written once: a first touch would time page faults
    dst = np.zeros_like(src)
    seconds = time_cpu(lambda: np.copyto(dst, src), repeat=5) * 1e-3
    a = np.random.default_rng(0).standard_normal((2, CPU_N, CPU_N), dtype=np.float32)
    c = np.empty_like(a[0])
    with host_threads("numpy"):  # one BLAS thread, as minisd's numpy path samples
        product = time_cpu(lambda: np.matmul(a[0], a[1], out=c), repeat=3) * 1e-3
    return Ceilings(
        host_name(),
        2 * src.nbytes / seconds,
        {"float32": 2 * CPU_N**3 / product},
        {"bandwidth": "np.copyto of 128 MiB", "float32": f"np.matmul {CPU_N}^3, one BLAS thread"},
    )


def host_name():
    """The CPU's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _gpu():
    if not mode.ON_GPU:
        raise CannotMeasure("measuring the GPU's ceilings needs a GPU (the simulator has none)")
    from minisd.kernel_backend import cuda

    src = cuda.device_array(COPY_BYTES // 4, np.float32)  # contents do not matter to a copy
    dst = cuda.device_array_like(src)
    seconds = time_gpu(lambda: dst.copy_to_device(src), warmup=3, repeat=20) * 1e-3
    how = {"bandwidth": "device-to-device copy of 128 MiB"}
    matmul = {}
    for dtype in DTYPES:
        product = _gpu_matmul(dtype)
        if product is not None:
            run, how[dtype] = product
            matmul[dtype] = 2 * GPU_N**3 / (time_gpu(run, warmup=2, repeat=5) * 1e-3)
    if "float32" not in matmul:
        raise CannotMeasure(
            "measuring the GPU's matmul roof needs torch built with CUDA or CuPy: pip install -e '.[cuda13]' "
            "(or '.[cuda12]'), or pass --ceilings with roofs recorded on this GPU"
        )
    return Ceilings(mode.gpu_name(), 2 * src.nbytes / seconds, matmul, how)


def _gpu_matmul(dtype):
    """(a no-argument GPU_N³ product in ``dtype``, how it runs), or None where nothing here has that dtype.
    torch where it has CUDA (cuBLAS, float32 without TF32), else CuPy (no bfloat16: numpy has no such dtype)."""
    try:
        import torch

        on_torch = torch.cuda.is_available()
    except ImportError:
        on_torch = False
    if on_torch:
        a, b = (torch.randn(GPU_N, GPU_N, device="cuda", dtype=getattr(torch, dtype)) for _ in range(2))
        c = torch.empty_like(a)

        def run():
            allowed = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                torch.matmul(a, b, out=c)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = allowed

        return run, f"torch.matmul {GPU_N}^3 (cuBLAS{', TF32 off' if dtype == 'float32' else ''})"
    if dtype == "bfloat16" or not mode.has_cupy():
        return None
    import cupy as cp

    a, b = (cp.random.standard_normal((GPU_N, GPU_N), dtype=cp.float32).astype(dtype) for _ in range(2))
    c = cp.empty_like(a)
    tf32 = dtype == "float32" and os.environ.get("CUPY_TF32") == "1"  # CuPy's switch for TF32 tensor cores
    return (lambda: cp.matmul(a, b, out=c)), f"cupy.matmul {GPU_N}^3 (cuBLAS{', TF32' if tf32 else ''})"
