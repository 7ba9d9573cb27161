"""course.traffic counts global reads and writes per thread of simulated kernels, and nothing else."""

import numpy as np
import pytest
from numba import cuda

import minisd.mode as mode
from course import traffic

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
