"""``cuda`` for every Numba kernel in the course and in minisd: ``from minisd.kernel_backend import cuda``.

Two compilers take the same kernels:

* numba-cuda (the default): ``numba.cuda``. The only one with a CUDA simulator, so machines without a
  GPU always use it. In maintenance since 2026-06: fixes, no new features.
* numba-cuda-mlir (``MINISD_NUMBA_CUDA=mlir``): ``numba_cuda_mlir.cuda``, its successor, which compiles
  through MLIR. GPU only (``pip install 'numba-cuda-mlir[cu13]'``).

minisd.mode makes the choice (and refuses one this machine cannot run) before anything here is imported.
The scalar types a kernel names (``cuda.local.array(4, float32)``, ``float32(x)``) belong to the compiler,
so they come from here as well.
"""

import minisd.mode as mode

if mode.NUMBA_CUDA == "mlir":
    from numba_cuda_mlir import cuda
else:
    from numba import cuda

float32, float64, int32, uint64 = cuda.float32, cuda.float64, cuda.int32, cuda.uint64

__all__ = ["cuda", "float32", "float64", "int32", "uint64"]
