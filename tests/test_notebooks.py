"""Every notebook runs top to bottom in this machine's mode (the simulator in CI) and says which mode it is in."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{path.name} is stored with outputs: clear them before committing"
    )
    NotebookClient(
        nb,
        timeout=1800,  # per cell: a hang guard, not a speed budget
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    printed = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "mode: " in printed, f"{path.name} never says which mode it runs in (call minisd.mode.banner())"
    assert "not in the recording" not in printed, (
        f"{path.name}: a timing row is missing from the notebook's GPU recording (renamed since it ran?): "
        "keep the row's name, or record the notebook again on a GPU (benchmarks/gpu_check.sh notebooks)"
    )


@pytest.mark.parametrize("name", ["04_gemm", "06_convolution", "07_softmax_norm", "08_attention"])
def test_lesson_notebooks_run_minisds_kernel_versions(name):
    """Drift guard: these notebooks once redefined kernels minisd/ops/numba has as versions, so the two copies
    could differ. They run minisd's (``kernel_file``) and print them (``show_source``) instead."""
    nb = nbformat.read(Path(NOTEBOOKS[0]).parent / f"{name}.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'kernel_file("' in code and "show_source(" in code, f"{name} does not run minisd's kernel versions"
