"""The Numba backend: each op of minisd.ops.Ops with its arguments plus ``out``, on Numba device arrays.

One file per op family holds kernel versions v1 (naive) ... vN (fast) in ``VERSIONS[op]``; by convention
the highest version is the fastest correct one and is what this backend runs (``python -m minisd.ops.dev``
checks and times them all). ``Ops`` has validated shapes and dtypes, made the inputs Numba device arrays
(C-contiguous float32) and allocated ``out``; these functions only reshape (free for contiguous arrays),
launch, and return ``out``.
"""

import importlib
import math

from minisd.ops.numba.common import get_stream, set_allocator, set_stream  # noqa: F401  (re-exported)

FILES = ("conv2d", "group_norm", "layer_norm", "softmax", "attention", "linear", "elementwise", "random")
MODULES = [importlib.import_module(f"minisd.ops.numba.{name}") for name in FILES]
VERSIONS = {op: versions for m in MODULES for op, versions in m.VERSIONS.items()}  # every kernel version


def kernel_file(name):
    """minisd/ops/numba/<name>.py as a module: its kernels and versions (this package's own ``softmax`` and
    the others are the backend's ops, so ``from minisd.ops.numba import softmax`` is not the file)."""
    return MODULES[FILES.index(name)]


def best(op):
    versions = VERSIONS[op]
    return versions[max(versions)]


def _rows(a):
    *outer, n = tuple(a.shape)
    return a.reshape(math.prod(outer), n)  # not a.size // n: n may be 0


def _flat(a):
    return a.reshape(a.size)


def _add_residual(out, residual):
    if residual is not None:  # in place: each thread reads, then writes, its own element
        best("add")(_flat(out), _flat(residual), 1, _flat(out))
    return out


def conv2d(x, weight, bias, stride, padding, residual, *, out):
    best("conv2d")(x, weight, bias, out, stride, padding)
    return _add_residual(out, residual)


def group_norm(x, num_groups, weight, bias, eps, silu, *, out):
    n, c = x.shape[:2]
    shape = (n, c, x.size // (n * c))
    best("group_norm")(x.reshape(*shape), num_groups, weight, bias, eps, silu, out.reshape(*shape))
    return out


def layer_norm(x, weight, bias, eps, *, out):
    best("layer_norm")(_rows(x), weight, bias, eps, _rows(out))
    return out


def linear(x, weight, bias, residual, *, out):
    best("linear")(_rows(x), weight, bias, _rows(out))
    return _add_residual(out, residual)


def silu(x, *, out):
    best("silu")(_flat(x), _flat(out))
    return out


def gelu(x, *, out):
    best("gelu")(_flat(x), _flat(out))
    return out


def geglu(x, *, out):
    best("geglu")(_rows(x), _rows(out))
    return out


def softmax(x, *, out):
    best("softmax")(_rows(x), _rows(out))
    return out


def attention(q, k, v, heads, scale, *, out):
    result = out
    if q.ndim == 4:  # (B, H, L, D) is (B*H, L, D) with one head per "batch"
        b, h, lq, d = q.shape
        lk = k.shape[2]
        q, k, v = q.reshape(b * h, lq, d), k.reshape(b * h, lk, d), v.reshape(b * h, lk, d)
        out, heads = out.reshape(b * h, lq, d), 1
    best("attention")(q, k, v, heads, scale, out)
    return result


def upsample_nearest2x(x, *, out):
    best("upsample_nearest2x")(x, out)
    return out


def concat_channels(a, b, *, out):
    best("concat_channels")(a, b, out)
    return out


def to_tokens(x, *, out):
    b, c, h, w = x.shape
    best("transpose")(x.reshape(b, c, h * w), out)
    return out


def from_tokens(x, h, w, *, out):
    b, _, c = x.shape
    best("transpose")(x, out.reshape(b, c, h * w))
    return out


def add(a, b, *, out):
    inner = a.size // b.size  # 1 for same shape; H*W for (B, C) onto (B, C, H, W)
    best("add")(_flat(a), _flat(b), inner, _flat(out))
    return out


def scale_add(a, b, alpha, beta, *, out):
    best("scale_add")(_flat(a), _flat(b), alpha, beta, _flat(out))
    return out


def cfg_combine(eps_uncond, eps_cond, guidance_scale, *, out):
    best("cfg_combine")(_flat(eps_uncond), _flat(eps_cond), guidance_scale, _flat(out))
    return out


def timestep_embedding(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, *, out):
    best("timestep_embedding")(timesteps, dim // 2, downscale_freq_shift, flip_sin_to_cos, out)
    return out


def scheduler_step(sample, eps, noise, coef, clip, *, out):
    noise = None if noise is None else _flat(noise)
    best("scheduler_step")(_flat(sample), _flat(eps), noise, coef, clip, _flat(out))
    return out


def randn(shape, seed, *, out):
    best("randn")(seed, _flat(out))
    return out
