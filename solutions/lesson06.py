"""Lesson 06 — convolution: reference answers (same API as exercises/lesson06.py).

Layout NCHW float32, weights (O, C, kh, kw), like torch.nn.functional.conv2d (no groups, no dilation).
"""

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np

from minisd.kernel_backend import cuda

THREADS = 128


def out_size(size, k, stride, padding):
    """Output length of a convolution along one axis: floor((size + 2·padding − k) / stride) + 1."""
    return (size + 2 * padding - k) // stride + 1


# 06.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def conv2d_kernel(x, w, b, out, sh, sw, ph, pw):
    """One thread per output element out[n, o, oy, ox] (flat index over out)."""
    i = cuda.grid(1)
    N, O, OH, OW = out.shape
    if i >= N * O * OH * OW:
        return
    ox = i % OW
    oy = (i // OW) % OH
    o = (i // (OW * OH)) % O
    n = i // (OW * OH * O)
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    acc = b[o]
    for c in range(C):
        for ky in range(KH):
            iy = oy * sh - ph + ky
            if 0 <= iy < H:  # outside the image = zero padding: skip, never read
                for kx in range(KW):
                    ix = ox * sw - pw + kx
                    if 0 <= ix < W:
                        acc += x[n, c, iy, ix] * w[o, c, ky, kx]
    out[n, o, oy, ox] = acc


# 06.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def im2col_kernel(x, cols, KH, KW, sh, sw, ph, pw, OW):
    """cols[n, (c·KH + ky)·KW + kx, oy·OW + ox] = x[n, c, oy·sh − ph + ky, ox·sw − pw + kx] (0 outside)."""
    i = cuda.grid(1)
    N, R, L = cols.shape
    if i >= N * R * L:
        return
    col = i % L
    row = (i // L) % R
    n = i // (L * R)
    kx = row % KW
    ky = (row // KW) % KH
    c = row // (KW * KH)
    iy = (col // OW) * sh - ph + ky
    ix = (col % OW) * sw - pw + kx
    if 0 <= iy < x.shape[2] and 0 <= ix < x.shape[3]:
        cols[n, row, col] = x[n, c, iy, ix]
    else:
        cols[n, row, col] = 0.0


# 06.3 -------------------------------------------------------------------------------------------------
def _pair(name, v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        a, b = v
    else:
        a = b = v
    if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in (a, b)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(a), int(b)


def _on_device(a):
    return hasattr(a, "copy_to_host")  # a Numba device array (real or simulated)


def _device(a, what):
    if _on_device(a):
        if a.dtype != np.float32:
            raise TypeError(f"{what} must be float32, got {a.dtype}")
        return a
    return cuda.to_device(np.ascontiguousarray(a, dtype=np.float32))


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch.nn.functional.conv2d for NCHW float32: x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None.

    Numpy in, numpy out; Numba device arrays in, a device array out.
    """
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    if len(x.shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if len(weight.shape) != 4:
        raise ValueError(f"weight must be 4-D (O, C, kh, kw), got shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O, Cw, KH, KW = weight.shape
    if Cw != C:
        raise ValueError(
            f"weight has {Cw} input channels but x has {C} (x {tuple(x.shape)}, weight {tuple(weight.shape)})"
        )
    if bias is not None and tuple(bias.shape) != (O,):
        raise ValueError(f"bias must have shape ({O},), one per output channel, got {tuple(bias.shape)}")
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    if OH < 1 or OW < 1:
        raise ValueError(f"a {KH}x{KW} kernel does not fit a {H}x{W} input with padding {(ph, pw)}")
    on_device = _on_device(x)
    d_x, d_w = _device(x, "x"), _device(weight, "weight")
    d_b = _device(bias, "bias") if bias is not None else cuda.to_device(np.zeros(O, np.float32))
    out = cuda.device_array((N, O, OH, OW), np.float32)
    total = N * O * OH * OW
    conv2d_kernel[(total + THREADS - 1) // THREADS, THREADS](d_x, d_w, d_b, out, sh, sw, ph, pw)
    return out if on_device else out.copy_to_host()
