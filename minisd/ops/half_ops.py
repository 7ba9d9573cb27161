"""The UNet's ops in half precision on the tensor cores (CuPy): fp16 or bf16 NHWC images, fused kernels.

    ops = HalfOps("bf16")
    y = ops.conv2d(x, weight, bias, padding=1, channel_add=temb)   # x (N, H, W, C) half, weight (O, kh, kw, C)

The same method names and arguments as minisd.ops.Ops, so minisd/forward.py's UNet runs on it unchanged,
with three differences a caller sees:

* images are NHWC (N, H, W, C): a pixel's channels are contiguous, which turns a convolution into a GEMM
  whose rows are 16-byte runs of memory (minisd/ops/cuda/half_gemm.cu), and makes to_tokens and
  from_tokens free (a reshape: tokens are the pixels in order);
* arrays hold 16-bit values: ``cupy.float16`` for fp16, ``cupy.uint16`` bit patterns for bf16 (CuPy has no
  bfloat16 type); ``to_float32`` reads either back. Weights come from ``prepare`` (reordered, half); biases,
  norm weights and the per-channel addends stay float32, added in float32 in the kernels' epilogues;
* conv2d and linear take C and O in multiples of 8 (16-byte copies); ``prepare`` pads the UNet's 3-channel
  input and output convolutions to 8 with zeros.

Accuracy: every product accumulates in float32; what is rounded to half is each kernel's inputs and output
(relative error ~2^-11 = 5e-4 per rounding in fp16, 2^-8 = 4e-3 in bf16). Norm statistics and the
softmax are float32. Like minisd.ops.cupy_ops, nothing here allocates inside a CUDA graph capture except
outputs from the current CuPy allocator, and nothing synchronizes.
"""

import math

import cupy as cp
import numpy as np

from minisd.ops import cupy_ops

PRECISIONS = ("fp16", "bf16")
THREADS = 128  # HG_THREADS (half_gemm.cu), 32 * HA_WARPS (half_attention.cu)
MAX_CHANNELS = 512  # HN_MAX_C (half_norm.cu)


def _i32(*values):
    return tuple(np.int32(v) for v in values)


def _ptr(a):
    return cupy_ops.NULL if a is None else a


