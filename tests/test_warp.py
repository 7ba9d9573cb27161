"""course.warp: warp shuffles and votes with CUDA's semantics, in the simulator and on a GPU.

The oracle is written from the CUDA C++ Programming Guide's description of ``__shfl_*_sync`` (segments of
``width`` lanes), not from PTX like course.warp.source_lane, so the two check each other. The kernel tests run
in whichever mode this machine has; on a GPU they check the hardware against the same oracle (run with
``pytest tests/test_warp.py`` on the GPU machine).
"""

import numpy as np
import pytest

import minisd.mode as mode
from course import warp
from minisd.kernel_backend import cuda

FULL = warp.FULL_MASK
DELTAS = 40  # 32..39 show that only the low 5 bits of delta count
on_gpu = pytest.mark.skipif(not mode.ON_GPU, reason="needs a CUDA GPU")
in_simulator = pytest.mark.skipif(mode.ON_GPU, reason="simulator-only behaviour (undefined on a GPU)")


def expected_source(op, lane, b, width=32):
    """The lane that ``lane`` reads, as the CUDA Programming Guide words it (own lane when out of range)."""
    b &= 31  # hardware uses the low 5 bits of the lane operand
    base = lane - lane % width
    if op == "idx":
        return base + b % width
    if op == "up":
        return lane - b if lane % width >= b else lane
    if op == "down":
        return lane + b if lane % width + b < width else lane
    if op == "xor":  # may read earlier segments, never later ones
        return lane ^ b if lane ^ b < base + width else lane
    raise ValueError(op)


OPS = {"idx": warp.IDX, "up": warp.UP, "down": warp.DOWN, "xor": warp.BFLY}


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("op", list(OPS))
def test_source_lane_follows_cuda_for_every_lane_delta_and_width(op, width):
    for lane in range(32):
        for b in range(DELTAS):
            got = warp.source_lane(OPS[op], lane, b, warp.width_c(OPS[op], width))
            assert got == expected_source(op, lane, b, width), (op, width, lane, b)


def test_width_c_rejects_bad_widths():
    with pytest.raises(ValueError, match="power of two"):
        warp.width_c(warp.DOWN, 12)


@cuda.jit
def every_delta(x, out, op, width):
    """out[d, i] = the shuffle of x[i] with delta/lane d, for every d; one kernel for all deltas."""
    i = cuda.threadIdx.x
    v = x[i]
    for d in range(out.shape[0]):
        if width == 32:
            if op == 0:
                r = warp.shfl_sync(warp.FULL_MASK, v, d)
            elif op == 1:
                r = warp.shfl_up_sync(warp.FULL_MASK, v, d)
            elif op == 2:
                r = warp.shfl_down_sync(warp.FULL_MASK, v, d)
            else:
                r = warp.shfl_xor_sync(warp.FULL_MASK, v, d)
        else:
            if op == 0:
                r = warp.shfl_sync_w(warp.FULL_MASK, v, d, width)
            elif op == 1:
                r = warp.shfl_up_sync_w(warp.FULL_MASK, v, d, width)
            elif op == 2:
                r = warp.shfl_down_sync_w(warp.FULL_MASK, v, d, width)
            else:
                r = warp.shfl_xor_sync_w(warp.FULL_MASK, v, d, width)
        out[d, i] = r


def run_every_delta(op, width, threads, deltas=DELTAS):
    x = (np.arange(threads) * 10 + 7).astype(np.float32)
    out = np.full((deltas, threads), -1.0, np.float32)
    every_delta[1, threads](x, out, OPS[op], width)
    return x, out


def check_every_delta(op, width, threads, deltas=DELTAS):
    """Compare every lane and delta with the oracle; return the (delta, thread) pairs whose source is absent."""
    x, out = run_every_delta(op, width, threads, deltas)
    absent = []
    for i in range(threads):
        warp_base, lane = i - i % 32, i % 32
        for d in range(deltas):
            src = warp_base + expected_source(op, lane, d, width)
            if src < threads:
                assert out[d, i] == x[src], (
                    f"{op} width {width}: thread {i} delta {d} got {out[d, i]}, want {x[src]}"
                )
            else:
                absent.append((d, i))
    return out, absent


