"""Lesson 07 — softmax and normalisation: your exercises.

Fill in the TODOs, then run ``pytest tests/exercises/test_lesson07.py``. The functions of 07.3 and 07.4 are the ones
lesson 11 plugs into minisd: keep their signatures.
"""

import math  # noqa: F401  (math.exp, math.sqrt, math.inf in your kernels)

import minisd.mode as mode

# isort: split
import numpy as np  # noqa: F401  (for your host functions)

from course import warp  # noqa: F401  (warp.shfl_xor_sync, warp.FULL_MASK)
from minisd.kernel_backend import cuda, float32, int32

WARP = 32
NORM_THREADS = mode.pick(gpu=256, simulator=32)  # threads per block of the normalisation kernels


# 07.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def softmax_kernel(x, out):
    """Numerically stable softmax of each row of x (R, D) into out, ONE WARP PER ROW.

    The grader launches softmax_kernel[R, 32]: block b handles row b, lane = cuda.threadIdx.x.
    1. Each lane walks its columns j = lane, lane+32, ... and tracks the maximum (or, better, the online pair
       (m, s): running max and running sum of exp(x - m), rescaling s by exp(m_old - m_new) when m grows).
    2. Combine the 32 lanes' values with warp.shfl_xor_sync(warp.FULL_MASK, value, offset) for offset = 16, 8,
       4, 2, 1 (after the butterfly every lane holds the result).
    3. out[row, j] = exp(x[row, j] - max) / sum.
    Rows may be shorter than 32 (lanes with nothing to do must still join every shuffle) and values may be
    huge (1e4): exp(1e4) overflows, exp(x - max) never does. Careful: -inf - (-inf) is NaN.

    Graded: the answer (rows shorter than 32, logits of 1e4); a lane reads each of its elements at most
    twice and writes each once.
    """
    row = cuda.blockIdx.x
    lane = cuda.threadIdx.x
    # TODO
    pass


# 07.2 -------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def welford_combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries of disjoint sets into the summary of their union.

    n = n_a + n_b;  delta = mean_b - mean_a;  mean = mean_a + delta * n_b / n;
    M2 = m2_a + m2_b + delta² * n_a * n_b / n      (return (0, 0.0, 0.0) when n == 0)
    """
    # TODO: replace this placeholder
    return n_a, mean_a, m2_a


@cuda.jit
def group_norm_kernel(x, w, b, out, num_groups, eps, silu):
    """GroupNorm (+ optional SiLU) of x (N, C, S) into out, S = H*W pixels; w, b (C,). ONE BLOCK PER (n, group).

    The grader launches group_norm_kernel[N * num_groups, NORM_THREADS]: n = blockIdx.x // num_groups,
    g = blockIdx.x % num_groups. The group is channels g*C/G ... (g+1)*C/G - 1, i.e. size = C/G * S values.
    1. Each thread runs Welford over its values i = t, t + NORM_THREADS, ... (channel c0 + i // S, pixel i % S):
       k += 1; d = v - mean; mean += d / k; M2 += d * (v - mean).
    2. Store (k, mean, M2) in the three shared arrays, __syncthreads, and merge them as a tree
       (stride = NORM_THREADS/2, /4, ... 1) with welford_combine, __syncthreads after each step.
    3. var = M2 / size (biased, like torch); out = (x - mean) / sqrt(var + eps) * w[c] + b[c];
       if silu: out = out * sigmoid(out) = out / (1 + exp(-out)).
    Why Welford: the grader's data sit around 1000 with a spread of 1: E[x²] - E[x]² in float32 loses the variance.

    Graded: the answer on data around 1000; a thread reads each element of its share at most twice and
    writes each once.
    """
    cnt = cuda.shared.array(NORM_THREADS, int32)
    mean = cuda.shared.array(NORM_THREADS, float32)
    m2 = cuda.shared.array(NORM_THREADS, float32)
    t = cuda.threadIdx.x
    # TODO
    pass


# 07.3 -------------------------------------------------------------------------------------------------
def softmax(x):
    """Numerically stable softmax over the LAST axis of a float32 array of any shape: numpy in, numpy out.

    Flatten the leading axes into rows (R = prod(shape[:-1])), copy to the device, launch your
    softmax_kernel[R, 32], copy back and restore the shape. ValueError for a 0-d array or an empty last axis.

    Graded: the answer for any shape, and that it launches softmax_kernel[rows, 32] (a numpy answer
    fails).
    """
    raise NotImplementedError("Exercise 07.3: softmax")


# 07.4 -------------------------------------------------------------------------------------------------
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
    """torch.nn.functional.group_norm for x (N, C, *spatial) float32, then SiLU when silu=True: numpy in/out.

    weight/bias (C,) default to ones/zeros. View x as (N, C, S), launch your group_norm_kernel.
    ValueError when num_groups does not divide C, or weight/bias do not have shape (C,).

    Graded: the answer, the errors, and that it launches group_norm_kernel[N * num_groups, NORM_THREADS].
    """
    raise NotImplementedError("Exercise 07.4: group_norm")


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm over the LAST axis (size D) of x: numpy in/out; weight/bias (D,) or None.

    Hint: a LayerNorm of rows (R, D) is a GroupNorm of x viewed as (R, D, 1) with ONE group — the per-channel
    affine of GroupNorm is then exactly LayerNorm's per-feature affine.

    Graded: the answer, and that it launches group_norm_kernel[rows, NORM_THREADS].
    """
    raise NotImplementedError("Exercise 07.4: layer_norm")
