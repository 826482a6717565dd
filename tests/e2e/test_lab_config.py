"""`make lab` hides nbgrader's instructor tools from students: it points JUPYTER_CONFIG_PATH at
lab_config/, which disables the Formgrader, Create Assignment and Course List (lab plugins, and Formgrader's
server extension) and leaves Validate and the Assignments list alone.

Fast: the lab and server configuration as JupyterLab and Jupyter Server themselves resolve it,
without starting a server (the browser test starts one through `make lab` and looks at the page).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="needs JupyterLab (the [lab] extra)")
pytest.importorskip("nbgrader", reason="needs nbgrader (the [lab] extra)")
paths = pytest.importorskip("jupyter_core.paths")

REPO = Path(__file__).resolve().parents[2]
LAB_CONFIG = REPO / "lab_config"
# The Course List is an instructor's list of the courses they teach, with links into Formgrader.
HIDDEN_PLUGINS = {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment", "@jupyter/nbgrader:course-list"}
KEPT_PLUGINS = {"@jupyter/nbgrader:validate-assignment", "@jupyter/nbgrader:assignment-list"}
HIDDEN_SERVER_EXTENSIONS = {"nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list"}
KEPT_SERVER_EXTENSIONS = {
    "nbgrader.server_extensions.validate_assignment",
    "nbgrader.server_extensions.assignment_list",
}


def _run(*command: str) -> str:
    """A command of this environment, with JUPYTER_CONFIG_PATH as `make lab` sets it."""
    env = dict(os.environ, JUPYTER_CONFIG_PATH=str(LAB_CONFIG), NO_COLOR="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def _nbgrader_plugin_ids() -> set[str]:
    """The plugin ids the installed nbgrader lab extension defines (read from its bundle)."""
    for folder in paths.jupyter_path("labextensions"):
        static = Path(folder) / "@jupyter" / "nbgrader" / "static"
        if static.is_dir():
            text = "".join(p.read_text(errors="replace") for p in static.glob("*.js"))
            return set(re.findall(r'"(@jupyter/nbgrader:[a-z-]+)"', text))
    pytest.fail("nbgrader's lab extension is not installed")


def test_the_hidden_plugins_are_nbgrader_s_own_ids():
    """A misspelt or renamed id in disabledExtensions would hide nothing, silently."""
    assert HIDDEN_PLUGINS | KEPT_PLUGINS <= _nbgrader_plugin_ids()
    page_config = json.loads((LAB_CONFIG / "labconfig" / "page_config.json").read_text())
    assert set(page_config["disabledExtensions"]) == HIDDEN_PLUGINS


def test_jupyterlab_lists_only_the_instructor_plugins_as_disabled():
    listing = _run(str(Path(sys.executable).with_name("jupyter")), "labextension", "list")
    assert re.search(r"@jupyter/nbgrader v\S+ enabled OK", listing), listing
    disabled = set(re.findall(r"^\s+(\S+)$", listing.split("Disabled extensions:")[1], flags=re.M))
    assert HIDDEN_PLUGINS <= disabled, listing
    assert not disabled & KEPT_PLUGINS, listing


def test_jupyter_server_loads_validate_and_assignments_but_not_formgrader():
    # `jupyter server extension list` reads only the user, environment and system folders, not
    # JUPYTER_CONFIG_PATH: ask the server's own discovery, which `jupyter lab` goes through.
    script = (
        "import json; from jupyter_server.serverapp import ServerApp; app = ServerApp(); "
        "app.find_server_extensions(); print(json.dumps(app.jpserver_extensions))"
    )
    extensions = json.loads(_run(sys.executable, "-c", script).strip().splitlines()[-1])
    for name in HIDDEN_SERVER_EXTENSIONS:
        assert extensions.get(name) is False, extensions
    for name in KEPT_SERVER_EXTENSIONS:
        assert extensions.get(name) is True, extensions


def test_make_lab_sets_the_variable_and_keeps_the_user_s_own():
    """Does `make lab` put lab_config/ first on JUPYTER_CONFIG_PATH without dropping what was there?"""
    env = dict(os.environ, JUPYTER_CONFIG_PATH="/somewhere/else")
    dry_run = subprocess.run(
        ["make", "-n", "lab"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f'JUPYTER_CONFIG_PATH="{LAB_CONFIG}:/somewhere/else"' in dry_run, dry_run


def test_students_get_the_course_id_and_exchange_of_the_course(tmp_path):
    """Does `nbgrader` in make lab's environment know the course and the exchange without a file of the student's?"""
    exchange = tmp_path / "exchange"
    env = dict(os.environ, JUPYTER_CONFIG_PATH=str(LAB_CONFIG), COURSE_EXCHANGE=str(exchange))
    code = ("from nbgrader.apps import NbGraderApp\n"
            "app = NbGraderApp(); app.load_config_file()\n"
            "print(app.config.CourseDirectory.course_id, app.config.Exchange.root)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    course_id = re.search(r'course_id = "([^"]+)"', (REPO / "nbgrader_config.py").read_text()).group(1)
    assert result.stdout.split() == [course_id, str(exchange)]
