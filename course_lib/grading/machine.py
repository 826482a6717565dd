"""Getting a grading machine ready before nbgrader's autograde starts (``nbgrader_config.py``
calls ``prepare_grading_machine``).

A check that lacks a requirement inside a student's kernel could only give 0 or full points; so
the instructor's command stops first, with a clear error, where the machine lacks what an
exercise needs. Without a CUDA GPU, Triton kernels run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, which must be set before a kernel is decorated, so in the environment the
grading kernels inherit): a kernel is graded the same way on CPU and GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping

from course_lib.grading import LESSON_MODULES
from course_lib.grading.framework import Exercise, GradingEnvironmentError


def exercises_of(assignments: Iterable[str]) -> list[Exercise]:
    """The exercises of the lessons named (``NN_slug``, as nbgrader names assignments); every
    lesson's when none is named."""
    wanted = {f"l{name}" for name in assignments}
    modules = [m for m in LESSON_MODULES if m.__name__.rsplit(".", 1)[-1] in wanted] or list(LESSON_MODULES)
    return [exercise for module in modules for exercise in module.EXERCISES]


def prepare_grading_machine(
    exercises: Iterable[Exercise], environ: MutableMapping[str, str] = os.environ, cuda: bool | None = None
) -> None:
    """Raise ``GradingEnvironmentError`` naming what is missing; set TRITON_INTERPRET without CUDA."""
    missing = {r.name: r.how for e in exercises for r in e.requires if not r.available()}
    if missing:
        raise GradingEnvironmentError(
            "this machine cannot grade the assignment: "
            + "; ".join(f"{name} is missing ({how})" for name, how in missing.items())
        )
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        environ.setdefault("TRITON_INTERPRET", "1")
