"""Make Numba's CUDA simulator refuse the kernel arguments a real GPU refuses.

The simulator runs a kernel on whatever Python objects it is given. A GPU first copies each host (numpy)
argument to device memory in one piece, so it fails on a strided view such as ``img[:16, :40]`` ("Buffer
size is too small for the layout"), and it cannot pass ``None`` to a kernel. Code that works in the
simulator (CI, laptops) and breaks on the GPU is the worst kind of bug in a course, so ``make_strict()``
wraps the simulator's launch to raise the same refusals, with the fix in the message.

``course`` and ``minisd.ops.numba`` call ``make_strict()`` when they import ``cuda``; it does nothing on
a GPU.
"""

import numpy as np

import minisd.mode as mode


def check_kernel_argument(kernel_name, position, arg):
    """Raise the error a GPU launch would give for ``arg``, in words a learner can act on."""
    where = f"argument {position} of kernel {kernel_name}()"
    if arg is None:
        raise TypeError(
            f"{where} is None: a GPU kernel cannot take None. Pass an array (an empty one if unused) "
            "and, if needed, a flag saying whether to use it."
        )
    if isinstance(arg, np.ndarray) and arg.ndim > 0:
        if not (arg.flags.c_contiguous or arg.flags.f_contiguous):
            raise ValueError(
                f"{where} is a non-contiguous host array (shape {arg.shape}, strides {arg.strides}): a GPU "
                "copies host arrays to the device in one piece and refuses strided views. Pass "
                "np.ascontiguousarray(...) of it, or cuda.to_device(np.ascontiguousarray(...))."
            )


def make_strict():
    """Wrap the simulator's kernel launch with ``check_kernel_argument`` (once; nothing on a GPU)."""
    if not mode.SIMULATOR:
        return
    from numba.cuda.simulator import kernel  # numba-cuda's own: numba-cuda-mlir has no simulator

    launch = kernel.FakeCUDAKernel.__call__
    if getattr(launch, "checks_like_a_gpu", False):
        return

    def checked_launch(self, *args):
        is_launch = not self._device and kernel._get_kernel_context() is None  # not a device-function call
        if is_launch:
            for position, arg in enumerate(args):
                check_kernel_argument(self.__name__, position, arg)
        return launch(self, *args)

    checked_launch.checks_like_a_gpu = True
    kernel.FakeCUDAKernel.__call__ = checked_launch