class HalfOps:
    """minisd's UNet ops in ``precision`` ("fp16" or "bf16") on the current CuPy device."""

    backend = "cupy"

    def __init__(self, precision="bf16"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if cupy_ops._compute_capability() < 80:
            raise RuntimeError(
                "half-precision tensor cores (mma.sync m16n8k16) need an Ampere or newer GPU (compute "
                f"capability 8.0), this one is {cupy_ops._compute_capability() / 10:.1f}: use precision fp32"
            )
        self.precision = precision
        self.bf16 = int(precision == "bf16")
        self.dtype = cp.dtype(cp.uint16 if self.bf16 else cp.float16)

    # ------------------------------------------------------------------------------------ plumbing

    def _kernel(self, file, name, *template):
        """``name<template...>`` of half.cu + ``file``; a kernel templated on BF16 alone by default."""
        args = ", ".join(str(a) for a in (template or (self.bf16,)))
        return cupy_ops._kernel(("half.cu", file), f"{name}<{args}>", template=True)

    def _check(self, name, x, ndim=None):
        if isinstance(x, ChannelConcat):  # its parts were checked when it was made
            return x
        if not isinstance(x, cp.ndarray) or x.dtype != self.dtype:
            got = type(x).__name__ if not isinstance(x, cp.ndarray) else x.dtype
            raise TypeError(f"{name} must be a CuPy {self.precision} array ({self.dtype}), got {got}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
        return x

    def _empty(self, shape):
        return cp.empty(shape, self.dtype)

    def from_float32(self, x):
        """A float32 CuPy array -> the same values in this precision (round to nearest even)."""
        x = cp.ascontiguousarray(x, cp.float32)
        out = self._empty(x.shape)
        cupy_ops._launch_1d(
            self._kernel("half_elementwise.cu", "float_to_half_kernel"), x.size, (x, out, np.int64(x.size))
        )
        return out

    def to_float32(self, x):
        x = self._array(self._check("x", x))
        out = cp.empty(x.shape, cp.float32)
        cupy_ops._launch_1d(
            self._kernel("half_elementwise.cu", "half_to_float_kernel"), x.size, (x, out, np.int64(x.size))
        )
        return out

    def from_nchw(self, x, channels):
        """float32 (N, C, H, W) -> (N, H, W, channels), channels >= C (the extra ones zero)."""
        n, c, h, w = x.shape
        out = self._empty((n, h, w, channels))
        cupy_ops._launch_1d(
            self._kernel("half_elementwise.cu", "nchw_to_nhwc_kernel"),
            out.size,
            (cp.ascontiguousarray(x, cp.float32), out, np.int64(out.size), *_i32(c, channels, h * w)),
        )
        return out

    def to_nchw(self, x, channels):
        """(N, H, W, Cp) -> float32 (N, channels, H, W): the first ``channels``."""
        self._check("x", x, 4)
        n, h, w, cp_ = x.shape
        out = cp.empty((n, channels, h, w), cp.float32)
        cupy_ops._launch_1d(
            self._kernel("half_elementwise.cu", "nhwc_to_nchw_kernel"),
            out.size,
            (x, out, np.int64(out.size), *_i32(channels, cp_, h * w)),
        )
        return out

    # ------------------------------------------------------------------------------- matrix products

    @staticmethod
    def _plan(rows, cols, k):
        """Block tile (bm, bn) and cluster split-K factor ks for a rows x cols x k product: as
        cupy_ops._gemm_plan, with half_gemm.cu's tiles and k-steps of 32, at least 4 per block of a split (measured on an
        H200: shorter slices cost more in the cluster's reduction than they save)."""
        sms = cupy_ops._sm_count()

        def blocks(tile):
            return -(-rows // tile[0]) * -(-cols // tile[1])

        def padded(tile):
            return -(-rows // tile[0]) * tile[0] * -(-cols // tile[1]) * tile[1]

        full = [t for t in ((128, 64), (64, 64), (128, 32), (64, 32)) if blocks(t) >= sms]
        if full:
            return (*min(full, key=padded), 1)
        tiles, steps, ks = blocks((64, 32)), -(-k // 32), 1
        while cupy_ops._compute_capability() >= 90 and ks < 8 and tiles * ks < sms and steps >= 8 * ks:
            ks *= 2
        return 64, 32, ks

    def _gemm(self, x, weight, bias, out, shape, geglu=False, channel_add=None, residual=None, norm=None):
        n, h, w, c, o, kh, kw, stride, pad, ho, wo, up = shape
        if c % 8 or o % 8:
            raise ValueError(f"half-precision products need channels in multiples of 8, got in {c}, out {o}")
        bm, bn, ks = self._plan(n * ho * wo, o, kh * kw * c)
        kernel = self._kernel(
            "half_gemm.cu", "half_gemm_kernel", bm, bn, self.bf16, int(geglu), ks, int(bool(norm))
        )
        grid = (-(-(n * ho * wo) // bm), -(-o // bn), ks)
        x, x2, c1 = _sources(x)
        colsum, eps = norm or (None, 0.0)
        args = (
            x,
            x2,
            weight,
            _ptr(bias),
            _ptr(colsum),
            np.float32(eps),
            _ptr(channel_add),
            _ptr(residual),
            out,
        )
        args += _i32(n, h, w, c, c1, o, kh, kw, stride, pad, ho, wo, up)
        kernel(grid, (THREADS,), args)
        return out

    def conv2d(
        self, x, weight, bias=None, stride=1, padding=0, residual=None, channel_add=None, upsample=False
    ):
        """x (N, H, W, C), weight (O, kh, kw, C) -> (N, Ho, Wo, O). Fused: bias (O,), ``channel_add`` (N, O)
        float32 (a ResNet's time embedding), ``residual`` (the output's shape), and ``upsample`` (nearest
        2x of x before the convolution, never stored). x may be a ``ChannelConcat``: read in place."""
        self._check("x", x, 4)
        self._check("weight", weight, 4)
        n, h, w, c = x.shape
        o, kh, kw, wc = weight.shape
        if wc != c:
            raise ValueError(f"weight takes {wc} channels, x has {c}")
        up = int(bool(upsample))
        ho = ((h << up) + 2 * padding - kh) // stride + 1
        wo = ((w << up) + 2 * padding - kw) // stride + 1
        out = self._empty((n, ho, wo, o))
        residual = self._array(residual)
        if residual is not None and self._check("residual", residual).shape != out.shape:
            raise ValueError(f"residual must have the output's shape {out.shape}, got {residual.shape}")
        if channel_add is not None and (channel_add.shape != (n, o) or channel_add.dtype != cp.float32):
            raise ValueError(
                f"channel_add must be float32 (N, O) = {(n, o)}, got {channel_add.dtype} {channel_add.shape}"
            )
        shape = (n, h, w, c, o, kh, kw, stride, padding, ho, wo, up)
        return self._gemm(x, weight, bias, out, shape, channel_add=channel_add, residual=residual)

    def linear(self, x, weight, bias=None, residual=None):
        """x (..., K) @ weight (O, K)^T + bias, + ``residual``: a 1x1 convolution over the rows."""
        self._check("x", x)
        self._check("weight", weight, 2)
        o, k = weight.shape
        if x.shape[-1] != k:
            raise ValueError(f"weight takes {k} features, x has {x.shape[-1]}")
        rows = x.size // k
        out = self._empty((*x.shape[:-1], o))
        if residual is not None and self._check("residual", residual).shape != out.shape:
            raise ValueError(f"residual must have the output's shape {out.shape}, got {residual.shape}")
        return self._gemm(x, weight, bias, out, (1, 1, rows, k, o, 1, 1, 1, 0, 1, rows, 0), residual=residual)

    def linear_geglu(self, x, weight, bias=None):
        """GEGLU(x W^T + b) in one kernel. ``weight`` (2F, K) has its rows interleaved (value 0, gate 0,
        value 1, ...: ``interleave_geglu``) so each thread holds a value and its gate side by side."""
        self._check("x", x)
        self._check("weight", weight, 2)
        o, k = weight.shape
        rows = x.size // k
        out = self._empty((*x.shape[:-1], o // 2))
        return self._gemm(x, weight, bias, out, (1, 1, rows, k, o, 1, 1, 1, 0, 1, rows, 0), geglu=True)

    def layer_norm_linear(self, x, weight, bias, colsum, eps=1e-5, geglu=False):
        """linear(layer_norm(x), ...) (linear_geglu if ``geglu``) in one kernel, the LayerNorm never stored.
        Its scale and shift must already be folded into ``weight`` and ``bias`` (``fold_layer_norm``);
        ``colsum`` (O,) float32 is the sum of each row of that folded half weight (``layer_norm_colsum``)."""
        self._check("x", x)
        self._check("weight", weight, 2)
        o, k = weight.shape
        if x.shape[-1] != k:
            raise ValueError(f"weight takes {k} features, x has {x.shape[-1]}")
        if not isinstance(colsum, cp.ndarray) or colsum.dtype != cp.float32 or colsum.shape != (o,):
            raise ValueError(f"colsum must be a float32 CuPy vector of the weight's {o} rows")
        rows = x.size // k
        out = self._empty((*x.shape[:-1], o // 2 if geglu else o))
        shape = (1, 1, rows, k, o, 1, 1, 1, 0, 1, rows, 0)
        return self._gemm(x, weight, bias, out, shape, geglu=geglu, norm=(colsum, eps))

    def layer_norm_colsum(self, weight):
        """layer_norm_linear's ``colsum`` for a folded half ``weight`` (O, K): the sums of the rounded values the
        tensor cores multiply, so that mean * colsum cancels exactly what the rows' mean adds to the product."""
        return self.to_float32(weight).astype(cp.float64).sum(axis=1).astype(cp.float32)

    # ------------------------------------------------------------------------------------ attention

    def attention(self, q, k, v, heads, scale=None):
        """softmax(q k^T * scale) v on (B, L, H*D) tokens with ``heads`` = H; D = 32 or 64."""
        for name, a in (("q", q), ("k", k), ("v", v)):
            self._check(name, a, 3)
        b, lq, hd = q.shape
        if k.shape[::2] != (b, hd) or v.shape != k.shape:
            raise ValueError(f"k and v must be (B, Lk, H*D) = ({b}, Lk, {hd}), got {k.shape}, {v.shape}")
        return self._attention(q, k, v, heads, scale, b, lq, k.shape[1], hd, ld=hd)

    def self_attention(self, qkv, heads, scale=None):
        """Attention of (B, L, 3*H*D) tokens [q | k | v] (one projection's output) to themselves."""
        self._check("qkv", qkv, 3)
        b, length, hd3 = qkv.shape
        if hd3 % 3:
            raise ValueError(f"qkv's last axis holds q, k and v: a multiple of 3, got {hd3}")
        hd = hd3 // 3
        q, k, v = (qkv[..., i * hd :] for i in range(3))  # views: the kernel reads them with row stride 3*H*D
        return self._attention(q, k, v, heads, scale, b, length, length, hd, ld=hd3)

    def _attention(self, q, k, v, heads, scale, b, lq, lk, hd, ld):
        """The kernel on q, k, v whose rows are ``ld`` apart (the output's are hd)."""
        d = hd // heads
        if d not in (32, 64) or hd % heads:
            raise ValueError(f"half-precision attention needs head_dim 32 or 64, got {hd} / {heads} heads")
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        out = self._empty((b, lq, hd))
        kernel = self._kernel("half_attention.cu", "half_attention_kernel", d, self.bf16)
        grid = (-(-lq // 64), heads, b)
        args = (q, k, v, out, *_i32(lq, lk, ld, ld, hd))
        kernel(grid, (THREADS,), (*args, np.float32(scale * math.log2(math.e))))
        return out

    # -------------------------------------------------------------------------------- normalisation

    def group_norm(self, x, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
        """GroupNorm of (N, H, W, C) (+ SiLU), statistics in float32; weight, bias float32 (C,). x may be a
        ``ChannelConcat``: read in place."""
        self._check("x", x, 4)
        n, h, w, c = x.shape
        if c % 8 or c % num_groups or c > MAX_CHANNELS:
            raise ValueError(
                f"group_norm: {c} channels must be a multiple of 8 and of {num_groups} groups, "
                f"at most {MAX_CHANNELS}"
            )
        out = self._empty(x.shape)
        vectors, per_pixel = h * w * c // 8, c // 8
        cl = self._cluster_size(n, vectors)
        rows = 1  # threads per channel (sum_channels in half_norm.cu: a power of two), 512 threads at most
        while per_pixel * rows * 2 <= 512 and per_pixel * rows < -(-vectors // cl):
            rows *= 2
        threads = per_pixel * rows
        kernel = self._kernel("half_norm.cu", "half_group_norm_kernel", self.bf16, cl)
        x, x2, c1 = _sources(x)
        args = (
            x,
            x2,
            _ptr(weight),
            _ptr(bias),
            out,
            *_i32(h * w, c, c1, num_groups),
            np.float32(eps),
            np.int32(bool(silu)),
        )
        kernel((1, n, cl), (threads,), args)
        return out

    @staticmethod
    def _cluster_size(images, vectors):
        """Blocks per image for group_norm (Hopper: a cluster). Measured on an H200: a small batch of big
        images wants up to 4 (each block still reading 2048+ 16-byte vectors: fewer cost more in the
        cluster's barriers than they save), a big batch of big images (8192+ vectors each) 2."""
        if cupy_ops._compute_capability() < 90:
            return 1
        if images * 2 > cupy_ops._sm_count():
            return 2 if vectors >= 8192 else 1
        cl = 1
        while cl < 4 and images * cl * 2 <= cupy_ops._sm_count() and vectors // (cl * 2) >= 2048:
            cl *= 2
        return cl

    def layer_norm(self, x, weight=None, bias=None, eps=1e-5):
        self._check("x", x)
        f = x.shape[-1]
        if f % 8:
            raise ValueError(f"half-precision layer_norm needs features in multiples of 8, got {f}")
        rows = x.size // f
        out = self._empty(x.shape)
        kernel = self._kernel("half_norm.cu", "half_layer_norm_kernel")
        kernel((-(-rows // 8),), (256,), (x, _ptr(weight), _ptr(bias), out, *_i32(rows, f), np.float32(eps)))
        return out

    # ---------------------------------------------------------------------------------- data movement

    @staticmethod
    def image_size(x):
        return tuple(x.shape[1:3])

    def to_tokens(self, x):
        """(N, H, W, C) -> (N, H*W, C): the same memory."""
        n, h, w, c = x.shape
        return x.reshape(n, h * w, c)

    def from_tokens(self, x, h, w):
        n, _, c = x.shape
        return x.reshape(n, h, w, c)

    def concat_channels(self, a, b):
        """(N, H, W, Ca) and (N, H, W, Cb) -> (N, H, W, Ca + Cb), the UNet's skip connections, as a
        ``ChannelConcat``: no copy; conv2d and group_norm (the only readers in the UNet) read both parts."""
        self._check("a", a, 4)
        self._check("b", b, 4)
        if a.shape[:3] != b.shape[:3] or a.shape[3] % 8 or b.shape[3] % 8:
            raise ValueError(
                f"concat_channels: (N, H, W) must match and channels be multiples of 8, got "
                f"{a.shape} and {b.shape}"
            )
        return ChannelConcat(a, b)

    def _array(self, x):
        """A ChannelConcat copied into one array (where a kernel needs one); anything else as it is."""
        if not isinstance(x, ChannelConcat):
            return x
        a, b = x
        out = self._empty(x.shape)
        n = out.size // 8
        kernel = cupy_ops._kernel(("half.cu", "half_elementwise.cu"), "concat_nhwc_kernel")
        cupy_ops._launch_1d(kernel, n, (a, b, out, np.int64(n), *_i32(a.shape[3] // 8, b.shape[3] // 8)))
        return out


class ChannelConcat(tuple):
    """Two NHWC images (a, b) that stand for their concatenation along the channels."""

    def __new__(cls, a, b):
        return super().__new__(cls, (a, b))

    @property
    def shape(self):
        a, b = self
        return (*a.shape[:3], a.shape[3] + b.shape[3])


def _sources(x):
    """(first image, second image, channels of the first) of a ChannelConcat or a plain image."""
    if isinstance(x, ChannelConcat):
        return x[0], x[1], x[0].shape[3]
    return x, x, x.shape[-1]


def fold_layer_norm(norm_weight, norm_bias, weight, bias=None):
    """LayerNorm(gamma, beta) then linear(W, b) as a LayerNorm without scale and shift then linear(W', b'):
    W' = W * gamma (each column k scaled), b' = b + W beta. numpy float64 in, float64 out."""
    weight = np.asarray(weight, np.float64)
    folded_bias = weight @ np.asarray(norm_bias, np.float64)
    if bias is not None:
        folded_bias += bias
    return weight * np.asarray(norm_weight, np.float64), folded_bias


def interleave_geglu(weight):
    """(2F, ...) GEGLU projection rows [values; gates] -> value 0, gate 0, value 1, gate 1, ..."""
    f = weight.shape[0] // 2
    return np.stack([weight[:f], weight[f:]], axis=1).reshape(weight.shape)
