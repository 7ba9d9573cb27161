"""What the graded tests share: which code they grade, poisoned outputs, and readable comparisons.

`pytest tests/exercises` grades exercises/; `pytest tests/exercises --solutions` grades solutions/.
The choice travels in the environment variable COURSE_TARGET, set by the root conftest.py.
"""

import importlib
import os

import numpy as np

TARGETS = ("exercises", "solutions")


def target():
    name = os.environ.get("COURSE_TARGET", "exercises")
    if name not in TARGETS:
        raise ValueError(f"COURSE_TARGET={name!r}: choose one of {TARGETS}")
    return name


def load(lesson):
    """The module under test: ``load("lesson01")`` is exercises.lesson01 (or solutions.lesson01)."""
    return importlib.import_module(f"{target()}.{lesson}")


def poison(shape, dtype=np.float32):
    """An output buffer full of NaN (or -1 for integers): any element the kernel forgets to write shows up."""
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else -1
    return np.full(shape, fill, dtype=dtype)


def assert_close(out, ref, rtol=1e-5, atol=1e-6, what="output"):
    """Like np.testing.assert_allclose, but the message tells a learner what went wrong and where."""
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        raise AssertionError(f"{what} has shape {out.shape}, expected {ref.shape}")
    unwritten = np.isnan(out) & ~np.isnan(ref)
    if unwritten.any():
        idx = tuple(int(i) for i in np.argwhere(unwritten)[0])
        raise AssertionError(
            f"{what}: {int(unwritten.sum())} of {out.size} elements were never written "
            f"(still NaN), first at index {idx}. Does every element get a thread? Is the guard right?"
        )
    bad = ~np.isclose(out, ref, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {out.size} elements differ, first at index {idx}: "
            f"got {out[idx]!r}, expected {ref[idx]!r} (rtol={rtol}, atol={atol})"
        )
