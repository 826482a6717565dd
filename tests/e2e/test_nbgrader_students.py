"""nbgrader end to end with students who get things wrong, on a fixture assignment
(tests/e2e/fixture_course/solutions/99_fixture: softmax and attention_weights, checked by the
course's real checks, a few seconds to grade): generate, release, fetch, submit, collect,
zip_collect, autograde, generate_feedback, export — the real command line, a throw-away course.

Students, in the order nbgrader grades them (it sorts them by id):
  ada   — her softmax cell kills the kernel (os._exit): that cell scores 0 (and so does what needs
          her softmax), the rest of her notebook is graded in a new kernel; she is graded first, so
          everyone after her shows that the batch goes on.
  ben   — his attention_weights never returns: the check stops it, that exercise scores 0.
  cleo  — submits the release untouched: 0 points, every check says what is missing.
  dan   — softmax right, attention_weights without the 1/√d_k scale: softmax's points only.
  eve   — everything right: full marks, graded alone first (timed) and again in the batch.
From an LMS download (`zip_collect`, Canvas-style file names):
  fay   — everything right.
  gus   — a resubmission (`-1` in the name), dan's answers.
  hal   — everything right, downloaded from Colab and uploaded to the LMS as is: `Copy of …` in
          its name, Colab's metadata and kernelspec, nbformat 4.0 without cell ids.
ada and eve also hand in a notes.txt beside the notebook.
"""

from __future__ import annotations

import copy
import csv
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
pytest.importorskip("nbgrader", reason="needs nbgrader (the [lab] extra)")

from nbgrader_course import (  # noqa: E402 - after the skips above
    FIXTURE,
    FIXTURE_SOLUTIONS,
    FORGETS_THE_SCALE,
    HIDDEN_SALT,
    REPO,
    Course,
    answered,
    grade_cells,
    nbgrader_meta,
    notebook_path,
    solution_answers,
)

pytestmark = pytest.mark.nbgrader
SOURCE = notebook_path(FIXTURE_SOLUTIONS, FIXTURE)
FIXTURE_BUDGET_SECONDS = 60  # one student alone, nbgrader's start-up included: seconds, not minutes

_KILLS_THE_KERNEL = "\n\nimport os\n\nos._exit(1)  # the kernel dies here\n"
_NEVER_RETURNS = '''def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
    while True:  # waits for something that never comes
        pass
'''


def _answers(student: str) -> dict[str, str]:
    """What each student wrote in the solution cells, by grade id (none: the release as fetched)."""
    right = solution_answers(SOURCE)
    return {
        "ada": {**right, "softmax": right["softmax"] + _KILLS_THE_KERNEL},
        "ben": {**right, "attention_weights": _NEVER_RETURNS},
        "cleo": {},
        "dan": {**right, "attention_weights": FORGETS_THE_SCALE},
        "eve": right,
        "fay": right,
        "gus": {**right, "attention_weights": FORGETS_THE_SCALE},
        "hal": right,
    }[student]


def _as_colab_downloads_it(nb) -> str:
    """A notebook as Colab's "Download .ipynb" writes it: nbformat 4.0, no cell ids, Colab's metadata."""
    cells = [{k: v for k, v in cell.items() if k != "id"} for cell in nb.cells]
    metadata = {"colab": {"provenance": [], "name": f"Copy of {FIXTURE}.ipynb"}, "accelerator": "GPU",
                "kernelspec": {"name": "python3", "display_name": "Python 3"}, "language_info": {"name": "python"}}
    return json.dumps({"nbformat": 4, "nbformat_minor": 0, "metadata": metadata, "cells": cells})


EXCHANGE_STUDENTS = ("ada", "ben", "cleo", "dan", "eve")
LMS_FILES = {"fay": f"fay_4711_101_{FIXTURE}.ipynb", "gus": f"gus_4712_102_{FIXTURE}-1.ipynb",
             "hal": f"hal_4713_103_Copy of {FIXTURE}.ipynb"}
