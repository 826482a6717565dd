"""What `make release` writes into every lesson (course_lib/release.py) is there, in every committed
solution and release, and a student's copy opens in JupyterLab without being marked modified.

A lesson merged without it fails here with the message to run `make release`.
"""

from __future__ import annotations

import json

import pytest

from course_lib import lesson, release, work

pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
from nbgrader_course import LESSONS, RELEASE, REPO, SOLUTIONS, notebook_path  # noqa: E402 - after the skip

COURSE = release.Course.from_pyproject(REPO / "pyproject.toml")


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_starts_with_the_course_setup_of_this_version(lesson):
    problems = release.missing_setup(release.read_notebook(notebook_path(SOLUTIONS, lesson)), lesson, COURSE)
    assert not problems, (
        f"solutions/{lesson} lacks the course's set-up ({'; '.join(problems)}): run `make release` and commit "
        "solutions/ and notebooks/"
    )


@pytest.mark.parametrize("lesson", LESSONS)
def test_release_is_normalised_and_carries_this_version(lesson):
    committed = release.read_notebook(notebook_path(RELEASE, lesson))
    assert release.normalise_release(committed, COURSE) == committed, (
        f"notebooks/{lesson} is not normalised for course_lib {COURSE.version}: run `make release`"
    )


@pytest.mark.parametrize("lesson", LESSONS)
def test_colab_link_is_there_exactly_when_the_repository_is_on_github(lesson):
    first = release.read_notebook(notebook_path(SOLUTIONS, lesson))["cells"][0]
    has_link = first.get("id") == release.LINK_CELL_ID
    assert has_link == (COURSE.colab_url(lesson) is not None)
    released_text = notebook_path(RELEASE, lesson).read_text()
    assert ("colab.research.google.com/github" in released_text) == has_link


def test_a_copy_in_work_carries_what_its_kernel_reports(tmp_path):
    """Does JupyterLab find nothing to write into a student's copy when its kernel starts?

    JupyterLab sets the notebook's ``language_info`` to the kernel's and its ``kernelspec`` to the
    kernel's spec, and marks the notebook modified unless each is deep-equal to what is there.
    """
    jupyter_client = pytest.importorskip("jupyter_client", reason="needs jupyter_client (the [lab] extra)")
    from jupyter_client.kernelspec import KernelSpecManager  # noqa: PLC0415

    lesson = LESSONS[0]
    work.update_work(RELEASE, tmp_path / "work")
    copy = release.read_notebook(notebook_path(tmp_path / "work", lesson))
    spec = KernelSpecManager().get_kernel_spec(copy["metadata"]["kernelspec"]["name"])
    assert copy["metadata"]["kernelspec"] == {
        "name": copy["metadata"]["kernelspec"]["name"], "display_name": spec.display_name, "language": spec.language,
    }
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        reply = client.kernel_info(reply=True, timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert copy["metadata"]["language_info"] == reply["content"]["language_info"]
    released = release.read_notebook(notebook_path(RELEASE, lesson))
    assert copy["cells"] == released["cells"]


def test_readme_times_are_the_shipped_measurements():
    times = json.loads((REPO / "course_lib" / "data" / lesson.TIMES_FILE).read_text())
    assert release.times_table(times) in (REPO / "README.md").read_text(), (
        "README.md's table of lesson times differs from course_lib/data/lesson_times.json: run `make lesson-times`"
    )
