"""The CuPy backend: minisd's ops as CUDA C++ kernels (minisd/ops/cuda/*.cu), compiled at run time by NVRTC.

Every function takes and returns C-contiguous float32 ``cupy.ndarray``s and launches on CuPy's current
stream. Each takes an optional ``out=`` (preallocated, right shape): with it an op allocates nothing and
syncs nothing, so a whole UNet step can be captured in a CUDA graph. Run the ops once before capturing:
the first call of a kernel compiles and loads it, which must not happen inside a capture.

Matrix products (conv2d, linear) run on the tensor cores. ``precision`` picks how:
  "3xtf32" (default) near float32 accuracy (1e-6 .. 2e-5 of max|out| for K up to 2304): each operand split
           into two TF32 parts, three MMAs;
  "tf32"   one MMA, ~3e-4 relative error;
  "fp32"   plain float32 FMAs on the CUDA cores: the reference path.
At minisd's sizes all three take about the same time (latency-bound). Before Ampere (compute capability
8.0) the tensor-core modes fall back to fp32; before Hopper (9.0) K is never split across a cluster.
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
    """Compile ``files`` (concatenated, in order) once per process; CuPy also caches the binary on disk."""
    code = "\n".join((CUDA_DIR / f).read_text() for f in files)
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


# ---------------------------------------------------------------------------------------------------------
# Checking inputs: clear errors here instead of wrong answers (or a crash) in a kernel


def _check(x, what, ndim=None):
    if not isinstance(x, cp.ndarray):
        raise ValueError(f"{what} must be a cupy.ndarray on the GPU, got {type(x).__name__}")
    if x.dtype != cp.float32:
        raise ValueError(f"{what} must be float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (cupy.ascontiguousarray), got strides {x.strides}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {x.shape}")
    if x.size >= 2**31:
        raise ValueError(f"{what} has {x.size} elements; these kernels index with 32-bit ints (< 2**31)")
    return x


def _check_vector(v, n, what):
    if v is not None:
        _check(v, what, 1)
        if v.shape[0] != n:
            raise ValueError(f"{what} must have shape ({n},), got {v.shape}")
    return v


def _overlaps(a, b):
    a0, b0 = a.data.ptr, b.data.ptr
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def _out(out, shape, what, inputs=()):
    """A fresh output, or the caller's ``out`` once checked. ``inputs`` are arrays ``out`` must not overlap
    (ops whose threads read elements other threads write); pointwise ops may write in place."""
    shape = tuple(int(s) for s in shape)
    if out is None:
        return cp.empty(shape, cp.float32)
    _check(out, f"{what}: out")
    if out.shape != shape:
        raise ValueError(f"{what}: out must have shape {shape}, got {out.shape}")
    for x in inputs:
        if x is not None and _overlaps(out, x):
            raise ValueError(f"{what}: out must not overlap an input (this op cannot run in place)")
    return out


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


def conv2d(x, weight, bias=None, stride=1, padding=0, *, residual=None, out=None, precision=None):
    """x (N, C, H, W), weight (O, C, kh, kw), bias (O,) -> (N, O, Ho, Wo). Implicit GEMM, bias fused;
    ``residual`` (the output's shape) is added in the same pass: a ResNet block's ``shortcut + h``."""
    _check(x, "conv2d: x", 4)
    _check(weight, "conv2d: weight", 4)
    n, c, h, w = x.shape
    o, wc, kh, kw = weight.shape
    if wc != c:
        raise ValueError(f"conv2d: weight {weight.shape} expects {wc} input channels, x {x.shape} has {c}")
    _check_vector(bias, o, "conv2d: bias")
    if int(stride) < 1 or int(padding) < 0:
        raise ValueError(
            f"conv2d: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}"
        )
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: a {kh}x{kw} kernel does not fit x {x.shape} with padding {padding}")
    if residual is not None:
        _check(residual, "conv2d: residual")
        if residual.shape != (n, o, ho, wo):
            raise ValueError(f"conv2d: residual must have shape {(n, o, ho, wo)}, got {residual.shape}")
    out = _out(out, (n, o, ho, wo), "conv2d", (x, weight, bias))  # out may be residual: read, then written
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


def linear(x, weight, bias=None, *, residual=None, out=None, precision=None):
    """x (..., in), weight (out, in) (torch layout), bias (out,) -> (..., out). ``residual`` (same shape as
    the output) is added in the epilogue: a transformer's skip connection without another pass."""
    _check(x, "linear: x")
    _check(weight, "linear: weight", 2)
    n, k = weight.shape
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"linear: x {x.shape} must end in in_features={k} (weight {weight.shape})")
    _check_vector(bias, n, "linear: bias")
    shape = (*x.shape[:-1], n)
    if residual is not None:
        _check(residual, "linear: residual")
        if residual.shape != shape:
            raise ValueError(f"linear: residual must have shape {shape}, got {residual.shape}")
    out = _out(
        out, shape, "linear", (x, weight, bias)
    )  # out may be residual itself: same element, same thread
    m = x.size // k if k else 0
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


