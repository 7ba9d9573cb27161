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


# ---------------------------------------------------------------------------------------------------------
# 05.5-05.7: numpy models of tensor-core fragments and 16-bit rounding
# ---------------------------------------------------------------------------------------------------------
REGS = {"a": 8, "b": 4, "c": 4, "d": 4}


def _ptx_layout(matrix):
    """(row, col) arrays indexed [lane, register], written as the PTX ISA's formulas read ("Matrix Fragments
    for mma.m16n8k16 with floating point type": row = groupID for ai where 0 <= i < 2 || 4 <= i < 6, ...)."""
    lane = np.arange(32)[:, None]
    group, in_group = lane >> 2, lane % 4
    i = np.arange(REGS[matrix])[None, :]
    if matrix == "a":
        row = np.where((i < 2) | ((i >= 4) & (i < 6)), group, group + 8)
        col = in_group * 2 + (i & 1) + np.where(i >= 4, 8, 0)
    elif matrix == "b":
        row = in_group * 2 + (i & 1) + np.where(i >= 2, 8, 0)
        col = np.broadcast_to(group, row.shape)
    else:
        row = np.where(i < 2, group, group + 8)
        col = np.broadcast_to(in_group * 2 + (i & 1), row.shape)
    return row, col


def _fragments(matrix, whole):
    row, col = _ptx_layout(matrix)
    return whole[row, col]


@pytest.mark.exercise(
    "05.5",
    hints=(
        "Every lane holds a few elements of each matrix; which ones follows from g = lane >> 2 and t = lane % 4 "
        "(the PTX ISA's groupID and threadID_in_group).",
        "Registers come in pairs of neighbours (2t, 2t + 1). A: rows g, g + 8 alternate every pair, the right 8 "
        "columns from a4 on; B: the pair runs down column g, 8 rows lower from b2; C: row g, then g + 8 from c2.",
        "g, t = lane >> 2, lane % 4; pair = 2 * t + (reg & 1); a: (g + 8 * ((reg >> 1) & 1), pair + 8 * (reg >> "
        "2)); b: (pair + 8 * (reg >> 1), g); c and d: (g + 8 * (reg >> 1), pair)",
    ),
)
def test_fragment_coords_follow_the_ptx_layout():
    for matrix, shape in (("a", (16, 16)), ("b", (16, 8)), ("c", (16, 8)), ("d", (16, 8))):
        row, col = _ptx_layout(matrix)
        held = np.zeros(shape, int)
        for lane in range(32):
            for reg in range(REGS[matrix]):
                got = tuple(int(v) for v in ex.fragment_coords(matrix, lane, reg))
                want = (int(row[lane, reg]), int(col[lane, reg]))
                assert got == want, (
                    f"fragment_coords({matrix!r}, lane={lane}, reg={reg}) = {got}, the PTX layout says {want} "
                    f"(g = {lane >> 2}, t = {lane % 4})"
                )
                held[got] += 1
        assert (held == 1).all(), f"{matrix}: every element must be held by exactly one (lane, register)"


@pytest.mark.exercise(
    "05.5",
    hints=(
        "A warp has 32 lanes; A has 8 registers per lane, B, C and D 4: refuse anything else.",
        "Check the matrix name, 0 <= lane < 32 and 0 <= reg < the matrix's register count; raise ValueError "
        "naming the argument.",
        "if matrix not in REGISTERS: raise ValueError(...); if not 0 <= lane < 32: raise ValueError('lane ...'); "
        "if not 0 <= reg < REGISTERS[matrix]: raise ValueError('register ...')",
    ),
)
def test_fragment_coords_rejects_what_a_warp_does_not_have():
    for args, word in [
        (("e", 0, 0), "matrix"),
        (("a", 32, 0), "lane"),
        (("c", -1, 0), "lane"),
        (("a", 0, 8), "reg"),
        (("b", 3, 4), "reg"),
        (("d", 0, -1), "reg"),
    ]:
        with pytest.raises(ValueError, match=word):
            ex.fragment_coords(*args)


