"""conv2d, NCHW, cross-correlation like torch: out[n,o,y,x] = b[o] + sum_{c,ky,kx} w[o,c,ky,kx] * x[n,c,y*s-p+ky, x*s-p+kx].

v1  one thread per output element; every product reads x and w from global memory.
v2  a block computes a TILE x TILE patch of one output channel; for each input channel it first stages the
    input patch it needs (plus the kh-1 / kw-1 halo) and the 3x3 filter in shared memory, so each input
    value is read from global memory once per block instead of kh*kw times.
v3  v2 plus register blocking: each thread computes OB output channels of its pixel, so every input value
    loaded from shared memory feeds OB multiply-adds from registers (and the x tile is loaded once per
    OB channels, not once per channel).
v4  implicit GEMM: the convolution IS a matrix product out[pixel, o] = sum_k cols[pixel, k] * w[o, k] with
    k = (c, ky, kx), so v4 runs linear.py's register-blocked tiling on it, building each BK-slice of the
    im2col matrix in shared memory on the fly (never in global memory). Each thread computes 4 pixels x 2
    channels; consecutive threads own consecutive pixels, so reads of x and writes of out are coalesced.
v5  v4 made to fill the GPU at batch 1, where 2 x 8 x 8 = 128 pixels make a handful of v4's blocks for
    132 SMs, each walking K = C*9 = 2304 alone. Split-K: grid.z cuts K into chunks (common.split_k: enough
    to give the GPU ~2 blocks per SM), each block writes its partial tile to its slice of a scratch array,
    and common.sum_splits adds the slices in a fixed order, then the bias (no atomics, so a CUDA-graph
    replay gives the eager run's bits); a single split writes out directly. Register blocking as linear
    v3's: 64 pixels x 64 channels per block, and per kk each thread copies its 4 pixel values and 4
    weights from shared memory to registers and does its 16 multiply-adds from there (v4 read shared
    memory for both operands of every one). No divisions in the K loop: a thread stages the same pixel at
    every K step (its pixel -> (n, y, x) is divided out once), its k advance by a constant step (k ->
    (c, ky, kx) is carried along, like adding digits), and the weights are read as the (O, C*kh*kw)
    matrix they are in memory.
v6  v5 with the next K-slice's loads in flight while this one is multiplied (linear v5's software
    pipelining): each thread first gathers its 4 im2col values and 4 weights of a slice into registers,
    all 8 loads issued together, and gathers slice k+1 right after slice k is in shared memory, so the
    ~1 us a load takes overlaps the multiply-adds instead of stalling every store to shared memory.
v2/v3 need the staged patch to fit the static shared arrays (stride <= 2 and kernels up to 5x5 with
these sizes); other shapes fall back to v1. v4 and v5 take any kernel size and stride.
"""

from minisd.kernel_backend import cuda, float32
from minisd.ops.numba.common import cdiv, empty, get_stream, launch1d, optional, split_k, sum_splits

TILE = 8  # output patch per block (TILE x TILE threads); 8 suits the 8-32 px images of minisd
SH = 24  # staged input patch side: (TILE - 1) * stride + k <= SH
WMAX = 25  # filter taps kh*kw <= WMAX
OB = 4  # output channels per thread in v3
BP, BO, BK = 64, 32, 16  # v4 block tile: pixels x output channels, and the K-slice staged per step
RP, RO = BP // 16, BO // 16  # v4 outputs per thread (16x16 threads)
BPP, BOP = BP + 1, BO + 1  # padded shared rows (shared array shapes must be plain constants)
BO5 = 64  # v5 block tile: BP pixels x BO5 channels, RP x RO5 outputs per thread
RO5, BO5P = BO5 // 16, BO5 + 1
KSTEP = 256 // BP  # v5: k rows of the im2col slice its 256 threads stage at a time
PC, PT = BK // KSTEP, BO5 // (256 // BK)  # v6: im2col values and weights each thread stages per slice


