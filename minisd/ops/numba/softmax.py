"""softmax over the last axis of x viewed as (M, L) rows, numerically stable (subtract the row max).

v1  one thread per row, three passes: max, sum of exp, write.
v2  a 32-thread team per row (ROWS rows per block), two shared-memory tree reductions (max, then sum of
    exp), then write: coalesced, but x is read three times.
v3  online softmax: each lane keeps a running (max, sum) in ONE pass, rescaling the sum whenever the max
    grows; teams merge pairs as m = max(m1, m2), s = s1*exp(m1-m) + s2*exp(m2-m); then write. x is read
    twice. (The same trick makes flash attention possible: see attention.py.)

NaN and infinities come out as in torch: the max is ``max_nan`` (a NaN anywhere makes the row NaN, where
a plain max would skip it), a +inf gives inf - inf = NaN, a row of -inf gives 0/0 = NaN.
"""

import math

from minisd.kernel_backend import cuda, float32
from minisd.ops.numba.common import NEG_INF, cdiv, get_stream, launch1d, max_nan

LANES = 32
ROWS = 4


@cuda.jit
def _softmax_v1(x, out):
    r = cuda.grid(1)
    m_, l_ = x.shape
    if r >= m_:
        return
    mx = NEG_INF
    for j in range(l_):
        mx = max_nan(mx, x[r, j])
    s = float32(0.0)
    for j in range(l_):
        s += math.exp(x[r, j] - mx)
    inv = float32(1.0) / s
    for j in range(l_):
        out[r, j] = math.exp(x[r, j] - mx) * inv


def softmax_v1(x, out):
    launch1d(_softmax_v1, x.shape[0], x, out, tpb=128)


@cuda.jit
def _softmax_v2(x, out):
    buf = cuda.shared.array((ROWS, LANES), float32)
    lane, row = cuda.threadIdx.x, cuda.threadIdx.y
    r = cuda.blockIdx.x * ROWS + row
    m_, l_ = x.shape
    mx = NEG_INF
    if r < m_:
        for j in range(lane, l_, LANES):
            mx = max_nan(mx, x[r, j])
    buf[row, lane] = mx
    cuda.syncthreads()
    step = LANES // 2
    while step > 0:
        if lane < step:
            buf[row, lane] = max_nan(buf[row, lane], buf[row, lane + step])
        cuda.syncthreads()
        step //= 2
    mx = buf[row, 0]
    cuda.syncthreads()  # all lanes have the max before buf is reused for the sum
    s = float32(0.0)
    if r < m_:
        for j in range(lane, l_, LANES):
            s += math.exp(x[r, j] - mx)
    buf[row, lane] = s
    cuda.syncthreads()
    step = LANES // 2
    while step > 0:
        if lane < step:
            buf[row, lane] += buf[row, lane + step]
        cuda.syncthreads()
        step //= 2
    if r < m_:
        inv = float32(1.0) / buf[row, 0]
        for j in range(lane, l_, LANES):
            out[r, j] = math.exp(x[r, j] - mx) * inv


def softmax_v2(x, out):
    _softmax_v2[max(1, cdiv(x.shape[0], ROWS)), (LANES, ROWS), get_stream()](x, out)


@cuda.jit
def _softmax_v3(x, out):
    mbuf = cuda.shared.array((ROWS, LANES), float32)
    sbuf = cuda.shared.array((ROWS, LANES), float32)
    lane, row = cuda.threadIdx.x, cuda.threadIdx.y
    r = cuda.blockIdx.x * ROWS + row
    m_, l_ = x.shape
    mx = NEG_INF
    s = float32(0.0)
    if r < m_:
        for j in range(lane, l_, LANES):
            v = x[r, j]
            if v > mx or v != v:  # a NaN becomes the max: it poisons the row, as in torch
                s = s * math.exp(mx - v)  # rescale the old sum to the new max (exp(-inf) = 0)
                mx = v
            if mx != NEG_INF:  # a leading -inf adds exp(-inf) = 0, not exp(-inf - -inf) = NaN
                s += math.exp(v - mx)
    mbuf[row, lane] = mx
    sbuf[row, lane] = s
    cuda.syncthreads()
    step = LANES // 2
    while step > 0:
        if lane < step:
            m1 = mbuf[row, lane]
            m2 = mbuf[row, lane + step]
            m = max_nan(m1, m2)
            if m != NEG_INF:  # both empty: nothing to merge (and exp(-inf - -inf) would be NaN)
                sbuf[row, lane] = sbuf[row, lane] * math.exp(m1 - m) + sbuf[row, lane + step] * math.exp(
                    m2 - m
                )
                mbuf[row, lane] = m
        cuda.syncthreads()
        step //= 2
    if r < m_:
        mx = mbuf[row, 0]
        inv = float32(1.0) / sbuf[row, 0]
        for j in range(lane, l_, LANES):
            out[r, j] = math.exp(x[r, j] - mx) * inv


def softmax_v3(x, out):
    _softmax_v3[max(1, cdiv(x.shape[0], ROWS)), (LANES, ROWS), get_stream()](x, out)


VERSIONS = {"softmax": {1: softmax_v1, 2: softmax_v2, 3: softmax_v3}}
