"""Graded tests for lesson 07 (softmax, GroupNorm, LayerNorm). Oracles: torch float64 on fresh ragged inputs,
including values that overflow a naive softmax and data whose variance a naive E[x²] − E[x]² loses."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson07")
rng = grading.rng


def _t(a):
    return None if a is None else torch.from_numpy(a).double()


def _group_data(N, C, S, offset=0.0, spread=1.0):
    x = (offset + spread * rng.standard_normal((N, C, S))).astype(np.float32)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    return x, w, b


@pytest.mark.exercise(
    "07.1",
    hints=(
        "A warp per row: each lane keeps a running maximum and a running sum of exponentials over its columns "
        "(rescaling the sum whenever the maximum grows), then the lanes merge their pairs.",
        "Online softmax per lane: m_new = max(m, v); s = s * exp(m - m_new) + exp(v - m_new). Merge (m, s) with "
        "warp.shfl_xor_sync over offsets 16, 8, 4, 2, 1; a lane with no columns has m = -inf: skip -inf - -inf. "
        "Then write exp(x - m) / s.",
        "for j in range(lane, D, 32): update (m, s); offset = 16: m_o = shfl_xor(m), s_o = shfl_xor(s); m_new = "
        "max(m, m_o); if m_new != -inf: s = s * exp(m - m_new) + s_o * exp(m_o - m_new); m = m_new; offset //= 2; "
        "inv = float32(1) / s; for j in range(lane, D, 32): out[row, j] = exp(x[row, j] - m) * inv",
    ),
)
@pytest.mark.parametrize(
    "shape,scale",
    [((5, 77), 1.0), ((3, 5), 30.0), ((4, 40), 1e4), ((2, 1), 1.0)],
    ids=["77cols", "5cols", "huge", "1col"],
)
def test_softmax_kernel(shape, scale):
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    run = grading.launch(ex.softmax_kernel, shape[0], 32, x, Out(shape))
    ref = torch.softmax(_t(x), dim=-1).numpy()
    assert_close(run.out, ref, rtol=1e-4, atol=1e-6, what=f"softmax of {shape} rows, values ~{scale}")
    per_lane = math.ceil(shape[1] / 32)  # a lane's share of its row: read for the statistics, again to write
    run.budget(reads={"x": 2 * per_lane}, writes={"out": per_lane})


@pytest.mark.exercise(
    "07.2",
    hints=(
        "A block per (sample, group): each thread summarises its share of the group's values as (count, mean, "
        "M2), the block merges the summaries, then every thread normalises its share.",
        "Per-thread Welford updates (k += 1; d = v - mu; mu += d / k; acc += d * (v - mu)); merge as a tree in "
        "shared memory with welford_combine (cuda.syncthreads() after every step, by all threads); var = M2 / "
        "size; then (x - mean) / sqrt(var + eps) * w[c] + b[c], and y / (1 + exp(-y)) if silu.",
        "The tree of lesson 03's block sum, on (count, mean, M2): cnt, mean, m2 are shared arrays of NORM_THREADS; "
        "stride = NORM_THREADS // 2; while stride > 0: if t < stride: (cnt[t], mean[t], m2[t]) = welford_combine("
        "...t..., ...t + stride...); cuda.syncthreads(); stride //= 2",
    ),
)
@pytest.mark.parametrize("N,C,S,G,silu", [(2, 6, 13, 3, False), (1, 8, 5, 2, True), (1, 4, 33, 4, True)])
def test_group_norm_kernel(N, C, S, G, silu):
    x, w, b = _group_data(N, C, S, offset=1000.0, spread=1.0)  # naive E[x²] - E[x]² loses the variance here
    run = grading.launch(
        ex.group_norm_kernel, N * G, ex.NORM_THREADS, x, w, b, Out((N, C, S)), G, np.float32(1e-5), silu
    )
    ref = F.group_norm(_t(x), G, _t(w), _t(b), eps=1e-5)
    ref = (F.silu(ref) if silu else ref).numpy()
    assert_close(run.out, ref, rtol=1e-3, atol=1e-3, what=f"group_norm N={N} C={C} S={S} G={G} silu={silu}")
    share = math.ceil(C // G * S / ex.NORM_THREADS)  # a thread's share of its group
    run.budget(reads={"x": 2 * share}, writes={"out": share})


@pytest.mark.exercise(
    "07.3",
    hints=(
        "The host side: every leading axis becomes a row, your kernel does one row per warp.",
        "rows = prod(shape[:-1]); reshape to (rows, D), copy to the device, launch softmax_kernel[rows, 32], "
        "copy back and reshape to the input's shape.",
        "d = cuda.to_device(np.ascontiguousarray(x.reshape(-1, x.shape[-1]))); out = cuda.device_array_like(d); "
        "softmax_kernel[d.shape[0], 32](d, out); return out.copy_to_host().reshape(x.shape)",
    ),
)
@pytest.mark.parametrize("shape", [(3, 4, 9), (37,), (2, 1, 3, 40)])
def test_softmax_host(shape):
    x = (20 * rng.standard_normal(shape)).astype(np.float32)
    with grading.launches() as seen:
        got = ex.softmax(x)
    assert isinstance(got, np.ndarray), f"softmax should return a numpy array, got {type(got)}"
    assert_close(got, torch.softmax(_t(x), dim=-1).numpy(), rtol=1e-4, atol=1e-6, what=f"softmax{shape}")
    seen.expect(ex.softmax_kernel, "softmax()", grid=math.prod(shape[:-1]), block=32)


@pytest.mark.exercise(
    "07.3",
    hints=(
        "Bad input gets a clear error before any launch.",
        "A 0-d array has no last axis, an empty last axis has nothing to normalise: raise ValueError for both.",
        "if x.ndim == 0 or x.shape[-1] == 0: raise ValueError(f'softmax needs a non-empty last axis, got shape "
        "{x.shape}')",
    ),
)
def test_softmax_rejects_bad_input():
    with pytest.raises(ValueError):
        ex.softmax(np.float32(3.0) * np.ones((), np.float32))
    with pytest.raises(ValueError):
        ex.softmax(np.ones((3, 0), np.float32))


@pytest.mark.exercise(
    "07.4",
    hints=(
        "The host side of 07.2: any (N, C, ...) input viewed as (N, C, S), one block per (sample, group).",
        "View x as (N, C, prod of the rest); weight defaults to ones and bias to zeros; launch "
        "group_norm_kernel[N * num_groups, NORM_THREADS]; reshape back.",
        "x3 = x.reshape(N, C, -1); group_norm_kernel[N * num_groups, NORM_THREADS](d_x, d_w, d_b, out, "
        "num_groups, np.float32(eps), silu); return out.copy_to_host().reshape(x.shape)",
    ),
)
@pytest.mark.parametrize("shape,G,silu,affine", [((2, 6, 3, 5), 3, False, True), ((1, 8, 7), 4, True, False)])
def test_group_norm_host(shape, G, silu, affine):
    x, w, b = _group_data(shape[0], shape[1], 1)
    x = (5 + 2 * rng.standard_normal(shape)).astype(np.float32)
    w, b = (w, b) if affine else (None, None)
    with grading.launches() as seen:
        got = ex.group_norm(x, G, w, b, eps=1e-5, silu=silu)
    ref = F.group_norm(_t(x), G, _t(w), _t(b), eps=1e-5)
    ref = (F.silu(ref) if silu else ref).numpy()
    assert isinstance(got, np.ndarray), f"group_norm should return a numpy array, got {type(got)}"
    assert_close(got, ref, rtol=1e-4, atol=1e-4, what=f"group_norm{shape} G={G} silu={silu}")
    seen.expect(ex.group_norm_kernel, "group_norm()", grid=shape[0] * G, block=ex.NORM_THREADS)


@pytest.mark.exercise(
    "07.4",
    hints=(
        "LayerNorm is a GroupNorm in disguise: each row of D features is one group.",
        "View x as (rows, D, 1) and call your group_norm with one group: every row's D values are normalised "
        "together.",
        "rows = x.reshape(-1, D, 1); return group_norm(rows, 1, weight, bias, eps).reshape(x.shape)",
    ),
)
@pytest.mark.parametrize("shape,affine", [((2, 3, 24), True), ((5, 10), False)])
def test_layer_norm_host(shape, affine):
    x = (1 + 3 * rng.standard_normal(shape)).astype(np.float32)
    D = shape[-1]
    w = rng.uniform(0.5, 1.5, D).astype(np.float32) if affine else None
    b = rng.standard_normal(D).astype(np.float32) if affine else None
    with grading.launches() as seen:
        got = ex.layer_norm(x, w, b, eps=1e-5)
    ref = F.layer_norm(_t(x), (D,), _t(w), _t(b), eps=1e-5).numpy()
    assert isinstance(got, np.ndarray), f"layer_norm should return a numpy array, got {type(got)}"
    assert_close(got, ref, rtol=1e-4, atol=1e-4, what=f"layer_norm{shape}")
    seen.expect(ex.group_norm_kernel, "layer_norm()", grid=math.prod(shape[:-1]), block=ex.NORM_THREADS)


@pytest.mark.exercise(
    "07.4",
    hints=(
        "Check the arguments before launching.",
        "num_groups must divide C; weight and bias must have shape (C,): raise ValueError naming them.",
        "if C % num_groups: raise ValueError(f'num_groups={num_groups} does not divide C={C}'); if weight is not "
        "None and weight.shape != (C,): raise ValueError(f'weight must have shape ({C},), got {weight.shape}')",
    ),
)
def test_norms_reject_bad_input():
    x = np.ones((2, 6, 4), np.float32)
    with pytest.raises(ValueError, match="num_groups|divide"):
        ex.group_norm(x, 4)
    with pytest.raises(ValueError, match="weight"):
        ex.group_norm(x, 3, weight=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="bias"):
        ex.layer_norm(x, bias=np.ones(3, np.float32))
