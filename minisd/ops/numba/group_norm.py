"""group_norm (optionally followed by SiLU) on x viewed as (N, C, L), L = H*W.

Group g of image n is channels [g*C/G, (g+1)*C/G) x all pixels: one contiguous run of C/G*L floats.

v1  naive, two launches: one thread per group computes mean and variance (two passes over the group),
    then one thread per element normalizes. Few threads do all the reading: slow, but obviously right.
v2  one block per group, one launch: the block's threads stride over the group and tree-reduce partial
    sums in shared memory, twice (mean, then variance about the mean), then normalize: x is read 3 times.
v3  one block per group with Welford: each thread keeps (count, mean, M2) in one pass, the block merges
    them pairwise in shared memory (Chan's formula), then normalizes with SiLU fused: x is read twice.
v4  x read once, by up to 512 threads: each thread loads its (at most PER_THREAD) values of the group into
    registers, all loads in flight at once, and keeps them there for the exact two-pass mean and variance
    and the normalization. At batch 1 minisd has 16 groups, and v3's 128 threads per group leave the GPU
    waiting on one load after another; here a group's loads are issued together. The block's size is
    picked at launch: the next power of two of a quarter of the group, 32 to 512 (a 1024-thread block
    would allow 64 registers a thread, fewer than this kernel needs). A group too big for the registers
    (over 512 * PER_THREAD values) falls back to v3; so would a larger PER_THREAD, whose loops the
    compiler no longer unrolls: the values then live in (slow) local memory.
"""

import math

from minisd.kernel_backend import cuda, float32
from minisd.ops.numba.common import cdiv, empty, get_stream, launch1d, optional

TPB = 128  # threads per group (a power of two for the tree reduction)
MAX_TPB, PER_THREAD = 512, 16  # v4: threads per group at most, values each thread keeps in registers


@cuda.jit(device=True)
def _finish(v, mean, rstd, c, has_weight, weight, has_bias, bias, silu):
    """Normalized value -> affine -> optional SiLU (shared by all versions)."""
    y = (v - mean) * rstd
    if has_weight:
        y = y * weight[c]
    if has_bias:
        y = y + bias[c]
    if silu:  # exp of a number <= 0 only: exp(1000) is inf on a GPU, an OverflowError in the simulator
        if y >= float32(0.0):
            y = y / (float32(1.0) + math.exp(-y))
        else:
            e = math.exp(y)
            y = y * e / (float32(1.0) + e)
    return y


@cuda.jit
def _stats_v1(x, groups, eps, stats):
    i = cuda.grid(1)
    n_, c_, l_ = x.shape
    if i >= n_ * groups:
        return
    n = i // groups
    cpg = c_ // groups
    c0 = (i % groups) * cpg
    s = float32(0.0)
    for c in range(c0, c0 + cpg):
        for p in range(l_):
            s += x[n, c, p]
    mean = s / float32(cpg * l_)
    s = float32(0.0)
    for c in range(c0, c0 + cpg):
        for p in range(l_):
            d = x[n, c, p] - mean
            s += d * d
    stats[i, 0] = mean
    stats[i, 1] = float32(1.0) / math.sqrt(s / float32(cpg * l_) + eps)


