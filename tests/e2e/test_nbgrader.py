"""nbgrader end to end, on every lesson: generate, release, fetch, submit, collect, autograde,
generate_feedback, export — in a temporary course root and exchange, with the real command line.

Each solution notebook is executed exactly once here, through autograde, and timed. Students:
  alice  — answers every exercise as the solution does: full marks.
  bob    — submits the release untouched: zero, without crashing.
  carol  — right until her last exercise, whose function hangs on its first call (the check's):
           the check stops it, that exercise scores 0, the ones before keep their points, and the
           batch goes on. (It hangs only once, so the lesson's later cells that call it do not each
           wait for nbgrader's 120 s cell limit.)
  dave   — adds a first cell that kills the kernel: his notebook fails to grade, nobody else's does.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import zipfile

import nbformat
import pytest
from nbgrader.api import Gradebook

from nbgrader_course import (
    LESSONS,
    RELEASE,
    REPO,
    SOLUTIONS,
    TIMES_FILE,
    Course,
    answered_like_the_solution,
    grade_cells,
    nbgrader_meta,
    notebook_path,
    write_json,
)

pytestmark = pytest.mark.nbgrader
LESSON_BUDGET_SECONDS = 120


def _points(nb) -> float:
    return sum(float(nbgrader_meta(c).get("points", 0)) for c in grade_cells(nb))


def _carol(release, lesson):
    """The solution, except that the last graded function hangs the first time it is called."""
    nb = answered_like_the_solution(release, lesson)
    solution_cells = [c for c in nb.cells if nbgrader_meta(c).get("solution") and c.cell_type == "code"]
    last = solution_cells[-1]
    name = re.findall(r"^def (\w+)\(", last.source, flags=re.M)[-1]
    last.source += (
        f"\n\n\n_{name}_that_works, _first_call = {name}, [True]\n\n\n"
        f"def {name}(*args, **kwargs):\n"
        f"    try:\n"
        f"        while _first_call[0]:\n"
        f"            pass\n"
        f"    finally:\n"
        f"        _first_call[0] = False\n"
        f"    return _{name}_that_works(*args, **kwargs)\n"
    )
    index = nb.cells.index(last)
    lost = sum(float(nbgrader_meta(c).get("points", 0)) for c in grade_cells(nb) if nb.cells.index(c) > index)
    return nb, _points(nb) - lost


def _dave(release, lesson):
    nb = answered_like_the_solution(release, lesson)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import os\nos._exit(1)  # the kernel dies"))
    return nb


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    course = Course.create(tmp_path_factory.mktemp("nbgrader"))
    course.expected = {}
    for lesson in LESSONS:
        release = nbformat.read(course.generate(lesson), as_version=4)
        course.nbgrader("release_assignment", lesson)
        for student in ("alice", "bob", "carol", "dave"):
            path = course.fetch(student, lesson)
            fetched = nbformat.read(path, as_version=4)
            if student == "alice":
                nb, expected = answered_like_the_solution(fetched, lesson), _points(release)
            elif student == "bob":
                nb, expected = fetched, 0.0
            elif student == "carol":
                nb, expected = _carol(fetched, lesson)
            else:
                nb, expected = _dave(fetched, lesson), 0.0
            nbformat.write(nb, path)
            course.submit(student, lesson)
            course.expected[(student, lesson)] = expected
        course.nbgrader("collect", lesson)
        course.autograde("alice", lesson)  # alone and timed: the one run of the solution
        course.batch = course.nbgrader("autograde", lesson, check=False)  # everyone else, in one batch
        course.nbgrader("generate_feedback", lesson)
    course.nbgrader("export", "--to", str(course.root / "grades.csv"))
    times = {lesson: round(course.autograde_seconds[("alice", lesson)], 1) for lesson in LESSONS}
    write_json(TIMES_FILE, times)
    (TIMES_FILE.parent / "nbgrader.log").write_text("\n".join(course.log))
    print("\nautograde wall time of each solution (s):", json.dumps(times))
    return course


def _score(course, student, lesson):
    with Gradebook(f"sqlite:///{course.root / 'gradebook.db'}") as gradebook:
        return gradebook.find_submission(lesson, student).score


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_autogrades_to_full_marks(course, lesson):
    assert _score(course, "alice", lesson) == course.expected[("alice", lesson)] > 0


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_runs_within_the_lesson_budget(course, lesson):
    # autograde's own start-up (about 4 s) is included: the limit is on the whole run.
    seconds = course.autograde_seconds[("alice", lesson)]
    assert seconds < LESSON_BUDGET_SECONDS, f"{lesson} took {seconds:.0f} s to autograde"


@pytest.mark.parametrize("lesson", LESSONS)
def test_no_solution_grade_cell_writes_to_stderr(course, lesson):
    graded = course.autograded("alice", lesson)
    for cell in grade_cells(graded):
        for output in cell.outputs:
            assert output.output_type != "error", f"{nbgrader_meta(cell)['grade_id']}: {output.get('evalue')}"
            assert output.get("name") != "stderr", f"{nbgrader_meta(cell)['grade_id']} wrote to stderr: {output.text}"


@pytest.mark.parametrize("lesson", LESSONS)
def test_untouched_release_autogrades_to_zero(course, lesson):
    assert _score(course, "bob", lesson) == 0
    graded = course.autograded("bob", lesson)
    errors = [o.ename for c in grade_cells(graded) for o in c.outputs if o.output_type == "error"]
    assert errors and set(errors) <= {"AssertionError", "NameError"}, errors


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_broken_submission_loses_only_its_own_points(course, lesson):
    assert _score(course, "carol", lesson) == course.expected[("carol", lesson)]
    graded = course.autograded("carol", lesson)
    messages = "".join(o.get("evalue", "") for c in grade_cells(graded) for o in c.outputs)
    assert "did not return within" in messages
    # dave's kernel died: his notebook is not graded, the batch still finished for the others,
    # and his submission is still there.
    assert course.autograded("dave", lesson) is None
    assert notebook_path(course.root / "submitted" / "dave", lesson).exists()
    assert _score(course, "alice", lesson) == course.expected[("alice", lesson)]


@pytest.mark.parametrize("lesson", LESSONS)
def test_feedback_is_generated(course, lesson):
    for student in ("alice", "bob", "carol"):
        feedback = course.root / "feedback" / student / lesson / f"{lesson}.html"
        assert feedback.exists(), feedback
    assert "Score:" in (course.root / "feedback" / "alice" / lesson / f"{lesson}.html").read_text()


def test_export_writes_the_expected_grades(course):
    with open(course.root / "grades.csv", newline="") as handle:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(handle)}
    for (student, lesson), expected in course.expected.items():
        row = rows[(student, lesson)]
        assert float(row["raw_score"] or 0) == expected, (student, lesson, row)
        assert float(row["max_score"]) == course.expected[("alice", lesson)]


# --- the release is exactly nbgrader's output from the solution -------------------------------


def _cell_diff(expected_path, actual_path) -> str:
    expected = nbformat.read(expected_path, as_version=4)
    actual = nbformat.read(actual_path, as_version=4)
    lines = []
    if len(expected.cells) != len(actual.cells):
        lines.append(f"{len(actual.cells)} cells in notebooks/, {len(expected.cells)} generated")
    def as_lines(cell):  # the source line by line, then everything else as JSON
        rest = {key: value for key, value in cell.items() if key != "source"}
        return cell.source.splitlines() + json.dumps(rest, indent=1, sort_keys=True).splitlines()

    for i, (want, have) in enumerate(zip(expected.cells, actual.cells, strict=False)):
        a, b = as_lines(have), as_lines(want)
        if a != b:
            lines.append(f"--- cell {i} ({nbgrader_meta(want).get('grade_id', want.cell_type)})")
            lines += difflib.unified_diff(a, b, "notebooks/ (committed)", "generated", lineterm="", n=1)
    return "\n".join(lines)


@pytest.mark.parametrize("lesson", LESSONS)
def test_committed_release_is_what_make_release_generates(course, lesson):
    generated = notebook_path(course.root / "notebooks", lesson)
    committed = notebook_path(RELEASE, lesson)
    assert committed.exists(), f"{committed.relative_to(REPO)} is missing: run `make release`"
    if committed.read_bytes() != generated.read_bytes():
        pytest.fail(f"notebooks/ differs from `make release` output — run `make release`:\n"
                    f"{_cell_diff(generated, committed)}")


def test_every_solution_has_a_release_and_no_release_is_orphaned():
    assert LESSONS, "no lessons found in solutions/"
    released = sorted(p.name for p in RELEASE.iterdir() if p.is_dir())
    assert released == LESSONS


@pytest.mark.parametrize("lesson", LESSONS)
def test_release_has_no_solution_code_and_no_hidden_tests(lesson):
    text = notebook_path(RELEASE, lesson).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True"):
        assert marker not in text
    source = nbformat.read(notebook_path(SOLUTIONS, lesson), as_version=4)
    release = nbformat.read(notebook_path(RELEASE, lesson), as_version=4)
    released = {nbgrader_meta(c).get("grade_id"): c.source for c in release.cells}
    for cell in source.cells:
        if nbgrader_meta(cell).get("solution"):
            body = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
            kept = [line for line in body.splitlines() if line.strip() and line.strip() in released[nbgrader_meta(cell)["grade_id"]]]
            assert not kept, f"solution lines in the release: {kept}"
            assert "raise NotImplementedError()" in released[nbgrader_meta(cell)["grade_id"]]


@pytest.mark.parametrize("lesson", LESSONS)
def test_solutions_are_nbformat_45_and_setup_cells_are_locked(lesson):
    path = notebook_path(SOLUTIONS, lesson)
    source = nbformat.read(path, as_version=4)
    nbformat.validate(source)
    assert (source.nbformat, source.nbformat_minor) == (4, 5)
    assert all(cell.get("id") for cell in source.cells)
    for cell in source.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.outputs and cell.execution_count is None, "commit solutions without outputs"
        meta = nbgrader_meta(cell)
        assert meta.get("solution") or meta.get("locked"), f"unlocked code cell: {cell.source[:60]!r}"
    release = nbformat.read(notebook_path(RELEASE, lesson), as_version=4)
    for cell in release.cells:
        meta = nbgrader_meta(cell)
        if cell.cell_type == "code" and not meta.get("solution"):
            assert cell.metadata.get("editable") is False and cell.metadata.get("deletable") is False


@pytest.mark.parametrize("lesson", LESSONS)
def test_zip_collect_takes_submissions_downloaded_from_an_lms(course, lesson):
    release = nbformat.read(notebook_path(course.root / "notebooks", lesson), as_version=4)
    archive = course.root / "downloaded" / lesson / "archive"
    archive.mkdir(parents=True)
    with zipfile.ZipFile(archive / "submissions.zip", "w") as bundle:  # Canvas-style names
        bundle.writestr(f"erin_4711_99_{lesson}.ipynb", nbformat.writes(answered_like_the_solution(release, lesson)))
        bundle.writestr(f"frank_4712_98_{lesson}-1.ipynb", nbformat.writes(release))
    course.nbgrader("zip_collect", lesson, "--force")
    for student in ("erin", "frank"):
        assert notebook_path(course.root / "submitted" / student, lesson).exists(), student