WITH_NOTES = ("ada", "eve")
PASSES = {  # the grade cells each student passes
    "ada": (), "ben": ("check_softmax",), "cleo": (), "dan": ("check_softmax",),
    "eve": ("check_softmax", "check_attention_weights"), "fay": ("check_softmax", "check_attention_weights"),
    "gus": ("check_softmax",), "hal": ("check_softmax", "check_attention_weights"),
}
GRADED = tuple(PASSES)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def course(tmp_path_factory, autograde_times):
    course = Course.create(tmp_path_factory.mktemp("fixture"), [FIXTURE], solutions=FIXTURE_SOLUTIONS)
    try:
        release = nbformat.read(course.generate(FIXTURE), as_version=4)
        course.points = {  # grade id -> points
            nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c)["points"]) for c in grade_cells(release)
        }
        course.nbgrader("release_assignment", FIXTURE)

        def work_and_submit(student):
            path = course.fetch(student, FIXTURE)
            nbformat.write(answered(nbformat.read(path, as_version=4), _answers(student)), path)
            if student in WITH_NOTES:
                (path.parent / "notes.txt").write_text(f"{student}'s notes on the exercise\n")
            course.submit(student, FIXTURE)

        with ThreadPoolExecutor(len(EXCHANGE_STUDENTS)) as students:  # all at once, as a class does
            list(students.map(work_and_submit, EXCHANGE_STUDENTS))
        course.nbgrader("collect", FIXTURE)

        archive = course.root / "downloaded" / FIXTURE / "archive"
        archive.mkdir(parents=True)
        with zipfile.ZipFile(archive / "submissions.zip", "w") as bundle:
            for student, name in LMS_FILES.items():
                notebook = answered(copy.deepcopy(release), _answers(student))
                bundle.writestr(name, _as_colab_downloads_it(notebook) if "Copy of" in name else nbformat.writes(notebook))
        course.nbgrader("zip_collect", FIXTURE, "--force")
        course.submitted_before = {s: _files(course.root / "submitted" / s) for s in PASSES}

        course.autograde("eve", FIXTURE)  # alone and timed
        course.eve_alone = course.score("eve", FIXTURE)
        start = time.perf_counter()
        course.batch = course.nbgrader("autograde", FIXTURE, "--force", check=False)  # everyone, in one batch
        batch_seconds = time.perf_counter() - start
        course.nbgrader("generate_feedback", FIXTURE)
        course.nbgrader("export", "--to", str(course.root / "grades.csv"))

        autograde_times[f"{FIXTURE}: one student alone"] = round(course.autograde_seconds[("eve", FIXTURE)], 1)
        per_student = round(batch_seconds / len(PASSES), 1)
        autograde_times[f"{FIXTURE}: batch of {len(PASSES)} (a 10 s hang included), per student"] = per_student
        yield course
    finally:  # the log of every nbgrader command, for when something went wrong
        course.write_log(REPO / "build" / f"nbgrader-{FIXTURE}.log")


def _expected(course, student) -> float:
    return sum(course.points[grade_id] for grade_id in PASSES[student])


def _errors(course, student) -> dict[str, str]:
    """Each failed grade cell of a student's autograded notebook: grade id -> "Error: message"."""
    graded = course.autograded(student, FIXTURE)
    return {
        nbgrader_meta(cell)["grade_id"]: f"{output.ename}: {output.evalue}"
        for cell in grade_cells(graded)
        for output in cell.outputs
        if output.output_type == "error"
    }


@pytest.mark.parametrize("student", GRADED)
def test_each_student_gets_the_points_of_the_exercises_they_solved(course, student):
    assert course.score(student, FIXTURE) == _expected(course, student)
    assert set(_errors(course, student)) == set(course.points) - set(PASSES[student])


def test_a_correct_submission_gets_full_marks_alone_and_in_the_batch(course):
    full_marks = sum(course.points.values())
    assert full_marks > 0
    assert course.eve_alone == course.score("eve", FIXTURE) == full_marks


def test_an_untouched_release_gets_zero_and_every_check_says_why(course):
    errors = _errors(course, "cleo")
    assert set(errors) == set(course.points)
    assert all(e.startswith("CheckFailed") and "NotImplementedError" in e for e in errors.values()), errors


