"""What every Numba kernel file shares: the launch stream, the allocator, grid arithmetic, optional
arguments, and split-K's rule and reduction.

(minisd.ops, the package around this one, imports minisd.mode before numba.cuda is imported here: that
is what switches the simulator on when there is no GPU.)
"""

import math

import numpy as np

import minisd.simulator
from minisd.kernel_backend import cuda, float32

minisd.simulator.make_strict()  # the simulator refuses what a GPU refuses (strided host arrays, None)

_stream = 0  # 0 = the default stream


def set_stream(stream):
    """Launch every later Numba kernel (and allocation/copy) on ``stream``; returns the previous one.

    ``stream`` may be None or 0 (default stream), a Numba stream, a CuPy stream (``.ptr``), a torch
    stream (``.cuda_stream``) or a raw ``cudaStream_t`` int. Launching on a foreign stream is what lets
    CuPy or torch capture Numba kernels in a CUDA graph.
    """
    global _stream
    previous = _stream
    if stream is None or stream == 0:
        _stream = 0
    elif isinstance(stream, int):
        _stream = cuda.external_stream(stream)
    elif hasattr(stream, "ptr"):  # CuPy
        _stream = cuda.external_stream(stream.ptr)
    elif hasattr(stream, "cuda_stream"):  # torch
        _stream = cuda.external_stream(stream.cuda_stream)
    else:
        _stream = stream  # a Numba stream
    return previous


def get_stream():
    return _stream


NEG_INF = float32(-math.inf)


@cuda.jit(device=True)
def max_nan(a, b):
    """max(a, b) that returns NaN if either is NaN, as torch's max does. CUDA's fmaxf (and Python's max,
    depending on the order) drop a NaN: a softmax would then quietly ignore the NaN of its row."""
    return a if a > b or a != a else b


def cdiv(n, d):
    return (n + d - 1) // d


def launch1d(kernel, n, *args, tpb=256):
    """One thread per item for ``n`` items (at least one block, so an empty op still launches cleanly)."""
    kernel[max(1, cdiv(n, tpb)), tpb, _stream](*args)


# --- split-K: conv2d v5 and linear v4 ----------------------------------------------------------------------
# A GEMM tiled into few output tiles (batch 1: 128-512 rows) runs on a few of the GPU's SMs while the others
# idle. Splitting K gives each tile several blocks, each summing one K chunk into its own slice of a scratch
# array; a second kernel adds the slices in a fixed order (no atomics: every run gives the same bits).

TARGET_BLOCKS = 2 * 132  # two blocks on each of an H100's / H200's 132 SMs
MIN_CHUNK = 2  # K-slices (BK) a split sums at least: its partial tile costs a write and a read


def split_k(tiles, k, bk):
    """(splits, chunk): K in chunks of ``chunk`` (a multiple of ``bk``), ``splits = cdiv(k, chunk)``.

    The rule: as many splits as bring ``tiles`` blocks up to TARGET_BLOCKS, each at least MIN_CHUNK
    K-slices long; one split (no scratch, no second kernel) when the tiles alone fill the GPU.
    """
    splits = max(1, min(cdiv(TARGET_BLOCKS, max(tiles, 1)), cdiv(k, MIN_CHUNK * bk)))
    chunk = bk * max(1, cdiv(cdiv(k, splits), bk))  # the last chunk may be shorter
    return max(1, cdiv(k, chunk)), chunk


@cuda.jit
def _sum_splits(part, has_b, b, inner, out):
    i = cuda.grid(1)
    if i >= out.size:
        return
    acc = part[0, i]
    for s in range(1, part.shape[0]):  # always in the same order: deterministic
        acc += part[s, i]
    if has_b:
        acc += b[(i // inner) % b.size]
    out[i] = acc


def sum_splits(part, has_b, b, inner, out):
    """``out = part.sum(0) + b``, the bias broadcast along the flat index as ``b[(i // inner) % b.size]``
    (inner = 1: the last axis, as linear; Ho*Wo: the channel axis of NCHW, as conv2d)."""
    size = out.size
    launch1d(_sum_splits, size, part.reshape(part.shape[0], size), has_b, b, inner, out.reshape(size))


_allocate = None  # None = Numba's own device memory


def set_allocator(allocate):
    """Allocate every later output and scratch array of the ops with ``allocate(shape)``, which returns a
    C-contiguous float32 Numba device array of that shape (None: Numba's own memory); returns the previous one.

    minisd/cuda_graphs.py passes arrays of a CuPy memory pool this way: what a CUDA graph captures must not
    be allocated (cudaMalloc) during the capture, nor freed while the graph lives.
    """
    global _allocate
    previous = _allocate
    _allocate = allocate
    return previous


def empty(shape):
    if _allocate is not None:
        return _allocate(shape)
    return cuda.device_array(shape, "float32", stream=_stream)


# numba-cuda cannot pass None to a kernel on a real GPU (the launch raises "NotImplementedError: (none, None)");
# the simulator can, which hides the bug. So an optional array never goes into a kernel as None: the host
# passes a flag and a real array, ``has_bias, bias = optional(bias)``, and the kernel tests ``if has_bias:``.
# (An optional scalar, like scheduler_step's clip, likewise becomes a flag plus a float.)
_absent = None


def optional(a):
    """``(True, a)`` for an array; ``(False, placeholder)`` for None, what a kernel gets instead of None.

    The placeholder is one float32 on the device, made on the first None (outside any CUDA graph capture
    once the ops have run eagerly once) and reused. It holds NaN, so a kernel that reads it despite the
    flag shows it in the output. Its type, a 1-D float32 array, is that of a real bias or norm weight,
    so a kernel is not compiled twice.
    """
    global _absent
    if a is not None:
        return True, a
    if _absent is None:
        _absent = cuda.to_device(np.full(1, np.nan, np.float32))
    return False, _absent
