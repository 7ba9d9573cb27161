"""The grader grades: every graded test fails on the untouched stubs and passes on the solutions, one bad
exercise costs only itself, the cheats the lessons warn about fail, and the results are Gradescope's format.

Three grades run side by side in fresh processes: the stubs, the solutions, and "planted" (a copy of the
solutions with a failure planted in each of nine lessons: a syntax error, an import error, an import that
never ends, a hanging kernel, a crash, and cheats: a serial loop, a host-side numpy answer, a stride that is too
short, an unguarded access, a divergent barrier, an Inf output).
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

import course.grading as grading

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261202  # the stubs' grade uses a fixed seed, so one test can be rerun with the same data

# (lesson file, old text of the solution, the planted text): each old text must occur once in solutions/
PLANTS = [
    ("lesson00.py", "def time_floor_ms(", "def time_floor_ms((  # planted: a syntax error"),
    (
        "lesson01.py",
        "    i = cuda.grid(1)\n    if i < out.size:\n        out[i] = a[i] + b[i]",
        "    if cuda.grid(1) == 0:  # planted: one thread does everything\n"
        "        for i in range(out.size):\n            out[i] = a[i] + b[i]",
    ),
    ("lesson01.py", "out.size, cuda.gridsize(1)):", "out.size, cuda.blockDim.x):  # planted: a short stride"),
    (
        "lesson01.py",
        "    if row < gray.shape[0] and col < gray.shape[1]:\n",
        "    if True:  # planted: no guard\n",
    ),
    (
        "lesson02.py",
        "from minisd.kernel_backend import cuda\n",
        "from minisd.kernel_backend import cuda\nfrom numba import no_such_name  # planted\n",
    ),
    (
        "lesson03.py",
        "    n = x.size\n",
        '    n = x.size\n    while n > 0:  # planted: a kernel that never ends\n        __import__("time").sleep(0.01)\n',
    ),
    (
        "lesson03.py",
        "            buf[t] += buf[t + stride]\n        cuda.syncthreads()\n",
        "            buf[t] += buf[t + stride]\n            cuda.syncthreads()  # planted: divergent barrier\n",
    ),
    (
        "lesson05.py",
        "    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)",
        "    if (blockIdx.x == 0 && threadIdx.x == 0) for (int i = 0; i < n; i++)  // planted: serial",
    ),
    (
        "lesson05.py",
        "        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];\n"
        "        __syncthreads();",
        "        if (threadIdx.x < stride) { partial[threadIdx.x] += partial[threadIdx.x + stride];\n"
        "        __syncthreads(); }  // planted: divergent barrier",
    ),
    ("lesson07.py", "    inv = float32(1.0) / s", "    inv = float32(1.0) / (s - s)  # planted: 1 / 0"),
    (
        "lesson07.py",
        '    """Numerically stable softmax over the last axis of a float32 array of any shape (numpy in, numpy out)."""',
        "    e = np.exp(x - x.max(-1, keepdims=True))  # planted: the answer on the host\n"
        "    return e / e.sum(-1, keepdims=True)",
    ),
    (
        "lesson09.py",
        "    x0 = np.ascontiguousarray(x0, dtype=np.float32)\n",
        '    __import__("os")._exit(3)  # planted\n',
    ),
    (
        "lesson10.py",
        "    if i < out.size:\n        u = eps_uncond[i]\n        out[i] = u + guidance_scale * (eps_cond[i] - u)",
        "    u = eps_uncond[min(i, out.size - 1)]  # planted: the write is not guarded\n"
        "    out[i] = u + guidance_scale * (eps_cond[min(i, out.size - 1)] - u)",
    ),
    (
        "lesson12.py",
        "from dataclasses import dataclass\n",
        'from dataclasses import dataclass\n\nwhile True:  # planted: the import never ends\n    __import__("time").sleep(1)\n',
    ),
]
PLANTED_LESSONS = sorted({file.removesuffix(".py") for file, _, _ in PLANTS})

# What the planted grade must say, exercise by exercise: (passes?, words its paragraph must contain)
EXPECTED = {
    "01.1": (False, "at most 1 per thread"),
    "01.2": (False, "out of bounds"),
    "01.3": (False, "more than once"),
    "01.4": (True, ""),
    "01.5": (True, ""),
    "03.1": (False, "timed out"),
    "03.2": (True, ""),  # graded after the hang, in a fresh process
    "03.3": (False, "Every thread of the block must reach every cuda.syncthreads()"),
    "03.4": (True, ""),
    "03.5": (True, ""),
    "03.6": (True, ""),
    "05.1": (False, "per thread allowed"),
    "05.2": (True, ""),
    "05.3": (False, "__syncthreads()"),
    "05.4": (True, ""),
    "07.1": (False, "infinite where the answer is finite"),
    "07.2": (True, ""),
    "07.3": (False, "must do its work on the GPU by launching softmax_kernel"),
    "07.4": (True, ""),
    "09.1": (True, ""),
    "09.2": (False, "died"),
    "09.3": (True, ""),
    "10.1": (True, ""),
    "10.2": (False, "write to out["),
    "10.3": (True, ""),
    "10.4": (True, ""),
}
BROKEN_LESSONS = {"lesson00": "does not compile", "lesson02": "ImportError", "lesson12": "did not finish"}


def _plant(folder):
    folder.mkdir()
    for src in (ROOT / "solutions").glob("lesson*.py"):
        shutil.copy(src, folder / src.name)
    for name, old, new in PLANTS:
        text = (folder / name).read_text()
        assert text.count(old) == 1, (
            f"solutions/{name} changed: the planted failure no longer applies to {old!r}"
        )
        (folder / name).write_text(text.replace(old, new))
    return folder


def _grade(tmp_path, name, *extra, tests=("tests/exercises",)):
    """Start a grade in a fresh process; return it with the paths of its junit report."""
    report = tmp_path / f"{name}.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        results[name] = (outcome, exercise, case)
    return results


def _run_grades(tmp):
    """The three grades side by side; their junit reports, outputs and results.json land in ``tmp``."""
    planted = _plant(tmp / "planted")
    runs = {
        "stubs": _grade(tmp, "stubs", f"--seed={SEED}"),
        "solutions": _grade(tmp, "solutions", "--solutions"),
        "planted": _grade(
            tmp,
            "planted",
            f"--exercises-dir={planted}",
            "--hint=3",
            "--grade-timeout=30",  # when the planted hangs are stopped
            f"--grades-json={tmp / 'results.json'}",
            tests=[f"tests/exercises/test_{lesson}.py" for lesson in PLANTED_LESSONS],
        ),
    }
    for name, (proc, _) in runs.items():
        output, _ = proc.communicate(timeout=3600)  # a hang guard, not a speed budget
        (tmp / f"{name}.out").write_text(output)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    # Under xdist each worker running a test of this module would grade everything again: the first one
    # grades into the session's shared folder, the others wait for it and read the results.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    tmp = shared / "grading"
    with FileLock(str(shared / "grading.lock")):
        if not (tmp / "done").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _run_grades(tmp)
            (tmp / "done").touch()
    finished = {}
    for name in ("stubs", "solutions", "planted"):
        output = (tmp / f"{name}.out").read_text()
        assert (tmp / f"{name}.xml").exists(), f"pytest on the {name} produced no report:\n{output[-3000:]}"
        finished[name] = (_outcomes(tmp / f"{name}.xml"), output)
    finished["results.json"] = json.loads((tmp / "results.json").read_text())
    return finished


def _card(output):
    """{exercise: (passed, its paragraph)} and {lesson: why it could not be graded} from a score card."""
    card = output.split("score card:", 1)[1].splitlines()
    exercises, broken, current = {}, {}, None
    for line in card:
        lesson = re.match(r"(lesson\d\d)  could not be graded: (.*)", line)
        mark = re.match(r"  ([✔✘]) (\d\d\.\d)(.*)", line)
        if lesson:
            broken[lesson.group(1)] = lesson.group(2)
            current = ("lesson", lesson.group(1))
        elif line.count("✘") > 1:  # the exercises of a lesson that could not be graded
            current = None
        elif mark:
            exercises[mark.group(2)] = [mark.group(1) == "✔", mark.group(3)]
            current = ("exercise", mark.group(2))
        elif line.startswith(" " * 10) and current:
            kind, key = current
            if kind == "exercise":
                exercises[key][1] += " " + line.strip()
            else:
                broken[key] += " " + line.strip()
    return exercises, broken


def test_every_graded_test_passes_on_solutions(graded):
    results, output = graded["solutions"]
    assert results, "no graded tests were collected"
    failing = [name for name, (outcome, _, _) in results.items() if outcome != "passed"]
    assert not failing, f"these graded tests do not pass on solutions/: {failing}\n{output[-3000:]}"


def test_every_graded_test_fails_on_untouched_stubs(graded):
    stub_results, _ = graded["stubs"]
    solution_results, _ = graded["solutions"]
    assert stub_results.keys() == solution_results.keys()
    passing = [name for name, (outcome, _, _) in stub_results.items() if outcome not in ("failure", "error")]
    assert not passing, (
        f"these graded tests pass (or skip) on the untouched stubs, so they grade nothing: {passing}"
    )


def test_every_lesson_has_three_exercises(graded):
    results, _ = graded["solutions"]
    per_lesson = defaultdict(set)
    for name, (_, exercise, _) in results.items():
        per_lesson[re.search(r"test_(lesson\d+)", name).group(1)].add(exercise)
    lessons = sorted(p.stem for p in (ROOT / "solutions").glob("lesson*.py"))
    assert lessons, "no solutions/lessonNN.py found"
    for lesson in lessons:
        assert len(per_lesson[lesson]) >= 3, (
            f"{lesson} grades {sorted(per_lesson[lesson])}: fewer than 3 exercises"
        )


def test_score_card_is_short_and_last(graded):
    _, output = graded["stubs"]
    lines = output.rstrip().splitlines()
    assert "score card: exercises/" in output
    assert re.match(r"score: 0/62 exercises", lines[-1]), lines[-5:]
    assert "Traceback" not in output and not any(ln.startswith("FAILED") for ln in lines), output[:3000]
    card = output.split("score card:", 1)[1].splitlines()
    assert len(card) < 8 * 58, f"{len(card)} lines for 58 exercises: one short paragraph each"
    assert "Numba's CUDA simulator" in output and re.search(
        r"graded 14 lessons \(145 tests\) in \d+ s", output
    )
    assert f"--seed {SEED}" in output, "a failed run must print the seed that reproduces its data"
    assert "hint:" in output and "answer:" not in output, "the default hint is the idea, not the answer"


def test_a_test_rerun_with_the_printed_seed_sees_the_same_data(graded, tmp_path):
    test, case = "tests/exercises/test_lesson01.py::test_vector_add_ragged[32]", "test_vector_add_ragged[32]"
    first = graded["stubs"][0][f"tests.exercises.test_lesson01::{case}"][2].find("failure").get("message")
    proc, report = _grade(tmp_path, "again", f"--seed={SEED}", tests=[test])
    output, _ = proc.communicate(timeout=3600)
    again = _outcomes(report)[f"tests.exercises.test_lesson01::{case}"][2].find("failure").get("message")
    assert re.search(r"none of its \d+ elements", first), first  # the size of the data comes from the seed
    assert again == first, output[-2000:]


def test_planted_failures_cost_only_their_exercise(graded):
    results, output = graded["planted"]
    exercises, broken = _card(output)
    for lesson, words in BROKEN_LESSONS.items():
        assert lesson in broken and words in broken[lesson], (lesson, broken.get(lesson), output[-4000:])
    for ex_id, (passes, words) in EXPECTED.items():
        assert ex_id in exercises, f"{ex_id} is missing from the score card:\n{output[-4000:]}"
        passed, paragraph = exercises[ex_id]
        assert passed == passes, f"{ex_id}: {'passed' if passed else 'failed'}: {paragraph}"
        assert words in paragraph, f"{ex_id}: the score card should say {words!r}, it says: {paragraph}"
    assert "answer:" in output, "--hint 3 shows the answer"
    assert "Traceback" not in output
    graded_here = sum(1 for name, (_, ex, _) in results.items() if ex)
    assert graded_here == len(results), "every planted lesson's test got a result"


GRADESCOPE = {  # https://gradescope-autograders.readthedocs.io/en/latest/specs/ as a JSON schema
    "type": "object",
    "properties": {
        "score": {"type": "number"},
        "execution_time": {"type": "number", "minimum": 0},
        "output": {"type": "string"},
        "output_format": {"enum": ["text", "simple_format", "html", "md", "ansi"]},
        "test_output_format": {"enum": ["text", "simple_format", "html", "md", "ansi"]},
        "test_name_format": {"enum": ["text", "simple_format", "html", "md", "ansi"]},
        "visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
        "stdout_visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
        "extra_data": {"type": "object"},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "score": {"type": "number"},
                    "max_score": {"type": "number"},
                    "status": {"enum": ["passed", "failed"]},
                    "name": {"type": "string"},
                    "name_format": {"enum": ["text", "simple_format", "html", "md", "ansi"]},
                    "number": {"type": "string"},
                    "output": {"type": "string"},
                    "output_format": {"enum": ["text", "simple_format", "html", "md", "ansi"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
                    "extra_data": {"type": "object"},
                },
                "additionalProperties": False,
            },
        },
        "leaderboard": {"type": "array"},
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["score"]}, {"required": ["tests"]}],
}


def test_grades_json_is_gradescope_results(graded):
    jsonschema = pytest.importorskip("jsonschema")
    results = graded["results.json"]
    jsonschema.validate(results, GRADESCOPE)
    tests = {t["number"]: t for t in results["tests"]}
    for ex_id, (passes, _) in EXPECTED.items():
        assert tests[ex_id]["score"] == float(passes) and tests[ex_id]["max_score"] == 1.0
        assert tests[ex_id]["status"] == ("passed" if passes else "failed")
        assert passes or "hint:" in tests[ex_id]["output"], tests[ex_id]
    assert tests["00.1"]["status"] == "failed" and "does not compile" in tests["00.1"]["output"]
    assert results["score"] == sum(t["score"] for t in results["tests"])
    assert "simulator" in results["output"] and results["execution_time"] > 0


def _exercise_counts():
    """{lesson: number of exercises}, read from the graded tests' markers without running them."""
    counts = {}
    for path in sorted((ROOT / "tests" / "exercises").glob("test_lesson*.py")):
        ids = set(re.findall(r'mark\.exercise\(\s*"(\d\d\.\d)"', path.read_text()))
        counts[path.stem.removeprefix("test_")] = len(ids)
    return counts