def test_a_wrong_exercise_loses_its_own_points_with_the_check_s_message(course):
    error = _errors(course, "dan")["check_attention_weights"]
    assert error.startswith("CheckFailed: check_attention_weights"), error


def test_a_function_that_never_returns_is_stopped_by_its_check(course):
    error = _errors(course, "ben")["check_attention_weights"]
    assert error.startswith("CheckFailed") and "did not return within" in error, error


def test_a_kernel_that_dies_costs_only_its_own_cell(course):
    """Does one student's dead kernel stop her notebook, the batch, or cost anyone else a point?"""
    graded = course.autograded("ada", FIXTURE)
    assert graded is not None
    killer = next(c for c in graded.cells if nbgrader_meta(c).get("grade_id") == "softmax")
    assert [o.ename for o in killer.outputs if o.output_type == "error"] == ["KernelDied"]
    assert course.score("ada", FIXTURE) == 0  # her softmax never got defined; nothing else is lost
    assert course.batch.returncode == 0, course.batch.stderr[-3000:]
    log = course.batch.stderr  # ada came first, all the others were graded after her
    first_seen = {s: log.find(f"/submitted/{s}/") for s in PASSES}
    assert all(first_seen[s] >= 0 for s in PASSES), first_seen
    assert sorted(PASSES, key=first_seen.get)[0] == "ada", first_seen
    for student in GRADED:
        assert course.autograded(student, FIXTURE) is not None, student


def test_no_submitted_file_is_lost_or_changed(course):
    """Is every file a student handed in still there, byte for byte, after a batch with failures?"""
    for student in PASSES:
        assert _files(course.root / "submitted" / student) == course.submitted_before[student], student
    for student in EXCHANGE_STUDENTS:  # what collect took is what the student had
        handed_in = _files(course.students_root / student / FIXTURE)
        collected = _files(course.root / "submitted" / student / FIXTURE)
        assert {name: collected.get(name) for name in handed_in} == handed_in, student
    for student in WITH_NOTES:
        assert (course.root / "submitted" / student / FIXTURE / "notes.txt").exists()
    assert (course.root / "autograded" / "eve" / FIXTURE / "notes.txt").exists()


def test_zip_collect_takes_lms_file_names(course):
    for student in LMS_FILES:
        assert notebook_path(course.root / "submitted" / student, FIXTURE).exists(), student


def test_feedback_for_every_graded_student_shows_their_score(course):
    for student in GRADED:
        feedback = notebook_path(course.root / "feedback" / student, FIXTURE).with_suffix(".html")
        assert feedback.exists(), feedback
        total = sum(course.points.values())
        assert f"Score: {_expected(course, student):.1f} / {total:.1f}" in feedback.read_text(), student


def test_export_writes_the_expected_grades(course):
    with open(course.root / "grades.csv", newline="") as handle:
        rows = {r["student_id"]: r for r in csv.DictReader(handle) if r["assignment"] == FIXTURE}
    assert set(rows) == set(PASSES)
    for student, row in rows.items():
        assert float(row["raw_score"] or 0) == _expected(course, student), (student, row)
        assert float(row["max_score"]) == sum(course.points.values())


def test_one_student_autogrades_in_seconds(course):
    seconds = course.autograde_seconds[("eve", FIXTURE)]
    assert seconds < FIXTURE_BUDGET_SECONDS, f"the fixture took {seconds:.0f} s to autograde"


def test_feedback_names_every_test_and_shows_no_hidden_test_code(course):
    """Does the feedback say how each hidden check went, without its code, seed or the salt?"""
    for student in PASSES:
        html = notebook_path(course.root / "feedback" / student, FIXTURE).with_suffix(".html").read_text()
        assert "hidden=True" not in html and "seed=" not in html and HIDDEN_SALT not in html, student
        assert html.count("and 1 hidden check") == len(course.points), student
    dan = notebook_path(course.root / "feedback" / "dan", FIXTURE).with_suffix(".html").read_text()
    assert "check_attention_weights: case" in dan  # the failing check's own message
