"""The simulator refuses what a GPU refuses, so CI catches code that would only break on a GPU."""

import numpy as np
import pytest

import course  # noqa: F401  (makes the simulator strict)
import minisd.mode as mode
from minisd.simulator import check_kernel_argument

if mode.SIMULATOR:
    from minisd.kernel_backend import cuda

    @cuda.jit
    def copy(x, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = x[i]


def test_strided_host_array_is_refused_with_the_fix():
    img = np.zeros((8, 10, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"argument 1 of kernel k\(\) is a non-contiguous host array.*ascontiguous"
    ):
        check_kernel_argument("k", 1, img[:4, :5])


def test_none_is_refused():
    with pytest.raises(TypeError, match=r"argument 0 of kernel k\(\) is None"):
        check_kernel_argument("k", 0, None)


@pytest.mark.parametrize(
    "arg",
    [
        np.zeros((4, 5), np.float32),
        np.zeros((4, 5), np.float32).T,
        np.zeros((4, 5))[1],
        np.float32(2),
        3,
        (1, 2),
    ],
    ids=["c-contiguous", "f-contiguous", "contiguous-row", "scalar", "int", "tuple"],
)
def test_what_a_gpu_takes_is_accepted(arg):
    check_kernel_argument("k", 0, arg)


@pytest.mark.skipif(not mode.SIMULATOR, reason="checks the simulator's launch")
def test_simulated_launch_refuses_a_strided_view_and_runs_a_contiguous_copy():
    x = np.arange(40, dtype=np.float32).reshape(4, 10)
    out = np.full(13, np.nan, np.float32)
    with pytest.raises(ValueError, match="non-contiguous host array"):
        copy[1, 16](x[:, 1:], out)
    with pytest.raises(TypeError, match="is None"):
        copy[1, 16](None, out)
    copy[1, 16](np.ascontiguousarray(x[:, 1:]).ravel(), out)
    np.testing.assert_array_equal(out, x[:, 1:].ravel()[:13])
