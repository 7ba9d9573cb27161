"""Sampling on CuPy from captured CUDA graphs: launch ~6 000 kernels with ~26 calls.

A minisd UNet step is ~250 small kernels; launched one by one from Python each costs more CPU time than
its GPU time, so an eager loop leaves the GPU idle most of the time (batch 1 especially). A CUDA graph
records the launches once and replays them with one call. What a graph bakes in: every kernel's
arguments, including the arrays' addresses and the scalars (DDIM coefficients, guidance scale). So:

* one set of graphs per ``SamplingPlan`` (batch, size, timesteps, guidance): a new plan is a new capture;
* inputs go into fixed buffers (the one-hot prompts, the initial noise) before each replay;
* every array the graphs touch comes from a private memory pool, kept alive with the graphs, so nothing
  else can be handed that memory between replays.

The first run of a plan is eager (it compiles and loads the kernels, which must not happen during capture,
and fills the pool, so the capture needs no cudaMalloc); the second captures; later runs only replay.
One graph holds the prologue (text encoder, cross-attention k/v, time embeddings) and one graph each
step, so ``progress`` can still report step by step.
"""

import cupy as cp

from minisd.ops import cupy_ops


class _Captured:
    def __init__(self, pool, stream):
        self.pool, self.stream = pool, stream
        self.graphs = None  # captured on the second run
        self.keep = []  # arrays the graphs read or write: alive as long as the graphs


class GraphedSampler:
    def __init__(self, sampler):
        self.sampler = sampler
        self.plans = {}

    def run(self, one_hot, shape, seed, plan, progress=None):
        """Sample (numpy result) for ``plan``: eager the first time, from CUDA graphs afterwards."""
        entry = self.plans.get(plan)
        if entry is None:
            # The weights were uploaded (and prepared by kernels) on the default stream, and a non-blocking
            # stream does not wait for it: without this, the first steps could read half-written weights.
            cp.cuda.Device().synchronize()
            entry = self.plans[plan] = _Captured(cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True))
            return self._eager(entry, one_hot, shape, seed, plan, progress)
        if entry.graphs is None:
            self._capture(entry, one_hot.shape, shape, plan)
        return self._replay(entry, one_hot, seed, plan, progress)

    def _eager(self, entry, one_hot, shape, seed, plan, progress):
        with cp.cuda.using_allocator(entry.pool.malloc), entry.stream:
            noise = self.sampler.ops.randn(shape, seed)
            x = self.sampler.run(one_hot, noise, plan, progress)
            return x.get()

    def _capture(self, entry, one_hot_shape, shape, plan):
        stream = entry.stream
        with cp.cuda.using_allocator(entry.pool.malloc), stream:
            one_hot = cp.empty(one_hot_shape, cp.float32)
            noise = cp.empty(shape, cp.float32)
            timestep_rows = cp.asarray(plan.timestep_rows())  # uploaded before capture: graphs copy nothing
            stream.synchronize()
            graphs, keep = [], [one_hot, noise, timestep_rows]
            stream.begin_capture()
            state = self.sampler.prologue(one_hot, timestep_rows, plan)
            graphs.append(stream.end_capture())
            keep.append(state)
            x = noise
            for i in range(len(plan.timesteps)):
                stream.begin_capture()
                x = self.sampler.step(i, x, state, plan)
                graphs.append(stream.end_capture())
                keep.append(x)
            for graph in graphs:
                graph.upload(stream)  # instantiate on the device now, not at the first launch
        entry.graphs, entry.keep = graphs, keep

    def _replay(self, entry, one_hot, seed, plan, progress):
        stream = entry.stream
        one_hot_buffer, noise, result = entry.keep[0], entry.keep[1], entry.keep[-1]
        with stream:
            one_hot_buffer.set(one_hot, stream)
            cupy_ops.randn(noise.shape, seed, out=noise)  # outside the graphs: the seed changes per run
            entry.graphs[0].launch(stream)
            for i, graph in enumerate(entry.graphs[1:]):
                graph.launch(stream)
                if progress is not None:
                    stream.synchronize()  # report a step when it is done, not when it is queued
                    progress(i, len(plan.timesteps))
            return result.get(stream)
