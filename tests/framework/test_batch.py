"""The batch grader's bookkeeping: which submitted notebook is which, and when a submission changed."""

from __future__ import annotations

import json

from course_lib.grading.batch import matched_notebooks, submission_checksum


def _notebook(path, grade_ids):
    cells = [{"cell_type": "code", "source": "", "metadata": {"nbgrader": {"grade_id": g}}} for g in grade_ids]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 0}))
    return path


def test_a_notebook_renamed_by_colab_is_matched_by_its_cell_ids(tmp_path):
    source, submission = tmp_path / "source", tmp_path / "submission"
    source.mkdir(), submission.mkdir()
    _notebook(source / "05_x.ipynb", ["setup", "softmax", "check_softmax"])
    copy = _notebook(submission / "Copy of 05_x.ipynb", ["setup", "softmax", "check_softmax", "extra"])
    stranger = _notebook(submission / "scratch.ipynb", ["softmax"])  # not the assignment's cells
    assert matched_notebooks(submission, source) == {copy: "05_x.ipynb"}
    assert stranger not in matched_notebooks(submission, source)


def test_a_notebook_under_its_own_name_wins_over_a_copy(tmp_path):
    source, submission = tmp_path / "source", tmp_path / "submission"
    source.mkdir(), submission.mkdir()
    _notebook(source / "05_x.ipynb", ["check_softmax"])
    own = _notebook(submission / "05_x.ipynb", ["check_softmax"])
    _notebook(submission / "Copy of 05_x.ipynb", ["check_softmax"])
    assert matched_notebooks(submission, source) == {own: "05_x.ipynb"}


def test_the_checksum_changes_with_any_file_of_the_submission(tmp_path):
    (tmp_path / "05_x.ipynb").write_text("a")
    before = submission_checksum(tmp_path)
    assert submission_checksum(tmp_path) == before
    (tmp_path / "notes.txt").write_text("b")
    assert submission_checksum(tmp_path) != before
