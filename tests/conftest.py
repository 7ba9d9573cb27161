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
