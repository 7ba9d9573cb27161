"""Graded tests for lesson 07 (softmax, GroupNorm, LayerNorm). Oracles: torch float64 on fresh ragged inputs,
including values that overflow a naive softmax and data whose variance a naive E[x²] − E[x]² loses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode  # noqa: F401  (before numba.cuda)

# isort: split
from numba import cuda

from course.grading import assert_close, load, poison

ex = load("lesson07")
rng = np.random.default_rng()


def _t(a):
    return None if a is None else torch.from_numpy(a).double()


def _group_data(N, C, S, offset=0.0, spread=1.0):
    x = (offset + spread * rng.standard_normal((N, C, S))).astype(np.float32)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    return x, w, b


@pytest.mark.exercise(
    "07.1",
    hint="Track (max, sum) per lane, combine with warp.shfl_xor_sync over offsets 16..1, "
    "write exp(x - max) / sum; guard -inf - -inf for lanes without elements.",
)
@pytest.mark.parametrize(
    "shape,scale",
    [((5, 77), 1.0), ((3, 5), 30.0), ((4, 40), 1e4), ((2, 1), 1.0)],
    ids=["77cols", "5cols", "huge", "1col"],
)
def test_softmax_kernel(shape, scale):
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    out = cuda.to_device(poison(shape))
    ex.softmax_kernel[shape[0], 32](cuda.to_device(x), out)
    ref = torch.softmax(_t(x), dim=-1).numpy()
    assert_close(
        out.copy_to_host(), ref, rtol=1e-4, atol=1e-6, what=f"softmax of {shape} rows, values ~{scale}"
    )


@pytest.mark.exercise(
    "07.2",
    hint="Per-thread Welford, merge (count, mean, M2) as a tree in shared memory with "
    "welford_combine, var = M2 / size, then normalise, affine, optional x*sigmoid(x).",
)
@pytest.mark.parametrize("N,C,S,G,silu", [(2, 6, 13, 3, False), (1, 8, 5, 2, True), (1, 4, 33, 4, True)])
def test_group_norm_kernel(N, C, S, G, silu):
    x, w, b = _group_data(N, C, S, offset=1000.0, spread=1.0)  # naive E[x²] - E[x]² loses the variance here
    out = cuda.to_device(poison((N, C, S)))
    ex.group_norm_kernel[N * G, ex.NORM_THREADS](
        cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), out, G, np.float32(1e-5), silu
    )
    ref = F.group_norm(_t(x), G, _t(w), _t(b), eps=1e-5)
    ref = (F.silu(ref) if silu else ref).numpy()
    assert_close(
        out.copy_to_host(), ref, rtol=1e-3, atol=1e-3, what=f"group_norm N={N} C={C} S={S} G={G} silu={silu}"
    )


@pytest.mark.exercise(
    "07.3",
    hint="rows = prod(shape[:-1]); reshape to (rows, D), launch softmax_kernel[rows, 32], reshape back.",
)
@pytest.mark.parametrize("shape", [(3, 4, 9), (37,), (2, 1, 3, 40)])
def test_softmax_host(shape):
    x = (20 * rng.standard_normal(shape)).astype(np.float32)
    got = ex.softmax(x)
    assert isinstance(got, np.ndarray), f"softmax should return a numpy array, got {type(got)}"
    assert_close(got, torch.softmax(_t(x), dim=-1).numpy(), rtol=1e-4, atol=1e-6, what=f"softmax{shape}")


@pytest.mark.exercise("07.3", hint="Raise ValueError for a 0-d array and for an empty last axis.")
def test_softmax_rejects_bad_input():
    with pytest.raises(ValueError):
        ex.softmax(np.float32(3.0) * np.ones((), np.float32))
    with pytest.raises(ValueError):
        ex.softmax(np.ones((3, 0), np.float32))


@pytest.mark.exercise(
    "07.4",
    hint="group_norm: view x as (N, C, H*W) and launch group_norm_kernel[N*G, NORM_THREADS]; "
    "default weight ones, bias zeros.",
)
@pytest.mark.parametrize("shape,G,silu,affine", [((2, 6, 3, 5), 3, False, True), ((1, 8, 7), 4, True, False)])
def test_group_norm_host(shape, G, silu, affine):
    x, w, b = _group_data(shape[0], shape[1], 1)
    x = (5 + 2 * rng.standard_normal(shape)).astype(np.float32)
    w, b = (w, b) if affine else (None, None)
    got = ex.group_norm(x, G, w, b, eps=1e-5, silu=silu)
    ref = F.group_norm(_t(x), G, _t(w), _t(b), eps=1e-5)
    ref = (F.silu(ref) if silu else ref).numpy()
    assert isinstance(got, np.ndarray), f"group_norm should return a numpy array, got {type(got)}"
    assert_close(got, ref, rtol=1e-4, atol=1e-4, what=f"group_norm{shape} G={G} silu={silu}")


@pytest.mark.exercise("07.4", hint="layer_norm = group_norm of x viewed as (rows, D, 1) with one group.")
@pytest.mark.parametrize("shape,affine", [((2, 3, 24), True), ((5, 10), False)])
def test_layer_norm_host(shape, affine):
    x = (1 + 3 * rng.standard_normal(shape)).astype(np.float32)
    D = shape[-1]
    w = rng.uniform(0.5, 1.5, D).astype(np.float32) if affine else None
    b = rng.standard_normal(D).astype(np.float32) if affine else None
    got = ex.layer_norm(x, w, b, eps=1e-5)
    ref = F.layer_norm(_t(x), (D,), _t(w), _t(b), eps=1e-5).numpy()
    assert isinstance(got, np.ndarray), f"layer_norm should return a numpy array, got {type(got)}"
    assert_close(got, ref, rtol=1e-4, atol=1e-4, what=f"layer_norm{shape}")


@pytest.mark.exercise(
    "07.4", hint="Check num_groups divides C and that weight/bias have shape (C,): ValueError."
)
def test_norms_reject_bad_input():
    x = np.ones((2, 6, 4), np.float32)
    with pytest.raises(ValueError, match="num_groups|divide"):
        ex.group_norm(x, 4)
    with pytest.raises(ValueError, match="weight"):
        ex.group_norm(x, 3, weight=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="bias"):
        ex.layer_norm(x, bias=np.ones(3, np.float32))
