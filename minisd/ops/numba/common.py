"""What every Numba kernel file shares: the launch stream and grid arithmetic.

(minisd.ops, the package around this one, imports minisd.mode before numba.cuda is imported here: that
is what switches the simulator on when there is no GPU.)
"""

from numba import cuda

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


def cdiv(n, d):
    return (n + d - 1) // d


def launch1d(kernel, n, *args, tpb=256):
    """One thread per item for ``n`` items (at least one block, so an empty op still launches cleanly)."""
    kernel[max(1, cdiv(n, tpb)), tpb, _stream](*args)


def empty(shape):
    return cuda.device_array(shape, "float32", stream=_stream)
