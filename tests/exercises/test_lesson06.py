"""Graded tests for lesson 06 (convolution). Oracle: torch.nn.functional.conv2d / unfold in float64 on fresh ragged
inputs; outputs poisoned so an unwritten element fails. In the simulator the kernels get course.traffic arrays:
each output is written once, and neighbouring threads write neighbouring addresses (coalesced)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minisd.mode as mode  # before numba.cuda

# isort: split
from course import traffic
from course.grading import assert_close, load, poison

ex = load("lesson06")
rng = np.random.default_rng()

# (N, C, H, W, O, kh, kw, stride, padding): ragged, non-square, strided, padded
CASES = [
    (2, 3, 7, 9, 4, 3, 3, 1, 1),
    (1, 2, 9, 6, 3, 3, 2, 2, 0),
    (1, 4, 8, 5, 2, 1, 1, 1, 0),
    (2, 1, 6, 7, 3, 3, 3, 2, 1),
]


def _data(N, C, H, W, O, kh, kw):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((O, C, kh, kw)) / np.sqrt(C * kh * kw)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    return x, w, b


def _torch_conv(x, w, b, stride, padding):
    t = lambda a: None if a is None else torch.from_numpy(a).double()  # noqa: E731
    return F.conv2d(t(x), t(w), t(b), stride=stride, padding=padding).numpy()


def _ids(cases):
    return ["N{}C{}_{}x{}_O{}_k{}x{}_s{}_p{}".format(*c) for c in cases]


@pytest.mark.exercise(
    "06.1",
    hint="Decode i into (n, o, oy, ox) with ox fastest; iy = oy*sh - ph + ky; skip iy/ix "
    "outside the image; start the sum at b[o].",
)
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_conv2d_kernel(case):
    N, C, H, W, O, kh, kw, s, p = case
    x, w, b = _data(N, C, H, W, O, kh, kw)
    OH, OW = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    tx, out = traffic.maybe_track(x, "x"), traffic.maybe_track(poison((N, O, OH, OW)), "out")
    total = out.size
    ex.conv2d_kernel[(total + 63) // 64, 64](tx, w, b, out, s, s, p, p)
    got = traffic.plain(out)
    assert_close(got, _torch_conv(x, w, b, s, p), rtol=1e-4, atol=1e-5, what=f"conv2d {case}")
    if mode.SIMULATOR:
        traffic.assert_writes_per_thread(out, at_most=1)  # accumulate in a register, write once
        traffic.assert_coalesced(out, kind=traffic.WRITE)  # ox fastest: neighbours write neighbours
        traffic.assert_reads_per_thread(tx, at_most=C * kh * kw)  # padding taps are skipped, never read


@pytest.mark.exercise(
    "06.2",
    hint="row = (c*KH + ky)*KW + kx, col = oy*OW + ox; write 0.0 where the input position "
    "falls in the padding.",
)
@pytest.mark.parametrize("case", CASES[:3], ids=_ids(CASES[:3]))
def test_im2col_matches_unfold(case):
    N, C, H, W, O, kh, kw, s, p = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    ref = F.unfold(torch.from_numpy(x).double(), (kh, kw), padding=p, stride=s).numpy()
    OW = (W + 2 * p - kw) // s + 1
    tx, cols = traffic.maybe_track(x, "x"), traffic.maybe_track(poison(ref.shape), "cols")
    ex.im2col_kernel[(cols.size + 63) // 64, 64](tx, cols, kh, kw, s, s, p, p, OW)
    assert_close(traffic.plain(cols), ref, what=f"im2col {case}")
    if mode.SIMULATOR:
        traffic.assert_writes_per_thread(cols, at_most=1)
        traffic.assert_coalesced(cols, kind=traffic.WRITE)  # the output column (oy, ox) varies fastest
        traffic.assert_reads_per_thread(tx, at_most=1)


@pytest.mark.exercise(
    "06.3",
    hint="OH = out_size(H, kh, sh, ph); allocate out (N, O, OH, OW); launch conv2d_kernel "
    "over out.size threads; bias=None means zeros.",
)
@pytest.mark.parametrize("case", CASES[:2], ids=_ids(CASES[:2]))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_host(case, with_bias):
    N, C, H, W, O, kh, kw, s, p = case
    x, w, b = _data(N, C, H, W, O, kh, kw)
    b = b if with_bias else None
    got = ex.conv2d(x, w, b, stride=s, padding=p)
    assert isinstance(got, np.ndarray), f"conv2d should return a numpy array for numpy input, got {type(got)}"
    assert_close(got, _torch_conv(x, w, b, s, p), rtol=1e-4, atol=1e-5, what=f"conv2d(x, w, bias, {s}, {p})")


@pytest.mark.exercise("06.3", hint="Check shapes before launching: raise ValueError naming both shapes.")
def test_conv2d_rejects_bad_input():
    x, w, b = _data(1, 3, 6, 6, 2, 3, 3)
    with pytest.raises(ValueError, match=r"channel"):
        ex.conv2d(x, w[:, :2], b)
    with pytest.raises(ValueError, match=r"4-D"):
        ex.conv2d(x[0], w, b)
    with pytest.raises(ValueError, match=r"bias"):
        ex.conv2d(x, w, b[:1])
    with pytest.raises(ValueError):
        ex.conv2d(x, np.ones((2, 3, 9, 9), np.float32))  # 9x9 kernel on a 6x6 image
    with pytest.raises((TypeError, ValueError)):
        ex.conv2d(x, w, b, stride=0)
