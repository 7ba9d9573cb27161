"""The CuPy backend: minisd's ops as CUDA C++ kernels (minisd/ops/cuda/*.cu), compiled at run time by NVRTC.

Every function follows minisd.ops' backend convention: C-contiguous float32 ``cupy.ndarray``s that
``minisd.ops.Ops`` has checked, and ``out=`` (preallocated, right shape), which it fills and returns. An op
allocates nothing and syncs nothing, so a whole UNet step can be captured in a CUDA graph. It launches on
CuPy's current stream. Run the ops once before capturing: the first call of a kernel compiles and loads
it, which must not happen inside a capture.

Matrix products (conv2d, linear) run on the tensor cores. ``precision`` picks how:
  "3xtf32" (default) near float32 accuracy (1e-6 .. 2e-5 of max|out| for K up to 2304): each operand split
           into two TF32 parts, three MMAs;
  "tf32"   one MMA, ~3e-4 relative error;
  "fp32"   plain float32 FMAs on the CUDA cores: the reference path.
At minisd's sizes all three take about the same time (latency-bound). Before Ampere (compute capability
8.0) the tensor-core modes fall back to fp32; before Hopper (9.0) K is never split across a cluster.
NaN inputs give NaN in every mode, but an infinite input gives NaN, not torch's inf, in "3xtf32": its
split x = big + (x - big) is inf + NaN there. "fp32" gives torch's inf.
"""

import functools
import math
import pathlib

import cupy as cp
import numpy as np

from minisd.ops import rng

CUDA_DIR = pathlib.Path(__file__).with_name("cuda")
PRECISIONS = {"fp32": 0, "tf32": 1, "3xtf32": 3}  # the MODE template argument of gemm.cu
DEFAULT_PRECISION = "3xtf32"
GEMM_THREADS = 128  # THREADS in gemm.cu
ATT_THREADS = 128  # threads per attention block: 128 / SPLIT queries
ROWS_PER_BLOCK = 8  # layer_norm / softmax: one warp per row, 256 threads
NULL = np.uintp(0)  # a null pointer argument (optional bias, residual, noise)


# ---------------------------------------------------------------------------------------------------------
# Compiling and launching


@functools.cache
def _module(files, options=(), names=()):
    """Compile common.cu then ``files`` (concatenated, in order) once per process; CuPy also caches the
    binary on disk."""
    code = "\n".join((CUDA_DIR / f).read_text() for f in ("common.cu", *files))
    return cp.RawModule(code=code, options=("-std=c++17", *options), name_expressions=names or None)


def _kernel(files, name, options=(), template=False):
    """The compiled kernel ``name`` (a template instance such as "linear_kernel<32, 32, 3, 1>" when
    ``template``), loaded on the current GPU. Compiled on first use, one module per instance, so only the
    variants a model uses are built; later calls cost a dictionary lookup."""
    return _loaded(cp.cuda.runtime.getDevice(), files, name, options, template)


@functools.cache
def _loaded(device, files, name, options, template):
    return _module(files, options, (name,) if template else ()).get_function(name)


@functools.cache
def _device_info(device):
    """(SM count, compute capability as an int: 90 on an H100) of GPU ``device``."""
    d = cp.cuda.Device(device)
    return d.attributes["MultiProcessorCount"], int(d.compute_capability)


def _sm_count():
    return _device_info(cp.cuda.runtime.getDevice())[0]


def _compute_capability():
    return _device_info(cp.cuda.runtime.getDevice())[1]


