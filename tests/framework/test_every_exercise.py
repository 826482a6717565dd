"""Every exercise of every lesson, both ways, on every device here: each known mistake fails with
its own name (public cases and 20 hidden seeds), and the grading module exposes its check.

A lesson adds an exercise to its module's EXERCISES; this file then holds its mistakes to failing,
with no edit here. Correct implementations, written differently from the reference, are each
lesson's own tests (tests/lessons/test_lNN_*.py)."""

import pytest
import torch

from course_lib import grading
from course_lib.grading import EXERCISES, LESSON_MODULES
from course_lib.grading.framework import CheckFailed

HIDDEN_SEEDS = tuple(range(1, 21))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MISTAKES = [(exercise, mistake) for exercise in EXERCISES.values() for mistake in exercise.mistakes]


def test_every_lesson_module_lists_its_exercises_and_each_has_its_check():
    assert LESSON_MODULES, "no lesson module found in course_lib.grading"
    for module in LESSON_MODULES:
        assert module.EXERCISES, f"{module.__name__} lists no exercise"
    for name, exercise in EXERCISES.items():
        check = getattr(grading, f"check_{name}")
        assert check.__name__ == f"check_{name}" and name in check.__doc__
        assert exercise.mistakes, f"{name} names no known mistake"


def test_mistake_names_are_unique_within_an_exercise_unless_they_are_one_mistake():
    for exercise in EXERCISES.values():
        hints = {}
        for mistake in exercise.mistakes:
            hints.setdefault(mistake.name, set()).add(mistake.hint)
        # several implementations may share a name (one mistake written several ways), never a name
        # with two different hints
        assert all(len(h) == 1 for h in hints.values()), hints


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "exercise,mistake", MISTAKES, ids=[f"{e.name}: {m.name}" for e, m in MISTAKES]
)
def test_each_known_mistake_fails_with_its_name(exercise, mistake, device, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    missing = [r.name for r in exercise.requires if not r.available()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    check = getattr(grading, f"check_{exercise.name}")
    for kwargs in [{}] + [{"hidden": True, "seed": s} for s in HIDDEN_SEEDS]:
        with pytest.raises(CheckFailed) as info:
            check(mistake.function, **kwargs)
        failure = info.value.failure
        assert failure.mistake == mistake.name, failure.message
        assert f"known mistake: {mistake.name}." in str(info.value) and mistake.hint in str(info.value)
