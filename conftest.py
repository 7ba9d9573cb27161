"""Repository-wide pytest setup.

* Decides GPU or simulator before anything imports numba.cuda (minisd.mode).
* The grader's options (tests/exercises/conftest.py does the grading): `--solutions` grades solutions/ instead
  of exercises/, `--exercises-dir DIR` grades the lessonNN.py files in DIR.
* The graded exercise tests run only when asked for (`pytest tests/exercises`): on untouched stubs they
  fail by design, so a plain `pytest` leaves them to tests/test_grading.py, which proves exactly that.
"""

import argparse
import os
from pathlib import Path

import pytest

import minisd.mode  # noqa: F401

EXERCISE_TESTS = Path(__file__).parent / "tests" / "exercises"
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_addoption(parser):
    group = parser.getgroup("grader", "grading the exercises (pytest tests/exercises)")
    group.addoption("--solutions", action="store_true", help="grade solutions/ instead of exercises/")
    group.addoption(
        "--exercises-dir", metavar="DIR", help="grade the lessonNN.py files in DIR (a submission)"
    )
    group.addoption(
        "--hint", type=int, default=1, choices=(1, 2, 3), help="hints on the score card: 1 the idea (default), "
        "2 what to write, 3 the answer",
    )  # fmt: skip
    group.addoption(
        "--seed", type=int, help="seed of the test data, graded or not (a failed run prints the one it used)"
    )
    group.addoption(
        "--grades-json", metavar="FILE", help="also write the grades as Gradescope's results.json"
    )
    group.addoption(
        "--grade-timeout", type=float, default=float(os.environ.get("COURSE_TIME_LIMIT", "60")), metavar="S",
        help="seconds one test (or importing one lesson) may take before it is stopped (default 60)",
    )  # fmt: skip
    group.addoption(
        "--grade-jobs", type=int, default=min(4, CORES), metavar="N",
        help="lessons graded at the same time (default: the cores, at most 4)",
    )  # fmt: skip
    group.addoption(
        "--grade-inline", action="store_true",
        help="grade in this process, without a process per lesson or time limits (for --pdb)",
    )  # fmt: skip
    group.addoption("--grade-child", metavar="SPEC", help=argparse.SUPPRESS)  # the grader's own children


def pytest_configure(config):
    if config.getoption("--exercises-dir"):
        folder = Path(config.getoption("--exercises-dir")).resolve()
        if not folder.is_dir():
            raise pytest.UsageError(f"--exercises-dir {folder}: no such folder")
        os.environ["COURSE_TARGET"] = str(folder)
    else:
        os.environ["COURSE_TARGET"] = "solutions" if config.getoption("--solutions") else "exercises"
    if _asked_for_exercises(config) and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError(
            "pytest tests/exercises grades several lessons at once by itself (--grade-jobs N): drop -n."
        )
    # Tiny, ragged test grids are the point. Added here, not in pyproject.toml: naming the warning's class
    # there makes pytest import numba before minisd.mode has chosen the simulator. Each compiler has its own.
    errors = (
        "numba_cuda_mlir.numba_cuda.core.errors" if minisd.mode.NUMBA_CUDA == "mlir" else "numba.core.errors"
    )
    config.addinivalue_line("filterwarnings", f"ignore::{errors}.NumbaPerformanceWarning")


def _asked_for_exercises(config):
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == EXERCISE_TESTS or EXERCISE_TESTS in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if collection_path == EXERCISE_TESTS and not _asked_for_exercises(config):
        return True
    return None
