"""course.recorded finds the newest GPU recording of a notebook, and course.timing.report shows its numbers beside
the simulator's: read back from exactly the lines report printed on the GPU."""

import json

import pytest

import minisd.mode as mode
from course import recorded, timing


def _notebook(path, printed, device=None, date=None):
    """A minimal executed notebook whose one code cell printed ``printed``, stamped like run_notebook.py does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {"cell_type": "code", "source": [], "outputs": [{"output_type": "stream", "text": printed}]}
    metadata = {"recorded": {"device": device, "date": date}} if device else {}
    path.write_text(json.dumps({"cells": [cell], "metadata": metadata}))


def test_newest_picks_the_latest_day_not_the_folder_name(tmp_path):
    name = "notebooks/01_x.ipynb"
    _notebook(tmp_path / "h100" / name, "", "NVIDIA H100 80GB HBM3", "2026-11-24")
    _notebook(tmp_path / "h200" / name, "", "NVIDIA H200", "2026-12-05")
    _notebook(tmp_path / "zz-old" / name, "", "Tesla V100", "2019-01-01")
    _notebook(tmp_path / "zz-simulator" / name, "")  # no stamp: not a GPU recording
    gpu = recorded.newest(name, root=tmp_path)
    assert (gpu.device, gpu.date, gpu.path.parent.parent.name) == ("NVIDIA H200", "2026-12-05", "h200")
    assert str(gpu) == "NVIDIA H200, 2026-12-05"
    assert recorded.newest("notebooks/never.ipynb", root=tmp_path) is None
    assert recorded.newest(name, root=tmp_path / "zz-simulator") is None


def test_report_shows_the_gpu_lines_beside_the_simulator_times(tmp_path, monkeypatch, capsys):
    gpu_rows = {"v1 x = row (strided)": 0.4196, "v2 x = column": 0.1608, "v3 1024 threads, 8 blk/SM": 0.19}
    monkeypatch.setattr(mode, "ON_GPU", True)
    print("mode: gpu (NVIDIA H200)\ncopy_v1 once: 0.250 ms (not a table row)")
    timing.report(gpu_rows, bytes_moved=8 * 2**20)
    printed = capsys.readouterr().out
    _notebook(tmp_path / "h200" / "notebooks" / "nb.ipynb", printed, "NVIDIA H200", "2026-12-05")
    gpu = recorded.newest("notebooks/nb.ipynb", root=tmp_path)
    assert set(gpu.timings()) >= set(gpu_rows)

    monkeypatch.setattr(mode, "ON_GPU", False)
    timing.report({"v2 x = column": 181.3, "v3 1024 threads, 8 blk/SM": 7.0, "v4 new": 1.0}, recorded=gpu)
    lines = capsys.readouterr().out.splitlines()
    assert "GPU: NVIDIA H200, 2026-12-05" in lines[0]
    row = next(line for line in lines if line.startswith("v2 x = column"))
    assert "181.3 ms" in row and "0.1608 ms" in row and f"{8 * 2**20 / 0.1608 / 1e6:.1f} GB/s" in row
    assert "0.1900 ms" in next(line for line in lines if line.startswith("v3 1024"))
    assert "not in the recording" in next(line for line in lines if line.startswith("v4 new"))
    assert "GB/s" not in row.split("0.1608 ms")[0]  # no bandwidth computed from simulator times

    timing.report({"v1": 3.0}, bytes_moved=100, recorded=None)
    out = capsys.readouterr().out
    assert "meaningless as GPU time" in out
    assert "GB/s" not in out and "GPU:" not in out  # no bandwidth from simulator times, no empty GPU column


def test_every_committed_recording_names_its_gpu_and_day():
    files = sorted(recorded.BENCHMARKS.glob("*/notebooks/*"))
    assert files, "no GPU recordings under benchmarks/<gpu>/notebooks/"
    for path in files:
        assert recorded.read(path) is not None, (
            f"{path}: no GPU and day (run_notebook.py stamps them on a GPU)"
        )


def _ms(text):
    return float(text.split(" ms")[0])


@pytest.mark.parametrize(
    "slow, fast",
    [("v1 x = row (strided)", "v2 x = column"), ("v1 32 threads/block", "v3 256 threads/block")],
)
def test_notebook_01s_gpu_recording_teaches_its_lesson(slow, fast):
    gpu = recorded.newest("notebooks/01_threads_blocks_grids.ipynb")
    rows = gpu.timings()
    assert _ms(rows[slow]) > 1.5 * _ms(rows[fast]), f"{gpu}: {slow} {rows[slow]}, {fast} {rows[fast]}"
