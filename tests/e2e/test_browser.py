"""A student's first session, in a real browser: `make lab` copies the lessons into work/ and starts
JupyterLab; the student opens lesson 05, has written exercise 1 but not yet exercise 2, runs all
cells, reads what the checks say, and moves the d_k slider. nbgrader's student tools (Validate, the
Assignment List) are there; its instructor tools (Formgrader, Create Assignment, Course List) are not.
In lesson 08 the student, with exercise 1 written, runs all cells and steps through the tile stepper.

Needs Debian's chromium (/usr/bin/chromium) and PyPI's playwright; skipped when either is missing.
`make lab` runs in a copy of the course, so a real work/ folder is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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
FLASH_LESSON = "08_flash_attention"
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


@contextlib.contextmanager
def _student_page(failure_screenshot: str) -> Iterator[object]:
    """A page of Chromium, as a student's browser; where the test fails on it, a screenshot in build/."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield page
        except Exception:
            page.screenshot(path=str(REPO / "build" / failure_screenshot), full_page=False)
            raise
        finally:
            browser.close()


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
    env = dict(
        os.environ, JUPYTERLAB_SETTINGS_DIR=str(root / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(root / "lab-workspaces"),  # no tab left open by an earlier run
    )
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
    with _student_page("browser-nbgrader-failure.png") as page:
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


def _write_first_exercise(path: Path, lesson: str = LESSON, grade_id: str = "softmax") -> None:
    """The student has typed exercise 1 (its solution cell `grade_id`) and nothing else yet."""
    solution = nbformat.read(notebook_path(SOLUTIONS, lesson), as_version=4)
    answer = next(c.source for c in solution.cells if nbgrader_meta(c).get("grade_id") == grade_id)
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if nbgrader_meta(cell).get("grade_id") == grade_id:
            cell.source = without_solution_markers(answer)
    nbformat.write(notebook, path)


def _open_and_run_all(page, url: str, lesson: str) -> None:
    page.goto(f"{url}/lab/tree/{lesson}/{lesson}.ipynb?reset")  # ?reset: only this lesson's tab, none restored
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
    page.locator(".jp-CodeCell").first.click()  # focus the notebook, as a person would
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def test_a_student_runs_lesson_05_and_moves_the_slider(lab):
    root, url = lab
    _write_first_exercise(notebook_path(root / "work", LESSON))
    with _student_page("browser-failure.png") as page:
        _open_and_run_all(page, url, LESSON)

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


# The stepper's figure as a data: URL, once a loaded PNG other than `before` is shown; else null.
_NEW_FIGURE = """([box, before]) => {
    const img = box.querySelector(".widget-output img");
    return img && img.complete && img.naturalWidth > 600 && img.src.startsWith("data:image/png;base64,")
        && img.src !== before ? img.src : null;
}"""
# Records, in window.stepperProblems, every error or stderr output that the cell's output area shows,
# even one that a later redraw clears.
_WATCH_FOR_ERRORS = """area => {
    const problems = window.stepperProblems = [];
    const check = node => {
        if (node.nodeType !== Node.ELEMENT_NODE) return;
        const stderr = node.matches("[data-mime-type*='stderr'], [data-mime-type*='error']")
            || node.querySelector("[data-mime-type*='stderr'], [data-mime-type*='error']");
        if (stderr || /Traceback|Error/.test(node.textContent)) problems.push(node.textContent.slice(0, 2000));
    };
    check(area);
    new MutationObserver(records => {
        for (const record of records) record.addedNodes.forEach(check);
        check(area);
    }).observe(area, {childList: true, subtree: true, characterData: true});
}"""


def test_a_student_runs_lesson_08_and_steps_through_the_tiles(lab):
    """The tile stepper redraws for every number of key blocks seen: a different figure for each, the
    same figure again when the student steps back, and no error in its output."""
    root, url = lab
    _write_first_exercise(notebook_path(root / "work", FLASH_LESSON), FLASH_LESSON, "online_softmax_stats")
    with _student_page("browser-tile-stepper-failure.png") as page:
        _open_and_run_all(page, url, FLASH_LESSON)

        outputs = page.locator(".jp-OutputArea-output")
        outputs.filter(has_text="check_online_softmax_stats passed").wait_for(timeout=120_000)
        # Run All stops at exercise 2's check, after the stepper: every cell above it has run.
        outputs.filter(has_text="still raises NotImplementedError").wait_for(timeout=120_000)

        stepper = page.locator(".widget-interact", has_text="key blocks seen")
        readout = stepper.locator(".widget-readout")
        stepper.scroll_into_view_if_needed(timeout=30_000)
        box = stepper.element_handle()
        page.locator(".jp-CodeCell", has=stepper).locator(".jp-Cell-outputArea").evaluate(_WATCH_FOR_ERRORS)

        def figure(seen: int, before: str | None) -> str:
            """The stepper's figure once it is drawn for `seen` key blocks (a new one, not `before`)."""
            sync_api.expect(readout).to_have_text(str(seen), timeout=30_000)
            try:
                drawn = page.wait_for_function(_NEW_FIGURE, arg=[box, before], timeout=60_000)
            except sync_api.TimeoutError:
                raise AssertionError(f"the stepper drew no new figure for {seen} key blocks seen") from None
            return drawn.json_value()

        figures = [figure(1, None)]
        stepper.locator(".noUi-handle").focus()
        for seen in (2, 3, 4):
            page.keyboard.press("ArrowRight")
            figures.append(figure(seen, figures[-1]))
        distinct = len(set(figures))
        assert distinct == 4, "two numbers of key blocks seen drew the same figure"
        # Back to the start and one step on: the figure depends on the slider's value alone, and
        # every redraw before the last has finished its output (the kernel answers in order).
        page.keyboard.press("Home")
        again = figure(1, figures[-1]) == figures[0]
        assert again, "1 key block seen drew another figure the second time"
        page.keyboard.press("ArrowRight")
        again = figure(2, figures[0]) == figures[1]
        assert again, "2 key blocks seen drew another figure the second time"
        problems = page.evaluate("window.stepperProblems")
        assert problems == [], problems
        stepper.screenshot(path=str(REPO / "build" / "browser-tile-stepper.png"))