@cuda.jit
def _conv2d_v1(x, w, has_b, b, out, stride, padding):
    i = cuda.grid(1)
    n_, o_, ho, wo = out.shape
    if i >= n_ * o_ * ho * wo:
        return
    ox = i % wo
    oy = (i // wo) % ho
    o = (i // (wo * ho)) % o_
    n = i // (wo * ho * o_)
    c_, h, w_ = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    acc = float32(0.0)
    for c in range(c_):
        for ky in range(kh):
            iy = oy * stride - padding + ky
            if 0 <= iy < h:
                for kx in range(kw):
                    ix = ox * stride - padding + kx
                    if 0 <= ix < w_:
                        acc += x[n, c, iy, ix] * w[o, c, ky, kx]
    if has_b:
        acc += b[o]
    out[n, o, oy, ox] = acc


def conv2d_v1(x, w, b, out, stride, padding):
    has_b, b = optional(b)
    launch1d(_conv2d_v1, out.size, x, w, has_b, b, out, stride, padding)


@cuda.jit
def _conv2d_v2(x, w, has_b, b, out, stride, padding):
    patch = cuda.shared.array((SH, SH), float32)
    taps = cuda.shared.array(WMAX, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * TILE + tx
    o_, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    c_, h, w_ = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    n = cuda.blockIdx.z // o_
    o = cuda.blockIdx.z % o_
    ox = cuda.blockIdx.x * TILE + tx
    oy = cuda.blockIdx.y * TILE + ty
    iy0 = cuda.blockIdx.y * TILE * stride - padding  # top-left of the input patch this block needs
    ix0 = cuda.blockIdx.x * TILE * stride - padding
    ph = (TILE - 1) * stride + kh
    pw = (TILE - 1) * stride + kw
    acc = float32(0.0)
    for c in range(c_):
        for j in range(tid, ph * pw, TILE * TILE):  # all threads stage the patch; zeros = padding
            iy = iy0 + j // pw
            ix = ix0 + j % pw
            v = float32(0.0)
            if 0 <= iy < h and 0 <= ix < w_:
                v = x[n, c, iy, ix]
            patch[j // pw, j % pw] = v
        for j in range(tid, kh * kw, TILE * TILE):
            taps[j] = w[o, c, j // kw, j % kw]
        cuda.syncthreads()
        for ky in range(kh):
            for kx in range(kw):
                acc += patch[ty * stride + ky, tx * stride + kx] * taps[ky * kw + kx]
        cuda.syncthreads()  # before the next channel overwrites the patch
    if ox < wo and oy < ho:
        if has_b:
            acc += b[o]
        out[n, o, oy, ox] = acc


def _fits(w, stride):
    kh, kw = w.shape[2], w.shape[3]
    return (TILE - 1) * stride + max(kh, kw) <= SH and kh * kw <= WMAX


def conv2d_v2(x, w, b, out, stride, padding):
    if not _fits(w, stride):
        return conv2d_v1(x, w, b, out, stride, padding)
    n, o, ho, wo = out.shape
    grid = (cdiv(wo, TILE), cdiv(ho, TILE), n * o)
    has_b, b = optional(b)
    _conv2d_v2[grid, (TILE, TILE), get_stream()](x, w, has_b, b, out, stride, padding)


@cuda.jit
def _conv2d_v3(x, w, has_b, b, out, stride, padding):
    patch = cuda.shared.array((SH, SH), float32)
    taps = cuda.shared.array((OB, WMAX), float32)
    acc = cuda.local.array(OB, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * TILE + tx
    o_, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    c_, h, w_ = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    groups = (o_ + OB - 1) // OB
    n = cuda.blockIdx.z // groups
    o0 = (cuda.blockIdx.z % groups) * OB
    ox = cuda.blockIdx.x * TILE + tx
    oy = cuda.blockIdx.y * TILE + ty
    iy0 = cuda.blockIdx.y * TILE * stride - padding
    ix0 = cuda.blockIdx.x * TILE * stride - padding
    ph = (TILE - 1) * stride + kh
    pw = (TILE - 1) * stride + kw
    for k in range(OB):
        acc[k] = 0.0
    for c in range(c_):
        for j in range(tid, ph * pw, TILE * TILE):
            iy = iy0 + j // pw
            ix = ix0 + j % pw
            v = float32(0.0)
            if 0 <= iy < h and 0 <= ix < w_:
                v = x[n, c, iy, ix]
            patch[j // pw, j % pw] = v
        for j in range(tid, OB * kh * kw, TILE * TILE):
            k = j // (kh * kw)
            t = j % (kh * kw)
            v = float32(0.0)
            if o0 + k < o_:  # the last group may have fewer than OB channels
                v = w[o0 + k, c, t // kw, t % kw]
            taps[k, t] = v
        cuda.syncthreads()
        for ky in range(kh):
            for kx in range(kw):
                v = patch[ty * stride + ky, tx * stride + kx]
                for k in range(OB):
                    acc[k] += v * taps[k, ky * kw + kx]
        cuda.syncthreads()
    if ox < wo and oy < ho:
        for k in range(OB):
            if o0 + k < o_:
                r = acc[k]
                if has_b:
                    r += b[o0 + k]
                out[n, o0 + k, oy, ox] = r


def conv2d_v3(x, w, b, out, stride, padding):
    if not _fits(w, stride):
        return conv2d_v1(x, w, b, out, stride, padding)
    n, o, ho, wo = out.shape
    grid = (cdiv(wo, TILE), cdiv(ho, TILE), n * cdiv(o, OB))
    has_b, b = optional(b)
    _conv2d_v3[grid, (TILE, TILE), get_stream()](x, w, has_b, b, out, stride, padding)


@cuda.jit
def _conv2d_v4(x, w, has_b, b, out, stride, padding):
    cols = cuda.shared.array((BK, BPP), float32)  # im2col slice: cols[k, pixel]
    taps = cuda.shared.array((BK, BOP), float32)  # weight slice: taps[k, o]
    acc = cuda.local.array((RP, RO), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * 16 + tx
    n_, o_, ho, wo = out.shape
    c_, h, w_ = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    npix = n_ * ho * wo
    k_ = c_ * kh * kw
    p0 = cuda.blockIdx.x * BP
    o0 = cuda.blockIdx.y * BO
    for i in range(RP):
        for j in range(RO):
            acc[i, j] = 0.0
    for k0 in range(0, k_, BK):
        for e in range(tid, BP * BK, 256):  # consecutive threads -> consecutive pixels: coalesced x reads
            r = e % BP
            kk = e // BP
            p = p0 + r
            k = k0 + kk
            v = float32(0.0)
            if p < npix and k < k_:
                ox = p % wo
                oy = (p // wo) % ho
                c = k // (kh * kw)
                iy = oy * stride - padding + (k // kw) % kh
                ix = ox * stride - padding + k % kw
                if 0 <= iy < h and 0 <= ix < w_:
                    v = x[p // (wo * ho), c, iy, ix]
            cols[kk, r] = v
        for e in range(tid, BO * BK, 256):  # consecutive threads -> consecutive k of one filter
            kk = e % BK
            o = o0 + e // BK
            k = k0 + kk
            v = float32(0.0)
            if o < o_ and k < k_:
                v = w[o, k // (kh * kw), (k // kw) % kh, k % kw]
            taps[kk, e // BK] = v
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(RP):
                for j in range(RO):
                    acc[i, j] += cols[kk, tx + 16 * i] * taps[kk, ty + 16 * j]
        cuda.syncthreads()
    for i in range(RP):
        p = p0 + tx + 16 * i
        if p < npix:
            ox = p % wo
            oy = (p // wo) % ho
            n = p // (wo * ho)
            for j in range(RO):
                o = o0 + ty + 16 * j
                if o < o_:
                    r = acc[i, j]
                    if has_b:
                        r += b[o]
                    out[n, o, oy, ox] = r


def conv2d_v4(x, w, b, out, stride, padding):
    n, o, ho, wo = out.shape
    grid = (cdiv(n * ho * wo, BP), cdiv(o, BO))
    has_b, b = optional(b)
    _conv2d_v4[grid, (16, 16), get_stream()](x, w, has_b, b, out, stride, padding)


@cuda.jit
def _conv2d_v5(x, w, kh, kw, has_b, b, part, stride, padding, chunk):
    cols = cuda.shared.array((BK, BPP), float32)
    taps = cuda.shared.array((BK, BO5P), float32)
    acc = cuda.local.array((RP, RO5), float32)
    xr = cuda.local.array(RP, float32)
    wr = cuda.local.array(RO5, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * 16 + tx
    o_, k_ = w.shape  # w is (O, C*kh*kw): the weights' own memory, k = (c, ky, kx)
    h, w_ = x.shape[2], x.shape[3]
    ho, wo = part.shape[3], part.shape[4]
    npix = part.shape[1] * ho * wo
    khw = kh * kw
    p0 = cuda.blockIdx.x * BP
    o0 = cuda.blockIdx.y * BO5
    k_begin = cuda.blockIdx.z * chunk  # this block's K chunk
    k_end = min(k_, k_begin + chunk)
    # 256 threads stage BP pixels x BK k, KSTEP k at a time. A thread stages the same pixel (cols column) at
    # every K step, so its pixel -> (n, oy, ox) divisions happen once, here; and the k it stages grow by
    # KSTEP each time, so k -> (c, ky, kx) is carried along rather than divided out each time (an integer
    # division costs a GPU tens of instructions, the carry a few).
    col = tid % BP
    ps = p0 + col
    ns = ps // (ho * wo)
    iy0 = (ps // wo) % ho * stride - padding
    ix0 = ps % wo * stride - padding
    k = k_begin + tid // BP
    c = k // khw
    ky = (k - c * khw) // kw
    kx = k - c * khw - ky * kw
    dc = KSTEP // khw  # KSTEP as (c, ky, kx)
    dky = (KSTEP - dc * khw) // kw
    dkx = KSTEP - dc * khw - dky * kw
    kt = tid % BK  # likewise each thread stages the same k (taps row) of 256 // BK channels
    for i in range(RP):
        for j in range(RO5):
            acc[i, j] = 0.0
    for k0 in range(k_begin, k_end, BK):
        for kk in range(tid // BP, BK, KSTEP):
            v = float32(0.0)
            if ps < npix and k0 + kk < k_end:
                iy = iy0 + ky
                ix = ix0 + kx
                if 0 <= iy < h and 0 <= ix < w_:
                    v = x[ns, c, iy, ix]
            cols[kk, col] = v
            kx += dkx  # (c, ky, kx) of k + KSTEP: each digit below its base, so one carry at most
            ky += dky
            c += dc
            if kx >= kw:
                kx -= kw
                ky += 1
            if ky >= kh:
                ky -= kh
                c += 1
        for ot in range(tid // BK, BO5, 256 // BK):  # consecutive threads read consecutive k of a filter
            v = float32(0.0)
            if o0 + ot < o_ and k0 + kt < k_end:
                v = w[o0 + ot, k0 + kt]
            taps[kt, ot] = v
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(RP):  # thread (tx, ty) owns pixels tx + 16i and channels ty + 16j
                xr[i] = cols[kk, tx + 16 * i]
            for j in range(RO5):
                wr[j] = taps[kk, ty + 16 * j]
            for i in range(RP):
                for j in range(RO5):
                    acc[i, j] += xr[i] * wr[j]
        cuda.syncthreads()
    for i in range(RP):
        p = p0 + tx + 16 * i
        if p < npix:
            n = p // (ho * wo)
            q = p - n * (ho * wo)
            oy = q // wo
            ox = q - oy * wo
            for j in range(RO5):
                o = o0 + ty + 16 * j
                if o < o_:
                    r = acc[i, j]
                    if has_b:
                        r += b[o]
                    part[cuda.blockIdx.z, n, o, oy, ox] = r


def conv2d_v5(x, w, b, out, stride, padding):
    _conv2d_split_k(_conv2d_v5, x, w, b, out, stride, padding)


def _conv2d_split_k(kernel, x, w, b, out, stride, padding):
    """Launch v5's or v6's kernel over the split-K grid, then add the splits (v5 and v6 differ only inside)."""
    n, o, ho, wo = out.shape
    k = w.size // o
    tiles = (cdiv(n * ho * wo, BP), cdiv(o, BO5))
    splits, chunk = split_k(tiles[0] * tiles[1], k, BK)
    has_b, b = optional(b)
    part = out.reshape(1, n, o, ho, wo) if splits == 1 else empty((splits, n, o, ho, wo))
    kernel[(*tiles, splits), (16, 16), get_stream()](
        x, w.reshape(o, k), w.shape[2], w.shape[3], has_b and splits == 1, b, part, stride, padding, chunk
    )
    if splits > 1:  # one split wrote out itself, bias included
        sum_splits(part, has_b, b, ho * wo, out)


@cuda.jit
def _conv2d_v6(x, w, kh, kw, has_b, b, part, stride, padding, chunk):
    cols = cuda.shared.array((BK, BPP), float32)
    taps = cuda.shared.array((BK, BO5P), float32)
    acc = cuda.local.array((RP, RO5), float32)
    xr = cuda.local.array(RP, float32)
    wr = cuda.local.array(RO5, float32)
    cn = cuda.local.array(PC, float32)  # the next slice, on its way from global memory
    tn = cuda.local.array(PT, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * 16 + tx
    o_, k_ = w.shape
    h, w_ = x.shape[2], x.shape[3]
    ho, wo = part.shape[3], part.shape[4]
    npix = part.shape[1] * ho * wo
    khw = kh * kw
    p0 = cuda.blockIdx.x * BP
    o0 = cuda.blockIdx.y * BO5
    k_begin = cuda.blockIdx.z * chunk
    k_end = min(k_, k_begin + chunk)
    col = tid % BP  # as v5: one pixel per thread, its k carried along as (c, ky, kx)
    ps = p0 + col
    ns = ps // (ho * wo)
    iy0 = (ps // wo) % ho * stride - padding
    ix0 = ps % wo * stride - padding
    k = k_begin + tid // BP
    c = k // khw
    ky = (k - c * khw) // kw
    kx = k - c * khw - ky * kw
    dc = KSTEP // khw
    dky = (KSTEP - dc * khw) // kw
    dkx = KSTEP - dc * khw - dky * kw
    kt = tid % BK
    for i in range(RP):
        for j in range(RO5):
            acc[i, j] = 0.0
    for k0 in range(k_begin, k_end + BK, BK):  # one pass more: the last one only stores
        if k0 > k_begin:  # slice k0 - BK into shared memory; it is multiplied below while slice k0 loads
            for q in range(PC):
                cols[tid // BP + q * KSTEP, col] = cn[q]
            for q in range(PT):
                taps[kt, tid // BK + q * (256 // BK)] = tn[q]
            cuda.syncthreads()
        if k0 < k_end:
            for q in range(PC):
                v = float32(0.0)
                if ps < npix and k0 + tid // BP + q * KSTEP < k_end:
                    iy = iy0 + ky
                    ix = ix0 + kx
                    if 0 <= iy < h and 0 <= ix < w_:
                        v = x[ns, c, iy, ix]
                cn[q] = v
                kx += dkx
                ky += dky
                c += dc
                if kx >= kw:
                    kx -= kw
                    ky += 1
                if ky >= kh:
                    ky -= kh
                    c += 1
            for q in range(PT):
                ot = tid // BK + q * (256 // BK)
                v = float32(0.0)
                if o0 + ot < o_ and k0 + kt < k_end:
                    v = w[o0 + ot, k0 + kt]
                tn[q] = v
        if k0 > k_begin:
            for kk in range(BK):
                for i in range(RP):
                    xr[i] = cols[kk, tx + 16 * i]
                for j in range(RO5):
                    wr[j] = taps[kk, ty + 16 * j]
                for i in range(RP):
                    for j in range(RO5):
                        acc[i, j] += xr[i] * wr[j]
            cuda.syncthreads()
    for i in range(RP):
        p = p0 + tx + 16 * i
        if p < npix:
            n = p // (ho * wo)
            q = p - n * (ho * wo)
            oy = q // wo
            ox = q - oy * wo
            for j in range(RO5):
                o = o0 + ty + 16 * j
                if o < o_:
                    r = acc[i, j]
                    if has_b:
                        r += b[o]
                    part[cuda.blockIdx.z, n, o, oy, ox] = r


def conv2d_v6(x, w, b, out, stride, padding):
    _conv2d_split_k(_conv2d_v6, x, w, b, out, stride, padding)


VERSIONS = {"conv2d": {1: conv2d_v1, 2: conv2d_v2, 3: conv2d_v3, 4: conv2d_v4, 5: conv2d_v5, 6: conv2d_v6}}
