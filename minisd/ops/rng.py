"""minisd's random numbers, defined once so every backend draws the same ones.

A counter-based generator: number ``i`` of seed ``s`` is a pure function of ``(s, i)``, so a GPU thread
computes its own element without any state shared with other threads, and numpy gets the same bits.

* bits(i) = mix64(key + (i + 1) * GOLDEN) with key = mix64(seed): output i of SplitMix64 started at key
  (mix64 is SplitMix64's finaliser; all arithmetic mod 2**64).
* uniforms: u1 = ((bits(2p) >> 11) + 1) / 2**53 in (0, 1] (log-safe), u2 = (bits(2p + 1) >> 11) / 2**53.
* Box-Muller in float64: normal[2p] = r cos(2 pi u2), normal[2p + 1] = r sin(2 pi u2), r = sqrt(-2 ln u1),
  then rounded to float32.

The integer stream is exact everywhere. The float64 log/cos/sin of CUDA's libdevice and numpy may differ
in the last float64 bit; after rounding to float32 that changes a value only if it sat within ~1e-16
(relative) of a float32 rounding boundary, about once in 10**8 values.
"""

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB


def mix64_int(z):
    """SplitMix64's finaliser on a Python int (used on the host for the key)."""
    z &= MASK
    z = ((z ^ (z >> 30)) * M1) & MASK
    z = ((z ^ (z >> 27)) * M2) & MASK
    return z ^ (z >> 31)


def key_of(seed):
    """The stream key of a seed: any int, taken mod 2**64 (negative seeds wrap)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return mix64_int(int(seed))


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(M1)  # uint64 arrays wrap mod 2**64 silently
    z = (z ^ (z >> np.uint64(27))) * np.uint64(M2)
    return z ^ (z >> np.uint64(31))


def normal_numpy(n, seed):
    """n standard normal float32 numbers of ``seed``: the reference every other backend must match."""
    pairs = (n + 1) // 2
    counters = np.arange(1, 2 * pairs + 1, dtype=np.uint64)  # i + 1 for i = 0 .. 2*pairs-1
    bits = _mix64(np.uint64(key_of(seed)) + counters * np.uint64(GOLDEN))
    top = (bits >> np.uint64(11)).astype(np.float64)  # 53 bits: exact in float64
    u1 = (top[0::2] + 1.0) * 2.0**-53
    u2 = top[1::2] * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    out = np.empty(2 * pairs, np.float64)
    out[0::2] = r * np.cos(theta)
    out[1::2] = r * np.sin(theta)
    return out[:n].astype(np.float32)
