"""Fixtures the op tests share."""

import secrets

import numpy as np
import pytest


@pytest.fixture
def gen(request):
    """Fresh inputs every run (any valid input must work). The seed is printed, so a failure shows it, and
    ``pytest ... --seed N`` replays exactly those inputs."""
    seed = request.config.getoption("--seed")
    seed = secrets.randbits(32) if seed is None else seed
    print(f"test data: --seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def numba_ops_poisoned():
    """Let Ops("numba") run in the simulator (MINISD_ALLOW_SIMULATOR=1), and start every array it allocates
    (outputs and scratch) as NaN, so an element a kernel never writes shows. Module-wide (``pytestmark``):
    Hypothesis tests cannot take a function-scoped fixture."""
    from minisd import ops
    from minisd.kernel_backend import cuda

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINISD_ALLOW_SIMULATOR", "1")
        previous = ops.set_allocator(lambda shape: cuda.to_device(np.full(shape, np.nan, np.float32)))
        try:
            yield
        finally:
            ops.set_allocator(previous)