def test_github_classroom_runs_one_test_per_lesson():
    counts = _exercise_counts()
    legacy = json.loads((ROOT / ".github" / "classroom" / "autograding.json").read_text())
    fields = {"name", "setup", "run", "input", "output", "comparison", "timeout", "points"}
    assert [set(t) for t in legacy["tests"]] == [fields] * len(counts)
    runs = {
        re.search(r"tests/exercises/test_(lesson\d\d)\.py", t["run"]).group(1): t for t in legacy["tests"]
    }
    assert {k: t["points"] for k, t in runs.items()} == counts
    assert all(
        t["comparison"] in ("included", "exact", "regex") and t["timeout"] > 0 for t in legacy["tests"]
    )
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / ".github" / "classroom" / "classroom.yml").read_text())
    assert workflow["name"] == "Autograding Tests" and list(workflow["jobs"]) == ["run-autograding-tests"]
    steps = workflow["jobs"]["run-autograding-tests"]["steps"]
    graders = [
        s for s in steps if s.get("uses", "").startswith("classroom-resources/autograding-command-grader")
    ]
    points = {
        re.search(r"test_(lesson\d\d)\.py", s["with"]["command"]).group(1): s["with"]["max-score"]
        for s in graders
    }
    assert points == counts
    reporter = steps[-1]
    assert reporter["uses"].startswith("classroom-resources/autograding-grading-reporter")
    assert reporter["with"]["runners"].split(",") == [s["id"] for s in graders]
    assert set(reporter["env"]) == {f"{s['id'].upper()}_RESULTS" for s in graders}


