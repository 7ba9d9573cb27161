"""Count global-memory traffic per thread in the CUDA simulator (GPU-Puzzles style).

Wrap an input or output with ``track`` and pass the wrapper to a kernel instead of the numpy array::

    from course import traffic

    x = traffic.track(np.random.rand(1000).astype(np.float32), "x")
    out = traffic.track(np.zeros(1000, np.float32), "out")
    blur[blocks, threads](x, out)        # the simulator passes the wrappers through untouched
    traffic.assert_reads_per_thread(x, at_most=2)
    result = out.data                     # the numpy array the kernel wrote into

Every element read (``x[i]``, ``x[i, j]``) or written (``out[i] = v``) inside a kernel is recorded with the
block and thread that did it. Shared memory (``cuda.shared.array``) is a plain numpy array and is not
counted: that is the point, it is the cheap memory. ``cuda.atomic.add(out, i, v)`` counts as reads and a
write of ``out[i]``. Indexing with a slice (``x[i]`` of a 2-D array) returns a tracked view; only element
accesses are counted. Accesses from host code (outside a kernel) are not recorded.

Tracked arrays work only in the simulator: on a GPU a kernel needs real device arrays, so ``track`` raises.
Grading tests therefore check traffic only ``if mode.SIMULATOR``.

Queries (all take the tracked array, after the kernel ran):

* ``reads_per_thread(a)`` / ``writes_per_thread(a)``: ``{(block, thread): count}`` with ``block`` and
  ``thread`` the (x, y, z) index tuples;
* ``max_reads_per_thread(a)`` / ``max_writes_per_thread(a)``;
* ``reads_per_block(a)`` / ``writes_per_block(a)``: ``{block: count}``;
* ``element_reads(a)`` / ``element_writes(a)``: an int array shaped like ``a``, how often each element was
  read / written;
* ``steps(a, block=(0, 0, 0), kind=READ)`` / ``read_steps(a, block)``: ``addresses[step, thread]`` (flat
  element index of the thread's step-th access, -1 when it had none) for ``course.pictures.access_pattern``;
* ``segments_per_warp_step(a, kind=READ, segment_bytes=128)``: how many memory segments a warp touches in
  one step at worst (1-2 when coalesced, up to 32 when strided);
* ``assert_reads_per_thread(a, at_most)``, ``assert_writes_per_thread(a, at_most)``,
  ``assert_reads_per_block(a, at_most)``, ``assert_writes_per_block(a, at_most)``,
  ``assert_each_element_read(a, at_most)``, ``assert_each_element_written_once(a)``,
  ``assert_coalesced(a, kind=READ, at_most=2)``: raise AssertionError with a message a learner can act on.

An out-of-bounds index raises IndexError naming the array and the access (``write to out[300]: ...``).
"""

import threading
from collections import Counter

import numpy as np

import minisd.mode as mode

READ, WRITE = 0, 1


class _Log:
    """The accesses of one tracked array and all its views: (block, thread, linear thread id, flat index, kind)."""

    def __init__(self, name, shape):
        self.name = name
        self.shape = shape
        self.lock = threading.Lock()
        self.records = []

    def add(self, flat_indices, kind):
        me = threading.current_thread()
        if not hasattr(me, "blockIdx"):
            return  # host code: not kernel traffic
        block, thread = tuple(me.blockIdx), tuple(me.threadIdx)
        with self.lock:
            for flat in flat_indices:
                self.records.append((block, thread, me.thread_id, int(flat), kind))


