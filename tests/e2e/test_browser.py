"""A student's first session, in a real browser: `make lab` copies the lessons into work/ and starts
JupyterLab; the student opens lesson 05, has written exercise 1 but not yet exercise 2, runs all
cells, reads what the checks say, and moves the d_k slider. nbgrader's student tools (Validate, the
Assignment List) are there; its instructor tools (Formgrader, Create Assignment, Course List) are not.

Needs Debian's chromium (/usr/bin/chromium) and PyPI's playwright; skipped when either is missing.
`make lab` runs in a copy of the course, so a real work/ folder is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")

from nbgrader_course import (  # noqa: E402 - after the skips above
    REPO,
    SOLUTIONS,
    nbgrader_meta,
    notebook_path,
    without_solution_markers,
)

CHROMIUM = Path("/usr/bin/chromium")
LESSON = "05_scaled_dot_product"
ENV_STAMP = Path(sys.prefix) / ".installed"  # written by the Makefile's install step

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
    pytest.mark.skipif(
        not ENV_STAMP.exists() or ENV_STAMP.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime,
        reason="needs the Makefile's up-to-date .venv (run through `make test`)",
    ),
]
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer at {url} within {seconds:.0f} s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` in a copy of the course (sharing this environment), on a free port."""
    root = tmp_path_factory.mktemp("student") / "course"
    root.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md", "nbgrader_config.py"):
        shutil.copy2(REPO / name, root / name)  # copy2 keeps mtimes: make sees nothing to reinstall
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "lab_config", root / "lab_config")
    (root / ".venv").symlink_to(sys.prefix)
    settings = root / "lab-settings" / "@jupyterlab"
    for extension, name, values in (
        ("apputils-extension", "notification", '{"fetchNews": "false", "checkForUpdates": false}'),
        ("notebook-extension", "tracker", '{"windowingMode": "none"}'),  # every cell in the DOM
    ):
        (settings / extension).mkdir(parents=True)
        (settings / extension / f"{name}.jupyterlab-settings").write_text(values)
    port = _free_port()
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token= --ServerApp.password="
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(root / "lab-settings"))
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        ["make", "lab", f"LAB_ARGS={args}"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status", 90)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_make_lab_copies_the_lessons_once(lab):
    root, _ = lab
    copied = notebook_path(root / "work", LESSON)
    mine, released = (json.loads(p.read_text()) for p in (copied, notebook_path(root / "notebooks", LESSON)))
    assert mine["cells"] == released["cells"]
    # course_lib/work.py adds what the kernel reports that the release cannot know: this Python's version
    assert mine["metadata"]["language_info"] == dict(released["metadata"]["language_info"], version=sys.version.split()[0])
    copied.write_text(copied.read_text().replace("Scaled dot-product", "My edited copy of"))
    subprocess.run(["make", "-s", "lab", "LAB_ARGS=--version"], cwd=root, check=True, capture_output=True)
    assert "My edited copy of" in copied.read_text()  # a second `make lab` keeps the student's work


def test_the_instructor_s_server_pages_are_not_served_but_the_student_s_are(lab):
    _, url = lab
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/formgrader", timeout=30)
    assert refused.value.code == 404
    # The Assignment List's server side answers (here: that no exchange is set up).
    with urllib.request.urlopen(f"{url}/assignments?course_id=attention-course", timeout=30) as response:
        assert "success" in json.loads(response.read())


def test_a_student_sees_validate_and_assignments_but_no_instructor_tools(lab):
    """Would a student find Formgrader, Create Assignment or the Course List in `make lab`'s JupyterLab?"""
    _, url = lab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{LESSON}/{LESSON}.ipynb")
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
            page.locator(".jp-NotebookPanel-toolbar").get_by_text("Validate", exact=True).wait_for(timeout=30_000)
            # Opening it marked nothing modified: the copy already carries what the kernel reports.
            page.wait_for_timeout(2_000)
            assert page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count() == 0
            sidebar_tabs = page.locator(".jp-SideBar .lm-TabBar-tab")
            sidebar_tabs.first.wait_for(timeout=30_000)
            titles = [tab.get_attribute("title") or "" for tab in sidebar_tabs.all()]
            assert titles and not [t for t in titles if "Create Assignment" in t], titles

            page.get_by_role("menuitem", name="Nbgrader", exact=True).click()
            entries = page.locator(".lm-Menu .lm-Menu-item:visible .lm-Menu-itemLabel")
            entries.first.wait_for(timeout=10_000)
            labels = entries.all_inner_texts()
            assert "Assignment List" in labels, labels
            assert not [label for label in labels if any(w in label for w in ("Formgrader", "Create", "Course List"))], labels
            page.get_by_role("menuitem", name="Assignment List", exact=True).click()
            page.locator(".lm-TabBar-tab", has_text="Assignments").wait_for(timeout=30_000)
        except Exception:
            page.screenshot(path=str(REPO / "build" / "browser-nbgrader-failure.png"), full_page=False)
            raise
        finally:
            browser.close()


def _write_first_exercise(path: Path) -> None:
    """The student has typed exercise 1 (softmax) and nothing else yet."""
    solution = nbformat.read(notebook_path(SOLUTIONS, LESSON), as_version=4)
    answer = next(c.source for c in solution.cells if nbgrader_meta(c).get("grade_id") == "softmax")
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if nbgrader_meta(cell).get("grade_id") == "softmax":
            cell.source = without_solution_markers(answer)
    nbformat.write(notebook, path)


def test_a_student_runs_lesson_05_and_moves_the_slider(lab):
    root, url = lab
    _write_first_exercise(notebook_path(root / "work", LESSON))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{LESSON}/{LESSON}.ipynb")
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
            page.locator(".jp-CodeCell").first.click()  # focus the notebook, as a person would
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            outputs = page.locator(".jp-OutputArea-output")
            outputs.filter(has_text="✓ check_softmax passed").wait_for(timeout=120_000)
            failure = outputs.filter(has_text="check_attention_weights: case")
            failure.wait_for(timeout=120_000)
            assert "still raises NotImplementedError" in failure.inner_text()

            slider = page.locator(".widget-slider").first
            image = page.locator(".widget-output img").first
            slider.scroll_into_view_if_needed()
            before = image.get_attribute("src")
            slider.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "before => document.querySelector('.widget-output img')?.src !== before", arg=before,
                timeout=30_000,
            )
            assert "512" in slider.inner_text()
            slider.screenshot(path=str(REPO / "build" / "browser-slider.png"))
            page.locator(".jp-Cell", has=failure).screenshot(path=str(REPO / "build" / "browser-check.png"))
        except Exception:
            page.screenshot(path=str(REPO / "build" / "browser-failure.png"), full_page=False)
            raise
        finally:
            browser.close()
