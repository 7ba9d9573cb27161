"""The grader: a time limit per test and a score card at the end of the run."""

import os
import re
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from course.grading import target

HERE = Path(__file__).resolve().parent
TIME_LIMIT_S = float(os.environ.get("COURSE_TIME_LIMIT", "60"))
_results = defaultdict(dict)  # lesson -> {exercise id: [all its tests passed?, hints of the failed ones]}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run the test in a helper thread so a kernel that never ends fails this test, not the whole run."""
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    outcome = {}

    def body():
        try:
            pyfuncitem.obj(**kwargs)
        except BaseException as exc:  # re-raised below, on pytest's thread
            outcome["error"] = exc

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(TIME_LIMIT_S)
    if worker.is_alive():
        pytest.fail(
            f"timed out after {TIME_LIMIT_S:.0f} s: a kernel or loop that never ends? Look for a loop whose "
            "bound never changes, or a cuda.syncthreads() that some threads of the block never reach.",
            pytrace=False,
        )
    if "error" in outcome:
        raise outcome["error"]
    return True


def _exercise(item):
    marker = item.get_closest_marker("exercise")
    if marker is None:
        return None, None
    return marker.args[0], marker.kwargs.get("hint", "")


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE not in item.path.parents:  # collected beside other tests: grade only the exercises
            continue
        ex_id, hint = _exercise(item)
        if ex_id is None:
            raise pytest.UsageError(f"{item.nodeid} has no @pytest.mark.exercise(id, hint=...) marker")
        item.user_properties.append(("exercise", (ex_id, hint)))  # travels with the report, also under xdist


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    lesson = re.search(r"test_(lesson\d+)", report.nodeid)
    found = dict(report.user_properties).get("exercise")
    if lesson is None or found is None:
        return
    ex_id, hint = found
    entry = _results[lesson.group(1)].setdefault(ex_id, [True, []])
    if not report.passed:
        entry[0] = False
        entry[1].append(hint)


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    write = terminalreporter.write_line
    write("")
    write(f"===== score card: {target()}/ =====")
    total = done = 0
    for lesson in sorted(_results):
        write(f"  {lesson}")
        for ex_id, (passed, hints) in sorted(_results[lesson].items()):
            total += 1
            done += passed
            write(f"    {'✔' if passed else '✘'} exercise {ex_id}")
            for hint in dict.fromkeys(h for h in hints if h):
                write(f"        hint: {hint}")
    write(f"  score: {done}/{total} exercises ({100 * done // max(total, 1)}%)")
