"""Graded tests for lesson 05 (CUDA C++ kernels). CuPy runs them on a GPU, course.cuda_cpu on the CPU.

Oracles: torch (float64 sums, its own float->half rounding) on fresh ragged inputs; outputs poisoned and padded
so that unwritten elements and writes past the end both fail. On the CPU the kernels are built strict: each
thread's global reads and writes are counted (a serial loop in one thread fails) and a block whose threads
reach __syncthreads() different numbers of times fails.
"""

import math

import numpy as np
import pytest
import torch

import course.grading as grading
from course import cuda_cpu
from course.grading import assert_close, load, poison

ex = load("lesson05")
rng = grading.rng
PAD = 64


def _run(source, name, grid, block, args, out_index, out_size, out_dtype=np.float32):
    """Launch with args[out_index] replaced by a poisoned output inside a poisoned, longer buffer; returns the
    output and the kernel (whose ``counts`` grading.cpp_budget checks)."""
    buf = cuda_cpu.xp.asarray(poison(out_size + PAD, out_dtype))
    out = buf[:out_size]
    args = list(args)
    args[out_index] = out
    dev = [cuda_cpu.xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    try:
        kernel = cuda_cpu.RawKernel(source, name, strict=True)
        kernel(grid, block, tuple(dev))
    except cuda_cpu.LaunchError as exc:
        raise AssertionError(f"launch grid={grid} block={block}: {exc}") from None
    cuda_cpu.synchronize()
    host = cuda_cpu.asnumpy(buf)
    assert np.isnan(host[out_size:].astype(np.float32)).all(), (
        f"a thread wrote past the end of the output (grid={grid}, block={block}): is every access guarded by i < n?"
    )
    return host[:out_size], kernel


@pytest.mark.exercise(
    "05.1",
    hints=(
        "Fewer threads than elements: each thread starts at its global index and steps by the size of the "
        "whole grid.",
        "i starts at blockIdx.x * blockDim.x + threadIdx.x and grows by gridDim.x * blockDim.x while i < n.",
        "for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) "
        "out[i] = a * x[i] + y[i];",
    ),
)
@pytest.mark.parametrize("blocks", [3, 40])
def test_saxpy_grid_stride(blocks):
    n = int(rng.integers(1000, 2000)) | 1
    a = np.float32(rng.uniform(-2, 2))
    x, y = rng.standard_normal((2, n)).astype(np.float32)
    out, kernel = _run(ex.SAXPY, "saxpy", (blocks,), (64,), (a, x, y, None, np.int32(n)), 3, n)
    ref = (float(a) * torch.from_numpy(x).double() + torch.from_numpy(y).double()).numpy()
    assert_close(out, ref, rtol=1e-5, atol=1e-5, what=f"saxpy on {blocks} blocks of 64 threads, n={n}")
    share = math.ceil(n / (blocks * 64))
    grading.cpp_budget(kernel, reads={"x": share, "y": share}, writes={"out": share})


@pytest.mark.exercise(
    "05.2",
    hints=(
        "Stage a tile in shared memory so that both the global read and the global write are coalesced.",
        "Read in[r * cols + c] into tile[threadIdx.y][threadIdx.x], __syncthreads() (outside any if), then "
        "write tile[threadIdx.x][threadIdx.y] to the transposed place; guard the read and the write.",
        "if (r < rows && c < cols) tile[ty][tx] = in[r * cols + c]; __syncthreads(); int oc = blockIdx.y * TILE "
        "+ tx, orow = blockIdx.x * TILE + ty; if (orow < cols && oc < rows) out[orow * rows + oc] = tile[tx][ty];",
    ),
)
@pytest.mark.parametrize("shape", [(37, 53), (16, 45), (50, 9)])
def test_transpose_tiled(shape):
    rows, cols = shape
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    grid = (cuda_cpu.blocks(cols, ex.TILE), cuda_cpu.blocks(rows, ex.TILE))
    args = (x.reshape(-1), None, np.int32(rows), np.int32(cols))
    out, kernel = _run(ex.TRANSPOSE, "transpose", grid, (ex.TILE, ex.TILE), args, 1, rows * cols)
    assert_close(
        out.reshape(cols, rows), torch.from_numpy(x).T.numpy(), what=f"transpose of a {rows}x{cols} matrix"
    )
    grading.cpp_budget(kernel, reads={"in": 1}, writes={"out": 1})


@pytest.mark.exercise(
    "05.3",
    hints=(
        "Three stages: each thread sums its share into a register, the block combines the sums as a tree in "
        "shared memory, one thread per block adds the block's sum to the total.",
        "Grid-stride loop into a register; partial[threadIdx.x] = it; for stride = THREADS/2 .. 1: threads "
        "below stride add partial[t + stride], __syncthreads() after every step (by all threads); thread 0 "
        "does atomicAdd(total, partial[0]).",
        "float acc = 0; for (i = ...; i < n; i += gridDim.x * THREADS) acc += x[i]; partial[t] = acc; "
        "__syncthreads(); for (int s = THREADS / 2; s > 0; s /= 2) { if (t < s) partial[t] += partial[t + s]; "
        "__syncthreads(); } if (t == 0) atomicAdd(total, partial[0]);",
    ),
)
@pytest.mark.parametrize("blocks", [1, 7])
def test_block_sum(blocks):
    n = int(rng.integers(3000, 5000)) | 1
    x = rng.uniform(0.5, 1.5, n).astype(np.float32)
    total = cuda_cpu.xp.zeros(1, np.float32)
    kernel = cuda_cpu.RawKernel(ex.BLOCK_SUM, "block_sum", strict=True)
    try:
        kernel((blocks,), (ex.SUM_THREADS,), (cuda_cpu.xp.asarray(x), total, np.int32(n)))
    except cuda_cpu.LaunchError as exc:
        raise AssertionError(f"launch grid={blocks} block={ex.SUM_THREADS}: {exc}") from None
    cuda_cpu.synchronize()
    ref = torch.from_numpy(x).double().sum().item()
    got = float(cuda_cpu.asnumpy(total)[0])
    assert got == pytest.approx(ref, rel=1e-4), (
        f"sum of {n} elements on {blocks} blocks: got {got}, expected {ref:.3f}"
        + (" (still 0: nothing was added to *total)" if got == 0 else "")
    )
    grading.cpp_budget(kernel, reads={"x": math.ceil(n / (blocks * ex.SUM_THREADS))}, writes={"total": 1})


@pytest.mark.exercise(
    "05.4",
    hints=(
        "One thread per element; the product is computed in float, then rounded to half once.",
        "__float2half(f) from <cuda_fp16.h> rounds to the nearest half (ties to even); guard i < n.",
        "int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) out[i] = __float2half(s * x[i]);",
    ),
)
def test_scale_to_half_rounds_to_nearest():
    n = int(rng.integers(2000, 3000)) | 1
    mags = 10.0 ** rng.uniform(-9, 5.5, n)  # subnormal halves, normal ones and overflow to inf
    x = (rng.choice([-1.0, 1.0], n) * mags).astype(np.float32)
    s = np.float32(rng.uniform(0.5, 2.0))
    out, kernel = _run(
        ex.SCALE_TO_HALF,
        "scale_to_half",
        (cuda_cpu.blocks(n, 128),),
        (128,),
        (x, s, None, np.int32(n)),
        2,
        n,
        np.float16,
    )
    ref = (torch.from_numpy(x) * float(s)).half().numpy()  # float32 product, then torch's own rounding
    written = ~np.isnan(out)
    assert written.all(), (
        f"{int((~written).sum())} of {n} halves were never written, first at {np.argmin(written)}"
    )
    bad = out.view(np.uint16) != ref.view(np.uint16)
    assert not bad.any(), (
        f"{int(bad.sum())} of {n} halves differ from round-to-nearest, first x[{np.argmax(bad)}]="
        f"{x[np.argmax(bad)]!r}: got {out[np.argmax(bad)]!r}, expected {ref[np.argmax(bad)]!r}"
    )
    grading.cpp_budget(kernel, reads={"x": 1}, writes={"out": 1})
