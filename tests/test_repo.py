"""Promises about the repository itself: CI runs the README's test command, the install makes every package
importable from anywhere, and the code is ruff clean."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in (ROOT / "README.md").read_text(), "README's test command and .ci/run have drifted apart"


def test_readme_shows_the_sample_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"python -m minisd sample", readme)


def _installed():
    try:
        importlib.metadata.distribution("cuda-from-scratch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_packages_import_outside_the_repo(tmp_path):
    """Notebooks run from notebooks/ and `--kernels exercises` from anywhere: all four packages must import.

    pip-installed (the README's commands), the install alone must carry them; on a plain checkout (the GPU
    machines put the repo on PYTHONPATH instead), PYTHONPATH pointing at the checkout must be enough.
    """
    others = [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(others if _installed() else [*others, str(ROOT)])}
    code = "import minisd, course, exercises.lesson05, solutions.lesson11"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    how = "pip-installed" if _installed() else f"with PYTHONPATH={ROOT}"
    assert proc.returncode == 0, f"not importable outside the repo ({how}):\n{proc.stderr}"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_clean(command):
    proc = subprocess.run(["ruff", *command], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def _pyproject():
    import tomllib  # Python 3.11+: the tests run on 3.11 here; the package itself needs only 3.10

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_runtime_dependencies_are_what_sampling_needs():
    """`pip install -e .` (the README's sample command) must not pull the course's tools; the extras hold them."""
    project = _pyproject()
    names = {re.split(r"[<>=\[ ;]", d)[0] for d in project["dependencies"]}
    assert not names & {"torch", "jupyter", "pytest", "matplotlib", "nbclient", "diffusers"}, names
    extras = project["optional-dependencies"]
    course = {re.split(r"[<>=\[ ;]", d)[0] for d in extras["course"]}
    assert {"jupyter", "pytest", "matplotlib"} <= course and "cuda-from-scratch[train]" in extras["course"]
    assert "cuda-from-scratch[course]" in extras["test"]
    readme = (ROOT / "README.md").read_text()
    sample = next(
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "sample" in line
    )
    assert "pip install -e . &&" in sample and "torch" not in sample


def test_the_code_is_valid_python_of_requires_python():
    """requires-python matches the code: every file parses as that Python's grammar (no newer syntax), and
    no module uses the 3.11 APIs that slipped in before (datetime.UTC)."""
    import ast

    oldest = tuple(int(n) for n in _pyproject()["requires-python"].removeprefix(">=").split("."))
    for folder in ("minisd", "course", "exercises", "solutions"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            ast.parse(text, str(path), feature_version=oldest)
            assert "datetime.UTC" not in text and "import tomllib" not in text, path
