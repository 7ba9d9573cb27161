"""The small memory-bound ops: one thread per output element, one launch per op.

They cost a launch (~30 us from Python) and one pass over memory each, so the only optimisation that
matters is not launching more kernels than needed: scheduler steps are one kernel (x0, clip, mix, noise),
GEGLU is one kernel (not split + gelu + mul), and so on.

to_tokens/from_tokens are a batched transpose (B, R, S) -> (B, S, R) and have two versions:
v1  one thread per output: writes are coalesced, reads stride by R*4 bytes.
v2  the classic tiled transpose: a 32x32 tile goes through shared memory (33 columns: no bank conflicts),
    so both the global reads and the global writes are coalesced.
"""

import math

from minisd.kernel_backend import cuda, float32, float64
from minisd.ops.numba.common import cdiv, get_stream, launch1d, optional

INV_SQRT2 = float32(1.0 / math.sqrt(2.0))


@cuda.jit
def _silu(x, out):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        # v * sigmoid(v) with exp of a number <= 0 only: exp(1000) is inf on a GPU but an OverflowError in the
        # simulator's Python math; exp(-1000) is 0 on both, so silu(-1000) is -0, as on a GPU and in torch.
        if v >= float32(0.0):
            out[i] = v / (float32(1.0) + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = v * e / (float32(1.0) + e)


def silu_v1(x, out):
    launch1d(_silu, x.size, x, out)


@cuda.jit(device=True)
def _gelu1(v):
    return float32(0.5) * v * (float32(1.0) + math.erf(v * INV_SQRT2))


@cuda.jit
def _gelu(x, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = _gelu1(x[i])


def gelu_v1(x, out):
    launch1d(_gelu, x.size, x, out)


@cuda.jit
def _geglu(x, out):
    i = cuda.grid(1)
    r_, f = out.shape
    if i < r_ * f:
        r = i // f
        j = i % f
        out[r, j] = x[r, j] * _gelu1(x[r, f + j])


def geglu_v1(x, out):
    launch1d(_geglu, out.size, x, out)


@cuda.jit
def _add(a, b, inner, out):
    i = cuda.grid(1)
    if i < a.size:
        out[i] = a[i] + b[(i // inner) % b.size]  # inner=1: same shape; inner=H*W: (B,C) onto (B,C,H,W)


def add_v1(a, b, inner, out):
    launch1d(_add, a.size, a, b, inner, out)


@cuda.jit
def _scale_add(a, b, alpha, beta, out):
    i = cuda.grid(1)
    if i < a.size:
        out[i] = alpha * a[i] + beta * b[i]


def scale_add_v1(a, b, alpha, beta, out):
    launch1d(_scale_add, a.size, a, b, alpha, beta, out)


@cuda.jit
def _cfg_combine(u, c, g, out):
    i = cuda.grid(1)
    if i < u.size:
        out[i] = u[i] + g * (c[i] - u[i])


def cfg_combine_v1(u, c, g, out):
    launch1d(_cfg_combine, u.size, u, c, g, out)


@cuda.jit
def _upsample(x, out):
    i = cuda.grid(1)
    n_, c_, h2, w2 = out.shape
    if i < n_ * c_ * h2 * w2:
        ox = i % w2
        oy = (i // w2) % h2
        c = (i // (w2 * h2)) % c_
        n = i // (w2 * h2 * c_)
        out[n, c, oy, ox] = x[n, c, oy // 2, ox // 2]


def upsample_nearest2x_v1(x, out):
    launch1d(_upsample, out.size, x, out)


@cuda.jit
def _concat(a, b, out):
    i = cuda.grid(1)
    n_, c_, h, w = out.shape
    if i < n_ * c_ * h * w:
        p = i % (h * w)
        c = (i // (h * w)) % c_
        n = i // (h * w * c_)
        ca = a.shape[1]
        if c < ca:
            out[n, c, p // w, p % w] = a[n, c, p // w, p % w]
        else:
            out[n, c, p // w, p % w] = b[n, c - ca, p // w, p % w]


def concat_channels_v1(a, b, out):
    launch1d(_concat, out.size, a, b, out)


@cuda.jit
def _transpose_v1(x, out):
    i = cuda.grid(1)
    b_, s_, r_ = out.shape
    if i < b_ * s_ * r_:
        r = i % r_
        s = (i // r_) % s_
        b = i // (r_ * s_)
        out[b, s, r] = x[b, r, s]


def transpose_v1(x, out):
    launch1d(_transpose_v1, out.size, x, out)


TT = 32  # transpose tile
TR = 8  # rows of threads per tile (each thread moves TT/TR elements)
TTP = TT + 1  # padded tile row (shared array shapes must be plain constants)


@cuda.jit
def _transpose_v2(x, out):
    tile = cuda.shared.array((TT, TTP), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    b = cuda.blockIdx.z
    r_, s_ = x.shape[1], x.shape[2]
    r0 = cuda.blockIdx.y * TT
    s0 = cuda.blockIdx.x * TT
    for k in range(ty, TT, TR):  # read rows of x: consecutive tx -> consecutive s
        if r0 + k < r_ and s0 + tx < s_:
            tile[k, tx] = x[b, r0 + k, s0 + tx]
    cuda.syncthreads()
    for k in range(ty, TT, TR):  # write rows of out: consecutive tx -> consecutive r
        if s0 + k < s_ and r0 + tx < r_:
            out[b, s0 + k, r0 + tx] = tile[tx, k]


def transpose_v2(x, out):
    b, r, s = x.shape
    _transpose_v2[(cdiv(s, TT), cdiv(r, TT), b), (TT, TR), get_stream()](x, out)


@cuda.jit
def _timestep_embedding(t, half, shift, flip, out):
    i = cuda.grid(1)
    b_, dim = out.shape
    if i < b_ * dim:
        b = i // dim
        j = i % dim
        y = 0.0
        if j < 2 * half:  # an odd dim leaves the last column 0, like diffusers
            f = j % half
            # float64: t * freq reaches ~1000 rad, where a float32 angle is off by ~1e-4
            arg = float64(t[b]) * math.exp(-math.log(10000.0) * f / (half - shift))
            first = j < half
            if first == flip:
                y = math.cos(arg)
            else:
                y = math.sin(arg)
        out[b, j] = y


def timestep_embedding_v1(t, half, shift, flip, out):
    launch1d(_timestep_embedding, out.size, t, half, shift, flip, out)


@cuda.jit
def _scheduler_step(
    sample,
    eps,
    has_noise,
    noise,
    sqrt_beta,
    inv_sqrt_alpha,
    has_clip,
    clip,
    c_x0,
    c_eps,
    c_sample,
    c_noise,
    with_eps,
    with_sample,
    out,
):
    i = cuda.grid(1)
    if i < sample.size:
        x = sample[i]
        e = eps[i]
        x0 = (x - sqrt_beta * e) * inv_sqrt_alpha
        if has_clip:
            x0 = -clip if x0 < -clip else (clip if x0 > clip else x0)  # NaN stays NaN, as in torch.clamp
        y = c_x0 * x0
        if with_eps:  # DDPM has no eps term, DDIM no sample term (coef.terms): not 0 * inf = NaN
            y += c_eps * e
        if with_sample:
            y += c_sample * x
        if has_noise:
            y += c_noise * noise[i]
        out[i] = y


def scheduler_step_v1(sample, eps, noise, coef, clip, out):
    has_noise, noise = optional(noise)
    has_clip = clip is not None  # an optional scalar: a flag plus a float, for the same reason
    f = [float32(coef.sqrt_beta), float32(coef.inv_sqrt_alpha), has_clip, float32(clip if has_clip else 0.0)]
    f += [float32(c) for c in (coef.c_x0, coef.c_eps, coef.c_sample, coef.c_noise)] + list(coef.terms)
    launch1d(_scheduler_step, sample.size, sample, eps, has_noise, noise, *f, out)


VERSIONS = {
    "silu": {1: silu_v1},
    "gelu": {1: gelu_v1},
    "geglu": {1: geglu_v1},
    "add": {1: add_v1},
    "scale_add": {1: scale_add_v1},
    "cfg_combine": {1: cfg_combine_v1},
    "upsample_nearest2x": {1: upsample_nearest2x_v1},
    "concat_channels": {1: concat_channels_v1},
    "transpose": {1: transpose_v1, 2: transpose_v2},
    "timestep_embedding": {1: timestep_embedding_v1},
    "scheduler_step": {1: scheduler_step_v1},
}
