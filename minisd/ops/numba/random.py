"""randn: the counter-based normal generator of minisd.ops.rng, one GPU thread per number or pair.

Counter-based means number i is a pure function of (seed, i): threads need no shared state, and the
numpy backend reproduces the same bits (see rng.py for the exact definition).

v1  one thread per output: each thread computes its Box-Muller pair and keeps one half (2x the hashing).
v2  one thread per pair: both halves written (half the threads, half the log/sqrt work).
"""

import math
import warnings

import numpy as np

from minisd.kernel_backend import cuda, float64, uint64
from minisd.mode import SIMULATOR
from minisd.ops import rng
from minisd.ops.numba.common import launch1d


def _launch(kernel, n, seed, out):
    with warnings.catch_warnings():
        if SIMULATOR:  # it hashes numpy uint64 scalars, which warn on the (intended) wrap-around mod 2**64
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        launch1d(kernel, n, np.uint64(rng.key_of(seed)), out)


GOLDEN = np.uint64(rng.GOLDEN)
M1 = np.uint64(rng.M1)
M2 = np.uint64(rng.M2)
# uint64 shift amounts and constants: mixing uint64 with signed ints would make Numba use float64.
S30, S27, S31, S11, ONE = (np.uint64(v) for v in (30, 27, 31, 11, 1))
TWO_PI = 2.0 * math.pi
INV_2_53 = 2.0**-53


@cuda.jit(device=True)
def _mix64(z):
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    return z ^ (z >> S31)


@cuda.jit(device=True)
def _pair(key, p):
    """Box-Muller pair p: (r, theta) from counters 2p and 2p+1."""
    c = uint64(2 * p) + ONE
    b1 = _mix64(key + c * GOLDEN)
    b2 = _mix64(key + (c + ONE) * GOLDEN)
    u1 = (float64(b1 >> S11) + 1.0) * INV_2_53
    u2 = float64(b2 >> S11) * INV_2_53
    return math.sqrt(-2.0 * math.log(u1)), TWO_PI * u2


@cuda.jit
def _randn_v1(key, out):
    i = cuda.grid(1)
    if i < out.size:
        r, theta = _pair(key, i // 2)
        out[i] = r * math.cos(theta) if i % 2 == 0 else r * math.sin(theta)


def randn_v1(seed, out):
    _launch(_randn_v1, out.size, seed, out)


@cuda.jit
def _randn_v2(key, out):
    p = cuda.grid(1)
    if 2 * p < out.size:
        r, theta = _pair(key, p)
        out[2 * p] = r * math.cos(theta)
        if 2 * p + 1 < out.size:
            out[2 * p + 1] = r * math.sin(theta)


def randn_v2(seed, out):
    _launch(_randn_v2, (out.size + 1) // 2, seed, out)


VERSIONS = {"randn": {1: randn_v1, 2: randn_v2}}
