"""The release students get (notebooks/) is exactly nbgrader's output from the solutions, and gives
nothing away: checked statically on every lesson, without running a notebook.

Fast (about 3 s a lesson, for `nbgrader generate_assignment`): not behind the `nbgrader` marker.
"""

from __future__ import annotations

import ast
import difflib
import json

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
pytest.importorskip("nbgrader", reason="needs nbgrader (the [lab] extra)")

from nbgrader_course import (  # noqa: E402 - after the skips above
    LESSONS,
    RELEASE,
    REPO,
    SOLUTIONS,
    OncePerLesson,
    checked_names,
    grade_cells,
    nbgrader_meta,
    notebook_path,
    without_hidden_tests,
)


def _read(folder, lesson):
    return nbformat.read(notebook_path(folder, lesson), as_version=4)


def test_every_solution_has_a_release_and_no_release_is_orphaned():
    assert LESSONS, "no lessons found in solutions/"
    released = sorted(p.name for p in RELEASE.iterdir() if p.is_dir())
    assert released == LESSONS


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
    if not lines:
        lines.append("the cells are the same: the notebook's metadata or its JSON layout differs")
    return "\n".join(lines)


@pytest.mark.parametrize("lesson", LESSONS)
def test_committed_release_is_what_make_release_generates(lesson_courses, lesson):
    generated = notebook_path(lesson_courses.generated(lesson).root / "notebooks", lesson)
    committed = notebook_path(RELEASE, lesson)
    assert committed.exists(), f"{committed.relative_to(REPO)} is missing: run `make release`"
    if committed.read_bytes() != generated.read_bytes():
        pytest.fail(f"notebooks/ differs from `make release` output — run `make release`:\n"
                    f"{_cell_diff(generated, committed)}")


# --- what the release gives away, and what it keeps ---------------------------------------------


@pytest.mark.parametrize("lesson", LESSONS)
def test_release_has_no_solution_code_and_no_hidden_tests(lesson):
    text = notebook_path(RELEASE, lesson).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True"):
        assert marker not in text
    released = {nbgrader_meta(c).get("grade_id"): c.source for c in _read(RELEASE, lesson).cells}
    for cell in _read(SOLUTIONS, lesson).cells:
        if nbgrader_meta(cell).get("solution"):
            body = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
            stub = released[nbgrader_meta(cell)["grade_id"]]
            kept = [line for line in body.splitlines() if line.strip() and line.strip() in stub]
            assert not kept, f"solution lines in the release: {kept}"


def _raises_before_returning(body: list[ast.stmt]) -> bool:
    """Does this body reach `raise NotImplementedError` at its own level, with no `return` before it?"""
    for statement in body:
        if isinstance(statement, ast.Raise) and statement.exc is not None:
            raised = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
            if isinstance(raised, ast.Name) and raised.id == "NotImplementedError":
                return True
        if any(isinstance(node, (ast.Return, ast.Yield)) for node in ast.walk(statement)):
            return False
    return False


def _definitions(nb) -> dict[str, tuple[ast.stmt, bool]]:
    """Every top-level function or class the notebook defines: its node, and whether a solution cell
    (the student's) defines it."""
    found = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics: not where graded functions live
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found[node.name] = (node, bool(nbgrader_meta(cell).get("solution")))
    return found


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_graded_function_in_the_release_raises_not_implemented(lesson):
    """Is every function a grade cell checks the student's to write, and a stub until they do?

    A class (a module exercise) counts as a stub when one of its methods is.
    """
    release, solution = _read(RELEASE, lesson), _read(SOLUTIONS, lesson)
    in_release, in_solution = _definitions(release), _definitions(solution)
    graded = [name for cell in grade_cells(release) for name in checked_names(cell.source)]
    assert graded, "no grade cell checks a function"
    for name in graded:
        assert name in in_release, f"{name} is checked but never defined in the release"
        node, in_solution_cell = in_release[name]
        assert in_solution_cell, f"{name} is checked, but the release defines it outside a solution cell"
        assert _is_a_stub(node), f"{name} in the release does not raise NotImplementedError"
        # The same reading of the solution finds working code: the test tells the two apart.
        assert not _is_a_stub(in_solution[name][0]), f"{name} in the solution looks like a stub"


def _is_a_stub(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef):
        return _raises_before_returning(node.body)
    return any(_raises_before_returning(m.body) for m in node.body if isinstance(m, ast.FunctionDef))


@pytest.mark.parametrize("lesson", LESSONS)
def test_grade_cells_are_the_solutions_minus_hidden_tests_and_locked(lesson):
    """Does every grade cell reach students as written, less its hidden tests, visible and locked?"""
    source_cells = {nbgrader_meta(c)["grade_id"]: c for c in grade_cells(_read(SOLUTIONS, lesson))}
    release_cells = {nbgrader_meta(c)["grade_id"]: c for c in grade_cells(_read(RELEASE, lesson))}
    assert list(release_cells) == list(source_cells)
    for grade_id, source in source_cells.items():
        released = release_cells[grade_id]
        assert released.source == without_hidden_tests(source.source), grade_id
        assert checked_names(released.source), f"{grade_id}: no public check left for the student to run"
        meta = nbgrader_meta(released)
        assert meta.get("points") == nbgrader_meta(source).get("points"), grade_id
        assert meta.get("locked") is True, grade_id
        assert released.metadata.get("editable") is False and released.metadata.get("deletable") is False


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
    for cell in _read(RELEASE, lesson).cells:
        meta = nbgrader_meta(cell)
        if cell.cell_type == "code" and not meta.get("solution"):
            assert cell.metadata.get("editable") is False and cell.metadata.get("deletable") is False


def test_a_lesson_whose_setup_fails_fails_alone():
    """Does one lesson's failed nbgrader step reach that lesson's tests, and only theirs, once?"""
    calls = []

    def build(lesson):
        calls.append(lesson)
        if lesson == "01_broken":
            raise AssertionError("nbgrader generate_assignment 01_broken failed")
        return f"course of {lesson}"

    once = OncePerLesson(build)
    for _ in range(2):
        with pytest.raises(AssertionError, match="01_broken failed"):
            once("01_broken")
        assert once("02_fine") == "course of 02_fine"
    assert calls == ["01_broken", "02_fine"]
