"""course.peaks: measured ceilings on a GPU, the H100 reference numbers (labelled so) in the simulator."""

import pytest

import minisd.mode as mode
from course import peaks

on_gpu = pytest.mark.skipif(not mode.ON_GPU, reason="measuring a ceiling needs a real GPU")
simulator_only = pytest.mark.skipif(mode.ON_GPU, reason="the reference fallback is the simulator's")


@simulator_only
def test_simulator_returns_the_h100_reference_labelled_as_such():
    bw, fl = peaks.bandwidth(), peaks.flops()
    assert (bw.value, bw.unit) == (3.0e12, "B/s")
    assert (fl.value, fl.unit) == (52e12, "FLOP/s")
    for ceiling in (bw, fl):
        assert not ceiling.measured
        assert ceiling.device == "NVIDIA H100 80GB HBM3"
        assert "reference" in str(ceiling) and "simulator" in str(ceiling) and "H100" in str(ceiling)
        assert "measured on" not in str(ceiling)
    assert str(bw) == (
        "3 TB/s (device-to-device copy, NVIDIA H100 80GB HBM3 reference number: "
        "the simulator has no GPU to measure)"
    )


def test_percent_names_the_ceiling():
    ceiling = peaks.Ceiling(4.0e12, "B/s", "device-to-device copy", "NVIDIA H200", measured=True)
    assert ceiling.percent(3.0e12) == pytest.approx(75.0)
    assert ceiling.of(3.0e12) == "75 % of 4 TB/s (device-to-device copy, measured on NVIDIA H200)"


def test_measured_once_per_process():
    assert peaks.bandwidth() is peaks.bandwidth()
    assert peaks.flops() is peaks.flops()


@on_gpu
def test_gpu_ceilings_are_measured_on_this_gpu():
    bw, fl = peaks.bandwidth(), peaks.flops()
    for ceiling in (bw, fl):
        assert ceiling.measured and ceiling.device == mode.gpu_name()
        assert f"measured on {mode.gpu_name()}" in str(ceiling)
    assert 1e11 < bw.value < 2e13, str(bw)  # from a laptop GPU to beyond a B200
    assert 1e12 < fl.value < 2e14, str(fl)
