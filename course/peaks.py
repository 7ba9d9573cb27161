"""The ceilings that "% of peak" is measured against: this GPU's copy bandwidth and fp32 FLOP/s, measured once.

Why measured, not the datasheet: no kernel reaches a datasheet number. An H100's HBM3 is sold as 3.35 TB/s,
but the best device-to-device copy moves ~3.0 TB/s (DRAM refresh, read/write turnarounds); its fp32 is sold as
67 TFLOP/s at boost clock, but cuBLAS sustains ~50. Against the datasheet, "90 % of peak" would be out of
reach; against what the machine demonstrably does, it means "nothing left to win". And a number typed in for
one GPU is wrong on the next (an H200's HBM3e is sold as 4.8 TB/s), so each ceiling is measured on the GPU in
use::

    from course import peaks

    bw = peaks.bandwidth()       # a Ceiling: bw.value in B/s, str(bw) names the GPU and how it was obtained
    print(bw.of(achieved_bytes_per_s))   # "87 % of 3.02 TB/s (device-to-device copy, measured on NVIDIA ...)"

* ``bandwidth()``: a large device-to-device memcpy, counting the bytes read plus the bytes written.
* ``flops()``: a large fp32 GEMM through cuBLAS (torch.matmul with TF32 off, or CuPy), 2·n³ FLOP.

Each is measured the first time it is asked for in a process (well under a second) and then remembered. The
simulator has no GPU to measure: there both return the course's H100 reference numbers, labelled as such.
"""

import functools
import os
from dataclasses import dataclass

import numpy as np

import minisd.mode as mode
from course.timing import time_gpu

REFERENCE_GPU = "NVIDIA H100 80GB HBM3"  # the course's reference GPU: its numbers stand in on the simulator
REFERENCE_BANDWIDTH = 3.0e12  # B/s, device-to-device copy (read + write)
REFERENCE_FLOPS = 52e12  # FLOP/s, fp32 cuBLAS GEMM without TF32
COPY_BYTES = 1 << 28  # 256 MiB per buffer: far larger than any L2, so the copy streams from DRAM
GEMM_N = 8192  # 1.1 TFLOP per product: long enough that the launch does not count


@dataclass(frozen=True)
class Ceiling:
    value: float  # B/s or FLOP/s
    unit: str  # "B/s" or "FLOP/s"
    what: str  # how it is (or was) measured
    device: str  # the GPU the number belongs to
    measured: bool  # False: a reference number, not this machine's

    @property
    def origin(self):
        if self.measured:
            return f"measured on {self.device}"
        return f"{self.device} reference number: the simulator has no GPU to measure"

    def __str__(self):
        return f"{self.value / 1e12:.3g} T{self.unit} ({self.what}, {self.origin})"

    def percent(self, achieved):
        """``achieved`` (same unit) as a percentage of this ceiling."""
        return 100.0 * achieved / self.value

    def of(self, achieved):
        """'87 % of 3.02 TB/s (device-to-device copy, measured on NVIDIA ...)'."""
        return f"{self.percent(achieved):.0f} % of {self}"


@functools.cache
def bandwidth():
    """The copy ceiling in B/s: what a large device-to-device memcpy reads plus writes per second."""
    what = "device-to-device copy"
    if not mode.ON_GPU:
        return Ceiling(REFERENCE_BANDWIDTH, "B/s", what, REFERENCE_GPU, measured=False)
    from minisd.kernel_backend import cuda

    src = cuda.device_array(COPY_BYTES // 4, np.float32)  # contents do not matter to a copy
    dst = cuda.device_array_like(src)
    ms = time_gpu(lambda: dst.copy_to_device(src), warmup=3, repeat=20)
    return Ceiling(2 * src.nbytes / (ms * 1e-3), "B/s", what, mode.gpu_name(), measured=True)


@functools.cache
def flops():
    """The fp32 ceiling in FLOP/s: a large cuBLAS SGEMM (no TF32 tensor cores, which round to 10 bits)."""
    if not mode.ON_GPU:
        what = "fp32 GEMM, cuBLAS, TF32 off"
        return Ceiling(REFERENCE_FLOPS, "FLOP/s", what, REFERENCE_GPU, measured=False)
    matmul, what = _gemm()
    ms = time_gpu(matmul, warmup=2, repeat=5)
    return Ceiling(2 * GEMM_N**3 / (ms * 1e-3), "FLOP/s", what, mode.gpu_name(), measured=True)


def _gemm():
    """A no-argument fp32 GEMM of GEMM_N³ on the GPU, and its description."""
    import torch

    if torch.cuda.is_available():
        a, b = torch.randn(GEMM_N, GEMM_N, device="cuda"), torch.randn(GEMM_N, GEMM_N, device="cuda")
        c = torch.empty_like(a)

        def matmul():
            allowed = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                torch.matmul(a, b, out=c)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = allowed

        return matmul, "fp32 GEMM, cuBLAS via torch, TF32 off"
    if mode.has_cupy() and os.environ.get("CUPY_TF32") != "1":  # CuPy uses TF32 only when CUPY_TF32=1
        import cupy as cp

        a = cp.random.standard_normal((GEMM_N, GEMM_N), dtype=cp.float32)
        b = cp.random.standard_normal((GEMM_N, GEMM_N), dtype=cp.float32)
        c = cp.empty_like(a)
        return (lambda: cp.matmul(a, b, out=c)), "fp32 GEMM, cuBLAS via CuPy, TF32 off"
    raise RuntimeError(
        "measuring the fp32 ceiling needs torch built with CUDA, or CuPy without CUPY_TF32=1: "
        "pip install -e '.[cuda13]' (or '.[cuda12]')"
    )
