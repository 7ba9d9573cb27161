"""Lesson 06 — convolution: your exercises.

Layout NCHW float32, weights (O, C, kh, kw), like torch.nn.functional.conv2d (no groups, no dilation).
Fill in the TODOs, then run ``pytest tests/exercises/test_lesson06.py``.
"""

import minisd.mode  # noqa: F401  (first: picks the simulator before numba.cuda loads when there is no GPU)

# isort: split
import numpy as np  # noqa: F401  (for your conv2d)

from minisd.kernel_backend import cuda

THREADS = 128


def out_size(size, k, stride, padding):
    """Output length of a convolution along one axis: floor((size + 2·padding − k) / stride) + 1."""
    return (size + 2 * padding - k) // stride + 1


# 06.1 -------------------------------------------------------------------------------------------------
@cuda.jit
def conv2d_kernel(x, w, b, out, sh, sw, ph, pw):
    """Direct convolution, ONE THREAD PER OUTPUT ELEMENT out[n, o, oy, ox].

    x (N, C, H, W), w (O, C, KH, KW), b (O,), out (N, O, OH, OW); stride (sh, sw), padding (ph, pw).
    The launch is 1-D over out.size (rounded up to whole blocks).

        out[n, o, oy, ox] = b[o] + sum over c, ky, kx of x[n, c, oy*sh - ph + ky, ox*sw - pw + kx] * w[o, c, ky, kx]

    where input positions outside the image count as zero (that is what padding means).
    Hints: decode the flat index i into (n, o, oy, ox) with % and // (ox fastest); guard i against the total;
    skip (do not read) positions with iy or ix outside [0, H) / [0, W).

    Graded: the answer (strided, padded, ragged); one write per thread, coalesced writes, at most C*KH*KW
    reads of x per thread (padding taps skipped, not read).
    """
    i = cuda.grid(1)
    # TODO
    pass


# 06.2 -------------------------------------------------------------------------------------------------
@cuda.jit
def im2col_kernel(x, cols, KH, KW, sh, sw, ph, pw, OW):
    """Unfold x (N, C, H, W) into cols (N, C*KH*KW, OH*OW), one thread per element of cols:

        cols[n, (c*KH + ky)*KW + kx, oy*OW + ox] = x[n, c, oy*sh - ph + ky, ox*sw - pw + kx]   (0 outside the image)

    (the layout of torch.nn.functional.unfold). Then conv2d = weight.reshape(O, -1) @ cols[n]: a GEMM.
    Every element of cols must be written, zeros included: the grader poisons cols first.

    Graded: every element of cols; one read of x and one write per thread, coalesced writes.
    """
    i = cuda.grid(1)
    # TODO
    pass


# 06.3 -------------------------------------------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch.nn.functional.conv2d for NCHW float32: x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None.

    stride and padding are ints or (h, w) pairs. Numpy arrays in -> numpy array out.
    (Lesson 11 plugs this function into minisd.)

    1. Check the inputs and raise a clear error: ValueError when x or weight is not 4-D, when the channel counts
       differ (name both shapes), when bias is not (O,), when the kernel does not fit the padded input, when
       stride < 1 or padding < 0; TypeError when stride/padding are not ints.
    2. Output shape: OH = out_size(H, kh, sh, ph), OW = out_size(W, kw, sw, pw).
    3. Copy x, weight and the bias (zeros when None) to the device as float32, allocate out (N, O, OH, OW),
       launch your conv2d_kernel with one thread per output, copy out back.
    Bonus: when x is already a Numba device array, return the device array (no copy back).

    Graded: the answer, the errors, and that it launches your conv2d_kernel with a thread per output
    element.
    """
    raise NotImplementedError("Exercise 06.3: conv2d")
