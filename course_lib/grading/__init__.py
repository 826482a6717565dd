"""One-line checks for the graded exercises: ``check_<function>(fn)``.

Each prints one "passed" line or raises ``AssertionError`` saying what is wrong — the case, the
shapes, the largest error and, where the answer matches a known mistake, its name and a hint.
Grade cells add hidden cases: ``check_<function>(fn, hidden=True, seed=N)``.
"""

from course_lib.grading import l05_scaled_dot_product as attention_checks
from course_lib.grading.l05_scaled_dot_product import (
    check_attention_weights,
    check_scaled_dot_product_attention,
    check_softmax,
)

# Every graded exercise, by the name of the function a student writes; `check_<name>` checks it.
# tests/test_grading.py runs each exercise's known mistakes from here, so a new one is tested too.
EXERCISES = {
    exercise.name: exercise
    for exercise in (
        attention_checks.SOFTMAX,
        attention_checks.ATTENTION_WEIGHTS,
        attention_checks.SCALED_DOT_PRODUCT_ATTENTION,
    )
}

__all__ = ["EXERCISES", "check_softmax", "check_attention_weights", "check_scaled_dot_product_attention"]