def test_assert_close_says_what_went_wrong():
    ref = np.array([1.0, 2.0, 3.0])
    with pytest.raises(AssertionError, match="none of its 3 elements was written"):
        grading.assert_close(grading.poison(3), ref)
    partly = grading.poison(3)
    partly[0] = 1.0
    with pytest.raises(AssertionError, match=r"2 of 3 elements were never written .* index \(1,\)"):
        grading.assert_close(partly, ref)
    with pytest.raises(AssertionError, match="NaN where the answer is a number.*cuda.syncthreads"):
        grading.assert_close(np.array([1.0, np.nan, 3.0], np.float32), ref)
    with pytest.raises(AssertionError, match="infinite where the answer is finite.*overflow"):
        grading.assert_close(np.array([1.0, 2.0, np.inf], np.float32), ref)
    with pytest.raises(AssertionError, match=r"got -4.09e\+18, expected 2 .*garbage.*cuda.syncthreads"):
        grading.assert_close(np.array([1.0, -4.09e18, 3.0], np.float32), ref)


def test_seeded_rng_repeats_per_test_and_differs_between_tests():
    rng = grading.SeededRNG()
    rng.reseed(7, "test_a")
    first = rng.integers(0, 1 << 30, 4)
    rng.reseed(7, "test_b")
    other = rng.integers(0, 1 << 30, 4)
    rng.reseed(7, "test_a")
    assert (rng.integers(0, 1 << 30, 4) == first).all() and not (other == first).all()


def test_parallel_workers_are_refused_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/exercises", "-n", "2", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--grade-jobs" in proc.stderr + proc.stdout