@pytest.mark.exercise(
    "05.6",
    hints=(
        "Rebuild the three matrices from the lanes' registers, multiply, and hand each lane its registers of D.",
        "Scatter a, b, c with fragment_coords into float32 matrices A (16x16), B (16x8), C (16x8); D = A @ B + C; "
        "gather d[lane, reg] = D[fragment_coords('d', lane, reg)]. Keep the sums in float32, not float16.",
        "A = np.empty((16, 16), np.float32); for lane, reg: A[fragment_coords('a', lane, reg)] = a[lane, reg] "
        "(likewise B, C); D = A @ B + C; d[lane, reg] = D[fragment_coords('d', lane, reg)]",
    ),
)
def test_mma_m16n8k16_from_the_lanes_registers():
    # Integers up to 30: products up to 900, sums past 2048 where halves skip odd numbers. Summed in float32
    # (any order) the answer is exact; summed in float16 it is not. C has halves of integers past 2048 too.
    A = rng.integers(-30, 31, (16, 16)).astype(np.float16)
    B = rng.integers(-30, 31, (16, 8)).astype(np.float16)
    C = (rng.integers(-4000, 4000, (16, 8)) + 0.5).astype(np.float32)
    cases = [("integer-valued A, B and C", A, B, C, 0.0)]
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float16)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    cases.append(("random A, B and C", A, B, C, 1e-5))
    for what, A, B, C, rtol in cases:
        a, b, c = _fragments("a", A), _fragments("b", B), _fragments("c", C)
        kept = a.copy(), b.copy(), c.copy()
        d = ex.mma_m16n8k16(a, b, c)
        d = np.asarray(d)
        assert d.shape == (32, 4) and d.dtype == np.float32, (
            f"mma_m16n8k16 must return (32, 4) float32 registers, got {d.shape} {d.dtype}"
        )
        ref = torch.from_numpy(A).double() @ torch.from_numpy(B).double() + torch.from_numpy(C).double()
        assert_close(d, _fragments("d", ref.numpy()), rtol=rtol, atol=rtol, what=f"d for {what}")
        assert all(np.array_equal(x, y) for x, y in zip((a, b, c), kept, strict=True)), (
            "mma_m16n8k16 changed its input registers"
        )


@pytest.mark.exercise(
    "05.6",
    hints=(
        "Write down which (row, col) c0, c1, c2, c3 of a lane hold, and which a0 ... a7 of the same lane hold.",
        "The left tile's c0..c3 are exactly the lane's a0..a3, the right tile's c0..c3 its a4..a7: put them side "
        "by side and round to float16.",
        "return np.concatenate([left, right], axis=1).astype(np.float16)",
    ),
)
def test_accumulator_fragments_become_an_a_fragment():
    S = rng.standard_normal((16, 16)).astype(np.float32)
    left, right = _fragments("c", S[:, :8]), _fragments("c", S[:, 8:])
    a = np.asarray(ex.accumulator_as_a(left.copy(), right.copy()))
    assert a.shape == (32, 8) and a.dtype == np.float16, (
        f"accumulator_as_a must return (32, 8) float16 registers, got {a.shape} {a.dtype}"
    )
    want = _fragments("a", torch.from_numpy(S).half().numpy())
    bad = a.view(np.uint16) != want.view(np.uint16)
    assert not bad.any(), (
        f"{int(bad.sum())} of 256 A registers are wrong, first lane {np.argwhere(bad)[0][0]} register "
        f"a{np.argwhere(bad)[0][1]}: got {a[bad][0]!r}, expected {want[bad][0]!r}"
    )


def _bf16_cases():
    """float32 bit patterns that test rounding: random magnitudes, exact ties both ways, carries into the
    exponent and past the largest bfloat16, subnormals, zeros, infinities and NaNs."""
    random = rng.integers(0, 1 << 32, 4000, dtype=np.uint64).astype(np.uint32)
    upper = rng.integers(0, 1 << 16, 200, dtype=np.uint64).astype(np.uint32) << 16
    ties = upper | 0x8000  # halfway: rounds to the even neighbour
    near = upper | rng.choice(np.array([0x7FFF, 0x8001, 0xFFFF, 0x0001], np.uint32), 200)
    special = np.array(
        [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7F8000, 0x00000001,
         0x00008000, 0x00018000, 0x007FFFFF, 0x3F808000, 0x3F818000],
        np.uint32,
    )  # fmt: skip
    nan = np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF], np.uint32)
    return np.concatenate([random, ties, near, special, nan]).view(np.float32)