class TrackedArray:
    """A numpy array stand-in whose element reads and writes inside a simulated kernel are recorded."""

    def __init__(self, data, log, ids):
        self.data = data
        self._log = log
        self._ids = ids  # flat index (in the original array) of each element of this view

    # what kernels use
    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def name(self):
        return self._log.name

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        try:
            value = self.data[key]
        except IndexError as exc:
            raise IndexError(f"read of {self.name}[{_show_key(key)}]: {exc}") from None
        ids = self._ids[key]
        if isinstance(value, np.ndarray):
            return TrackedArray(value, self._log, ids)  # a view: its element accesses count later
        self._log.add([ids], READ)
        return value

    def __setitem__(self, key, value):
        try:
            self.data[key] = value
        except IndexError as exc:
            raise IndexError(f"write to {self.name}[{_show_key(key)}]: {exc}") from None
        self._log.add(np.ravel(self._ids[key]), WRITE)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)

    def __repr__(self):
        return f"TrackedArray({self.name!r}, shape={self.shape}, dtype={self.dtype}, {len(self._log.records)} accesses)"


def _show_key(key):
    return ", ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def track(array, name="array"):
    """Wrap a numpy array so kernels running in the simulator record every element they read or write."""
    if mode.ON_GPU:
        raise RuntimeError(
            "course.traffic counts accesses in the CUDA simulator only; on a GPU pass the numpy/device array itself"
        )
    array = np.asarray(array)
    if array.ndim == 0:
        raise ValueError("track a 1-D or larger array, not a scalar")
    ids = np.arange(array.size).reshape(array.shape)
    return TrackedArray(array, _Log(name, array.shape), ids)


def reset(a):
    """Forget the recorded accesses (e.g. between two kernel launches on the same arrays)."""
    with a._log.lock:
        a._log.records.clear()


def _records(a, kind):
    return [r for r in a._log.records if r[4] == kind]


def reads_per_thread(a):
    return dict(Counter((r[0], r[1]) for r in _records(a, READ)))


def writes_per_thread(a):
    return dict(Counter((r[0], r[1]) for r in _records(a, WRITE)))


def max_reads_per_thread(a):
    return max(reads_per_thread(a).values(), default=0)


def max_writes_per_thread(a):
    return max(writes_per_thread(a).values(), default=0)


def reads_per_block(a):
    return dict(Counter(r[0] for r in _records(a, READ)))


def writes_per_block(a):
    return dict(Counter(r[0] for r in _records(a, WRITE)))


def total_reads(a):
    return len(_records(a, READ))


def total_writes(a):
    return len(_records(a, WRITE))


def _per_element(a, kind):
    counts = np.zeros(int(np.prod(a._log.shape)), dtype=np.int64)
    for r in _records(a, kind):
        counts[r[3]] += 1
    return counts.reshape(a._log.shape)


def element_reads(a):
    return _per_element(a, READ)


def element_writes(a):
    return _per_element(a, WRITE)


def steps(a, block=(0, 0, 0), kind=READ):
    """``addresses[step, thread]`` of one block's reads (or writes), in each thread's own order (-1: none).

    ``thread`` is the linear thread index in the block (x fastest), so threads 32w..32w+31 form warp w.
    """
    per_thread = {}
    for r in _records(a, kind):
        if r[0] == tuple(block):
            per_thread.setdefault(r[2], []).append(r[3])
    if not per_thread:
        return np.full((0, 0), -1, dtype=np.int64)
    threads = max(per_thread) + 1
    n_steps = max(len(v) for v in per_thread.values())
    out = np.full((n_steps, threads), -1, dtype=np.int64)
    for t, flats in per_thread.items():
        out[: len(flats), t] = flats
    return out


def read_steps(a, block=(0, 0, 0)):
    """``steps`` of the reads: the input of ``course.pictures.access_pattern``."""
    return steps(a, block, READ)