def attention(q, k, v, heads=None, scale=None, *, out=None):
    """softmax(q k^T * scale) v, fused. 4-D (B, H, Lq, D) with k, v (B, H, Lk, D); or 3-D (B, L, H*D) with
    ``heads=H``: the kernel reads the heads in place through strides, so no transposes either way."""
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check(t, f"attention: {name}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must have the same shape")
    if heads is None:
        if q.ndim != 4 or k.ndim != 4:
            raise ValueError(
                f"attention: q, k, v must be 4-D (B, H, L, D) (or 3-D with heads=), got {q.shape}"
            )
        b, h, lq, d = q.shape
        lk = k.shape[2]
        if k.shape[:2] != (b, h) or k.shape[3] != d:
            raise ValueError(f"attention: k {k.shape} does not match q {q.shape} in batch, heads or head_dim")
        sq = (h * lq * d, lq * d, d)  # element strides of (batch, head, row)
        sk = (h * lk * d, lk * d, d)
    else:
        if q.ndim != 3 or k.ndim != 3:
            raise ValueError(f"attention: with heads= q, k, v must be 3-D (B, L, H*D), got {q.shape}")
        b, lq, hd = q.shape
        lk = k.shape[1]
        h = int(heads)
        if h < 1 or hd % h:
            raise ValueError(f"attention: {hd} features do not split into heads={heads}")
        if k.shape[0] != b or k.shape[2] != hd:
            raise ValueError(f"attention: k {k.shape} does not match q {q.shape} in batch or features")
        d = hd // h
        sq = (lq * hd, d, hd)
        sk = (lk * hd, d, hd)
    if d > 64:
        raise ValueError(f"attention: head_dim {d} > 64 is not supported (registers hold a whole row)")
    out = _out(out, q.shape, "attention", (q, k, v))
    if q.size == 0:
        return out
    if lk == 0:
        raise ValueError("attention: k and v have no keys (Lk = 0)")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    split = _attention_split(b, h, lq)
    kernel = _kernel(("attention.cu",), f"attention_kernel<{32 if d <= 32 else 64}, {split}>", template=True)
    grid = (-(-lq // (ATT_THREADS // split)), h, b)
    strides = tuple(np.int64(s) for s in (*sq, *sk, *sq))
    kernel(
        grid,
        (ATT_THREADS,),
        (q, k, v, out, *_i32(lq, lk, d), *strides, np.float32(scale * math.log2(math.e))),
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# Normalisations and softmax (norm.cu)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False, *, out=None):
    """GroupNorm over (N, C, ...) with per-channel affine; ``silu=True`` fuses the SiLU that follows it."""
    _check(x, "group_norm: x")
    if x.ndim < 2:
        raise ValueError(f"group_norm: x must be (N, C, ...), got shape {x.shape}")
    n, c = x.shape[:2]
    g = int(num_groups)
    if g < 1 or c % g:
        raise ValueError(f"group_norm: {c} channels do not split into num_groups={num_groups}")
    _check_vector(weight, c, "group_norm: weight")
    _check_vector(bias, c, "group_norm: bias")
    # In place is fine: the block has read all of its group before the last pass, and in the last pass each
    # thread reads, then writes, only its own elements. (Likewise layer_norm and softmax, per row.)
    out = _out(out, x.shape, "group_norm")
    hw = x.size // (n * c) if n * c else 0
    if x.size == 0:
        return out
    kernel = _kernel(("norm.cu",), "group_norm_kernel")
    args = (x, _ptr(weight), _ptr(bias), out, *_i32(c, hw, g), np.float32(eps), np.int32(bool(silu)))
    # Only N*G blocks (16 for minisd at batch 2): the bigger the group, the wider the block, up to 1024.
    threads = min(1024, max(128, 1 << max(1, hw * (c // g) // 8).bit_length() - 1))
    kernel((n * g,), (threads,), args)
    return out


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, out=None):
    """LayerNorm over the last axis."""
    _check(x, "layer_norm: x")
    if x.ndim < 1:
        raise ValueError("layer_norm: x must have at least one axis")
    f = x.shape[-1]
    _check_vector(weight, f, "layer_norm: weight")
    _check_vector(bias, f, "layer_norm: bias")
    out = _out(out, x.shape, "layer_norm")
    rows = x.size // f if f else 0
    if rows == 0:
        return out
    kernel = _kernel(("norm.cu",), "layer_norm_kernel")
    grid = (-(-rows // ROWS_PER_BLOCK),)
    kernel(grid, (32 * ROWS_PER_BLOCK,), (x, _ptr(weight), _ptr(bias), out, *_i32(rows, f), np.float32(eps)))
    return out


def softmax(x, *, out=None):
    """Softmax over the last axis, max-subtracted."""
    _check(x, "softmax: x")
    if x.ndim < 1:
        raise ValueError("softmax: x must have at least one axis")
    f = x.shape[-1]
    out = _out(out, x.shape, "softmax")
    rows = x.size // f if f else 0
    if rows == 0:
        return out
    kernel = _kernel(("norm.cu",), "softmax_kernel")
    kernel((-(-rows // ROWS_PER_BLOCK),), (32 * ROWS_PER_BLOCK,), (x, out, *_i32(rows, f)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Pointwise and data movement (elementwise.cu)


def _pointwise(name, x, what, out):
    _check(x, f"{what}: x")
    out = _out(out, x.shape, what)  # in place (out=x) is fine: each thread reads, then writes, its element
    if x.size:
        _launch_1d(_kernel(("elementwise.cu",), name), x.size, (x, out, np.int64(x.size)))
    return out


def silu(x, *, out=None):
    return _pointwise("silu_kernel", x, "silu", out)


def gelu(x, *, out=None):
    """Exact GELU (erf), as torch's default."""
    return _pointwise("gelu_kernel", x, "gelu", out)


def geglu(x, *, out=None):
    """(..., 2F) -> (..., F): first half * gelu(second half)."""
    _check(x, "geglu: x")
    if x.ndim < 1 or x.shape[-1] % 2:
        raise ValueError(f"geglu: the last axis must have an even length, got shape {x.shape}")
    f = x.shape[-1] // 2
    out = _out(out, (*x.shape[:-1], f), "geglu", (x,))
    if out.size:
        _launch_1d(
            _kernel(("elementwise.cu",), "geglu_kernel"), out.size, (x, out, np.int64(out.size), np.int32(f))
        )
    return out


def scale_add(a, b, alpha=1.0, beta=1.0, *, out=None):
    """alpha * a + beta * b; b the same shape as a, or (B, C) broadcast onto a (B, C, H, W)."""
    _check(a, "add: a")
    _check(b, "add: b")
    if b.shape == a.shape:
        inner = 1
    elif a.ndim == 4 and b.shape == a.shape[:2]:
        inner = a.shape[2] * a.shape[3]  # one b value per (image, channel) plane
    else:
        raise ValueError(f"add: b must have a's shape {a.shape} or (B, C) = {a.shape[:2]}, got {b.shape}")
    out = _out(out, a.shape, "add", () if inner == 1 else (b,))
    if a.size:
        args = (a, b, out, np.int64(a.size), np.int64(inner), np.float32(alpha), np.float32(beta))
        _launch_1d(_kernel(("elementwise.cu",), "add_kernel"), a.size, args)
    return out


def add(a, b, *, out=None):
    """a + b; b the same shape as a, or (B, C) added to every pixel of a (B, C, H, W)."""
    return scale_add(a, b, 1.0, 1.0, out=out)


def cfg_combine(eps_uncond, eps_cond, guidance_scale, *, out=None):
    """Classifier-free guidance: eps_u + g * (eps_c - eps_u)."""
    _check(eps_uncond, "cfg_combine: eps_uncond")
    _check(eps_cond, "cfg_combine: eps_cond")
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"cfg_combine: shapes differ: {eps_uncond.shape} and {eps_cond.shape}")
    out = _out(out, eps_cond.shape, "cfg_combine")
    n = out.size
    if n:
        args = (eps_uncond, eps_cond, out, np.int64(n), np.float32(guidance_scale))
        _launch_1d(_kernel(("elementwise.cu",), "cfg_kernel"), n, args)
    return out


def upsample_nearest2x(x, *, out=None):
    _check(x, "upsample_nearest2x: x", 4)
    n, c, h, w = x.shape
    out = _out(out, (n, c, 2 * h, 2 * w), "upsample_nearest2x", (x,))
    if out.size:
        kernel = _kernel(("elementwise.cu",), "upsample2x_kernel")
        _launch_1d(kernel, out.size, (x, out, np.int64(out.size), *_i32(h, w)))
    return out


def concat_channels(a, b, *, out=None):
    """(N, Ca, H, W) and (N, Cb, H, W) -> (N, Ca + Cb, H, W): the UNet's skip connections."""
    _check(a, "concat_channels: a", 4)
    _check(b, "concat_channels: b", 4)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"concat_channels: a {a.shape} and b {b.shape} differ in batch or H, W")
    n, ca, h, w = a.shape
    cb = b.shape[1]
    out = _out(out, (n, ca + cb, h, w), "concat_channels", (a, b))
    if out.size:
        kernel = _kernel(("elementwise.cu",), "concat_kernel")
        _launch_1d(kernel, out.size, (a, b, out, np.int64(out.size), *_i32(ca, cb, h * w)))
    return out


def _transpose(x, out, b, r, s):
    """(b, r, s) -> (b, s, r) through shared-memory tiles."""
    if x.size:
        kernel = _kernel(("elementwise.cu",), "transpose_kernel")
        kernel((-(-s // 32), -(-r // 32), b), (32, 8), (x, out, *_i32(r, s)))
    return out


def to_tokens(x, *, out=None):
    """(B, C, H, W) -> (B, H*W, C): an image as a sequence of pixel tokens."""
    _check(x, "to_tokens: x", 4)
    b, c, h, w = x.shape
    out = _out(out, (b, h * w, c), "to_tokens", (x,))
    return _transpose(x, out, b, c, h * w)


def from_tokens(x, h, w, *, out=None):
    """(B, H*W, C) -> (B, C, H, W)."""
    _check(x, "from_tokens: x", 3)
    b, l, c = x.shape
    if int(h) * int(w) != l:
        raise ValueError(f"from_tokens: {l} tokens are not an {h}x{w} image")
    out = _out(out, (b, c, h, w), "from_tokens", (x,))
    return _transpose(x, out, b, l, c)


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0, *, out=None):
    """(B,) timesteps -> (B, dim) sinusoidal embedding (diffusers' get_timestep_embedding)."""
    if not isinstance(timesteps, cp.ndarray) or timesteps.ndim != 1:
        raise ValueError(f"timestep_embedding: timesteps must be a 1-D cupy.ndarray, got {timesteps!r:.80}")
    dim, half = int(dim), int(dim) // 2
    if half < 1 or half == downscale_freq_shift:
        raise ValueError(f"timestep_embedding: dim={dim} with downscale_freq_shift={downscale_freq_shift}")
    t = (
        timesteps if timesteps.dtype == cp.float32 else timesteps.astype(cp.float32)
    )  # pass float32 to capture
    b = t.shape[0]
    out = _out(out, (b, dim), "timestep_embedding", (t,))
    if out.size:
        args = (
            t,
            out,
            *_i32(b, dim, half),
            np.float32(downscale_freq_shift),
            np.int32(bool(flip_sin_to_cos)),
        )
        _launch_1d(_kernel(("elementwise.cu",), "timestep_embedding_kernel"), out.size, args)
    return out


# ---------------------------------------------------------------------------------------------------------
# Sampling: scheduler steps and random numbers (elementwise.cu, random.cu)

_COEFFICIENTS = ("sqrt_beta", "inv_sqrt_alpha", "c_x0", "c_eps", "c_sample", "c_noise")


def scheduler_step(sample, eps, noise, coef, clip, *, out=None):
    """prev = c_x0 * clip(x0) + c_eps * eps + c_sample * sample + c_noise * noise, with
    x0 = (sample - sqrt_beta * eps) * inv_sqrt_alpha: one fused pass covers DDIM and DDPM steps.
    ``coef`` holds those six floats (see ddim_step / ddpm_step); ``clip`` is the x0 range or None."""
    _check(sample, "scheduler_step: sample")
    _check(eps, "scheduler_step: eps")
    if eps.shape != sample.shape:
        raise ValueError(f"scheduler_step: eps {eps.shape} must match sample {sample.shape}")
    if noise is not None:
        _check(noise, "scheduler_step: noise")
        if noise.shape != sample.shape:
            raise ValueError(f"scheduler_step: noise {noise.shape} must match sample {sample.shape}")
    missing = [k for k in _COEFFICIENTS if k not in coef]
    if missing:
        raise ValueError(f"scheduler_step: coef lacks {', '.join(missing)}")
    if clip is not None and not clip > 0:
        raise ValueError(f"scheduler_step: clip must be > 0 or None, got {clip}")
    out = _out(out, sample.shape, "scheduler_step")
    if sample.size:
        f = [np.float32(coef[k]) for k in _COEFFICIENTS]
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
        )
        _launch_1d(_kernel(("elementwise.cu",), "scheduler_step_kernel"), sample.size, args)
    return out


def ddim_step(
    sample,
    eps,
    alpha_prod_t,
    alpha_prod_t_prev,
    eta=0.0,
    noise=None,
    clip_sample=True,
    clip_range=1.0,
    *,
    out=None,
):
    """DDIM (diffusers' DDIMScheduler.step, epsilon prediction):
    prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std noise, std = eta sqrt(var)."""
    from minisd.ops import step_coefficients  # the host-side formulas every backend shares

    if eta > 0 and noise is None:
        raise ValueError("ddim_step: eta > 0 needs noise (e.g. randn(sample.shape, seed))")
    coef = step_coefficients(alpha_prod_t, alpha_prod_t_prev, "ddim", eta)
    clip = clip_range if clip_sample else None
    return scheduler_step(sample, eps, noise if eta > 0 else None, coef, clip, out=out)


def ddpm_step(
    sample, eps, alpha_prod_t, alpha_prod_t_prev, noise=None, clip_sample=True, clip_range=1.0, *, out=None
):
    """DDPM (diffusers' DDPMScheduler.step, epsilon, fixed_small variance): the posterior mean of x_{t-1}
    from x0 and x_t, plus std * noise. Pass noise=None on the last step (t = 0)."""
    from minisd.ops import step_coefficients

    coef = step_coefficients(alpha_prod_t, alpha_prod_t_prev, "ddpm")
    return scheduler_step(sample, eps, noise, coef, clip_range if clip_sample else None, out=out)


def randn(shape, seed, *, out=None):
    """Standard normal float32 numbers: bit for bit those of the numpy backend (minisd.ops.rng)."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"randn: negative dimension in shape {shape}")
    key = rng.key_of(seed)
    out = _out(out, shape, "randn")
    n = out.size
    if n:
        kernel = _kernel(("random.cu",), "randn_kernel", options=("-fmad=false",))
        _launch_1d(kernel, (n + 1) // 2, (out, np.int64(n), np.uint64(key)))
    return out
