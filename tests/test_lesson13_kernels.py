"""Lesson 13's fused upsample_conv2d in minisd's pipeline (minisd/lesson_kernels.py): probed like lesson 11's
ops, then every conv2d(..., upsample=True) runs it; a stub falls back to minisd's, a wrong one stops the run."""

import sys
import types

import numpy as np
import pytest

from minisd import lesson_kernels
from minisd.lesson_kernels import LessonKernelsError
from minisd.ops import Ops

NUMPY = Ops("numpy")
rng = np.random.default_rng(13)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def fake(monkeypatch, name, **functions):
    module = types.ModuleType(name)
    for key, fn in functions.items():
        setattr(module, key, fn)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def counted(calls, fn):
    def wrapper(*args):
        calls.append(args[0].shape)
        return fn(*args)

    return wrapper


def test_the_solution_runs_every_upsample_conv(monkeypatch, capsys):
    import solutions.lesson13 as lesson13

    calls = []
    monkeypatch.setattr(lesson13, "upsample_conv2d", counted(calls, lesson13.upsample_conv2d))
    ops, _ = lesson_kernels.load("solutions")
    out = capsys.readouterr().out
    assert "lesson13.py's upsample_conv2d" in out and "WRONG" not in out, out
    assert "upsample_conv2d" in out.split("yours:", 1)[1].splitlines()[0], out
    x, w, b = f32(1, 3, 4, 5), f32(2, 3, 3, 3), f32(2)
    np.testing.assert_allclose(
        ops.conv2d(x, w, b, 1, 1, upsample=True), NUMPY.conv2d(x, w, b, 1, 1, upsample=True), 1e-5, 1e-5
    )
    assert calls == [(1, 2, 3, 2), (1, 3, 4, 5)], "the probe, then the decoder's call"
    ops.conv2d(x, w, b, 1, 1)  # no upsample: lesson 06's conv2d, not lesson 13's
    assert len(calls) == 2


def test_a_stub_falls_back_to_minisds(monkeypatch, capsys):
    fake(monkeypatch, "exercises.lesson11", gelu=NUMPY.gelu)

    def stub(x, weight, bias=None):
        raise NotImplementedError("Exercise 13.3: upsample_conv2d")

    fake(monkeypatch, "exercises.lesson13", upsample_conv2d=stub)
    ops, _ = lesson_kernels.load("exercises")
    assert "not implemented yet (minisd's run instead): upsample_conv2d" in capsys.readouterr().out
    x, w, b = f32(1, 2, 3, 3), f32(4, 2, 3, 3), f32(4)
    np.testing.assert_allclose(
        ops.conv2d(x, w, b, 1, 1, upsample=True), NUMPY.conv2d(x, w, b, 1, 1, upsample=True), 1e-6, 1e-6
    )


def test_without_lesson13_nothing_changes(monkeypatch, capsys):
    fake(monkeypatch, "exercises.lesson11", gelu=NUMPY.gelu)
    monkeypatch.setitem(sys.modules, "exercises.lesson13", None)  # as if exercises/lesson13.py did not exist
    lesson_kernels.load("exercises")
    assert "upsample_conv2d" not in capsys.readouterr().out


def test_a_wrong_one_is_reported_with_its_file(monkeypatch, capsys):
    fake(monkeypatch, "solutions.lesson11", gelu=NUMPY.gelu)
    fake(monkeypatch, "solutions.lesson13", upsample_conv2d=lambda x, w, b=None: NUMPY.conv2d(x, w, b, 1, 1))
    with pytest.raises(LessonKernelsError, match="solutions/lesson13.py: upsample_conv2d is wrong"):
        lesson_kernels.load("solutions")
    out = capsys.readouterr().out
    assert "WRONG upsample_conv2d: returned shape (1, 3, 3, 2), expected (1, 3, 6, 4)" in out, out
