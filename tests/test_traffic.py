"""course.traffic counts global reads and writes per thread of simulated kernels, and nothing else."""

import numpy as np
import pytest

import minisd.mode as mode
from course import traffic
from minisd.kernel_backend import cuda

pytestmark = pytest.mark.skipif(mode.ON_GPU, reason="tracked arrays exist only in the simulator")


@cuda.jit
def neighbours(x, out):
    """out[i] = x[i-1] + x[i] + x[i+1] (zero outside): three global reads per thread, one write."""
    i = cuda.grid(1)
    if i < out.size:
        s = x[i]
        if i > 0:
            s += x[i - 1]
        if i + 1 < x.size:
            s += x[i + 1]
        out[i] = s


@cuda.jit
def shared_neighbours(x, out):
    """The same through shared memory: one read per thread (plus two halo reads per block)."""
    tile = cuda.shared.array(34, np.float32)
    i = cuda.grid(1)
    t = cuda.threadIdx.x
    tile[t + 1] = x[i] if i < x.size else 0.0
    if t == 0:
        tile[0] = x[i - 1] if i > 0 else 0.0
        last = i + cuda.blockDim.x
        tile[33] = x[last] if last < x.size else 0.0
    cuda.syncthreads()
    if i < out.size:
        out[i] = tile[t] + tile[t + 1] + tile[t + 2]


def reference(x):
    padded = np.concatenate([[0], x, [0]])
    return padded[:-2] + padded[1:-1] + padded[2:]


@pytest.mark.parametrize("kernel", [neighbours, shared_neighbours])
def test_tracked_arrays_compute_the_same_answer(kernel):
    x = np.random.default_rng(1).random(75).astype(np.float32)
    tx, tout = traffic.track(x, "x"), traffic.track(np.full(75, np.nan, np.float32), "out")
    kernel[3, 32](tx, tout)
    np.testing.assert_allclose(tout.data, reference(x), rtol=1e-6)
    assert np.asarray(tout).shape == (75,)


def test_counts_per_thread_block_and_element():
    n = 75
    tx, tout = traffic.track(np.ones(n, np.float32), "x"), traffic.track(np.zeros(n, np.float32), "out")
    neighbours[3, 32](tx, tout)
    reads = traffic.reads_per_thread(tx)
    assert reads[((0, 0, 0), (0, 0, 0))] == 2  # first element: no left neighbour
    assert reads[((1, 0, 0), (5, 0, 0))] == 3
    assert ((2, 0, 0), (20, 0, 0)) not in reads  # past the end: guarded, reads nothing
    assert traffic.max_reads_per_thread(tx) == 3
    assert traffic.total_reads(tx) == 3 * n - 2
    assert traffic.max_writes_per_thread(tout) == 1 and traffic.total_writes(tout) == n
    assert traffic.total_reads(tout) == 0 and traffic.total_writes(tx) == 0
    np.testing.assert_array_equal(traffic.element_reads(tx), [2] + [3] * (n - 2) + [2])
    np.testing.assert_array_equal(traffic.element_writes(tout), np.ones(n))
    assert traffic.reads_per_block(tx)[(2, 0, 0)] == 3 * 11 - 1


def test_shared_memory_is_not_counted_and_halo_is():
    n = 75
    tx, tout = traffic.track(np.ones(n, np.float32), "x"), traffic.track(np.zeros(n, np.float32), "out")
    shared_neighbours[3, 32](tx, tout)
    assert traffic.max_reads_per_thread(tx) == 3  # thread 0 loads its element and the two halo cells
    assert traffic.reads_per_thread(tx)[((0, 0, 0), (1, 0, 0))] == 1
    assert traffic.reads_per_block(tx)[(1, 0, 0)] == 32 + 2
    traffic.assert_reads_per_block(tx, at_most=34)
    traffic.assert_each_element_read(tx, at_most=3)
    with pytest.raises(AssertionError, match=r"thread \(0, 0, 0\) of block .* read 3 elements"):
        traffic.assert_reads_per_thread(tx, at_most=2)
    with pytest.raises(AssertionError, match="block .* read 34 elements"):
        traffic.assert_reads_per_block(tx, at_most=33)


