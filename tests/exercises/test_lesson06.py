"""Graded tests for lesson 06 (convolution). Oracle: torch.nn.functional.conv2d / unfold in float64 on fresh ragged
inputs; outputs poisoned so an unwritten element fails. In the simulator the kernels get course.traffic arrays:
each output is written once, and neighbouring threads write neighbouring addresses (coalesced)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson06")
rng = grading.rng

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
    hints=(
        "One thread per output element; it sums C x kh x kw products in a register and writes once.",
        "Decode i = cuda.grid(1) into (n, o, oy, ox) with ox fastest (so neighbouring threads write "
        "neighbours); input row iy = oy * sh - ph + ky (likewise ix); skip taps outside the image; start at b[o].",
        "ox = i % OW; oy = i // OW % OH; o = i // (OW * OH) % O; n = i // (OW * OH * O); s = b[o]; for c, ky, kx: "
        "iy = oy * sh - ph + ky; ix = ox * sw - pw + kx; if 0 <= iy < H and 0 <= ix < W: s += x[n, c, iy, ix] "
        "* w[o, c, ky, kx]; out[n, o, oy, ox] = s",
    ),
)
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_conv2d_kernel(case):
    N, C, H, W, O, kh, kw, s, p = case
    x, w, b = _data(N, C, H, W, O, kh, kw)
    OH, OW = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    total = N * O * OH * OW
    run = grading.launch(ex.conv2d_kernel, (total + 63) // 64, 64, x, w, b, Out((N, O, OH, OW)), s, s, p, p)
    assert_close(run.out, _torch_conv(x, w, b, s, p), rtol=1e-4, atol=1e-5, what=f"conv2d {case}")
    # accumulate in a register and write once; padding taps are skipped, never read
    run.budget(reads={"x": C * kh * kw}, writes={"out": 1}).coalesced(writes=["out"])


@pytest.mark.exercise(
    "06.2",
    hints=(
        "im2col lays every input patch out as a column, so a convolution becomes one matrix product; one "
        "thread per element of the column matrix.",
        "For element (n, row, col): row = (c * KH + ky) * KW + kx, col = oy * OW + ox (the fastest index); write "
        "0.0 where the input position falls in the padding.",
        "decode i into (n, row, col) and row into (c, ky, kx), col into (oy, ox); iy = oy * sh - ph + ky, "
        "ix = ox * sw - pw + kx; cols[n, row, col] = x[n, c, iy, ix] if inside the image else 0.0",
    ),
)
@pytest.mark.parametrize("case", CASES[:3], ids=_ids(CASES[:3]))
def test_im2col_matches_unfold(case):
    N, C, H, W, O, kh, kw, s, p = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    ref = F.unfold(torch.from_numpy(x).double(), (kh, kw), padding=p, stride=s).numpy()
    OW = (W + 2 * p - kw) // s + 1
    run = grading.launch(
        ex.im2col_kernel, (ref.size + 63) // 64, 64, x, Out(ref.shape), kh, kw, s, s, p, p, OW
    )
    assert_close(run.out, ref, what=f"im2col {case}")
    # the output column (oy, ox) varies fastest: neighbouring threads write neighbours
    run.budget(reads={"x": 1}, writes={"cols": 1}).coalesced(writes=["cols"])


@pytest.mark.exercise(
    "06.3",
    hints=(
        "The host side: work out the output's size, allocate it, launch your conv2d_kernel with a thread per "
        "output element, return the result.",
        "OH = (H + 2 * ph - kh) // sh + 1 (likewise OW); out has shape (N, O, OH, OW); launch "
        "conv2d_kernel[ceil(out.size / THREADS), THREADS]; bias=None means zeros.",
        "out = np.empty((N, O, OH, OW), np.float32); conv2d_kernel[(out.size + THREADS - 1) // THREADS, "
        "THREADS](x, w, bias if bias is not None else np.zeros(O, np.float32), out, sh, sw, ph, pw); return out",
    ),
)
@pytest.mark.parametrize("case", CASES[:2], ids=_ids(CASES[:2]))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_host(case, with_bias):
    N, C, H, W, O, kh, kw, s, p = case
    x, w, b = _data(N, C, H, W, O, kh, kw)
    b = b if with_bias else None
    with grading.launches() as seen:
        got = ex.conv2d(x, w, b, stride=s, padding=p)
    assert isinstance(got, np.ndarray), f"conv2d should return a numpy array for numpy input, got {type(got)}"
    assert_close(got, _torch_conv(x, w, b, s, p), rtol=1e-4, atol=1e-5, what=f"conv2d(x, w, bias, {s}, {p})")
    seen.expect(ex.conv2d_kernel, "conv2d()", threads_at_least=got.size)


@pytest.mark.exercise(
    "06.3",
    hints=(
        "Check the shapes before launching anything.",
        "x must be 4-D, w's channels must match x's, bias must have one value per output channel, the kernel "
        "must fit the padded image, stride must be >= 1: raise ValueError naming the shapes.",
        "if x.ndim != 4: raise ValueError(f'x must be 4-D (N, C, H, W), got shape {x.shape}'); if w.shape[1] != "
        "x.shape[1]: raise ValueError(f'channel mismatch: x has {x.shape[1]}, w expects {w.shape[1]}') ...",
    ),
)
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