@pytest.mark.parametrize("op", list(OPS))
def test_full_warps_every_lane_every_delta(op):
    out, absent = check_every_delta(op, 32, 64)
    assert not absent


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("op", list(OPS))
def test_widths_every_lane_every_delta(op, width):
    out, absent = check_every_delta(op, width, 32, deltas=33)
    assert not absent


@pytest.mark.parametrize("op", ["down", "xor", "idx"])
def test_partial_last_warp(op):
    """A block of 40 threads: warp 1 has lanes 0..7 only; reading lanes 8..31 is undefined (poison here)."""
    out, absent = check_every_delta(op, 32, 40)
    assert absent, "the oracle should name some lanes past the partial warp"
    if mode.SIMULATOR:
        for d, i in absent:
            assert np.isnan(out[d, i]), (
                f"thread {i} delta {d} read a lane that does not exist: expected poison"
            )


@cuda.jit
def half_warps(x, out):
    """The two half-warps shuffle at the same time under different masks (a divergent branch)."""
    i = cuda.threadIdx.x
    if i % 32 < 16:
        out[i] = warp.shfl_down_sync(0x0000FFFF, x[i], 1)
    else:
        out[i] = warp.shfl_up_sync(0xFFFF0000, x[i], 1)


def test_divergent_masks_shuffle_independently():
    x = np.arange(32, dtype=np.float32)
    out = np.full(32, -1.0, np.float32)
    half_warps[1, 32](x, out)
    want = np.concatenate([x[1:16], [np.nan, np.nan], x[16:31]])
    if mode.SIMULATOR:  # lanes 15 and 16 read across the masks' border: undefined
        np.testing.assert_array_equal(out, want)
    else:
        np.testing.assert_array_equal(np.delete(out, [15, 16]), np.delete(want, [15, 16]))


@cuda.jit
def broadcast_2d(out):
    """A 2-D block of 8 x 12: warps are formed from the LINEAR thread index ty * 8 + tx."""
    tid = cuda.threadIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    out[cuda.blockIdx.x, cuda.threadIdx.y, cuda.threadIdx.x] = warp.shfl_sync(warp.FULL_MASK, tid, 0)


def test_warps_of_a_2d_block_follow_the_linear_thread_index():
    out = np.full((2, 12, 8), -1, np.int64)
    broadcast_2d[2, (8, 12)](out)
    tid = np.arange(96).reshape(12, 8)
    want = tid - tid % 32  # every lane reads lane 0 of its warp
    np.testing.assert_array_equal(out, np.stack([want, want]))


@cuda.jit
def votes(pred, out):
    i = cuda.threadIdx.x
    p = pred[i] != 0
    out[0, i] = warp.ballot_sync(warp.FULL_MASK, p)
    out[1, i] = warp.all_sync(warp.FULL_MASK, p)
    out[2, i] = warp.any_sync(warp.FULL_MASK, p)
    out[3, i] = warp.eq_sync(warp.FULL_MASK, p)


@pytest.mark.parametrize("threads", [32, 45])
def test_votes(threads):
    rng = np.random.default_rng(threads)
    pred = (rng.random(threads) < 0.5).astype(np.int32)
    pred[0] = pred[31] = 1  # lane 31 set: Numba's ballot is a signed int32
    out = np.full((4, threads), 7, np.int64)
    votes[1, threads](pred, out)
    for i in range(threads):
        lanes = range(i - i % 32, min(i - i % 32 + 32, threads))
        ballot = sum(1 << (j % 32) for j in lanes if pred[j])
        assert out[0, i] & 0xFFFFFFFF == ballot
        assert out[1, i] == all(pred[j] for j in lanes)
        assert out[2, i] == any(pred[j] for j in lanes)
        assert out[3, i] == (len({pred[j] for j in lanes}) == 1)
    assert out[0, 0] < 0, "lane 31 voted: a signed 32-bit ballot is negative"


