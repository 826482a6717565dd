"""A student's first session, in a real browser: `make lab` copies the lessons into work/ and starts
JupyterLab; the student opens lesson 05, has written exercise 1 but not yet exercise 2, runs all
cells, reads what the checks say, and moves the d_k slider.

Needs Debian's chromium (/usr/bin/chromium) and PyPI's playwright; skipped when either is missing.
`make lab` runs in a copy of the course, so a real work/ folder is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from nbgrader_course import REPO, SOLUTIONS, nbgrader_meta, notebook_path, without_solution_markers

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
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
    assert copied.read_bytes() == notebook_path(root / "notebooks", LESSON).read_bytes()
    copied.write_text(copied.read_text().replace("Scaled dot-product", "My edited copy of"))
    subprocess.run(["make", "-s", "lab", "LAB_ARGS=--version"], cwd=root, check=True, capture_output=True)
    assert "My edited copy of" in copied.read_text()  # a second `make lab` keeps the student's work


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