def _launch_1d(kernel, n, args, threads=256):
    """Grid-stride kernels: enough blocks to fill the GPU, never more than the work needs."""
    blocks = max(1, min(-(-n // threads), 32 * _sm_count()))
    kernel((blocks,), (threads,), args)


def _i32(*values):
    return tuple(np.int32(v) for v in values)


def _ptr(a):
    return NULL if a is None else a


def _precision(precision):
    """The MODE of gemm.cu. TF32 tensor cores need compute capability 8.0 (Ampere); before it, FP32."""
    precision = DEFAULT_PRECISION if precision is None else precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision] if _compute_capability() >= 80 else 0


def _gemm_plan(rows, cols, k):
    """Block tile (bm, bn) and split-K factor ks for a rows x cols x k product.

    Among the tiles that give every SM a block, the one that wastes least on padding (a 64-row tile over
    32 output channels computes 32 rows of zeros). If none does (minisd's matrices are small but deep),
    the smallest tile, with K split across a cluster of ks = 2, 4 or 8 blocks (Hopper and newer), keeping
    at least two K steps of 16 per block so the split pays for its reduction."""
    sms = _sm_count()

    def padded(tile):
        return -(-rows // tile[0]) * tile[0] * -(-cols // tile[1]) * tile[1]

    full = [t for t in ((64, 64), (64, 32), (32, 64)) if -(-rows // t[0]) * -(-cols // t[1]) >= sms]
    bm, bn = min(full, key=padded) if full else (32, 32)  # min keeps the first (largest) of equals
    tiles, steps, ks = -(-rows // bm) * -(-cols // bn), -(-k // 16), 1
    while _compute_capability() >= 90 and ks < 8 and tiles * ks < sms and steps // (2 * ks) >= 2:
        ks *= 2
    return bm, bn, ks


# ---------------------------------------------------------------------------------------------------------
# Matrix products: conv2d, linear (gemm.cu, conv2d.cu)


def conv2d(x, weight, bias, stride, padding, residual=None, *, out, precision=None):
    """x (N, C, H, W), weight (O, C, kh, kw), bias (O,) -> (N, O, Ho, Wo). Implicit GEMM, bias fused;
    ``residual`` (the output's shape) is added in the same pass: a ResNet block's ``shortcut + h``."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = out.shape[2:]
    mode = _precision(precision)
    pixels = n * ho * wo
    bm, bn, ks = _gemm_plan(o, pixels, c * kh * kw)
    ksize = kh if kh == kw and kh in (1, 3) else 0  # compile-time 3x3 / 1x1: cheaper im2col indexing
    name = f"conv2d_kernel<{bm}, {bn}, {mode}, {ks}, {ksize}>"
    kernel = _kernel(("gemm.cu", "conv2d.cu"), name, template=True)
    grid = (-(-pixels // bn), -(-o // bm), ks)
    kernel(
        grid,
        (GEMM_THREADS,),
        (x, weight, _ptr(bias), _ptr(residual), out, *_i32(n, c, h, w, o, kh, kw, stride, padding, ho, wo)),
    )
    return out


def linear(x, weight, bias, residual=None, *, out, precision=None):
    """x (..., in), weight (out, in) (torch layout), bias (out,) -> (..., out). ``residual`` (same shape as
    the output) is added in the epilogue: a transformer's skip connection without another pass. ``out``
    may be ``residual`` itself: each element is read, then written, by the same thread."""
    n, k = weight.shape
    if k == 0:  # an empty dot product: the bias (and residual) alone, as in torch
        out[...] = 0.0 if bias is None else bias
        if residual is not None:
            out += residual
        return out
    m = x.size // k
    if m == 0 or n == 0:
        return out
    mode = _precision(precision)
    bm, bn, ks = _gemm_plan(m, n, k)
    kernel = _kernel(("gemm.cu",), f"linear_kernel<{bm}, {bn}, {mode}, {ks}>", template=True)
    grid = (-(-m // bm), -(-n // bn), ks)
    kernel(grid, (GEMM_THREADS,), (x, weight, _ptr(bias), _ptr(residual), out, *_i32(m, n, k)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Attention (attention.cu)


def _attention_split(b, h, lq):
    """Threads per query: 8, or 16 (half the keys each, twice the blocks) when 8 would leave SMs idle."""
    return 16 if b * h * -(-lq // (ATT_THREADS // 8)) < _sm_count() else 8


def attention(q, k, v, heads, scale, *, out):
    """softmax(q k^T * scale) v, fused. 4-D (B, H, Lq, D) with k, v (B, H, Lk, D) (``heads`` None); or 3-D
    (B, L, H*D) with ``heads=H``: the kernel reads the heads in place through strides, no transposes."""
    if heads is None:
        b, h, lq, d = q.shape
        lk = k.shape[2]
        sq = (h * lq * d, lq * d, d)  # element strides of (batch, head, row)
        sk = (h * lk * d, lk * d, d)
    else:
        b, lq, hd = q.shape
        lk = k.shape[1]
        h = int(heads)
        d = hd // h
        sq = (lq * hd, d, hd)
        sk = (lk * hd, d, hd)
    if d > 64:
        raise ValueError(
            f"attention: head_dim {d} > 64 is not supported on CuPy (registers hold a whole row)"
        )
    split = _attention_split(b, h, lq)
    kernel = _kernel(("attention.cu",), f"attention_kernel<{32 if d <= 32 else 64}, {split}>", template=True)
    grid = (-(-lq // (ATT_THREADS // split)), h, b)
    strides = tuple(np.int64(s) for s in (*sq, *sk, *sq))
    kernel(
        grid,
        (ATT_THREADS,),
        (q, k, v, out, *_i32(lq, lk, d), *strides, np.float32(float(scale) * math.log2(math.e))),
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# Normalisations and softmax (norm.cu)


def group_norm(x, num_groups, weight, bias, eps, silu, *, out):
    """GroupNorm over (N, C, ...) with per-channel affine; ``silu=True`` fuses the SiLU that follows it.
    In place is fine: the block has read all of its group before the last pass, and in the last pass each
    thread reads, then writes, only its own elements. (Likewise layer_norm and softmax, per row.)"""
    n, c = x.shape[:2]
    g = int(num_groups)
    hw = x.size // (n * c)
    kernel = _kernel(("norm.cu",), "group_norm_kernel")
    args = (x, _ptr(weight), _ptr(bias), out, *_i32(c, hw, g), np.float32(eps), np.int32(bool(silu)))
    # Only N*G blocks (16 for minisd at batch 2): the bigger the group, the wider the block, up to 1024.
    threads = min(1024, max(128, 1 << max(1, hw * (c // g) // 8).bit_length() - 1))
    kernel((n * g,), (threads,), args)
    return out


def layer_norm(x, weight, bias, eps, *, out):
    """LayerNorm over the last axis."""
    f = x.shape[-1]
    rows = x.size // f if f else 0
    if rows == 0:
        return out
    kernel = _kernel(("norm.cu",), "layer_norm_kernel")
    grid = (-(-rows // ROWS_PER_BLOCK),)
    kernel(grid, (32 * ROWS_PER_BLOCK,), (x, _ptr(weight), _ptr(bias), out, *_i32(rows, f), np.float32(eps)))
    return out


def softmax(x, *, out):
    """Softmax over the last axis, max-subtracted."""
    f = x.shape[-1]
    rows = x.size // f
    kernel = _kernel(("norm.cu",), "softmax_kernel")
    kernel((-(-rows // ROWS_PER_BLOCK),), (32 * ROWS_PER_BLOCK,), (x, out, *_i32(rows, f)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Pointwise and data movement (elementwise.cu)


def _pointwise(name, x, out):
    # in place (out=x) is fine: each thread reads, then writes, its element
    _launch_1d(_kernel(("elementwise.cu",), name), x.size, (x, out, np.int64(x.size)))
    return out


def silu(x, *, out):
    return _pointwise("silu_kernel", x, out)


def gelu(x, *, out):
    """Exact GELU (erf), as torch's default."""
    return _pointwise("gelu_kernel", x, out)


def geglu(x, *, out):
    """(..., 2F) -> (..., F): first half * gelu(second half)."""
    f = x.shape[-1] // 2
    _launch_1d(
        _kernel(("elementwise.cu",), "geglu_kernel"), out.size, (x, out, np.int64(out.size), np.int32(f))
    )
    return out


def scale_add(a, b, alpha, beta, *, out):
    """alpha * a + beta * b; b the same shape as a, or (B, C) broadcast onto a (B, C, H, W)."""
    inner = 1 if b.shape == a.shape else a.shape[2] * a.shape[3]  # one b value per (image, channel) plane
    args = (a, b, out, np.int64(a.size), np.int64(inner), np.float32(alpha), np.float32(beta))
    _launch_1d(_kernel(("elementwise.cu",), "add_kernel"), a.size, args)
    return out


def add(a, b, *, out):
    """a + b; b the same shape as a, or (B, C) added to every pixel of a (B, C, H, W)."""
    return scale_add(a, b, 1.0, 1.0, out=out)


def cfg_combine(eps_uncond, eps_cond, guidance_scale, *, out):
    """Classifier-free guidance: eps_u + g * (eps_c - eps_u)."""
    n = out.size
    args = (eps_uncond, eps_cond, out, np.int64(n), np.float32(guidance_scale))
    _launch_1d(_kernel(("elementwise.cu",), "cfg_kernel"), n, args)
    return out


def upsample_nearest2x(x, *, out):
    h, w = x.shape[2:]
    kernel = _kernel(("elementwise.cu",), "upsample2x_kernel")
    _launch_1d(kernel, out.size, (x, out, np.int64(out.size), *_i32(h, w)))
    return out


def concat_channels(a, b, *, out):
    """(N, Ca, H, W) and (N, Cb, H, W) -> (N, Ca + Cb, H, W): the UNet's skip connections."""
    _, ca, h, w = a.shape
    kernel = _kernel(("elementwise.cu",), "concat_kernel")
    _launch_1d(kernel, out.size, (a, b, out, np.int64(out.size), *_i32(ca, b.shape[1], h * w)))
    return out


def _transpose(x, out, b, r, s):
    """(b, r, s) -> (b, s, r) through shared-memory tiles."""
    kernel = _kernel(("elementwise.cu",), "transpose_kernel")
    kernel((-(-s // 32), -(-r // 32), b), (32, 8), (x, out, *_i32(r, s)))
    return out


def to_tokens(x, *, out):
    """(B, C, H, W) -> (B, H*W, C): an image as a sequence of pixel tokens."""
    b, c, h, w = x.shape
    return _transpose(x, out, b, c, h * w)


def from_tokens(x, h, w, *, out):
    """(B, H*W, C) -> (B, C, H, W)."""
    b, l, c = x.shape
    return _transpose(x, out, b, l, c)


def timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, *, out):
    """(B,) timesteps -> (B, dim) sinusoidal embedding (diffusers' get_timestep_embedding)."""
    t = timesteps if timesteps.dtype == cp.float32 else timesteps.astype(cp.float32)  # float32 to capture
    b, half = t.shape[0], int(dim) // 2
    args = (t, out, *_i32(b, dim, half), np.float32(downscale_freq_shift), np.int32(bool(flip_sin_to_cos)))
    _launch_1d(_kernel(("elementwise.cu",), "timestep_embedding_kernel"), out.size, args)
    return out


# ---------------------------------------------------------------------------------------------------------
# Sampling: scheduler steps and random numbers (elementwise.cu, random.cu)


def scheduler_step(sample, eps, noise, coef, clip, *, out):
    """prev = c_x0 * clip(x0) + c_eps * eps + c_sample * sample + c_noise * noise, with
    x0 = (sample - sqrt_beta * eps) * inv_sqrt_alpha: one fused pass covers DDIM and DDPM steps.
    ``coef`` is a minisd.schedulers.StepCoefficients; ``clip`` is the x0 range or None."""
    f = [
        np.float32(getattr(coef, k))
        for k in ("sqrt_beta", "inv_sqrt_alpha", "c_x0", "c_eps", "c_sample", "c_noise")
    ]
    terms = _i32(*coef.terms)  # DDPM has no eps term, DDIM no sample term
    args = (
        sample,
        eps,
        _ptr(noise),
        out,
        np.int64(sample.size),
        f[0],
        f[1],
        np.float32(clip or 0.0),
        *f[2:],
        *terms,
    )
    _launch_1d(_kernel(("elementwise.cu",), "scheduler_step_kernel"), sample.size, args)
    return out


def randn(shape, seed, *, out):
    """Standard normal float32 numbers: bit for bit those of the numpy backend (minisd.ops.rng)."""
    n = out.size
    kernel = _kernel(("random.cu",), "randn_kernel", options=("-fmad=false",))
    _launch_1d(kernel, (n + 1) // 2, (out, np.int64(n), np.uint64(rng.key_of(seed))))
    return out
