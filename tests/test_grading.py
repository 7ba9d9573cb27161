"""The grader grades: every graded test fails on the untouched stubs and passes on the solutions."""

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _grade(tmp_path, *extra):
    """Run the graded tests in a fresh process; return {test id: (outcome, exercise id)} and the output."""
    report = tmp_path / f"report{'-'.join(extra)}.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/exercises",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
    ]
    proc = subprocess.Popen(
        [*cmd, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, report


def _outcomes(report):
    results = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        prop = case.find("properties/property[@name='exercise']")
        exercise = ast.literal_eval(prop.get("value"))[0] if prop is not None else None
        results[name] = (outcome, exercise)
    return results


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    runs = {"stubs": _grade(tmp), "solutions": _grade(tmp, "--solutions")}
    finished = {}
    for name, (proc, report) in runs.items():
        output, _ = proc.communicate(timeout=3600)  # a hang guard, not a speed budget
        assert report.exists(), f"pytest on the {name} produced no report:\n{output[-3000:]}"
        finished[name] = (_outcomes(report), output)
    return finished


def test_every_graded_test_passes_on_solutions(graded):
    results, output = graded["solutions"]
    assert results, "no graded tests were collected"
    failing = [name for name, (outcome, _) in results.items() if outcome != "passed"]
    assert not failing, f"these graded tests do not pass on solutions/: {failing}\n{output[-3000:]}"


def test_every_graded_test_fails_on_untouched_stubs(graded):
    stub_results, _ = graded["stubs"]
    solution_results, _ = graded["solutions"]
    assert stub_results.keys() == solution_results.keys()
    passing = [name for name, (outcome, _) in stub_results.items() if outcome not in ("failure", "error")]
    assert not passing, (
        f"these graded tests pass (or skip) on the untouched stubs, so they grade nothing: {passing}"
    )


def test_every_lesson_has_three_exercises(graded):
    results, _ = graded["solutions"]
    per_lesson = defaultdict(set)
    for name, (_, exercise) in results.items():
        per_lesson[re.search(r"test_(lesson\d+)", name).group(1)].add(exercise)
    lessons = sorted(p.stem for p in (ROOT / "solutions").glob("lesson*.py"))
    assert lessons, "no solutions/lessonNN.py found"
    for lesson in lessons:
        assert len(per_lesson[lesson]) >= 3, (
            f"{lesson} grades {sorted(per_lesson[lesson])}: fewer than 3 exercises"
        )


def test_score_card_is_printed(graded):
    _, output = graded["stubs"]
    assert "score card: exercises/" in output
    assert re.search(r"score: 0/\d+ exercises", output), output[-2000:]