def segments_per_warp_step(a, kind=READ, segment_bytes=128):
    """The most ``segment_bytes``-byte memory segments one warp touched in one step, over all blocks.

    A warp's load is served in 32-byte sectors of 128-byte lines: 32 threads reading 32 consecutive float32
    touch 1 segment of 128 bytes (2 when not aligned); reading with a stride of 32 floats touches 32.
    """
    per = max(1, segment_bytes // a.dtype.itemsize)
    worst = 0
    for block in {r[0] for r in _records(a, kind)}:
        table = steps(a, block, kind)
        for w in range(0, table.shape[1], 32):
            for row in table[:, w : w + 32]:
                worst = max(worst, len({int(x) // per for x in row if x >= 0}))
    return worst


def assert_coalesced(a, kind=READ, at_most=2, segment_bytes=128):
    """Every warp's accesses, step by step, fall in at most ``at_most`` segments of ``segment_bytes`` bytes."""
    worst = segments_per_warp_step(a, kind, segment_bytes)
    if worst > at_most:
        what = "reads" if kind == READ else "writes"
        raise AssertionError(
            f"{a.name}: a warp's {what} in one step spread over {worst} {segment_bytes}-byte segments (at most "
            f"{at_most} when coalesced). Neighbouring threads (threadIdx.x, threadIdx.x + 1) should touch "
            f"neighbouring addresses: make the fastest-varying thread index walk the last (contiguous) axis."
        )


def _worst(counts):
    who, n = max(counts.items(), key=lambda kv: kv[1])
    return who, n


def assert_reads_per_thread(a, at_most):
    counts = reads_per_thread(a)
    if counts and max(counts.values()) > at_most:
        (block, thread), n = _worst(counts)
        raise AssertionError(
            f"{a.name}: thread {thread} of block {block} read {n} elements from global memory; at most {at_most} "
            f"per thread allowed. Each thread does its own share of the work, and loads each value it needs once "
            f"(into a register or shared memory) to reuse it."
        )


def assert_writes_per_thread(a, at_most):
    counts = writes_per_thread(a)
    if counts and max(counts.values()) > at_most:
        (block, thread), n = _worst(counts)
        raise AssertionError(
            f"{a.name}: thread {thread} of block {block} wrote {n} times to global memory; at most {at_most} "
            f"per thread allowed. Each thread does its own share of the work (one thread doing everything in a "
            f"loop is a CPU program), and accumulates in a register or shared memory to write each result once."
        )


def assert_reads_per_block(a, at_most):
    counts = reads_per_block(a)
    if counts and max(counts.values()) > at_most:
        block, n = _worst(counts)
        raise AssertionError(
            f"{a.name}: block {block} read {n} elements from global memory; at most {at_most} allowed. "
            f"Each block should load its tile (plus halo) once into shared memory and read it from there."
        )


def assert_writes_per_block(a, at_most):
    counts = writes_per_block(a)
    if counts and max(counts.values()) > at_most:
        block, n = _worst(counts)
        raise AssertionError(
            f"{a.name}: block {block} wrote {n} times to global memory; at most {at_most} allowed. "
            f"Combine the block's results in shared memory first and write (or atomically add) once per result."
        )


def assert_each_element_read(a, at_most):
    counts = element_reads(a)
    if counts.max(initial=0) > at_most:
        idx = tuple(int(i) for i in np.argwhere(counts == counts.max())[0])
        raise AssertionError(
            f"{a.name}: element {idx} was read {int(counts.max())} times from global memory; at most {at_most} "
            f"allowed."
        )


def assert_each_element_written_once(a):
    """Every element was written exactly once, over all threads (unwritten ones show as poison elsewhere)."""
    counts = element_writes(a)
    if counts.max(initial=0) > 1:
        idx = tuple(int(i) for i in np.argwhere(counts > 1)[0])
        flat = int(np.ravel_multi_index(idx, a._log.shape))
        who = [f"thread {r[1]} of block {r[0]}" for r in _records(a, WRITE) if r[3] == flat][:2]
        raise AssertionError(
            f"{a.name}: element {idx} was written {int(counts[idx])} times ({' and '.join(who)}, ...): "
            f"{int((counts > 1).sum())} elements were written more than once. Each element belongs to one thread: "
            f"do several threads start at the same place or step too short a stride?"
        )


def maybe_track(array, name):
    """The array to hand a kernel under test: counted in the simulator, the plain array on a GPU (no counters)."""
    return track(array, name) if mode.SIMULATOR else array


def plain(array):
    """The numpy array behind a tracked one (or the array itself): for checking results."""
    return array.data if isinstance(array, TrackedArray) else array
