"""Repository-wide pytest setup.

* Decides GPU or simulator before anything imports numba.cuda (minisd.mode).
* `--solutions` grades solutions/ instead of exercises/.
* The graded exercise tests run only when asked for (`pytest tests/exercises`): on untouched stubs they
  fail by design, so a plain `pytest` leaves them to tests/test_grading.py, which proves exactly that.
"""

import os
from pathlib import Path

import minisd.mode  # noqa: F401

EXERCISE_TESTS = Path(__file__).parent / "tests" / "exercises"


def pytest_addoption(parser):
    parser.addoption("--solutions", action="store_true", help="grade solutions/ instead of exercises/")


def pytest_configure(config):
    os.environ["COURSE_TARGET"] = "solutions" if config.getoption("--solutions") else "exercises"
    # Tiny, ragged test grids are the point. Added here, not in pyproject.toml: naming the warning's class
    # there makes pytest import numba before minisd.mode has chosen the simulator.
    config.addinivalue_line("filterwarnings", "ignore::numba.core.errors.NumbaPerformanceWarning")


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
