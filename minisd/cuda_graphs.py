"""Sampling from captured CUDA graphs, on CuPy or on Numba: launch ~6 000 kernels with ~26 calls.

A minisd UNet step is ~250 small kernels; launched one by one from Python each costs more CPU time than
its GPU time (~7 us a CuPy launch, ~30 us a Numba one: lesson 12), so an eager loop leaves the GPU idle
most of the time (batch 1 especially). A CUDA graph records the launches once and replays them with one
call. What a graph bakes in: every kernel's arguments, including the arrays' addresses and the scalars
(DDIM coefficients, guidance scale). So:

* one set of graphs per ``SamplingPlan`` (batch, size, timesteps, guidance): a new plan is a new capture;
* inputs go into fixed buffers (the one-hot prompts, the initial noise) before each replay;
* every array the graphs touch comes from a private memory pool, kept alive with the graphs, so nothing
  else can be handed that memory between replays.

The first run of a plan is eager (it compiles and loads the kernels, which must not happen during capture,
and fills the pool, so the capture needs no cudaMalloc); the second captures; later runs only replay.
One graph holds the prologue (text encoder, cross-attention k/v, time embeddings), one graph each
step, so ``progress`` can still report step by step, and a last one the autoencoder's decoder.

CuPy's stream capture records both backends. CuPy's kernels launch on CuPy's current stream and take their
arrays from its current allocator (``with stream``, ``using_allocator``); Numba's are pointed at the same
stream and pool while a plan runs (``_numba_on``).
"""

import contextlib

import cupy as cp

BACKENDS = ("cupy", "numba")


class _Plan:
    """One plan's stream, memory pool, input buffers and graphs."""

    def __init__(self, one_hot_shape, noise_shape, plan):
        self.pool, self.stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
        with cp.cuda.using_allocator(self.pool.malloc), self.stream:
            # the graphs read their inputs at fixed addresses: refilled before each run
            self.one_hot = cp.empty(one_hot_shape, cp.float32)
            self.noise = cp.empty(noise_shape, cp.float32)
            self.timestep_rows = cp.asarray(plan.timestep_rows())  # the same every run: uploaded once
        self.graphs = None  # captured on the second run
        self.keep = []  # arrays the graphs write: alive as long as the graphs
        self.result = None


class GraphedSampler:
    def __init__(self, sampler):
        if sampler.ops.backend not in BACKENDS:
            raise ValueError(
                f"CUDA graphs capture the {' and '.join(BACKENDS)} backends, not {sampler.ops!r}"
            )
        self.sampler = sampler
        self.plans = {}

    def run(self, one_hot, shape, seed, plan, progress=None):
        """Sample (numpy result) for ``plan``: eager the first time, from CUDA graphs afterwards."""
        entry = self.plans.get(plan)
        first = entry is None
        if first:
            # The weights were uploaded (and prepared by kernels) on the default stream, and a non-blocking
            # stream does not wait for it: without this, the first steps could read half-written weights.
            cp.cuda.Device().synchronize()
            entry = self.plans[plan] = _Plan(one_hot.shape, shape, plan)
        ops = self.sampler.ops
        numba = _numba_on(entry.stream) if ops.backend == "numba" else contextlib.nullcontext()
        with cp.cuda.using_allocator(entry.pool.malloc), entry.stream, numba:
            entry.one_hot.set(one_hot, entry.stream)
            ops.kernels.randn(shape, seed, out=ops.to_device(entry.noise))  # outside the graphs: seeds vary
            if first:
                x = self._eager(entry, plan, progress)
            else:
                if entry.graphs is None:
                    self._capture(entry, plan)
                x = self._replay(entry, plan, progress)
            return cp.asarray(x).get()  # waits for the stream (a Numba result is a view of a CuPy array)

    def _inputs(self, entry):
        """The input buffers as the ops' arrays (Numba: zero-copy views)."""
        return (self.sampler.ops.to_device(a) for a in (entry.one_hot, entry.timestep_rows, entry.noise))

    def _eager(self, entry, plan, progress):
        """The calls ``_capture`` records, run: every kernel compiled and loaded, the pool filled."""
        one_hot, timestep_rows, x = self._inputs(entry)
        state = self.sampler.prologue(one_hot, timestep_rows, plan)
        for i in range(len(plan.timesteps)):
            x = self.sampler.step(i, x, state, plan)
            if progress is not None:
                progress(i, len(plan.timesteps))
        return self.sampler.finish(x)

    def _capture(self, entry, plan):
        one_hot, timestep_rows, x = self._inputs(entry)
        stream = entry.stream
        stream.synchronize()
        stream.begin_capture()
        state = self.sampler.prologue(one_hot, timestep_rows, plan)
        graphs, keep = [stream.end_capture()], [state]
        for i in range(len(plan.timesteps)):
            stream.begin_capture()
            x = self.sampler.step(i, x, state, plan)
            graphs.append(stream.end_capture())
            keep.append(x)
        stream.begin_capture()
        x = self.sampler.finish(x)
        graphs.append(stream.end_capture())
        keep.append(x)
        for graph in graphs:
            graph.upload(stream)  # instantiate on the device now, not at the first launch
        entry.graphs, entry.keep, entry.result = graphs, keep, x

    def _replay(self, entry, plan, progress):
        prologue, *steps, finish = entry.graphs
        prologue.launch(entry.stream)
        for i, graph in enumerate(steps):
            graph.launch(entry.stream)
            if progress is not None:
                entry.stream.synchronize()  # report a step when it is done, not when it is queued
                progress(i, len(plan.timesteps))
        finish.launch(entry.stream)
        return entry.result


@contextlib.contextmanager
def _numba_on(stream):
    """While a plan runs: Numba launches on its stream, allocates from CuPy's current allocator (the plan's
    pool), and frees none of Numba's own memory (Numba frees in batches, and a cudaFree would break a capture)."""
    from minisd.kernel_backend import cuda
    from minisd.ops import set_allocator, set_stream

    previous = set_stream(stream), set_allocator(_cupy_empty)
    try:
        with cuda.defer_cleanup():
            yield
    finally:
        set_stream(previous[0])
        set_allocator(previous[1])


def _cupy_empty(shape):
    """A Numba view of a new CuPy array; the view holds the CuPy array, so its pool block lives as long.

    Why not a Numba EMM plugin (Numba's own hook for foreign memory)? It must be installed before Numba
    first touches the GPU, and from then on serves every Numba allocation in the process, the learner's
    included. This switch covers only the ops' outputs and scratch arrays, and only while a plan runs.
    """
    from minisd.kernel_backend import cuda

    return cuda.as_cuda_array(cp.empty(shape, cp.float32), sync=False)
