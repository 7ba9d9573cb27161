"""Scaled dot-product attention on (B, L, H*D) arrays: head h of token j is columns [h*D, (h+1)*D).

(B, H, L, D) inputs are the same thing with H=1 after a free reshape to (B*H, L, D): see minisd.ops.numba.
Keys/values may have a different length than queries (cross-attention: Lk != Lq).

v1  three launches: a scores matrix S = scale * Q K^T (one thread per score) in global memory, softmax v3
    over its rows, then out = P V (one thread per output). Simple; S costs Lq*Lk floats of traffic each way.
v2  fused, one thread per query row: online softmax (running max m and sum s, rescale the accumulator
    when m grows), so S never exists. Every thread of a warp reads the same K/V row: broadcast loads.
v3  flash-style: a block of TQ query rows (one per thread) of one (batch, head) walks K/V in tiles of TK
    keys staged in shared memory, so a K/V element is read from global memory once per block instead of
    once per query; the online-softmax rescale happens once per tile.
v2/v3 are compiled per head dimension D (local arrays need a constant size); D > DMAX uses v1.

Special values as in torch: a NaN score poisons its row (``max_nan``, not max), a row of -inf scores is
0/0 = NaN, and no keys at all (Lk = 0) is an empty weighted sum: zeros.
"""

import math

from minisd.kernel_backend import cuda, float32
from minisd.ops.numba import softmax
from minisd.ops.numba.common import NEG_INF, cdiv, empty, get_stream, launch1d, max_nan

TQ = 64  # queries per block in v3
TK = 32  # keys per shared-memory tile in v3
DMAX = 128


