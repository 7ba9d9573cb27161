"""The grader: every lesson graded in its own process, short failure reports, the score card last.

`pytest tests/exercises` collects the graded tests in this process (no learner code runs here), then grades
each lesson in a child pytest, a few at a time (grader.Grader): a test that hangs is stopped after
--grade-timeout seconds, a crash ends only its own process, a lesson that does not import scores zero, and
every other exercise is graded as usual. The score card (scorecard.py) comes after everything else; tracebacks
only with an explicit --tb. --grades-json FILE also writes Gradescope's results.json. --grade-inline grades
in this process instead (no isolation, no time limits: for --pdb), and so does a pytest.main() embedded in
another program.

Every graded test carries ``@pytest.mark.exercise(id, hints=(idea, what to write, answer))``.
"""

import json
import os
import random
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import grader
import pytest
import scorecard

import course.grading as grading
import minisd.mode as mode

HERE = Path(__file__).resolve().parent
LESSON = re.compile(r"test_(lesson\d+)\.py$")


class State:
    started = None  # when this pytest started grading (time.monotonic)
    role = "parent"  # "parent" supervises children, "child" runs one lesson's tests, "inline" does both
    seed = None
    grader = None  # parent: the grader.Grader
    events = None  # child: the channel to the parent
    spec = None  # child: what to run
    results = {}  # child and inline: nodeid -> grader.Result
    messages = {}  # child and inline: nodeid -> the first failure's message
    show_tb = False  # the learner asked for tracebacks (--tb=...)


state = State()


def _exercise(item):
    marker = item.get_closest_marker("exercise")
    if marker is None:
        return None, ()
    hints = marker.kwargs.get("hints")
    if hints is None:
        hints = (marker.kwargs["hint"],) if "hint" in marker.kwargs else ()
    return marker.args[0], tuple(hints)


def _graded(item):
    return HERE in item.path.parents


def _embedded():
    """pytest.main() inside another program (benchmarks/compile_check.py records every launch in its own
    process): grade in that process."""
    return Path(sys.argv[0]).name not in ("pytest", "py.test", "__main__.py", "pytest.exe")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    state.started = time.monotonic()
    asked = config.invocation_params.args
    state.show_tb = any(str(a).startswith("--tb") for a in asked)
    if config.getoption("--grade-child"):
        state.role = "child"
        state.spec = json.loads(Path(config.getoption("--grade-child")).read_text())
        state.seed = state.spec["seed"]
        state.events = grader.Events(state.spec["events"])
        grading.instrument()
        return
    state.seed = config.getoption("--seed")
    if state.seed is None:
        state.seed = random.SystemRandom().randrange(1 << 31)
    if not state.show_tb:
        config.option.tbstyle = "no"  # the score card says it in a paragraph per exercise
    if not any(str(a).startswith("-r") for a in asked):
        config.option.reportchars = ""  # ... so no line per failed test after it
    if config.getoption("--grade-inline") or _embedded():
        state.role = "inline"
        grading.instrument(checks=False)  # on for the graded tests only (pytest_runtest_setup)
        return
    target = ["--solutions"] if config.getoption("--solutions") else []
    if config.getoption("--exercises-dir"):
        target = ["--exercises-dir", str(Path(config.getoption("--exercises-dir")).resolve())]
    tb = [f"--tb={config.option.tbstyle}"] if state.show_tb else ["--tb=short"]
    state.grader = grader.Grader(
        [*target, *tb], config.getoption("--grade-jobs"), config.getoption("--grade-timeout"), state.seed
    )


def pytest_unconfigure(config):
    if state.grader is not None:
        state.grader.stop()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not _graded(item):  # collected beside other tests: grade only the exercises
            continue
        ex_id, hints = _exercise(item)
        if ex_id is None:
            raise pytest.UsageError(f"{item.nodeid} has no @pytest.mark.exercise(id, hints=...) marker")
        item.user_properties.append(("exercise", (ex_id, hints)))  # travels with the report into junitxml
    if state.role == "child":
        wanted = {nodeid: k for k, nodeid in enumerate(state.spec["nodeids"])}
        dropped = [item for item in items if item.nodeid not in wanted]
        items[:] = sorted((item for item in items if item.nodeid in wanted), key=lambda i: wanted[i.nodeid])
        if dropped:
            config.hook.pytest_deselected(items=dropped)


