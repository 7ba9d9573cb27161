"""linear: out (M, N) = x (M, K) @ w (N, K)^T + b, torch's weight layout.

v1  one thread per output: a K-long dot product straight from global memory (x row and w row).
v2  classic shared-memory tiling: a 16x16 block stages a 16x16 tile of x and of w per step of K, so each
    global element is read once per tile instead of once per output; +1 column of padding keeps the
    transposed reads free of bank conflicts.
v3  register blocking: a 16x16 block computes a 64x64 tile, 4x4 outputs per thread, from BK-wide slices
    of x and w in shared memory: each shared value read feeds 4 multiply-adds (4x the math per load).
v4  v3 plus split-K: at batch 1 the 128-512 token rows make a few dozen 64x64 tiles for 132 SMs, each
    block walking all of K. grid.z cuts K into chunks (common.split_k: enough to give the GPU ~2 blocks
    per SM), each block writes its partial tile to its slice of a scratch array, and common.sum_splits
    adds the slices in a fixed order, then the bias (no atomics: every run gives the same bits); a single
    split writes out directly, as v3.
v5  v4 with the loads of the next K-slice in flight while this one is multiplied. In v4 each thread
    loads a value from global memory and stores it to shared memory, then loads the next: every store
    waits for its load (~1 us), and a block at batch 1 waits for little else. v5 first loads all its
    values of a slice into registers (8 loads in flight at once), and loads slice k+1 into those
    registers right after slice k is in shared memory, so the wait overlaps the multiply-adds.
"""

from minisd.kernel_backend import cuda, float32
from minisd.ops.numba.common import cdiv, empty, get_stream, optional, split_k, sum_splits

T2 = 16  # v2 tile
BM = 64  # v3/v4 block tile (BM x BM outputs)
BK = 16  # v3/v4 K slice
RT = 4  # v3/v4 outputs per thread along each axis (BM = 16 * RT)
PER = BM * BK // 256  # v5: values of x (and of w) each thread stages per K-slice
T2P, BMP = T2 + 1, BM + 1  # padded shared rows (shared array shapes must be plain constants)


@cuda.jit
def _linear_v1(x, w, has_b, b, out):
    n, m = cuda.grid(2)
    if m >= out.shape[0] or n >= out.shape[1]:
        return
    acc = float32(0.0)
    for k in range(x.shape[1]):
        acc += x[m, k] * w[n, k]
    if has_b:
        acc += b[n]
    out[m, n] = acc


def linear_v1(x, w, b, out):
    m, n = out.shape
    has_b, b = optional(b)
    _linear_v1[(cdiv(n, 16), cdiv(m, 16)), (16, 16), get_stream()](x, w, has_b, b, out)