@pytest.mark.exercise(
    "05.7",
    hints=(
        "bfloat16 is the top half of a float32: round the float32's bits to their top 16, to nearest, ties to "
        "even.",
        "bits = x.view(np.uint32); add 0x7FFF + ((bits >> 16) & 1) and shift right by 16; NaN gets 0x7FC0 "
        "(adding could carry a NaN into infinity).",
        "bits = np.ascontiguousarray(x, np.float32).view(np.uint32); r = ((bits + np.uint32(0x7FFF) + ((bits >> "
        "16) & 1)) >> 16).astype(np.uint16); return np.where(np.isnan(x), np.uint16(0x7FC0), r)",
    ),
)
def test_round_to_bfloat16_matches_torch():
    x = _bf16_cases()
    x = x[: x.size - x.size % 3]  # a 2-D input: the shape must survive
    with np.errstate(invalid="ignore"):
        got = np.asarray(ex.round_to_bfloat16(x.reshape(-1, 3).copy()))
    assert got.shape == (x.size // 3, 3) and got.dtype == np.uint16, (
        f"round_to_bfloat16 keeps the shape and returns uint16 bit patterns, got {got.shape} {got.dtype}"
    )
    got = got.reshape(-1)
    ref = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    is_nan = np.isnan(x)
    got_nan = ((got & 0x7F80) == 0x7F80) & ((got & 0x7F) != 0)
    assert got_nan[is_nan].all(), (
        f"NaN must stay NaN: float32 bits {x.view(np.uint32)[is_nan & ~got_nan][0]:#010x} became "
        f"{got[is_nan & ~got_nan][0]:#06x}"
    )
    bad = (got != ref) & ~is_nan
    if bad.any():
        k = int(np.argmax(bad))
        raise AssertionError(
            f"{int(bad.sum())} of {x.size} values round differently from torch.bfloat16, first float32 "
            f"{x[k]!r} (bits {x.view(np.uint32)[k]:#010x}): got {got[k]:#06x}, expected {ref[k]:#06x}"
        )


BF16_OVERFLOW = (torch.finfo(torch.bfloat16).max + 2.0**128) / 2  # halfway above the largest bfloat16


def _overflows(v):
    """The oracle: numpy's own conversions for fp16 and fp32 (straight from float64), the halfway point for
    bf16 (torch converts a float64 through float32, which can round it onto the halfway point)."""
    with np.errstate(over="ignore"):
        found = {
            "fp16": np.isinf(np.float16(v)),
            "bf16": abs(v) >= BF16_OVERFLOW,
            "fp32": np.isinf(np.float32(v)),
        }
    return tuple(name for name in ("fp16", "bf16", "fp32") if found[name])


@pytest.mark.exercise(
    "05.7",
    hints=(
        "Each format overflows from halfway between its largest value and the next power of two upwards.",
        "Largest values: fp16 65504 = (2 - 2^-10)·2^15, bf16 (2 - 2^-7)·2^127, fp32 (2 - 2^-23)·2^127; "
        "halfway above (2 - 2^-m)·2^e is 2^(e+1) - 2^(e-m-1); compare |value| with it; refuse NaN and inf.",
        "return tuple(name for name, (m, e) in {'fp16': (10, 15), 'bf16': (7, 127), 'fp32': (23, 127)}.items() "
        "if abs(value) >= 2.0 ** (e + 1) - 2.0 ** (e - m - 1))",
    ),
)
def test_overflows_names_the_formats_that_become_infinite():
    edges = [65504.0, 65519.99, 65520.0, 1e5, BF16_OVERFLOW, 3.4e38, float(np.finfo(np.float32).max)]
    edges += [2.0**128 - 2.0**103, 1e300]
    cases = [0.0, 1.0, 70000.0, -70000.0, -3.39e38]
    for v in edges:
        cases += [v, -v, math.nextafter(v, 0.0), math.nextafter(v, math.inf)]
    cases += list(10.0 ** rng.uniform(-10, 300, 40) * rng.choice([-1.0, 1.0], 40))
    for v in cases:
        got = tuple(ex.overflows(v))
        assert got == _overflows(v), f"overflows({v!r}) = {got}, expected {_overflows(v)}"
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            ex.overflows(bad)