# ---------------------------------------------------------------------------------------------------------
# The child: import the lesson first (its own failure), then report every test as it starts and ends
# ---------------------------------------------------------------------------------------------------------
def pytest_collection_finish(session):
    if state.role != "child":
        return
    lessons = {
        id(v): v
        for item in session.items
        for v in vars(item.module).values()
        if isinstance(v, grading.Lesson)
    }
    cuda_cpp = None
    if any(LESSON.search(item.path.name).group(1) == "lesson05" for item in session.items):
        from course import cuda_cpu

        cuda_cpp = cuda_cpu.BACKEND
    state.events.send("hello", ran=grading.where_kernels_ran(), cuda_cpp=cuda_cpp)
    for lesson in lessons.values():
        state.events.send("import", lesson=lesson.lesson)
        try:
            lesson.module()
        except BaseException as exc:  # SyntaxError, ImportError, SystemExit, ...: the lesson scores zero
            state.events.send("import_failed", message=grader.import_failure(lesson.lesson, exc))
            os._exit(0)
        state.events.send("imported", lesson=lesson.lesson)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if state.role == "parent" or not _graded(item):
        return
    grading.rng.reseed(state.seed, item.nodeid)
    grading.strict(True)
    if state.role == "child":
        state.events.send("start", nodeid=item.nodeid)


def pytest_runtest_teardown(item):
    if state.role == "inline" and _graded(item):
        grading.strict(False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if state.role != "parent" and call.excinfo is not None and rep.failed:
        state.messages.setdefault(item.nodeid, grader.failure_message(call.excinfo))
    return rep


def pytest_runtest_logreport(report):
    if state.role == "parent" or report.when is None:
        return
    old = state.results.get(report.nodeid)
    if report.failed:
        message = state.messages.get(report.nodeid, "failed")
        details = (old.details + "\n" if old and old.details else "") + report.longreprtext
        state.results[report.nodeid] = grader.Result("failed", message, details)
    elif report.skipped and (old is None or old.outcome != "failed"):
        state.results[report.nodeid] = grader.Result(
            "skipped", str(report.longrepr[-1]) if report.longrepr else ""
        )
    elif old is None:
        state.results[report.nodeid] = grader.Result("passed")
    if report.when == "teardown" and state.role == "child":
        state.events.send("done", nodeid=report.nodeid, result=asdict(state.results[report.nodeid]))


# ---------------------------------------------------------------------------------------------------------
# The parent: start the children, then replay each test's result as pytest asks for it
# ---------------------------------------------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    if state.role != "parent" or session.config.option.collectonly or session.testsfailed:
        return
    lessons = {}
    for item in session.items:
        if _graded(item):
            lessons.setdefault(str(item.path), []).append(item.nodeid)
    state.grader.start(lessons.items())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if state.role != "parent" or not _graded(pyfuncitem):
        return None
    result = state.grader.result(pyfuncitem.nodeid)
    if result.outcome == "skipped":
        pytest.skip(result.message)
    if result.outcome == "failed":
        text = result.details if state.show_tb and result.details else result.message
        if result.scope == "test":
            text += f"\n(test data from --seed {state.seed})"
        pytest.fail(text, pytrace=False)
    return True


# ---------------------------------------------------------------------------------------------------------
# The score card, after pytest's own summary
# ---------------------------------------------------------------------------------------------------------
def _results(session):
    graded = []
    for item in session.items:
        if not _graded(item):
            continue
        found = state.grader.results if state.role == "parent" else state.results
        if item.nodeid not in found:
            continue  # deselected, or the run was interrupted before it
        ex_id, hints = _exercise(item)
        lesson = LESSON.search(item.path.name).group(1)
        graded.append(scorecard.Graded(item.nodeid, lesson, ex_id, hints, found[item.nodeid]))
    return graded


def _count(n, what):
    return f"{n} {what}{'' if n == 1 else 's'}"


def _header(graded, config):
    if state.role == "parent":
        ran, cuda_cpp = state.grader.ran, state.grader.cuda_cpp
        how = f"{config.getoption('--grade-jobs')} at a time, at most {config.getoption('--grade-timeout'):.0f} s a test"
    else:
        ran, cuda_cpp, how = grading.where_kernels_ran(), None, "in this process"
    lessons = len({g.lesson for g in graded})
    took = f" in {time.monotonic() - state.started:.0f} s"
    lines = [f"kernels ran {ran or ('on the GPU' if mode.ON_GPU else 'in the simulator')}"]
    if cuda_cpp == "cpu":
        lines[0] += "; lesson 05's CUDA C++ ran on the CPU (g++ with course.cuda_cpu's CUDA shim)"
    lines.append(f"graded {_count(lessons, 'lesson')} ({_count(len(graded), 'test')}){took}, {how}")
    if any(g.result.outcome == "failed" and g.result.scope == "test" for g in graded):
        lines.append(f"test data from --seed {state.seed}: add it to rerun any test with the same numbers")
    return lines


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    result = yield
    if state.role == "child":
        return result
    graded = _results(session)
    if not graded:
        return result
    header = _header(graded, session.config)
    level = session.config.getoption("--hint")
    card = scorecard.score_card(graded, header, level)
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.write_sep("=", f"score card: {grading.target_label()}")
        for line in card:
            terminal.write_line(line)
    path = session.config.getoption("--grades-json")
    if path:
        elapsed = time.monotonic() - state.started
        scorecard.write_gradescope(path, scorecard.gradescope(graded, header, level, elapsed))
    return result
