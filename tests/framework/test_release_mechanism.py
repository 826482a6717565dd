"""course_lib.release (what `make release` writes into every lesson), course_lib.lesson (what the set-up
cell prints) and course_lib.work (what `make lab` says about a student's copies), on small notebooks
built here. The committed lessons themselves are held to it in tests/e2e/test_release_setup.py."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from course_lib import lesson, release, work

PUBLISHED = release.Course(version="0.3.0", repository="https://github.com/someone/attention-course")
UNPUBLISHED = release.Course(version="0.3.0", repository=None)
LESSON = "42_example"


def _notebook(*sources: str) -> dict:
    cells = [
        {"cell_type": "markdown", "id": "title", "metadata": {}, "source": ["# 42 · Example"]},
        *({"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
           "source": release._lines(text)} for i, text in enumerate(sources)),
    ]
    metadata = {"kernelspec": dict(release.KERNELSPEC), "language_info": {"name": "python"}}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


# --- the version and the address come from pyproject.toml alone ------------------------------------


def test_course_reads_version_and_repository_from_pyproject(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\nversion = "1.2.3"\n')
    assert release.Course.from_pyproject(path) == release.Course("1.2.3", None)
    path.write_text('[project]\nversion = "1.2.3"\n[project.urls]\nRepository = "https://github.com/a/b.git/"\n')
    course = release.Course.from_pyproject(path)
    assert course.github == "a/b"
    assert course.colab_url("05_x") == "https://colab.research.google.com/github/a/b/blob/v1.2.3/notebooks/05_x/05_x.ipynb"
    assert course.pip_requirement() == "course_lib @ git+https://github.com/a/b.git@v1.2.3"


def test_the_repository_s_own_pyproject_gives_the_installed_version():
    course = release.Course.from_pyproject(Path(__file__).resolve().parents[2] / "pyproject.toml")
    assert course.version == lesson.installed_version()


# --- the solution's first cells ----------------------------------------------------------------------


def test_prepare_puts_the_link_and_the_setup_cell_first_and_is_idempotent():
    nb = _notebook("x = 1")
    once = release.prepare_solution(nb, LESSON, PUBLISHED)
    assert [c["id"] for c in once["cells"]] == [release.LINK_CELL_ID, release.SETUP_CELL_ID, "title", "c0"]
    assert "colab.research.google.com/github/someone/attention-course/blob/v0.3.0/notebooks/42_example" in (
        "".join(once["cells"][0]["source"]))
    setup = once["cells"][1]
    assert setup["metadata"]["nbgrader"]["locked"] is True and not setup["metadata"]["nbgrader"]["solution"]
    assert once["metadata"]["course"] == {"lesson": LESSON, "version": "0.3.0"}
    assert release.prepare_solution(once, LESSON, PUBLISHED) == once
    assert release.missing_setup(once, LESSON, PUBLISHED) == []


def test_no_address_no_link_and_a_new_version_rewrites_the_cells():
    published = release.prepare_solution(_notebook("x = 1"), LESSON, PUBLISHED)
    unpublished = release.prepare_solution(published, LESSON, UNPUBLISHED)
    assert [c["id"] for c in unpublished["cells"]] == [release.SETUP_CELL_ID, "title", "c0"]
    assert "colab.research.google.com/github" not in json.dumps(unpublished)
    newer = release.prepare_solution(unpublished, LESSON, release.Course("0.4.0", None))
    assert 'released_with="0.4.0"' in "".join(newer["cells"][0]["source"])
    assert release.missing_setup(unpublished, LESSON, release.Course("0.4.0", None))


def test_missing_setup_names_what_a_solution_lacks():
    problems = release.missing_setup(_notebook("x = 1"), LESSON, UNPUBLISHED)
    assert any(release.SETUP_CELL_ID in p for p in problems) and any("metadata.course" in p for p in problems)


# --- the set-up cell, run as a notebook would run it ------------------------------------------------


def _run_setup_cell(course: release.Course, monkeypatch, capsys, on_colab: bool) -> tuple[list, str]:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append(command))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    source = release.setup_cell_source(course, "05_scaled_dot_product")
    exec(compile(source, "set-up cell", "exec"), {})  # noqa: S102 - the cell's own code, as the kernel runs it
    return calls, capsys.readouterr().out


def test_setup_cell_off_colab_installs_nothing_and_says_version_and_device(monkeypatch, capsys):
    installed = lesson.installed_version()
    calls, out = _run_setup_cell(release.Course(installed, PUBLISHED.repository), monkeypatch, capsys, on_colab=False)
    assert calls == []
    assert f"course_lib {installed}, the version this notebook was released with." in out
    assert ("No GPU found" in out) != torch.cuda.is_available()


def test_setup_cell_on_colab_installs_the_tagged_version_and_pins_colab_s_torch(monkeypatch, capsys):
    from importlib import metadata

    calls, out = _run_setup_cell(PUBLISHED, monkeypatch, capsys, on_colab=True)
    assert calls == [[
        sys.executable, "-m", "pip", "install", "--quiet",
        "course_lib @ git+https://github.com/someone/attention-course@v0.3.0",
        f"torch=={metadata.version('torch')}", f"ipywidgets=={metadata.version('ipywidgets')}",
    ]]
    assert "WARNING: this notebook was released with course_lib 0.3.0" in out  # the fake install did nothing


def test_setup_cell_on_colab_without_an_address_says_what_to_do(monkeypatch, capsys):
    with pytest.raises(RuntimeError, match="names no repository to install course_lib from"):
        _run_setup_cell(UNPUBLISHED, monkeypatch, capsys, on_colab=True)


def test_setup_cell_on_colab_with_the_version_installed_installs_nothing(monkeypatch, capsys):
    calls, _ = _run_setup_cell(release.Course(lesson.installed_version(), None), monkeypatch, capsys, on_colab=True)
    assert calls == []


# --- the lines start_lesson prints ----------------------------------------------------------------


def test_version_line_warns_only_on_another_version():
    assert lesson.version_line("0.1.0", "0.1.0") == "course_lib 0.1.0, the version this notebook was released with."
    assert lesson.version_line("0.1.0", "0.2.0").startswith("WARNING: this notebook was released with course_lib 0.1.0")
    assert "version is unknown" in lesson.version_line("0.1.0", None)


def test_device_line_gives_the_measured_minutes_of_the_device_it_runs_on():
    times = {"cpu": (150.0, "2 CPU cores")}
    cpu = torch.device("cpu")
    if not torch.cuda.is_available():
        assert lesson.device_line("x", cpu, times) == (
            "No GPU found: this lesson runs on the CPU, about 2 minutes (2 CPU cores).")
        assert lesson.device_line("x", cpu, {"cpu": (20.0, "m")}).endswith("about 1 minute (m).")
        assert lesson.device_line("x", cpu, {}).endswith("its run time has not been measured yet.")
    assert "not timed on this kind of device" in lesson.device_line("x", torch.device("mps"), times)


def test_every_time_shipped_is_a_lesson_s_positive_seconds():
    data = json.loads((Path(lesson.__file__).parent / "data" / lesson.TIMES_FILE).read_text())
    for kind, entry in data.items():
        assert kind in ("cpu", "cuda") and entry["machine"]
        assert all(seconds > 0 for seconds in entry["seconds"].values())


def test_record_times_merges_one_machine_and_replaces_another(tmp_path):
    shipped, measured = tmp_path / "times.json", tmp_path / "run.json"
    measured.write_text(json.dumps({"device": "cpu", "machine": "A", "seconds": {"05_x": 40.04, "07_y": 30}}))
    release.record_times(measured, shipped)
    measured.write_text(json.dumps({"device": "cpu", "machine": "A", "seconds": {"07_y": 31}}))
    assert release.record_times(measured, shipped) == {"cpu": {"machine": "A", "seconds": {"05_x": 40.0, "07_y": 31}}}
    measured.write_text(json.dumps({"device": "cpu", "machine": "B", "seconds": {"08_z": 9}}))
    assert release.record_times(measured, shipped)["cpu"] == {"machine": "B", "seconds": {"08_z": 9}}


# --- the release's normalisation, and what `make lab` tells a student --------------------------------


def test_normalised_release_carries_what_the_kernel_writes_and_a_digest_of_its_cells():
    nb = release.normalise_release(_notebook("x = 1"), PUBLISHED)
    assert nb["metadata"]["language_info"] == release.PYTHON_LANGUAGE_INFO
    assert nb["metadata"]["course"]["version"] == "0.3.0"
    assert release.normalise_release(nb, PUBLISHED) == nb
    changed = _notebook("x = 2")
    assert release.normalise_release(changed, PUBLISHED)["metadata"]["course"]["release"] != (
        nb["metadata"]["course"]["release"])


def _write(folder: Path, nb: dict) -> None:
    (folder / LESSON).mkdir(parents=True, exist_ok=True)
    (folder / LESSON / f"{LESSON}.ipynb").write_text(release.notebook_text(nb))


def test_work_copies_a_lesson_once_and_names_a_newer_release(tmp_path):
    notebooks, student = tmp_path / "notebooks", tmp_path / "work"
    _write(notebooks, release.normalise_release(_notebook("x = 1"), UNPUBLISHED))
    assert work.update_work(notebooks, student) == [f"copied {LESSON} into work/"]
    mine = student / LESSON / f"{LESSON}.ipynb"
    mine.write_text(mine.read_text().replace("x = 1", "x = 1  # my answer"))
    assert work.update_work(notebooks, student) == []  # the same release: nothing to say

    erratum = release.normalise_release(_notebook("x = 1", "y = 2"), release.Course("0.3.1", None))
    _write(notebooks, erratum)
    (message,) = work.update_work(notebooks, student)
    fresh = f"{student / LESSON / LESSON}-0.3.1-{erratum['metadata']['course']['release'][:8]}.ipynb"
    assert message.startswith(f"{LESSON}: notebooks/ holds a newer release (course 0.3.1) than your copy in work/ (course 0.3.0)")
    assert message.endswith(f"cp {notebooks / LESSON / LESSON}.ipynb {fresh}")
    assert "# my answer" in mine.read_text()  # never overwritten
    Path(fresh).write_text(release.notebook_text(erratum))
    (message,) = work.update_work(notebooks, student)
    assert message.endswith(f"a fresh copy is already beside it: {fresh}")


def test_work_main_prints_what_make_lab_shows(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    _write(notebooks, release.normalise_release(_notebook("x = 1"), UNPUBLISHED))
    work.main([str(notebooks), str(tmp_path / "work")])
    assert capsys.readouterr().out == f"copied {LESSON} into work/\n"
    copy = json.loads((tmp_path / "work" / LESSON / f"{LESSON}.ipynb").read_text())
    assert copy["metadata"]["language_info"] == dict(release.PYTHON_LANGUAGE_INFO, version=sys.version.split()[0])


def test_times_table_rows_and_readme_rewrite(tmp_path):
    table = {"cpu": {"machine": "2 CPU cores", "seconds": {"05_x": 32.2, "07_y": 54.0}},
             "cuda": {"machine": "NVIDIA H200", "seconds": {"05_x": 17.0}}}
    text = release.times_table(table)
    assert "| lesson | CPU (2 CPU cores) | GPU (NVIDIA H200) |" in text
    assert "| 05_x | 32 s | 17 s |" in text and "| 07_y | 54 s | – |" in text
    assert "GPU (not measured)" in release.times_table({"cpu": table["cpu"]})
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{release.README_TIMES[0]}\nold rows\n{release.README_TIMES[1]}\nafter\n")
    release.write_readme_times(readme, table)
    assert readme.read_text() == f"before\n{text}\nafter\n"