@cuda.jit
def rows_2d(a, out):
    """Reads through a row view (a[r] then row[c]), writes through a 2-D index."""
    r, c = cuda.grid(2)
    if r < a.shape[0] and c < a.shape[1]:
        row = a[r]
        out[r, c] = row[c] * 2


def test_views_and_2d_indexing():
    a = np.arange(35, dtype=np.float64).reshape(5, 7)
    ta, tout = traffic.track(a, "a"), traffic.track(np.zeros((5, 7)), "out")
    rows_2d[(2, 2), (4, 4)](ta, tout)
    np.testing.assert_array_equal(tout.data, a * 2)
    np.testing.assert_array_equal(traffic.element_reads(ta), np.ones((5, 7)))
    assert traffic.max_writes_per_thread(tout) == 1


@cuda.jit
def count_atomically(x, hist):
    i = cuda.grid(1)
    if i < x.size:
        cuda.atomic.add(hist, x[i], 1)


def test_atomics_count_as_reads_and_a_write():
    x = np.array([0, 1, 1, 2, 1], np.int64)
    hist = traffic.track(np.zeros(3, np.int64), "hist")
    count_atomically[1, 8](x, hist)
    np.testing.assert_array_equal(hist.data, [1, 3, 1])
    assert traffic.total_writes(hist) == 5
    assert traffic.writes_per_block(hist)[(0, 0, 0)] == 5
    with pytest.raises(AssertionError, match="wrote 5 times"):
        traffic.assert_writes_per_block(hist, at_most=3)


def test_read_steps_picture_data_and_reset():
    tx, tout = traffic.track(np.ones(40, np.float32), "x"), traffic.track(np.zeros(40, np.float32), "out")
    neighbours[2, 32](tx, tout)
    steps = traffic.read_steps(tx, block=(0, 0, 0))
    assert steps.shape == (3, 32)
    assert list(steps[:, 5]) == [5, 4, 6]  # x[i], then x[i-1], then x[i+1]
    assert steps[2, 0] == -1  # thread 0 made only two reads
    traffic.reset(tx)
    assert traffic.total_reads(tx) == 0


def test_host_accesses_are_not_counted_and_bad_input_is_refused():
    tx = traffic.track(np.ones(4), "x")
    tx[0] = tx[1] + 1
    assert traffic.total_reads(tx) == 0 and traffic.total_writes(tx) == 0
    with pytest.raises(ValueError, match="scalar"):
        traffic.track(np.float32(1))


@cuda.jit
def column_sums(a, out, by_column):
    """by_column: thread c walks down column c (coalesced); else thread r walks along row r (strided)."""
    t = cuda.grid(1)
    if by_column and t < a.shape[1]:
        s = 0.0
        for r in range(a.shape[0]):
            s += a[r, t]
        out[t] = s
    elif not by_column and t < a.shape[0]:
        s = 0.0
        for c in range(a.shape[1]):
            s += a[t, c]
        out[t] = s


def test_coalescing_is_measured_per_warp_step():
    a = np.ones((40, 40), np.float32)
    coalesced, strided = traffic.track(a, "a"), traffic.track(a, "a")
    column_sums[2, 32](coalesced, np.zeros(40, np.float32), True)
    column_sums[2, 32](strided, np.zeros(40, np.float32), False)
    assert traffic.segments_per_warp_step(coalesced) <= 2
    assert traffic.segments_per_warp_step(strided) == 32  # 32 rows of 160 bytes: one segment per thread
    traffic.assert_coalesced(coalesced)
    with pytest.raises(AssertionError, match="32 128-byte segments"):
        traffic.assert_coalesced(strided)
    assert traffic.steps(coalesced, kind=traffic.WRITE).shape == (0, 0)