@cuda.jit
def _scores_v1(q, k, heads, scale, s):
    t = cuda.grid(1)
    b_, h_, lq, lk = s.shape
    if t >= b_ * h_ * lq * lk:
        return
    j = t % lk
    i = (t // lk) % lq
    h = (t // (lk * lq)) % h_
    b = t // (lk * lq * h_)
    d_ = q.shape[2] // heads
    acc = float32(0.0)
    for d in range(d_):
        acc += q[b, i, h * d_ + d] * k[b, j, h * d_ + d]
    s[b, h, i, j] = acc * scale


@cuda.jit
def _pv_v1(p, v, heads, out):
    t = cuda.grid(1)
    b_, lq, hd = out.shape
    if t >= b_ * lq * hd:
        return
    c = t % hd
    i = (t // hd) % lq
    b = t // (hd * lq)
    h = c // (hd // heads)
    acc = float32(0.0)
    for j in range(v.shape[1]):
        acc += p[b, h, i, j] * v[b, j, c]
    out[b, i, c] = acc


def attention_v1(q, k, v, heads, scale, out):
    b, lq, _ = q.shape
    lk = k.shape[1]
    s = empty((b, heads, lq, lk))
    launch1d(_scores_v1, s.size, q, k, heads, scale, s)
    p = empty((b, heads, lq, lk))
    softmax.softmax_v3(s.reshape(b * heads * lq, lk), p.reshape(b * heads * lq, lk))
    launch1d(_pv_v1, out.size, p, v, heads, out)


_cache = {}


def _make_v2(D):
    @cuda.jit
    def kernel(q, k, v, heads, scale, out):
        t = cuda.grid(1)
        b_, lq, _ = q.shape
        lk = k.shape[1]
        if t >= b_ * heads * lq:
            return
        i = t % lq
        h = (t // lq) % heads
        b = t // (lq * heads)
        qr = cuda.local.array(D, float32)
        acc = cuda.local.array(D, float32)
        for d in range(D):
            qr[d] = q[b, i, h * D + d] * scale
            acc[d] = 0.0
        m = NEG_INF
        s = float32(0.0)
        for j in range(lk):
            sc = float32(0.0)
            for d in range(D):
                sc += qr[d] * k[b, j, h * D + d]
            if sc > m or sc != sc:  # new max (a NaN poisons the row): rescale what was accumulated
                corr = math.exp(m - sc)
                s *= corr
                for d in range(D):
                    acc[d] *= corr
                m = sc
            if m != NEG_INF:  # leading -inf scores weigh 0 (exp(-inf - -inf) would be NaN)
                p = math.exp(sc - m)
                s += p
                for d in range(D):
                    acc[d] += p * v[b, j, h * D + d]
        inv = float32(1.0) / s if lk > 0 else float32(0.0)  # no keys: zeros, as torch (not 0/0)
        for d in range(D):
            out[b, i, h * D + d] = acc[d] * inv

    return kernel


def attention_v2(q, k, v, heads, scale, out):
    d = q.shape[2] // heads
    if d > DMAX:
        return attention_v1(q, k, v, heads, scale, out)
    kernel = _cache.get(("v2", d)) or _cache.setdefault(("v2", d), _make_v2(d))
    launch1d(kernel, q.shape[0] * heads * q.shape[1], q, k, v, heads, scale, out, tpb=128)


def _make_v3(D):
    @cuda.jit
    def kernel(q, k, v, heads, scale, out):
        ks = cuda.shared.array((TK, D), float32)
        vs = cuda.shared.array((TK, D), float32)
        qr = cuda.local.array(D, float32)
        acc = cuda.local.array(D, float32)
        sc = cuda.local.array(TK, float32)
        t = cuda.threadIdx.x
        lq = q.shape[1]
        lk = k.shape[1]
        i = cuda.blockIdx.x * TQ + t
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y % heads
        active = i < lq  # idle threads still help load tiles and reach every syncthreads
        for d in range(D):
            qr[d] = q[b, i, h * D + d] * scale if active else float32(0.0)
            acc[d] = 0.0
        m = NEG_INF
        s = float32(0.0)
        for j0 in range(0, lk, TK):
            for e in range(t, TK * D, TQ):  # stage K and V tiles (zeros past the end)
                jj = e // D
                d = e % D
                kv = float32(0.0)
                vv = float32(0.0)
                if j0 + jj < lk:
                    kv = k[b, j0 + jj, h * D + d]
                    vv = v[b, j0 + jj, h * D + d]
                ks[jj, d] = kv
                vs[jj, d] = vv
            cuda.syncthreads()
            nk = min(TK, lk - j0)
            if active:
                tile_max = m
                for jj in range(nk):
                    a = float32(0.0)
                    for d in range(D):
                        a += qr[d] * ks[jj, d]
                    sc[jj] = a
                    tile_max = max_nan(tile_max, a)
                if tile_max != NEG_INF:  # all -inf so far weigh 0 (exp(-inf - -inf) would be NaN)
                    corr = math.exp(m - tile_max)  # one rescale per tile
                    s *= corr
                    for d in range(D):
                        acc[d] *= corr
                    m = tile_max
                    for jj in range(nk):
                        p = math.exp(sc[jj] - m)
                        s += p
                        for d in range(D):
                            acc[d] += p * vs[jj, d]
            cuda.syncthreads()  # before the next tile overwrites ks/vs
        if active:
            inv = float32(1.0) / s if lk > 0 else float32(0.0)  # no keys: zeros, as torch (not 0/0)
            for d in range(D):
                out[b, i, h * D + d] = acc[d] * inv

    return kernel


def attention_v3(q, k, v, heads, scale, out):
    d = q.shape[2] // heads
    if d > DMAX:
        return attention_v1(q, k, v, heads, scale, out)
    kernel = _cache.get(("v3", d)) or _cache.setdefault(("v3", d), _make_v3(d))
    grid = (cdiv(q.shape[1], TQ), q.shape[0] * heads)
    kernel[grid, TQ, get_stream()](q, k, v, heads, scale, out)


VERSIONS = {"attention": {1: attention_v1, 2: attention_v2, 3: attention_v3}}
