"""Graded tests for lesson 01 (threads, blocks, grids). Oracles: torch float64 on fresh ragged inputs."""

import math

import numpy as np
import pytest
import torch

import minisd.mode  # noqa: F401  (before numba.cuda)
from course.grading import assert_close, load, poison

# isort: split
from numba import cuda

ex = load("lesson01")
rng = np.random.default_rng()
OUT = object()  # where the output goes in a kernel's argument list


def _padded(host, pad):
    """A device view of ``host`` inside a bigger NaN buffer (every axis longer by pad): stray accesses land in
    memory the test can inspect instead of in someone else's array."""
    inside = tuple(slice(0, s) for s in host.shape)
    padded = poison(tuple(s + pad for s in host.shape), host.dtype)
    padded[inside] = host
    buf = cuda.to_device(padded)
    return buf, buf[inside]


def launch(kernel, blocks, threads, out_shape, *args):
    """Run ``kernel[blocks, threads](*args)`` with OUT replaced by a poisoned float32 output of out_shape.

    Out-of-bounds accesses fail clearly: the simulator raises IndexError; on a GPU a stray write lands in the
    NaN padding around the output, which is checked.
    """
    # room for every index the launch can produce on any axis, so a stray access stays inside a buffer
    pad = 8 + int(max(b * t for b, t in zip(np.atleast_1d(blocks), np.atleast_1d(threads), strict=True)))
    out_buf, out = _padded(poison(out_shape), pad)
    device_args = [out if a is OUT else _padded(a, pad)[1] if isinstance(a, np.ndarray) else a for a in args]
    config = f"{blocks} blocks x {threads} threads for output shape {out_shape}"
    try:
        kernel[blocks, threads](*device_args)
        cuda.synchronize()
    except IndexError as exc:
        raise AssertionError(
            f"a thread read or wrote out of bounds ({exc}); launch was {config}. Threads outside the output "
            "must not touch memory: check the guard (and that x is the column, y the row)."
        ) from None
    host = out_buf.copy_to_host()
    inside = tuple(slice(0, s) for s in out_shape)
    outside = np.ones(host.shape, bool)
    outside[inside] = False
    if not np.isnan(host[outside]).all():
        raise AssertionError(f"a thread wrote outside the output; launch was {config}: check the guard.")
    return host[inside]


def _odd(low, high):
    return int(rng.integers(low, high)) | 1  # odd: never a multiple of an even block size


def _image(h, w):
    return rng.uniform(0, 1, size=(h, w, 3)).astype(np.float32)


# 01.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.1", hint="i = cuda.grid(1); guard with `if i < out.size` — the last block runs past the end."
)
@pytest.mark.parametrize("threads", [32, 128])
def test_vector_add_ragged(threads):
    n = _odd(200, 700)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    out = launch(ex.add_kernel, math.ceil(n / threads), threads, (n,), a, b, OUT)
    ref = torch.from_numpy(a).double() + torch.from_numpy(b).double()
    assert_close(out, ref.numpy(), rtol=1e-6, what="add_kernel output")


# 01.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("01.2", hint="col, row = cuda.grid(2) (x is the column); guard row < H and col < W.")
@pytest.mark.parametrize("threads", [(8, 8), (16, 4)])
def test_grayscale_2d_grid(threads):
    h, w = _odd(11, 25), _odd(27, 41)  # not square, so swapping rows and columns shows
    img = _image(h, w)
    blocks = (math.ceil(w / threads[0]), math.ceil(h / threads[1]))
    gray = launch(ex.grayscale_kernel, blocks, threads, (h, w), img, OUT)
    ref = torch.from_numpy(img).double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    assert_close(gray, ref.numpy(), rtol=1e-5, atol=1e-6, what="grayscale_kernel output")