@cuda.jit
def early_exit(x, out, n):
    i = cuda.threadIdx.x
    if i >= n:
        return
    out[i] = warp.shfl_xor_sync(warp.FULL_MASK, x[i], 1)


@in_simulator
def test_exited_lanes_do_not_hang_and_read_as_poison():
    x = np.arange(32, dtype=np.float32)
    out = np.full(32, -1.0, np.float32)
    early_exit[1, 32](x, out, 21)
    np.testing.assert_array_equal(out[:20], x[np.arange(20) ^ 1])
    assert np.isnan(out[20]), "lane 20 reads lane 21, which exited"
    assert (out[21:] == -1).all()


@cuda.jit
def own_lane_not_in_mask(x, out):
    i = cuda.threadIdx.x
    out[i] = warp.shfl_down_sync(0xFFFFFFFE, x[i], 1)


@cuda.jit
def shuffle_then_barrier_mismatch(x, out):
    i = cuda.threadIdx.x
    if i < 16:
        out[i] = warp.shfl_down_sync(warp.FULL_MASK, x[i], 1)
    cuda.syncthreads()


@cuda.jit
def different_functions(x, out):
    i = cuda.threadIdx.x
    if i < 16:
        out[i] = warp.shfl_down_sync(warp.FULL_MASK, x[i], 1)
    else:
        out[i] = warp.shfl_up_sync(warp.FULL_MASK, x[i], 1)


@cuda.jit
def shuffle_bool(x, out):
    i = cuda.threadIdx.x
    out[i] = warp.shfl_down_sync(warp.FULL_MASK, x[i] > 0, 1)


@in_simulator
@pytest.mark.parametrize(
    "kernel, message",
    [
        (own_lane_not_in_mask, "does not include its own lane"),
        (shuffle_then_barrier_mismatch, "deadlock"),
        (different_functions, "different warp functions"),
        (shuffle_bool, "32- and 64-bit ints and floats"),
    ],
)
def test_mistakes_raise_clear_errors(kernel, message):
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(32, np.float32)
    with pytest.raises(Exception, match=message):
        kernel[1, 32](x, out)


@in_simulator
def test_simulated_kernels_can_call_cuda_shfl_directly():
    @cuda.jit
    def direct(x, out):
        i = cuda.threadIdx.x
        out[i] = cuda.shfl_xor_sync(0xFFFFFFFF, x[i], 3) + cuda.popc(cuda.ballot_sync(0xFFFFFFFF, True))

    x = np.arange(32, dtype=np.int64)
    out = np.zeros(32, np.int64)
    direct[1, 32](x, out)
    np.testing.assert_array_equal(out, (x ^ 3) + 32)


def test_shuffle_outside_a_kernel_is_an_error():
    if mode.ON_GPU:
        pytest.skip("on a GPU these are Numba intrinsics, callable only in kernels")
    with pytest.raises(RuntimeError, match="inside a kernel"):
        warp.shfl_down_sync(FULL, 1.0, 1)


@cuda.jit
def warp_sum(x, out):
    i = cuda.grid(1)
    v = x[i] if i < x.size else 0.0
    offset = 16
    while offset > 0:
        v += warp.shfl_down_sync(warp.FULL_MASK, v, offset)
        offset //= 2
    if cuda.laneid == 0:
        out[i // 32] = v


def test_warp_sum_reduction():
    x = np.random.default_rng(0).random(100)
    out = np.zeros(4)
    warp_sum[4, 32](x, out)  # 128 threads, the last 28 pad with zeros
    np.testing.assert_allclose(out, np.add.reduceat(x, [0, 32, 64, 96]), rtol=1e-12)


@on_gpu
@pytest.mark.gpu
def test_gpu_agrees_on_every_op_width_and_partial_warp():
    """On a real GPU: the hardware matches the oracle the simulator is tested against (run by the lead)."""
    for op in OPS:
        for width in (8, 16, 32):
            check_every_delta(op, width, 64)
        check_every_delta(op, 32, 45)
