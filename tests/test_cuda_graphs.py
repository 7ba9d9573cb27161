"""minisd/cuda_graphs.py on a GPU: the sampling loop of the CuPy and the Numba backends, captured once and
replayed, gives the eager loop's samples.

A replay runs the same kernels on the same inputs, only launched differently, so each backend's replays are
compared with its own eager loop on the float samples (the pictures against numpy: test_pipeline.py's
test_gpu_backend_matches_numpy). Before the last replay every array the graphs write is poisoned with NaN,
so a stale value from an earlier run cannot pass for a replayed one. GPU only: skipped without a GPU and CuPy.
"""

import numpy as np
import pytest
import torch

import minisd.mode as mode
from minisd.architecture import default_config
from minisd.ops.harness import assert_close
from minisd.pipeline import MiniSDPipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mode.has_cupy(), reason="needs a CUDA GPU and CuPy"),
]

if mode.has_cupy():
    import cupy as cp

    from minisd import ops
    from minisd.cuda_graphs import GraphedSampler
    from minisd.kernel_backend import cuda

PROMPTS = [
    "a big red circle on the left on a blue background",
    "a small white star at the top on a purple background",
    "a big black heart right of a small orange triangle on a green background",
]
STEPS = 4
REPLAY_TOL = 1e-4  # of max|sample|: the same kernels in the same order (in practice equal)


@pytest.fixture(scope="module")
def model():
    """(state, config): a random model of minisd's real config, norm scales and biases away from 1 and 0."""
    from minisd.model import MiniSD

    torch.manual_seed(4)
    net = MiniSD(default_config()).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}, net.config


def arrays(state):
    """Every array in a (nested) tuple, list or dict of the graphs' kept outputs."""
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, list | tuple):
        return [a for part in state for a in arrays(part)]
    return [state]


def count_calls(monkeypatch, where, name):
    calls = []
    original = getattr(where, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(where, name, counted)
    return calls


def poison(a):
    """NaN in every element: float32, or half precision stored as uint16 (0xFFFF is NaN in fp16 and bf16)."""
    a = cp.asarray(a)
    a.fill(0xFFFF if a.dtype == cp.uint16 else cp.nan)


@pytest.mark.parametrize("backend, precision", [("cupy", "fp32"), ("cupy", "bf16"), ("numba", "fp32")])
def test_replays_give_the_eager_loops_samples(model, backend, precision, monkeypatch):
    eager = MiniSDPipeline(*model, backend=backend, precision=precision, graphs=False)
    assert eager.graphs is None
    graphed = MiniSDPipeline(*model, backend=backend, precision=precision)
    assert isinstance(graphed.graphs, GraphedSampler)
    ref = eager.sample(PROMPTS, STEPS, 3.0, seed=5)
    assert ref.shape == (3, 3, 64, 64), "the graphs sample 4x16x16 latents, decoded to 64x64 images"
    numba_allocations = count_calls(monkeypatch, cuda, "device_array")  # Numba's own memory, not the pool's
    for run in range(3):  # the plan's first run (eager), capture + replay, replay
        if run == 2:
            (entry,) = graphed.graphs.plans.values()
            assert len(entry.graphs) == STEPS + 2, "one graph for the prologue, one per step, one to decode"
            with entry.stream:  # the stream the replay runs on: poisoned before it starts
                for a in arrays(entry.keep):
                    poison(a)
        done = []
        got = graphed.sample(
            PROMPTS, STEPS, 3.0, seed=5, progress=lambda i, n, done=done: done.append((i, n))
        )
        assert_close(got, ref, REPLAY_TOL, f"{backend} run {run} against the eager loop")
        assert done == [(i, STEPS) for i in range(STEPS)], done
    if backend == "numba":
        assert numba_allocations == [], "a graphed Numba run allocated outside the plan's pool"
        assert ops.get_stream() == 0 and ops.set_allocator(None) is None, "Numba's stream or allocator leaked"
    other = graphed.sample(PROMPTS, STEPS, 3.0, seed=6)
    assert_close(other, eager.sample(PROMPTS, STEPS, 3.0, seed=6), REPLAY_TOL, f"{backend} seed 6")
    assert np.abs(other - ref).max() > 0.1, f"{backend}: the seed must reach the replayed graphs"


def test_a_plan_is_captured_once_and_plans_do_not_mix(model):
    """Another batch is another plan (its own graphs and pool); going back replays the first one's graphs."""
    graphed = MiniSDPipeline(*model, backend="numba")
    eager = MiniSDPipeline(*model, backend="numba", graphs=False)
    one, two = PROMPTS[:1], PROMPTS[:2]
    for _ in range(2):
        graphed.sample(one, STEPS, 1.5, seed=1)
    (first,) = graphed.graphs.plans.values()
    captured = list(first.graphs)
    for _ in range(2):
        assert_close(
            graphed.sample(two, STEPS, 1.5, seed=2), eager.sample(two, STEPS, 1.5, seed=2), REPLAY_TOL
        )
    assert_close(graphed.sample(one, STEPS, 1.5, seed=3), eager.sample(one, STEPS, 1.5, seed=3), REPLAY_TOL)
    assert len(graphed.graphs.plans) == 2
    assert all(g is c for g, c in zip(first.graphs, captured, strict=True)), (
        "the first plan was captured again"
    )


def test_lesson_kernels_run_eagerly_and_draw_the_same_picture(model):
    """--kernels solutions: lesson 11's functions take and return numpy arrays (they upload, launch on the
    default stream, copy back and check on the host), which no graph can hold, so that loop stays eager.
    Its samples are minisd's Numba graphs' up to the summation order of other kernels."""
    lesson = MiniSDPipeline(*model, kernels="solutions", log=lambda *a: None)
    assert lesson.graphs is None
    graphed = MiniSDPipeline(*model, backend="numba")
    prompts = PROMPTS[:1]
    for _ in range(2):
        ours = graphed.sample(prompts, 2, 3.0, seed=9)
    assert_close(lesson.sample(prompts, 2, 3.0, seed=9), ours, 1e-3, "lesson 11's kernels against minisd's")