# 01.3 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.3", hint="for i in range(cuda.grid(1), out.size, cuda.gridsize(1)): out[i] = a * x[i] + y[i]"
)
@pytest.mark.parametrize("blocks, threads", [(1, 1), (1, 7), (3, 5), (2, 32), (40, 32)])
def test_grid_stride_saxpy_any_launch(blocks, threads):
    n = _odd(150, 400)  # (40, 32) launches far more threads than elements
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    a = float(rng.uniform(-2, 2))
    out = launch(ex.saxpy_grid_stride_kernel, blocks, threads, (n,), a, x, y, OUT)
    ref = a * torch.from_numpy(x).double() + torch.from_numpy(y).double()
    assert_close(
        out, ref.numpy(), rtol=1e-5, atol=1e-6, what=f"saxpy with {blocks} blocks x {threads} threads"
    )


# 01.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise("01.4", hint="Integer ceil-division: (n + threads - 1) // threads.")
def test_blocks_for():
    cases = [(1, 1), (1, 1024), (256, 256), (257, 256), (10**18 + 1, 1024), (2**53 + 1, 2)]
    cases += [(int(rng.integers(1, 10**6)), int(rng.integers(1, 1025))) for _ in range(300)]
    for n, threads in cases:
        got = ex.blocks_for(n, threads)
        assert isinstance(got, int), f"blocks_for({n}, {threads}) returned {type(got).__name__}, not int"
        assert got * threads >= n, (
            f"blocks_for({n}, {threads}) = {got}: {got * threads} threads miss elements"
        )
        assert (got - 1) * threads < n, f"blocks_for({n}, {threads}) = {got}: the last block is entirely idle"


@pytest.mark.exercise("01.4", hint="Validate first: TypeError for non-ints, ValueError naming n or threads.")
@pytest.mark.parametrize(
    "args, error, name",
    [((0, 256), ValueError, "n"), ((-5, 256), ValueError, "n"), ((100, 0), ValueError, "threads"),
     ((100, 2048), ValueError, "threads"), ((10.0, 32), TypeError, "n"), ((10, 32.5), TypeError, "threads")],
)  # fmt: skip
def test_blocks_for_rejects_bad_arguments(args, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        ex.blocks_for(*args)


@pytest.mark.exercise(
    "01.4", hint="blocks = (blocks_for(w, tx), blocks_for(h, ty)): x goes with columns (w)."
)
def test_grid_2d():
    assert ex.grid_2d(1080, 1920, (32, 8)) == ((60, 135), (32, 8))
    for _ in range(100):
        h, w = int(rng.integers(1, 3000)), int(rng.integers(1, 3000))
        tx, ty = int(rng.choice([1, 8, 16, 32, 64])), int(rng.choice([1, 2, 4, 8, 16]))
        (bx, by), threads = ex.grid_2d(h, w, (tx, ty))
        assert threads == (tx, ty)
        assert bx * tx >= w > (bx - 1) * tx, (
            f"grid_2d({h}, {w}, {(tx, ty)}): {bx} blocks along x for {w} columns"
        )
        assert by * ty >= h > (by - 1) * ty, (
            f"grid_2d({h}, {w}, {(tx, ty)}): {by} blocks along y for {h} rows"
        )
    with pytest.raises(ValueError, match="1024"):
        ex.grid_2d(100, 100, (64, 32))


# 01.5 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.5", hint="Two grid-stride loops: rows from cuda.grid(2)[1] by cuda.gridsize(2)[1], columns likewise."
)
@pytest.mark.parametrize(
    "blocks, threads", [((1, 1), (1, 1)), ((2, 3), (3, 2)), ((1, 2), (16, 4)), ((6, 5), (8, 8))]
)
def test_brighten_grid_stride_2d(blocks, threads):
    h, w = _odd(9, 19), _odd(21, 31)
    img = _image(h, w)
    amount = np.float32(rng.choice([-1, 1]) * rng.uniform(0.1, 0.4))  # a Python float would be float64
    out = launch(ex.brighten_kernel, blocks, threads, (h, w, 3), img, amount, OUT)
    ref = torch.clamp(torch.from_numpy(img).double() + float(amount), 0.0, 1.0)
    assert_close(
        out, ref.numpy(), rtol=1e-6, atol=1e-6, what=f"brighten with {blocks} blocks x {threads} threads"
    )