@cuda.jit
def _apply_v1(x, groups, stats, has_weight, weight, has_bias, bias, silu, out):
    i = cuda.grid(1)
    n_, c_, l_ = x.shape
    if i >= n_ * c_ * l_:
        return
    p = i % l_
    c = (i // l_) % c_
    n = i // (l_ * c_)
    g = n * groups + c // (c_ // groups)
    out[n, c, p] = _finish(x[n, c, p], stats[g, 0], stats[g, 1], c, has_weight, weight, has_bias, bias, silu)


def group_norm_v1(x, groups, weight, bias, eps, silu, out):
    stats = empty((x.shape[0] * groups, 2))
    launch1d(_stats_v1, x.shape[0] * groups, x, groups, eps, stats)
    has_weight, weight = optional(weight)
    has_bias, bias = optional(bias)
    launch1d(_apply_v1, x.size, x, groups, stats, has_weight, weight, has_bias, bias, silu, out)


@cuda.jit(device=True)
def _block_sum(buf, t, nt, v):
    """Sum ``v`` over the block of ``nt`` threads (a power of two) through shared ``buf``; every thread gets
    the total."""
    buf[t] = v
    cuda.syncthreads()
    step = nt // 2
    while step > 0:
        if t < step:
            buf[t] += buf[t + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()  # everyone has read buf[0] before the buffer is reused
    return total


@cuda.jit
def _group_norm_v2(x, groups, has_weight, weight, has_bias, bias, eps, silu, out):
    buf = cuda.shared.array(TPB, float32)
    t = cuda.threadIdx.x
    c_, l_ = x.shape[1], x.shape[2]
    n = cuda.blockIdx.x // groups
    cpg = c_ // groups
    c0 = (cuda.blockIdx.x % groups) * cpg
    m = cpg * l_
    s = float32(0.0)
    for j in range(t, m, TPB):
        s += x[n, c0 + j // l_, j % l_]
    mean = _block_sum(buf, t, TPB, s) / float32(m)
    s = float32(0.0)
    for j in range(t, m, TPB):
        d = x[n, c0 + j // l_, j % l_] - mean
        s += d * d
    rstd = float32(1.0) / math.sqrt(_block_sum(buf, t, TPB, s) / float32(m) + eps)
    for j in range(t, m, TPB):
        c = c0 + j // l_
        out[n, c, j % l_] = _finish(x[n, c, j % l_], mean, rstd, c, has_weight, weight, has_bias, bias, silu)


def group_norm_v2(x, groups, weight, bias, eps, silu, out):
    has_weight, weight = optional(weight)
    has_bias, bias = optional(bias)
    args = (x, groups, has_weight, weight, has_bias, bias, eps, silu, out)
    _group_norm_v2[x.shape[0] * groups, TPB, get_stream()](*args)


@cuda.jit
def _group_norm_v3(x, groups, has_weight, weight, has_bias, bias, eps, silu, out):
    cnt = cuda.shared.array(TPB, float32)
    avg = cuda.shared.array(TPB, float32)
    m2 = cuda.shared.array(TPB, float32)
    t = cuda.threadIdx.x
    c_, l_ = x.shape[1], x.shape[2]
    n = cuda.blockIdx.x // groups
    cpg = c_ // groups
    c0 = (cuda.blockIdx.x % groups) * cpg
    m = cpg * l_
    # Welford over this thread's elements: stable in one pass, unlike sum/sum-of-squares.
    k = float32(0.0)
    mu = float32(0.0)
    q = float32(0.0)
    for j in range(t, m, TPB):
        v = x[n, c0 + j // l_, j % l_]
        k += float32(1.0)
        d = v - mu
        mu += d / k
        q += d * (v - mu)
    cnt[t] = k
    avg[t] = mu
    m2[t] = q
    cuda.syncthreads()
    step = TPB // 2
    while step > 0:  # merge (count, mean, M2) pairs: Chan et al.
        if t < step:
            kb = cnt[t + step]
            if kb > 0:
                ka = cnt[t]
                kk = ka + kb
                d = avg[t + step] - avg[t]
                avg[t] += d * kb / kk
                m2[t] += m2[t + step] + d * d * ka * kb / kk
                cnt[t] = kk
        cuda.syncthreads()
        step //= 2
    mean = avg[0]
    rstd = float32(1.0) / math.sqrt(m2[0] / float32(m) + eps)
    for j in range(t, m, TPB):
        c = c0 + j // l_
        out[n, c, j % l_] = _finish(x[n, c, j % l_], mean, rstd, c, has_weight, weight, has_bias, bias, silu)


def group_norm_v3(x, groups, weight, bias, eps, silu, out):
    has_weight, weight = optional(weight)
    has_bias, bias = optional(bias)
    args = (x, groups, has_weight, weight, has_bias, bias, eps, silu, out)
    _group_norm_v3[x.shape[0] * groups, TPB, get_stream()](*args)


@cuda.jit
def _group_norm_v4(x, groups, has_weight, weight, has_bias, bias, eps, silu, out):
    buf = cuda.shared.array(MAX_TPB, float32)
    vals = cuda.local.array(PER_THREAD, float32)  # registers: the loops over it have constant bounds
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c_, l_ = x.shape[1], x.shape[2]
    n = cuda.blockIdx.x // groups
    cpg = c_ // groups
    c0 = (cuda.blockIdx.x % groups) * cpg
    m = cpg * l_
    s = float32(0.0)
    for r in range(PER_THREAD):  # element t + r * nt: consecutive threads read consecutive floats
        j = t + r * nt
        v = float32(0.0)
        if j < m:
            v = x[n, c0 + j // l_, j % l_]
        vals[r] = v
        s += v
    mean = _block_sum(buf, t, nt, s) / float32(m)
    s = float32(0.0)
    for r in range(PER_THREAD):
        if t + r * nt < m:
            d = vals[r] - mean
            s += d * d
    rstd = float32(1.0) / math.sqrt(_block_sum(buf, t, nt, s) / float32(m) + eps)
    for r in range(PER_THREAD):
        j = t + r * nt
        if j < m:
            c = c0 + j // l_
            out[n, c, j % l_] = _finish(vals[r], mean, rstd, c, has_weight, weight, has_bias, bias, silu)


def group_norm_v4(x, groups, weight, bias, eps, silu, out):
    m = x.shape[1] // groups * x.shape[2]
    if m > MAX_TPB * PER_THREAD:
        return group_norm_v3(x, groups, weight, bias, eps, silu, out)
    threads = min(MAX_TPB, 1 << max(5, (cdiv(m, 4) - 1).bit_length()))  # >= 4 values a thread when it can
    has_weight, weight = optional(weight)
    has_bias, bias = optional(bias)
    args = (x, groups, has_weight, weight, has_bias, bias, eps, silu, out)
    _group_norm_v4[x.shape[0] * groups, threads, get_stream()](*args)


VERSIONS = {"group_norm": {1: group_norm_v1, 2: group_norm_v2, 3: group_norm_v3, 4: group_norm_v4}}
