"""layer_norm over the last axis of x viewed as (M, D) rows.

v1  one thread per row: mean, then variance about the mean (two passes), then normalize.
v2  a 32-thread team per row (ROWS rows per block): each lane runs Welford over a strided slice of the row,
    the team merges (count, mean, M2) in a shared-memory tree (no warp shuffles: they do not exist in the
    simulator), then the lanes normalize their slice. Coalesced reads, D/32 sequential steps per thread.
"""

import math

from minisd.kernel_backend import cuda, float32
from minisd.ops.numba.common import cdiv, get_stream, launch1d, optional

LANES = 32  # threads per row (power of two)
ROWS = 4  # rows per block


@cuda.jit
def _layer_norm_v1(x, has_weight, weight, has_bias, bias, eps, out):
    r = cuda.grid(1)
    m_, d_ = x.shape
    if r >= m_:
        return
    s = float32(0.0)
    for j in range(d_):
        s += x[r, j]
    mean = s / float32(d_)
    s = float32(0.0)
    for j in range(d_):
        d = x[r, j] - mean
        s += d * d
    rstd = float32(1.0) / math.sqrt(s / float32(d_) + eps)
    for j in range(d_):
        y = (x[r, j] - mean) * rstd
        if has_weight:
            y = y * weight[j]
        if has_bias:
            y = y + bias[j]
        out[r, j] = y


def layer_norm_v1(x, weight, bias, eps, out):
    has_weight, weight = optional(weight)
    has_bias, bias = optional(bias)
    launch1d(_layer_norm_v1, x.shape[0], x, has_weight, weight, has_bias, bias, eps, out, tpb=128)


@cuda.jit
def _layer_norm_v2(x, has_weight, weight, has_bias, bias, eps, out):
    cnt = cuda.shared.array((ROWS, LANES), float32)
    avg = cuda.shared.array((ROWS, LANES), float32)
    m2 = cuda.shared.array((ROWS, LANES), float32)
    lane, row = cuda.threadIdx.x, cuda.threadIdx.y
    r = cuda.blockIdx.x * ROWS + row
    m_, d_ = x.shape
    k = float32(0.0)
    mu = float32(0.0)
    q = float32(0.0)
    if r < m_:  # no early return: every thread must reach the syncthreads below
        for j in range(lane, d_, LANES):
            v = x[r, j]
            k += float32(1.0)
            dv = v - mu
            mu += dv / k
            q += dv * (v - mu)
    cnt[row, lane] = k
    avg[row, lane] = mu
    m2[row, lane] = q
    cuda.syncthreads()
    step = LANES // 2
    while step > 0:
        if lane < step:
            kb = cnt[row, lane + step]
            if kb > 0:
                ka = cnt[row, lane]
                kk = ka + kb
                dv = avg[row, lane + step] - avg[row, lane]
                avg[row, lane] += dv * kb / kk
                m2[row, lane] += m2[row, lane + step] + dv * dv * ka * kb / kk
                cnt[row, lane] = kk
        cuda.syncthreads()
        step //= 2
    if r < m_:
        mean = avg[row, 0]
        rstd = float32(1.0) / math.sqrt(m2[row, 0] / float32(d_) + eps)
        for j in range(lane, d_, LANES):
            y = (x[r, j] - mean) * rstd
            if has_weight:
                y = y * weight[j]
            if has_bias:
                y = y + bias[j]
            out[r, j] = y


def layer_norm_v2(x, weight, bias, eps, out):
    has_weight, weight = optional(weight)
    has_bias, bias = optional(bias)
    grid = max(1, cdiv(x.shape[0], ROWS))
    _layer_norm_v2[grid, (LANES, ROWS), get_stream()](x, has_weight, weight, has_bias, bias, eps, out)


VERSIONS = {"layer_norm": {1: layer_norm_v1, 2: layer_norm_v2}}
