"""Graded tests for lesson 01 (threads, blocks, grids). Oracles: torch float64 on fresh ragged inputs."""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
from course.grading import Out, assert_close, load

ex = load("lesson01")
rng = grading.rng


def _odd(low, high):
    return int(rng.integers(low, high)) | 1  # odd: never a multiple of an even block size


def _image(h, w):
    return rng.uniform(0, 1, size=(h, w, 3)).astype(np.float32)


# 01.1 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.1",
    hints=(
        "One thread per element, and the last block sticks out past the end of the arrays.",
        "i = cuda.grid(1) (blockIdx.x * blockDim.x + threadIdx.x); threads with i >= out.size must not even "
        "read a[i].",
        "i = cuda.grid(1); if i < out.size: out[i] = a[i] + b[i]",
    ),
)
@pytest.mark.parametrize("threads", [32, 128])
def test_vector_add_ragged(threads):
    n = _odd(200, 700)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    run = grading.launch(ex.add_kernel, math.ceil(n / threads), threads, a, b, Out(n))
    ref = torch.from_numpy(a).double() + torch.from_numpy(b).double()
    assert_close(run.out, ref.numpy(), rtol=1e-6, what="add_kernel output")
    run.budget(reads={"a": 1, "b": 1}, writes={"out": 1})


# 01.2 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.2",
    hints=(
        "A 2-D grid: one thread per pixel, x along a row (the column), y down the image (the row).",
        "col, row = cuda.grid(2) returns (x, y); H and W are not multiples of the block, so guard both.",
        "col, row = cuda.grid(2); if row < gray.shape[0] and col < gray.shape[1]: gray[row, col] = "
        "0.299 R + 0.587 G + 0.114 B of img[row, col] (float32 constants).",
    ),
)
@pytest.mark.parametrize("threads", [(8, 8), (16, 4)])
def test_grayscale_2d_grid(threads):
    h, w = _odd(11, 25), _odd(27, 41)  # not square, so swapping rows and columns shows
    img = _image(h, w)
    blocks = (math.ceil(w / threads[0]), math.ceil(h / threads[1]))
    run = grading.launch(ex.grayscale_kernel, blocks, threads, img, Out((h, w)))
    ref = torch.from_numpy(img).double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    assert_close(run.out, ref.numpy(), rtol=1e-5, atol=1e-6, what="grayscale_kernel output")
    run.budget(reads={"img": 3}, writes={"gray": 1})


# 01.3 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.3",
    hints=(
        "Each thread starts at its own global index and jumps ahead by the number of threads in the whole "
        "grid, until it runs off the end.",
        "start = cuda.grid(1), stride = cuda.gridsize(1) (gridDim.x * blockDim.x, not blockDim.x): a range() "
        "from start to out.size in steps of stride needs no separate guard.",
        "for i in range(cuda.grid(1), out.size, cuda.gridsize(1)): out[i] = a * x[i] + y[i]",
    ),
)
@pytest.mark.parametrize("blocks, threads", [(1, 1), (1, 7), (3, 5), (2, 32), (40, 32)])
def test_grid_stride_saxpy_any_launch(blocks, threads):
    n = _odd(150, 400)  # (3, 5) has far fewer threads than elements, (40, 32) far more
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    a = float(rng.uniform(-2, 2))
    run = grading.launch(ex.saxpy_grid_stride_kernel, blocks, threads, a, x, y, Out(n))
    ref = a * torch.from_numpy(x).double() + torch.from_numpy(y).double()
    assert_close(
        run.out, ref.numpy(), rtol=1e-5, atol=1e-6, what=f"saxpy_grid_stride_kernel[{blocks}, {threads}]"
    )
    share = math.ceil(n / (blocks * threads))  # elements per thread when the grid shares the work evenly
    run.written_once("out").budget(reads={"x": share, "y": share}, writes={"out": share})


# 01.4 -------------------------------------------------------------------------------------------------
@pytest.mark.exercise(
    "01.4",
    hints=(
        "The smallest number of blocks whose threads cover every element, in whole numbers.",
        "Ceil-divide in integers: a float division loses precision once n passes 2**53.",
        "return (n + threads - 1) // threads",
    ),
)
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


@pytest.mark.exercise(
    "01.4",
    hints=(
        "Check the arguments before computing anything.",
        "TypeError when n or threads is not an int (bool is not a count either); ValueError naming the argument "
        "when n < 1 or threads is outside 1..1024.",
        "if isinstance(n, bool) or not isinstance(n, int): raise TypeError('n must be an int ...'); "
        "if n < 1: raise ValueError('n must be >= 1 ...'); the same for threads with 1..MAX_THREADS_PER_BLOCK.",
    ),
)
@pytest.mark.parametrize(
    "args, error, name",
    [((0, 256), ValueError, "n"), ((-5, 256), ValueError, "n"), ((100, 0), ValueError, "threads"),
     ((100, 2048), ValueError, "threads"), ((10.0, 32), TypeError, "n"), ((10, 32.5), TypeError, "threads")],
)  # fmt: skip
def test_blocks_for_rejects_bad_arguments(args, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        ex.blocks_for(*args)


@pytest.mark.exercise(
    "01.4",
    hints=(
        "One blocks_for per axis, with the course's convention: x counts columns, y counts rows.",
        "threads = (tx, ty): blocks along x cover w, blocks along y cover h; refuse tx * ty > 1024.",
        "return (blocks_for(w, tx), blocks_for(h, ty)), (tx, ty)  (after checking tx * ty)",
    ),
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
    "01.5",
    hints=(
        "The 1-D grid-stride loop, once per direction: every thread visits a lattice of pixels.",
        "Start at (col, row) = cuda.grid(2) and step by (cols, rows) = cuda.gridsize(2); rows in the outer "
        "loop, columns inside, all 3 channels per pixel.",
        "for row in range(row0, H, rows): for col in range(col0, W, cols): for c in range(3): "
        "out[row, col, c] = min(max(img[row, col, c] + amount, ZERO), ONE)",
    ),
)
@pytest.mark.parametrize(
    "blocks, threads", [((1, 1), (1, 1)), ((2, 3), (3, 2)), ((1, 2), (16, 4)), ((6, 5), (8, 8))]
)
def test_brighten_grid_stride_2d(blocks, threads):
    h, w = _odd(9, 19), _odd(21, 31)
    img = _image(h, w)
    amount = np.float32(rng.choice([-1, 1]) * rng.uniform(0.1, 0.4))  # a Python float would be float64
    run = grading.launch(ex.brighten_kernel, blocks, threads, img, amount, Out((h, w, 3)))
    ref = torch.clamp(torch.from_numpy(img).double() + float(amount), 0.0, 1.0)
    assert_close(run.out, ref.numpy(), rtol=1e-6, atol=1e-6, what=f"brighten_kernel[{blocks}, {threads}]")
    pixels = math.ceil(w / (blocks[0] * threads[0])) * math.ceil(h / (blocks[1] * threads[1]))
    run.written_once("out").budget(reads={"img": 3 * pixels}, writes={"out": 3 * pixels})
