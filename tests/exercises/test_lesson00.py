"""Graded tests for lesson 00 (why GPUs). Oracles: torch float64 and counts taken from real numpy arrays."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import minisd.mode  # noqa: F401  (before numba.cuda)
from course.grading import assert_close, load, poison

# isort: split
from numba import cuda

ex = load("lesson00")
rng = np.random.default_rng()
OUT = object()  # where the output goes in a kernel's argument list


def _padded(host, pad):
    """A device view of ``host`` inside a bigger NaN buffer, so stray accesses land in memory we can inspect."""
    inside = tuple(slice(0, s) for s in host.shape)
    padded = poison(tuple(s + pad for s in host.shape), host.dtype)
    padded[inside] = host
    buf = cuda.to_device(padded)
    return buf, buf[inside]


def launch(kernel, blocks, threads, n, *args):
    """Run ``kernel[blocks, threads](*args)`` with OUT replaced by a poisoned float32 output of n elements.

    Out-of-bounds accesses fail clearly: the simulator raises IndexError, and on a GPU a stray write lands in
    the NaN padding after the output, which is checked.
    """
    # room for every index the launch can produce, so a stray access stays inside a buffer
    pad = 8 + blocks * threads
    out_buf, out = _padded(poison(n), pad)
    device_args = [out if a is OUT else _padded(a, pad)[1] if isinstance(a, np.ndarray) else a for a in args]
    try:
        kernel[blocks, threads](*device_args)
        cuda.synchronize()
    except IndexError as exc:
        raise AssertionError(
            f"a thread read or wrote out of bounds ({exc}). Launch was {blocks} blocks x {threads} threads for "
            f"{n} elements: the threads past the end must do nothing — guard with `if i < out.size:`."
        ) from None
    host = out_buf.copy_to_host()
    if not np.isnan(host[n:]).all():
        raise AssertionError(
            f"a thread wrote past the end of out ({n} elements): guard with `if i < out.size:`."
        )
    return host[:n]


def _ragged_n():
    return int(rng.integers(200, 600)) | 1  # odd, so never a multiple of the (even) block size


# 00.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("00.1", hint="i = cuda.grid(1); if i < out.size: out[i] = value")
@pytest.mark.parametrize("threads", [128, 32])
def test_fill_every_element_once(threads):
    n = _ragged_n()
    value = float(rng.normal())
    blocks = math.ceil(n / threads) + 1  # one whole block more than needed: it must do nothing
    out = launch(ex.fill_kernel, blocks, threads, n, OUT, value)
    assert_close(out, np.full(n, value, dtype=np.float32), what="fill_kernel output")


# 00.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("00.2", hint="Same shape as fill_kernel: guard, then out[i] = alpha * x[i].")
def test_scale_matches_torch():
    n = _ragged_n()
    x = rng.standard_normal(n).astype(np.float32)
    alpha = float(rng.uniform(-3, 3))
    out = launch(ex.scale_kernel, math.ceil(n / 64), 64, n, x, alpha, OUT)
    ref = (torch.from_numpy(x).double() * alpha).numpy()
    assert_close(out, ref, rtol=1e-6, atol=1e-6, what="scale_kernel output")


# 00.3 -------------------------------------------------------------------------------------------------
def _floor_oracle(bytes_moved, flops, bandwidth, peak):
    """Compare intensity with the ridge point (FLOP/byte) instead of comparing two times."""
    compute_bound = Fraction(flops) / Fraction(bytes_moved) > Fraction(peak) / Fraction(bandwidth)
    seconds = flops / peak if compute_bound else bytes_moved / bandwidth
    return seconds * 1000, "compute" if compute_bound else "memory"


@pytest.mark.exercise(
    "00.3", hint="ms = 1000 * max(bytes / bandwidth, flops / peak_flops); the larger term names the bound."
)
def test_time_floor_on_known_kernels():
    ms, bound = ex.time_floor_ms(3 * 4 * 2**24, 2 * 2**24, 3.0e12, 52e12)  # saxpy, 16 M floats, H100
    assert bound == "memory", f"saxpy is memory-bound, got {bound!r}"
    assert ms == pytest.approx(0.0671, rel=1e-3), f"saxpy on 2**24 floats: expected 0.0671 ms, got {ms}"
    ms, bound = ex.time_floor_ms(3 * 4 * 4096**2, 2 * 4096**3, 3.0e12, 52e12)  # 4096^3 fp32 GEMM
    assert bound == "compute", f"a 4096^3 GEMM is compute-bound, got {bound!r}"
    assert ms == pytest.approx(2.643, rel=1e-3), f"4096^3 GEMM: expected 2.643 ms, got {ms}"


@pytest.mark.exercise(
    "00.3", hint="ms = 1000 * max(bytes / bandwidth, flops / peak_flops); the larger term names the bound."
)
def test_time_floor_random():
    for _ in range(200):
        args = [float(10 ** rng.uniform(3, 12)), float(10 ** rng.uniform(3, 13)), 10 ** rng.uniform(11, 13)]
        args.append(10 ** rng.uniform(12, 15))
        ms, bound = ex.time_floor_ms(*args)
        ref_ms, ref_bound = _floor_oracle(*args)
        assert bound == ref_bound, f"time_floor_ms{tuple(args)}: bound {bound!r}, expected {ref_bound!r}"
        assert ms == pytest.approx(ref_ms, rel=1e-9), (
            f"time_floor_ms{tuple(args)}: {ms} ms, expected {ref_ms}"
        )


@pytest.mark.exercise("00.3", hint="Check the arguments first and raise ValueError naming the bad one.")
@pytest.mark.parametrize(
    "args, name",
    [((-1, 10, 1e12, 1e12), "bytes_moved"), ((1, -10, 1e12, 1e12), "flops"), ((1, 10, 0, 1e12), "peak_bandwidth"),
     ((1, 10, 1e12, -5), "peak_flops")],
)  # fmt: skip
def test_time_floor_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ex.time_floor_ms(*args)


# 00.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "00.4",
    hint="saxpy touches 3 arrays of n items; GEMM touches A, B, C once each; 2 FLOPs per multiply-add.",
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_costs_match_real_arrays(dtype):
    n = _ragged_n()
    x, y, out = (np.empty(n, dtype) for _ in range(3))
    assert ex.saxpy_cost(n, np.dtype(dtype).itemsize) == (x.nbytes + y.nbytes + out.nbytes, n * 2)
    m, k, p = (int(v) for v in rng.integers(1, 300, size=3))
    a, b, c = np.empty((m, k), dtype), np.empty((k, p), dtype), np.empty((m, p), dtype)
    multiply_adds = math.prod([m, p, k])  # one per (row, column, k) triple
    assert ex.gemm_cost(m, p, k, np.dtype(dtype).itemsize) == (
        a.nbytes + b.nbytes + c.nbytes,
        2 * multiply_adds,
    )


@pytest.mark.exercise("00.4", hint="intensity = flops / bytes; saxpy in fp32 is 2 / 12 FLOP per byte.")
def test_intensities():
    assert ex.intensity(*ex.saxpy_cost(1000)) == pytest.approx(1 / 6)
    assert ex.intensity(*ex.gemm_cost(4096, 4096, 4096)) == pytest.approx(4096 / 6)
    assert ex.intensity(*ex.gemm_cost(4096, 4096, 4096, itemsize=2)) == pytest.approx(4096 / 3)
    with pytest.raises(ValueError, match="bytes_moved"):
        ex.intensity(0, 10)
    with pytest.raises(ValueError, match=r"\bn\b"):
        ex.saxpy_cost(-1)
    with pytest.raises(ValueError, match=r"\bk\b"):
        ex.gemm_cost(4, 4, -4)


# 00.5 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "00.5", hint="bytes in flight = bandwidth * latency; threads = ceil(bytes in flight / bytes per thread)."
)
def test_littles_law():
    assert ex.bytes_in_flight(3.0e12, 600e-9) == pytest.approx(1.8e6)
    assert ex.threads_needed(3.0e12, 600e-9, 4) == 450_000  # more than the 270 336 threads an H100 holds
    for _ in range(200):
        bandwidth, latency, per_thread = (
            10 ** rng.uniform(9, 13),
            10 ** rng.uniform(-8, -5),
            int(rng.integers(1, 65)),
        )
        exact = Fraction(bandwidth) * Fraction(latency) / per_thread
        if not 0.01 < exact % 1 < 0.99:
            continue  # too close to a whole number for floating point to agree on the rounding
        got = ex.threads_needed(bandwidth, latency, per_thread)
        assert got == math.ceil(exact), f"threads_needed({bandwidth}, {latency}, {per_thread}) = {got}"
        assert isinstance(got, int), f"threads_needed should return an int, got {type(got).__name__}"
    with pytest.raises(ValueError, match="latency_s"):
        ex.bytes_in_flight(1e12, 0)
    with pytest.raises(ValueError, match="bytes_per_thread"):
        ex.threads_needed(1e12, 1e-6, 0)