@cuda.jit
def _linear_v2(x, w, has_b, b, out):
    xs = cuda.shared.array((T2, T2P), float32)
    ws = cuda.shared.array((T2, T2P), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    m = cuda.blockIdx.y * T2 + ty
    n = cuda.blockIdx.x * T2 + tx
    m_, k_ = x.shape
    n_ = w.shape[0]
    acc = float32(0.0)
    for k0 in range(0, k_, T2):
        xv = float32(0.0)
        if m < m_ and k0 + tx < k_:
            xv = x[m, k0 + tx]  # consecutive tx read consecutive k: coalesced
        xs[ty, tx] = xv
        wv = float32(0.0)
        nn = cuda.blockIdx.x * T2 + ty
        if nn < n_ and k0 + tx < k_:
            wv = w[nn, k0 + tx]  # also coalesced; stored transposed as ws[k, n]
        ws[tx, ty] = wv
        cuda.syncthreads()
        for kk in range(T2):
            acc += xs[ty, kk] * ws[kk, tx]
        cuda.syncthreads()
    if m < m_ and n < n_:
        if has_b:
            acc += b[n]
        out[m, n] = acc


def linear_v2(x, w, b, out):
    m, n = out.shape
    has_b, b = optional(b)
    _linear_v2[(cdiv(n, T2), cdiv(m, T2)), (T2, T2), get_stream()](x, w, has_b, b, out)


@cuda.jit
def _linear_v3(x, w, has_b, b, out):
    xs = cuda.shared.array((BK, BMP), float32)
    ws = cuda.shared.array((BK, BMP), float32)
    acc = cuda.local.array((RT, RT), float32)
    xr = cuda.local.array(RT, float32)
    wr = cuda.local.array(RT, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * 16 + tx
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BM
    m_, k_ = x.shape
    n_ = w.shape[0]
    for i in range(RT):
        for j in range(RT):
            acc[i, j] = 0.0
    for k0 in range(0, k_, BK):
        for e in range(tid, BM * BK, 256):  # stage x[m0:m0+BM, k0:k0+BK] and w likewise, k-major
            r = e // BK
            kk = e % BK
            xv = float32(0.0)
            if m0 + r < m_ and k0 + kk < k_:
                xv = x[m0 + r, k0 + kk]
            xs[kk, r] = xv
            wv = float32(0.0)
            if n0 + r < n_ and k0 + kk < k_:
                wv = w[n0 + r, k0 + kk]
            ws[kk, r] = wv
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(RT):  # thread (tx, ty) owns rows ty + 16i and columns tx + 16j
                xr[i] = xs[kk, ty + 16 * i]
                wr[i] = ws[kk, tx + 16 * i]
            for i in range(RT):
                for j in range(RT):
                    acc[i, j] += xr[i] * wr[j]
        cuda.syncthreads()
    for i in range(RT):
        m = m0 + ty + 16 * i
        for j in range(RT):
            n = n0 + tx + 16 * j
            if m < m_ and n < n_:
                r = acc[i, j]
                if has_b:
                    r += b[n]
                out[m, n] = r


def linear_v3(x, w, b, out):
    m, n = out.shape
    has_b, b = optional(b)
    _linear_v3[(cdiv(n, BM), cdiv(m, BM)), (16, 16), get_stream()](x, w, has_b, b, out)


@cuda.jit
def _linear_v4(x, w, has_b, b, part, chunk):
    xs = cuda.shared.array((BK, BMP), float32)
    ws = cuda.shared.array((BK, BMP), float32)
    acc = cuda.local.array((RT, RT), float32)
    xr = cuda.local.array(RT, float32)
    wr = cuda.local.array(RT, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * 16 + tx
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BM
    m_, k_ = x.shape
    n_ = w.shape[0]
    k_begin = cuda.blockIdx.z * chunk  # v3's loop over this block's K chunk only
    k_end = min(k_, k_begin + chunk)
    for i in range(RT):
        for j in range(RT):
            acc[i, j] = 0.0
    for k0 in range(k_begin, k_end, BK):
        for e in range(tid, BM * BK, 256):
            r = e // BK
            kk = e % BK
            xv = float32(0.0)
            if m0 + r < m_ and k0 + kk < k_end:
                xv = x[m0 + r, k0 + kk]
            xs[kk, r] = xv
            wv = float32(0.0)
            if n0 + r < n_ and k0 + kk < k_end:
                wv = w[n0 + r, k0 + kk]
            ws[kk, r] = wv
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(RT):
                xr[i] = xs[kk, ty + 16 * i]
                wr[i] = ws[kk, tx + 16 * i]
            for i in range(RT):
                for j in range(RT):
                    acc[i, j] += xr[i] * wr[j]
        cuda.syncthreads()
    for i in range(RT):
        m = m0 + ty + 16 * i
        for j in range(RT):
            n = n0 + tx + 16 * j
            if m < m_ and n < n_:
                r = acc[i, j]
                if has_b:
                    r += b[n]
                part[cuda.blockIdx.z, m, n] = r


def linear_v4(x, w, b, out):
    _linear_split_k(_linear_v4, x, w, b, out)


def _linear_split_k(kernel, x, w, b, out):
    """Launch v4's or v5's kernel over the split-K grid, then add the splits (v4 and v5 differ only inside)."""
    m, n = out.shape
    tiles = (cdiv(n, BM), cdiv(m, BM))
    splits, chunk = split_k(tiles[0] * tiles[1], x.shape[1], BK)
    has_b, b = optional(b)
    part = out.reshape(1, m, n) if splits == 1 else empty((splits, m, n))
    kernel[(*tiles, splits), (16, 16), get_stream()](x, w, has_b and splits == 1, b, part, chunk)
    if splits > 1:  # one split wrote out itself, bias included
        sum_splits(part, has_b, b, 1, out)


@cuda.jit
def _linear_v5(x, w, has_b, b, part, chunk):
    xs = cuda.shared.array((BK, BMP), float32)
    ws = cuda.shared.array((BK, BMP), float32)
    acc = cuda.local.array((RT, RT), float32)
    xr = cuda.local.array(RT, float32)
    wr = cuda.local.array(RT, float32)
    xn = cuda.local.array(PER, float32)  # the next slice, on its way from global memory
    wn = cuda.local.array(PER, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * 16 + tx
    m0 = cuda.blockIdx.y * BM
    n0 = cuda.blockIdx.x * BM
    m_, k_ = x.shape
    n_ = w.shape[0]
    k_begin = cuda.blockIdx.z * chunk
    k_end = min(k_, k_begin + chunk)
    r0 = tid // BK  # this thread stages rows r0, r0 + 16, ... at column kk of every slice
    kk = tid % BK
    for i in range(RT):
        for j in range(RT):
            acc[i, j] = 0.0
    for k0 in range(k_begin, k_end + BK, BK):  # one pass more: the last one only multiplies
        if k0 > k_begin:  # slice k0 - BK into shared memory; it is multiplied below while slice k0 loads
            for p in range(PER):
                xs[kk, r0 + p * (256 // BK)] = xn[p]
                ws[kk, r0 + p * (256 // BK)] = wn[p]
            cuda.syncthreads()
        if k0 < k_end:  # issue slice k0's loads; nothing reads these registers before the next pass
            for p in range(PER):
                r = r0 + p * (256 // BK)
                ok = k0 + kk < k_end
                xn[p] = x[m0 + r, k0 + kk] if ok and m0 + r < m_ else float32(0.0)
                wn[p] = w[n0 + r, k0 + kk] if ok and n0 + r < n_ else float32(0.0)
        if k0 > k_begin:
            for q in range(BK):
                for i in range(RT):
                    xr[i] = xs[q, ty + 16 * i]
                    wr[i] = ws[q, tx + 16 * i]
                for i in range(RT):
                    for j in range(RT):
                        acc[i, j] += xr[i] * wr[j]
            cuda.syncthreads()
    for i in range(RT):
        m = m0 + ty + 16 * i
        for j in range(RT):
            n = n0 + tx + 16 * j
            if m < m_ and n < n_:
                r = acc[i, j]
                if has_b:
                    r += b[n]
                part[cuda.blockIdx.z, m, n] = r


def linear_v5(x, w, b, out):
    _linear_split_k(_linear_v5, x, w, b, out)


VERSIONS = {"linear": {1: linear_v1, 2: linear_v2, 3: linear_v3, 4: linear_v4, 5: linear_v5}}
