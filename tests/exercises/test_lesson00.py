"""Graded tests for lesson 00 (why GPUs). Oracles: torch float64 and counts taken from real numpy arrays."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson00")
rng = grading.rng


def _ragged_n():
    return int(rng.integers(200, 600)) | 1  # odd, so never a multiple of the (even) block size


# 00.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "00.1",
    hints=(
        "One thread per element: each thread works out which element is its own and writes only that one.",
        "cuda.grid(1) is the thread's element; the last block runs past the end of out, so only threads with "
        "an index below out.size may write.",
        "i = cuda.grid(1); if i < out.size: out[i] = value",
    ),
)
@pytest.mark.parametrize("threads", [128, 32])
def test_fill_every_element_once(threads):
    n = _ragged_n()
    value = float(rng.normal())
    blocks = math.ceil(n / threads) + 1  # one whole block more than needed: it must do nothing
    run = grading.launch(ex.fill_kernel, blocks, threads, Out(n), value)
    assert_close(run.out, np.full(n, value, dtype=np.float32), what="fill_kernel output")
    run.budget(writes={"out": 1})  # one element per thread: a loop in one thread is not a GPU kernel


# 00.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "00.2",
    hints=(
        "The same shape as fill_kernel: one element per thread, guarded; this time it reads x too.",
        "i = cuda.grid(1); the guard i < out.size protects the read of x[i] as well as the write.",
        "i = cuda.grid(1); if i < out.size: out[i] = alpha * x[i]",
    ),
)
def test_scale_matches_torch():
    n = _ragged_n()
    x = rng.standard_normal(n).astype(np.float32)
    alpha = float(rng.uniform(-3, 3))
    run = grading.launch(ex.scale_kernel, math.ceil(n / 64), 64, x, alpha, Out(n))
    ref = (torch.from_numpy(x).double() * alpha).numpy()
    assert_close(run.out, ref, rtol=1e-6, atol=1e-6, what="scale_kernel output")
    run.budget(reads={"x": 1}, writes={"out": 1})


# 00.3 -------------------------------------------------------------------------------------------------
def _floor_oracle(bytes_moved, flops, bandwidth, peak):
    """Compare intensity with the ridge point (FLOP/byte) instead of comparing two times."""
    compute_bound = Fraction(flops) / Fraction(bytes_moved) > Fraction(peak) / Fraction(bandwidth)
    seconds = flops / peak if compute_bound else bytes_moved / bandwidth
    return seconds * 1000, "compute" if compute_bound else "memory"


FLOOR_HINTS = (
    "Memory and arithmetic run at the same time: the kernel takes as long as the slower of the two.",
    "Time to move the bytes is bytes / bandwidth, time for the FLOPs is flops / peak_flops; the larger one is "
    "the floor and names the bound (in ms: times 1000).",
    "ms = 1000 * max(bytes_moved / peak_bandwidth, flops / peak_flops); bound = 'compute' if the FLOP term is "
    "larger, else 'memory'.",
)


@pytest.mark.exercise("00.3", hints=FLOOR_HINTS)
def test_time_floor_on_known_kernels():
    ms, bound = ex.time_floor_ms(3 * 4 * 2**24, 2 * 2**24, 3.0e12, 52e12)  # saxpy, 16 M floats, H100
    assert bound == "memory", f"saxpy is memory-bound, got {bound!r}"
    assert ms == pytest.approx(0.0671, rel=1e-3), f"saxpy on 2**24 floats: expected 0.0671 ms, got {ms}"
    ms, bound = ex.time_floor_ms(3 * 4 * 4096**2, 2 * 4096**3, 3.0e12, 52e12)  # 4096^3 fp32 GEMM
    assert bound == "compute", f"a 4096^3 GEMM is compute-bound, got {bound!r}"
    assert ms == pytest.approx(2.643, rel=1e-3), f"4096^3 GEMM: expected 2.643 ms, got {ms}"


@pytest.mark.exercise("00.3", hints=FLOOR_HINTS)
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


@pytest.mark.exercise(
    "00.3",
    hints=(
        "Bad input gets a clear error before any arithmetic.",
        "Check each argument first (sizes >= 0, peaks > 0) and raise ValueError with the argument's name.",
        "if bytes_moved < 0: raise ValueError(f'bytes_moved must be >= 0, got {bytes_moved}') (and so on)",
    ),
)
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
    hints=(
        "Count the least traffic possible: every input read once, every output written once.",
        "saxpy reads x and y and writes out (3 arrays of n items); a GEMM reads A (m*k) and B (k*n) and writes "
        "C (m*n); a multiply-add is 2 FLOPs.",
        "saxpy: (3 * n * itemsize, 2 * n); gemm: (itemsize * (m*k + k*n + m*n), 2 * m * n * k)",
    ),
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


@pytest.mark.exercise(
    "00.4",
    hints=(
        "Arithmetic intensity is work per byte of traffic.",
        "intensity = flops / bytes_moved; refuse bytes_moved <= 0 and negative sizes with ValueError naming them.",
        "saxpy in fp32: 2 FLOPs per 12 bytes = 1/6; return flops / bytes_moved after the checks.",
    ),
)
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
    "00.5",
    hints=(
        "Little's law: to keep memory busy, enough requests must be in flight to cover the latency.",
        "bytes in flight = bandwidth * latency; each thread has bytes_per_thread in flight, so round the "
        "number of threads up.",
        "bytes_in_flight = bandwidth * latency_s; threads_needed = math.ceil(bytes_in_flight / bytes_per_thread)",
    ),
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