@cuda.jit
def strided_copy(x, out, step_by_grid):
    """A grid-stride copy; with step_by_grid False it steps by blockDim.x, the bug lesson 01 warns about."""
    step = cuda.gridsize(1) if step_by_grid else cuda.blockDim.x
    for i in range(cuda.grid(1), out.size, step):
        out[i] = x[i]


def test_each_element_written_once_catches_a_short_stride():
    x = np.arange(50, dtype=np.float32)
    good, bad = (traffic.track(np.zeros(50, np.float32), "out") for _ in range(2))
    strided_copy[3, 8](x, good, True)
    strided_copy[3, 8](x, bad, False)
    np.testing.assert_array_equal(good.data, x)
    np.testing.assert_array_equal(bad.data, x)  # the right answer: only the traffic shows the bug
    traffic.assert_each_element_written_once(good)
    with pytest.raises(AssertionError, match=r"out: element \(8,\) was written 2 times .* more than once"):
        traffic.assert_each_element_written_once(bad)


@cuda.jit
def unguarded(x, out):
    i = cuda.grid(1)
    out[i] = x[i]


def test_out_of_bounds_access_names_the_array_and_the_index():
    x, out = traffic.track(np.ones(40, np.float32), "x"), traffic.track(np.zeros(40, np.float32), "out")
    with pytest.raises(
        IndexError, match=r"read of x\[\d+\]: index \d+ is out of bounds for axis 0 with size 40"
    ):
        unguarded[2, 32](x, out)
    x = np.ones(64, np.float32)
    with pytest.raises(IndexError, match=r"write to out\[\d+\]: index \d+ is out of bounds"):
        unguarded[2, 32](x, traffic.track(np.zeros(40, np.float32), "out"))


SAXPY_CPP = r"""
extern "C" __global__ void saxpy(float a, const float* x, const float* __restrict__ y, float* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = a * x[i] + y[i];
}"""
SUM_CPP = r"""
extern "C" __global__ void block_sum(const float* x, float* total, int n, int divergent) {
    __shared__ float partial[64];
    partial[threadIdx.x] = threadIdx.x < n ? x[threadIdx.x] : 0.0f;
    __syncthreads();
    for (int stride = 32; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        if (!divergent || threadIdx.x < stride) __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(total, partial[0]);
}"""


@pytest.mark.skipif(mode.has_cupy(), reason="CuPy on a GPU counts nothing")
def test_cuda_cpu_strict_counts_each_threads_traffic_and_barriers():
    from course import cuda_cpu

    n = 1000
    x, y, out = np.arange(n, dtype=np.float32), np.ones(n, np.float32), np.zeros(n, np.float32)
    kernel = cuda_cpu.RawKernel(SAXPY_CPP, "saxpy", strict=True)
    kernel((3,), (64,), (np.float32(2), x, y, out, np.int32(n)))
    np.testing.assert_allclose(out, 2 * x + 1)
    assert kernel.last_launch == ((3, 1, 1), (64, 1, 1))
    per_thread = -(-n // 192)  # 6: the grid of 192 threads shares the 1000 elements
    assert kernel.counts["x"][:, 0].max() == per_thread and kernel.counts["x"][:, 1].max() == 0
    assert kernel.counts["out"][:, 1].max() == per_thread and kernel.counts["out"][:, 1].sum() == n
    total = np.zeros(1, np.float32)
    summed = cuda_cpu.RawKernel(SUM_CPP, "block_sum", strict=True)
    summed((1,), (64,), (x[:64].copy(), total, np.int32(64), np.int32(0)))
    assert total[0] == x[:64].sum() and summed.counts["total"][:, 1].sum() == 1  # one atomic, one write
    with pytest.raises(
        cuda_cpu.LaunchError, match=r"thread 0 reached __syncthreads\(\) 7 times but thread \d+"
    ):
        summed((1,), (64,), (x[:64].copy(), total, np.int32(64), np.int32(1)))
    cuda_cpu.RawKernel(SUM_CPP, "block_sum")((1,), (64,), (x[:64].copy(), total, np.int32(64), np.int32(1)))
