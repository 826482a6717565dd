"""One-line checks for the graded exercises: ``check_<name>(fn)``.

Each prints one "passed" line or raises ``AssertionError`` (a ``CheckFailed``) saying what is wrong
— the case, the shapes, the largest error and, where the answer matches a known mistake, its name
and a hint. Grade cells add hidden cases: ``check_<name>(fn, hidden=True, seed=N)``.

The checks are organised by lesson: ``lNN_slug.py`` holds the exercises of notebook ``NN_slug``
and lists them in its ``EXERCISES``. This module finds every lesson module, so adding an exercise
touches only its lesson's module (and its test): ``check_<name>`` appears here by itself.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from course_lib.grading.framework import CheckFailed, Exercise, Failure

LESSON_MODULES = tuple(
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name)
    if re.fullmatch(r"l\d\d_\w+", info.name)
)


def _every_exercise() -> dict[str, Exercise]:
    exercises: dict[str, Exercise] = {}
    for lesson in LESSON_MODULES:
        for exercise in lesson.EXERCISES:
            if exercise.name in exercises:
                raise ImportError(f"two lessons grade an exercise named {exercise.name!r}: names must be unique")
            exercises[exercise.name] = exercise
    return exercises


# Every graded exercise, by the name of the function (or class) a student writes.
EXERCISES: dict[str, Exercise] = _every_exercise()

globals().update({f"check_{name}": exercise.check_function() for name, exercise in EXERCISES.items()})

__all__ = ["EXERCISES", "CheckFailed", "Failure", *(f"check_{name}" for name in EXERCISES)]
