"""Graded tests of lesson 12: occupancy calculator, launch-overhead model, int8 quantisation, 2:4 pruning, the
fused bias + GEGLU epilogue, eager launches vs CUDA graph replay."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import course.grading as grading
import minisd.mode as mode
from course import traffic
from course.grading import Out, assert_close, load

ex = load("lesson12")
rng = grading.rng


def _fits(blocks, threads, regs, smem, g):
    """Brute force: do `blocks` blocks fit on one SM at once? (the oracle for occupancy)"""
    warps = math.ceil(threads / 32) * blocks
    regs_per_warp = math.ceil(regs * 32 / g.register_alloc_unit) * g.register_alloc_unit
    smem_per_block = (
        math.ceil((smem + g.shared_reserved_per_block) / g.shared_alloc_unit) * g.shared_alloc_unit
    )
    return (
        blocks <= g.max_blocks_per_sm
        and warps * 32 <= g.max_threads_per_sm
        and warps * regs_per_warp <= g.registers_per_sm
        and blocks * smem_per_block <= g.shared_per_sm
    )


@pytest.mark.exercise(
    "12.1",
    hints=(
        "An SM holds as many blocks as its scarcest resource allows: four limits, take the smallest.",
        "Blocks per SM = min(block limit, warps limit, registers limit, shared-memory limit); registers are "
        "allocated per WARP in units of 256, shared memory per block (+1 KiB reserved) in units of 128 bytes; "
        "the limiter is the name of the smallest.",
        "warps = ceil(threads / 32); regs = ceil(regs * 32 / g.register_alloc_unit) * g.register_alloc_unit per "
        "warp; smem = ceil((smem + g.shared_reserved_per_block) / g.shared_alloc_unit) * g.shared_alloc_unit; "
        "blocks = min(g.max_blocks_per_sm, g.max_threads_per_sm // (32 * warps), g.registers_per_sm // (warps "
        "* regs), g.shared_per_sm // smem)",
    ),
)
def test_occupancy_against_brute_force():
    g = ex.H100
    cases = [(256, 32, 0), (256, 64, 0), (128, 32, 48 * 1024), (1024, 64, 0), (32, 16, 0), (96, 40, 3000)]
    cases += [
        (int(rng.integers(1, 1025)), int(rng.integers(1, 256)), int(rng.integers(0, 100_000)))
        for _ in range(40)
    ]
    for threads, regs, smem in cases:
        got = ex.occupancy(threads, regs, smem)
        blocks = max(b for b in range(0, 65) if b == 0 or _fits(b, threads, regs, smem, g))
        what = f"occupancy({threads} threads, {regs} registers, {smem} B shared)"
        assert got["blocks_per_sm"] == blocks, (
            f"{what}: {got['blocks_per_sm']} blocks per SM, expected {blocks}"
        )
        warps = blocks * math.ceil(threads / 32)
        assert got["warps_per_sm"] == warps, f"{what}: {got['warps_per_sm']} warps, expected {warps}"
        assert math.isclose(got["occupancy"], warps / 64), (
            f"{what}: occupancy {got['occupancy']}, expected {warps / 64}"
        )
        assert not _fits(blocks + 1, threads, regs, smem, g)
    assert ex.occupancy(256, 64)["limiter"] == "registers"
    assert ex.occupancy(256, 32)["limiter"] == "warps"
    assert ex.occupancy(128, 32, 48 * 1024)["limiter"] == "shared memory"
    assert ex.occupancy(32, 16)["limiter"] == "blocks"


@pytest.mark.exercise(
    "12.1",
    hints=(
        "Refuse blocks no GPU can run before computing anything.",
        "threads must be 1..1024, registers per thread at most 255, shared memory at most what an SM has: "
        "raise ValueError naming the argument.",
        "if not 1 <= threads <= 1024: raise ValueError(f'threads must be 1..1024, got {threads}') (likewise "
        "registers and shared memory)",
    ),
)
def test_occupancy_rejects_impossible_blocks():
    for args, word in [
        ((0, 32), "threads"),
        ((2048, 32), "threads"),
        ((128, 300), "registers"),
        ((128, 32, 300_000), "shared"),
    ]:
        with pytest.raises(ValueError, match=word):
            ex.occupancy(*args)


@pytest.mark.exercise(
    "12.2",
    hints=(
        "Launching costs CPU time, running costs GPU time, and the two overlap: the slower one sets the pace.",
        "The first kernel starts after one launch; after that each kernel adds max(per_launch_us, work_us); "
        "n = 0 takes 0; refuse n < 0.",
        "return 0.0 if n == 0 else per_launch_us + work_us + (n - 1) * max(per_launch_us, work_us)",
    ),
)
def test_batched_time_against_simulation():
    cases = [
        (1, 30.0, 5.0),
        (1000, 30.0, 5.0),
        (1000, 6.0, 5.0),
        (50, 4.0, 100.0),
        (7, 5.0, 5.0),
        (0, 3.0, 2.0),
    ]
    cases += [
        (int(rng.integers(0, 500)), float(rng.uniform(0, 40)), float(rng.uniform(0, 40))) for _ in range(20)
    ]
    for n, launch, work in cases:
        end = 0.0
        for k in range(
            n
        ):  # event simulation: launch k is ready at (k+1)·launch, waits for the previous kernel
            end = max((k + 1) * launch, end) + work
        got = ex.batched_time(n, launch, work)
        assert math.isclose(got, end, rel_tol=1e-9, abs_tol=1e-9), (
            f"batched_time({n}, {launch}, {work}) = {got}, expected {end}"
        )
    with pytest.raises(ValueError):
        ex.batched_time(-1, 1.0, 1.0)


@pytest.mark.exercise(
    "12.3",
    hints=(
        "Symmetric per-channel int8: each row has one scale, its largest |w| / 127; one thread per element.",
        "o, i = cuda.grid(2); guard o < rows and i < cols; q = round(w / scale[o]) clamped to [-127, 127]; "
        "dequantise with q * scale[o].",
        "if o < w.shape[0] and i < w.shape[1]: q[o, i] = min(max(round(w[o, i] / scale[o]), -127), 127)",
    ),
)
def test_quantize_int8_kernel():
    O, I = 13, 37  # 2-D ragged: blocks of (8, 32) overhang on both axes
    w = (rng.standard_normal((O, I)) * rng.uniform(0.01, 3, (O, 1))).astype(np.float32)
    w[4] = 0.0  # an all-zero channel
    scale = ex.channel_scales(w)
    ref_scale = torch.from_numpy(w).double().abs().amax(dim=1) / 127
    ref_scale[4] = 1.0
    assert_close(scale, ref_scale.numpy(), rtol=1e-6, atol=0, what="channel_scales")
    run = grading.launch(ex.quantize_int8_kernel, (2, 2), (8, 32), w, scale, Out((O, I), np.int8, fill=-128))
    run.budget(reads={"w": 1}, writes={"q": 1})
    q = run.out
    assert q.dtype == np.int8
    assert (q != -128).all(), f"{int((q == -128).sum())} elements never written (still −128)"
    ratio = w.astype(np.float64) / scale[:, None].astype(np.float64)
    ref = np.clip(np.rint(ratio), -127, 127)
    near_tie = np.abs(np.abs(ratio - np.trunc(ratio)) - 0.5) < 1e-4  # float32 division may land either side
    bad = (q != ref) & ~near_tie
    assert not bad.any(), (
        f"q differs from round(w/scale) at {np.argwhere(bad)[0].tolist()}: {q[bad][0]} vs {ref[bad][0]}"
    )
    run = grading.launch(ex.dequantize_int8_kernel, (2, 2), (8, 32), q, scale, Out((O, I)))
    out = run.out
    assert_close(out, q.astype(np.float64) * scale[:, None], rtol=1e-6, atol=0, what="dequantize_int8_kernel")
    run.budget(reads={"q": 1}, writes={"out": 1})
    err = np.abs(out - w)
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all(), "round-trip error must stay within half a step"


@pytest.mark.exercise(
    "12.4",
    hints=(
        "One thread per group of 4 neighbours in a row: it keeps the 2 largest magnitudes and zeroes the others.",
        "For each of the 4 elements count how many of its group beat it (|w| larger, or equal at a lower "
        "index); keep it if fewer than 2 do. Guard row < rows and 4 * g < cols.",
        "base = 4 * g; for k in range(4): a = abs(w[row, base + k]); larger = number of m with abs(w[row, base + "
        "m]) > a or (== a and m < k); out[row, base + k] = w[row, base + k] if larger < 2 else 0.0",
    ),
)
def test_prune_2_4():
    rows, cols = 11, 36  # 9 groups a row: the (8, 32) blocks overhang
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[3, 4:8] = [0.5, -0.5, 0.5, 0.1]  # a tie: the two lower indices win
    run = grading.launch(ex.prune_2_4_kernel, (2, 1), (8, 32), w, Out((rows, cols)))
    out = run.out
    groups = torch.from_numpy(w).reshape(rows, cols // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    order = torch.sort(groups.abs(), dim=-1, descending=True, stable=True).indices[..., :2]
    keep.scatter_(-1, order, True)
    ref = torch.where(keep, groups, torch.zeros_like(groups)).reshape(rows, cols).numpy()
    assert_close(out, ref, rtol=0, atol=0, what="prune_2_4_kernel")
    assert ((out.reshape(rows, -1, 4) != 0).sum(-1) == 2).all(), "every group of 4 must keep exactly 2"
    run.budget(writes={"out": 4})  # a group of 4 per thread
    with pytest.raises(ValueError, match="multiple of 4"):
        ex.prune_2_4(np.ones((3, 10), np.float32))


@pytest.mark.exercise(
    "12.5",
    hints=(
        "Reorder the weight so that value j and gate j are neighbouring columns of the product, then finish "
        "each output in one thread: both its inputs, the bias and GELU, one write.",
        "interleave_geglu: order = [0, F, 1, F + 1, ...] (stack arange(F) and F + arange(F), reshape); kernel: "
        "j, r = cuda.grid(2); guard; value = h[r, 2j] + bias[2j], gate = h[r, 2j+1] + bias[2j+1]; out[r, j] = "
        "value * 0.5 * gate * (1 + erf(gate / sqrt 2)).",
        "order = np.stack([np.arange(f), f + np.arange(f)], axis=1).reshape(-1); return w[order], b[order]. "
        "Kernel: if r < out.shape[0] and j < out.shape[1]: v = h[r, 2 * j] + bias[2 * j]; g = h[r, 2 * j + 1] + "
        "bias[2 * j + 1]; out[r, j] = v * (float32(0.5) * g * (float32(1.0) + math.erf(g * float32(0.70710678))))",
    ),
)
def test_bias_geglu_fused_on_interleaved_columns():
    rows, f, k = 5, 21, 16  # one block of (32, 8) overhangs both axes
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = (rng.standard_normal((2 * f, k)) / 4).astype(np.float32)
    b = rng.standard_normal(2 * f).astype(np.float32)
    wi, bi = ex.interleave_geglu(w.copy(), b.copy())
    wi, bi = np.asarray(wi), np.asarray(bi)
    assert wi.shape == w.shape and bi.shape == b.shape, (
        f"interleave_geglu keeps the shapes: got {wi.shape} and {bi.shape}, expected {w.shape} and {b.shape}"
    )
    h = x @ wi.T  # the GEMM, without its bias
    run = grading.launch(ex.bias_geglu_kernel, (1, 1), (32, 8), h, bi, Out((rows, f)))
    xt, wt, bt = (torch.from_numpy(a).double() for a in (x, w, b))
    value, gate = (xt @ wt.T + bt).chunk(2, dim=-1)  # torch's GEGLU, on the weight as torch stores it
    assert_close(run.out, (value * F.gelu(gate)).numpy(), rtol=1e-5, atol=1e-5, what="bias_geglu_kernel")
    run.budget(reads={"h": 2, "bias": 2}, writes={"out": 1}, element_reads={"h": 1})
    run.written_once("out").coalesced(writes=("out",))
    # a warp reads 64 neighbours of h: 3 segments where a row (42 floats) starts inside one
    if mode.SIMULATOR:
        traffic.assert_coalesced(run.arrays["h"], at_most=3)
    with pytest.raises(ValueError):
        ex.interleave_geglu(w[:-1], b[:-1])


def _eager_oracle(work, launch):
    """Without a loop: the last kernel ends at max over j of (launch j issued) + (all work from j on), the
    latest moment from which the GPU never waited for the CPU again."""
    if not len(work):
        return 0.0
    work = np.asarray(work, np.float64)
    tail = np.cumsum(work[::-1])[::-1]  # work from kernel j to the end
    return float(np.max((np.arange(len(work)) + 1) * launch + tail))


def _steps():
    """(kernels' work, launch cost) pairs: a UNet-like step (many short kernels, a few long convolutions) at
    Numba's, CuPy's and no launch cost, and random ones."""
    unet = list(rng.lognormal(1.0, 0.8, 240))
    for k in rng.choice(240, 12, replace=False):
        unet[k] = float(rng.uniform(40, 120))  # a long kernel: the CPU runs ahead while it runs
    cases = [(unet, 30.0), (unet, 6.0), (unet, 0.0), ([], 5.0), ([7.0], 3.0), ([1.0, 50.0, 1.0, 1.0], 10.0)]
    for _ in range(15):
        n = int(rng.integers(1, 60))
        cases.append((list(rng.uniform(0, 40, n)), float(rng.uniform(0, 40))))
    return cases


@pytest.mark.exercise(
    "12.6",
    hints=(
        "Eager: the CPU issues one kernel per launch time and the GPU runs each when it is issued and the "
        "previous one has ended. A graph: one call, then the kernels back to back.",
        "eager: end = 0; for k, w in enumerate(work): end = max((k + 1) * launch, end) + w. graph: "
        "graph_launch + sum(work) + len(work) * per_kernel (0 for no kernels). gpu_bound_kernels: floor of "
        "gpu_us / launch_us. Refuse negative numbers.",
        "eager: for k, w in enumerate(work_us): end = max((k + 1) * launch_us, end) + w; graph: return 0.0 if not "
        "work_us else graph_launch_us + sum(work_us) + len(work_us) * per_kernel_us; return int(gpu_us // "
        "launch_us)",
    ),
)
def test_eager_launches_against_graph_replay():
    for work, launch in _steps():
        got, want = ex.eager_step_us(list(work), launch), _eager_oracle(work, launch)
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (
            f"eager_step_us({len(work)} kernels, launch_us={launch:.3g}) = {got}, expected {want}"
        )
        replay, per_kernel = float(rng.uniform(2, 20)), float(rng.uniform(0.5, 5))
        got = ex.graph_step_us(list(work), replay, per_kernel)
        want = replay + float(np.sum(work)) + len(work) * per_kernel if len(work) else 0.0
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (
            f"graph_step_us({len(work)} kernels, graph_launch_us={replay:.3g}, per_kernel_us={per_kernel:.3g}) "
            f"= {got}, expected {want}"
        )
    for args in [([1.0, -1.0], 3.0), ([1.0], -3.0)]:
        with pytest.raises(ValueError):
            ex.eager_step_us(*args)
    with pytest.raises(ValueError):
        ex.graph_step_us([1.0], 3.0, -1.0)


@pytest.mark.exercise(
    "12.6",
    hints=(
        "Split a fixed amount of GPU work into more kernels and each gets shorter, while every launch still "
        "costs the same CPU time.",
        "The GPU stays busy while each kernel runs at least one launch: gpu_us / n >= launch_us; the largest "
        "such n is the floor of gpu_us / launch_us.",
        "if launch_us <= 0 or gpu_us < 0: raise ValueError(...); return int(gpu_us // launch_us)",
    ),
)
def test_gpu_bound_kernels():
    cases = [(1000, 30), (1000, 6), (1000, 1), (29, 30), (30, 30), (0, 5)]
    cases += [(int(rng.integers(0, 5000)), int(rng.integers(1, 60))) for _ in range(30)]
    for gpu, launch in cases:
        # brute force on the eager model: n equal kernels keep the GPU busy while none waits for a launch
        want = max((n for n in range(1, gpu + 2) if gpu / n >= launch), default=0)
        got = ex.gpu_bound_kernels(float(gpu), float(launch))
        assert got == want, f"gpu_bound_kernels({gpu}, {launch}) = {got}, expected {want}"
    for args in [(100.0, 0.0), (100.0, -1.0), (-1.0, 5.0)]:
        with pytest.raises(ValueError):
            ex.gpu_bound_kernels(*args)
