"""Every lesson's solution through `nbgrader autograde`, once, in the lesson's own throw-away course
(see LessonCourses): full marks, within the lesson's time budget, nothing on stderr, and feedback.

One lesson's failure fails only that lesson's tests. Students who get things wrong, the exchange,
zip_collect and export are tested on a small fixture assignment instead (test_nbgrader_students.py):
they need no lesson's run time.
"""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
pytest.importorskip("nbgrader", reason="needs nbgrader (the [lab] extra)")

from nbgrader_course import (  # noqa: E402 - after the skips above
    LESSONS,
    SOLUTIONS,
    LessonCourses,
    grade_cells,
    nbgrader_meta,
    notebook_path,
    total_points,
)

pytestmark = pytest.mark.nbgrader
LESSON_BUDGET_SECONDS = 120
STUDENT = LessonCourses.STUDENT


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_autogrades_to_full_marks(lesson_courses, lesson):
    course = lesson_courses.graded(lesson)
    full_marks = total_points(nbformat.read(notebook_path(SOLUTIONS, lesson), as_version=4))
    assert full_marks > 0
    assert course.score(STUDENT, lesson) == full_marks


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_runs_within_the_lesson_budget(lesson_courses, lesson):
    # autograde's own start-up (about 4 s) is included: the limit is on the whole run.
    seconds = lesson_courses.graded(lesson).autograde_seconds[(STUDENT, lesson)]
    assert seconds < LESSON_BUDGET_SECONDS, f"{lesson} took {seconds:.0f} s to autograde"


@pytest.mark.parametrize("lesson", LESSONS)
def test_no_solution_grade_cell_writes_to_stderr(lesson_courses, lesson):
    """nbgrader gives 0 points to a grade cell with any stderr output: does any solution cell write some?"""
    graded = lesson_courses.graded(lesson).autograded(STUDENT, lesson)
    cells = grade_cells(graded)
    assert cells and all(cell.outputs for cell in cells), "grade cells without outputs: were they run?"
    for cell in cells:
        for output in cell.outputs:
            assert output.output_type != "error", f"{nbgrader_meta(cell)['grade_id']}: {output.get('evalue')}"
            assert output.get("name") != "stderr", f"{nbgrader_meta(cell)['grade_id']} wrote to stderr: {output.text}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_an_untouched_release_autogrades_to_zero_without_crashing(lesson_courses, lesson):
    """Does the release as a student fetches it run to the end under autograde, and score 0, with every
    grade cell failing on the check's own message (not on a missing name or a crash)?"""
    course = lesson_courses.graded_untouched(lesson)
    graded = course.autograded(LessonCourses.UNTOUCHED, lesson)
    assert graded is not None, "autograde produced no notebook: it crashed"
    assert course.score(LessonCourses.UNTOUCHED, lesson) == 0
    for cell in grade_cells(graded):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert errors, f"{nbgrader_meta(cell)['grade_id']} passed in the untouched release"
        assert errors[0].ename == "CheckFailed", f"{nbgrader_meta(cell)['grade_id']}: {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_feedback_is_generated(lesson_courses, lesson):
    course = lesson_courses.graded(lesson)
    feedback = notebook_path(course.root / "feedback" / STUDENT, lesson).with_suffix(".html")
    assert feedback.exists(), feedback
    html = feedback.read_text()
    assert "Score:" in html
    assert "<math" in html  # the formulas are MathML, drawn without MathJax's CDN
