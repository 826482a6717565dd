"""One-line checks for the graded exercises: ``check_<function>(fn)``.

Each prints one "passed" line or raises ``AssertionError`` saying what is wrong — the case, the
shapes, the largest error and, where the answer matches a known mistake, its name and a hint.
Grade cells add hidden cases: ``check_<function>(fn, hidden=True, seed=N)``.
"""

from course_lib.grading.attention_checks import (
    check_attention_weights,
    check_scaled_dot_product_attention,
    check_softmax,
)

__all__ = ["check_softmax", "check_attention_weights", "check_scaled_dot_product_attention"]
