"""What the grader prints and writes: the score card (last thing on screen) and Gradescope's results.json.

One paragraph per failing exercise: the first failing test's message, then its hints up to the level asked for
(``--hint``: 1 the idea, 2 what to write, 3 the answer). Gradescope's format:
https://gradescope-autograders.readthedocs.io/en/latest/specs/ (a test per exercise, scored 0 or 1).
"""

import json
import re
import textwrap
from dataclasses import dataclass

HINT_LABELS = ("hint", "next", "answer")
WIDTH = 110


@dataclass
class Graded:
    """One graded test and how it went."""

    nodeid: str
    lesson: str  # "lesson01"
    exercise: str  # "01.3"
    hints: tuple  # the ladder: idea, what to write, the answer
    result: object  # grader.Result


def _short(text, lines=6, chars=800):
    kept = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()][:lines]
    text = " ".join(kept)
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def _wrap(text, first, rest):
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest) or [first.rstrip()]


def group(graded):
    """{lesson: {exercise: [Graded, ...]}}, lessons and exercises in order."""
    lessons = {}
    for g in graded:
        lessons.setdefault(g.lesson, {}).setdefault(g.exercise, []).append(g)
    return {k: dict(sorted(v.items())) for k, v in sorted(lessons.items())}


def _lesson_failure(exercises):
    """The message when the whole lesson could not be graded (its module did not import), else None."""
    tests = [g for gs in exercises.values() for g in gs]
    if tests and all(g.result.scope == "lesson" for g in tests):
        return tests[0].result.message
    return None


def exercise_feedback(tests, hint_level):
    """(passed, text) for one exercise: its first failure's message and the hints asked for."""
    failed = [g for g in tests if g.result.outcome == "failed"]
    if not failed:
        return True, ""
    first = failed[0]
    parts = [_short(first.result.message)]
    if len(failed) > 1:
        parts[0] += f" ({len(failed) - 1} more of its {len(tests)} tests failed too)"
    hints = [f"{label}: {h}" for label, h in zip(HINT_LABELS, first.hints[:hint_level], strict=False)]
    return False, "\n".join([*parts, *hints])


def score_card(graded, header, hint_level):
    """The score card's lines; the last one is the score."""
    lines, total, done = [], 0, 0
    for lesson, exercises in group(graded).items():
        broken = _lesson_failure(exercises)
        if broken:
            lines += _wrap(f"{lesson}  could not be graded: {_short(broken)}", "", " " * (len(lesson) + 2))
            lines.append("  " + "  ".join(f"✘ {ex}" for ex in exercises))
            total += len(exercises)
            continue
        lines.append(lesson)
        for ex, tests in exercises.items():
            passed, text = exercise_feedback(tests, hint_level)
            total += 1
            done += passed
            if passed:
                lines.append(f"  ✔ {ex}")
                continue
            head, *more = text.split("\n")
            lines += _wrap(head, f"  ✘ {ex}  ", " " * 10)
            for extra in more:
                lines += _wrap(extra, " " * 10, " " * 12)
    more = {1: " · --hint 2 shows the next step, --hint 3 the answer", 2: " · --hint 3 shows the answer"}
    tail = more.get(hint_level, "") if done < total else ""
    header = [wrapped for line in header for wrapped in _wrap(line, "", "  ")]
    return [*header, *lines, f"score: {done}/{total} exercises ({100 * done // max(total, 1)}%){tail}"]


def _test_names(tests):
    names = dict.fromkeys(
        re.sub(r"\[.*\]$", "", g.nodeid.split("::")[-1]).removeprefix("test_") for g in tests
    )
    return ", ".join(names)


def gradescope(graded, header, hint_level, elapsed_s):
    """Gradescope's results.json as a dict: one test per exercise, worth one point."""
    tests, score = [], 0.0
    for lesson, exercises in group(graded).items():
        broken = _lesson_failure(exercises)
        for ex, gs in exercises.items():
            passed, text = exercise_feedback(gs, hint_level)
            if broken:
                text = f"{lesson} could not be graded: {_short(broken)}"
            score += passed
            tests.append(
                {
                    "name": f"{ex} · {_test_names(gs)}",
                    "number": ex,
                    "score": float(passed),
                    "max_score": 1.0,
                    "status": "passed" if passed else "failed",
                    "output": text,
                    "tags": [lesson],
                    "visibility": "visible",
                }
            )
    return {
        "score": score,
        "execution_time": round(elapsed_s),
        "output": "\n".join([*header, f"score: {int(score)}/{len(tests)} exercises"]),
        "output_format": "text",
        "test_output_format": "text",
        "test_name_format": "text",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }


def write_gradescope(path, results):
    with open(path, "w") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
