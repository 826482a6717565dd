"""Clean room: does every lesson run from the built wheel alone, as on Colab or a student's machine?

The wheel is built from this checkout and installed into one fresh virtual environment (for all
lessons: the set-up is the costly part), with torch==2.13.0 first, as CI does, so that no CUDA build
is downloaded; then what runs a notebook (nbclient, ipykernel), nothing else from the repository.
Each lesson's solution notebook is copied alone into an empty folder and executed there, top to
bottom, by that environment's kernel. On Linux the package's [triton] extra comes too, as README
says for lesson 08 (Colab ships Triton; macOS has no wheels). Its wall time is recorded in build/clean_room_times.json
(`make lesson-times` ships it in course_lib/data/lesson_times.json, which the set-up cell quotes).

About 2-3 minutes for the environment, then each lesson's own run time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
from nbgrader_course import LESSONS, REPO, SOLUTIONS, grade_cells, notebook_path  # noqa: E402 - after the skip

from course_lib import release  # noqa: E402

pytestmark = pytest.mark.clean_room
TORCH = "torch==2.13.0"  # as .ci/run installs it: a CPU build on the course's machines
TIMES_FILE = REPO / "build" / "clean_room_times.json"
# Run inside the clean environment: execute one notebook where it lies, report what the tests need.
RUNNER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    path = Path(sys.argv[1])
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    import course_lib, torch
    print(json.dumps({"seconds": seconds, "course_lib": course_lib.__file__, "cuda": torch.cuda.is_available()}))
    """
)


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment a student's shell would give: the venv's bin/ first, nothing pointing at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COURSE_DEVICE", "TRITON_INTERPRET",
                                                             "VIRTUAL_ENV", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH")}
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("clean_room")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(base / "dist"), str(REPO)])
    (wheel,) = (base / "dist").glob("course_lib-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    env = _clean_env(venv)
    _run([python, "-m", "pip", "install", "--quiet", TORCH], env=env, timeout=900)
    course_lib = f"course_lib[triton] @ {wheel.as_uri()}" if sys.platform == "linux" else str(wheel)
    _run([python, "-m", "pip", "install", "--quiet", course_lib, "nbclient", "ipykernel"], env=env, timeout=900)
    (base / "run_notebook.py").write_text(RUNNER)
    return venv


@pytest.fixture(scope="module")
def measured_seconds():
    seconds: dict[str, float] = {}
    yield seconds
    if seconds:
        TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
        TIMES_FILE.write_text(json.dumps(
            {"device": "cpu", "machine": f"{os.cpu_count()} CPU cores", "seconds": seconds}, indent=2) + "\n")


def test_the_clean_environment_has_the_wheel_s_course_lib_and_no_jupyterlab_or_nbgrader(clean_venv):
    python = str(clean_venv / "bin" / "python")
    script = "import importlib.util as u, course_lib; print(course_lib.__version__, course_lib.__file__, " \
             "','.join(m for m in ('jupyterlab', 'nbgrader', 'triton') if u.find_spec(m)) or '-')"
    out = _run([python, "-c", script], env=_clean_env(clean_venv), cwd=clean_venv).stdout.split()
    course = release.Course.from_pyproject(REPO / "pyproject.toml")
    assert out[0] == course.version
    assert Path(out[1]).is_relative_to(clean_venv) and not Path(out[1]).is_relative_to(REPO)
    assert out[2] == ("triton" if sys.platform == "linux" else "-")


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_runs_alone_from_the_wheel(clean_venv, measured_seconds, tmp_path, lesson):
    folder = tmp_path / lesson  # empty but for the notebook: nothing else of the repository is there
    folder.mkdir()
    notebook = notebook_path(SOLUTIONS, lesson)
    shutil.copy(notebook, folder / notebook.name)
    result = _run([str(clean_venv / "bin" / "python"), str(clean_venv.parent / "run_notebook.py"),
                   str(folder / notebook.name)], env=_clean_env(clean_venv), cwd=folder, timeout=900)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["course_lib"]).is_relative_to(clean_venv)

    import nbformat  # noqa: PLC0415

    ran = nbformat.read(folder / notebook.name, as_version=4)
    setup = next(c for c in ran.cells if c.get("id") == release.SETUP_CELL_ID)
    said = "".join(o.get("text", "") for o in setup.outputs)
    course = release.Course.from_pyproject(REPO / "pyproject.toml")
    assert f"course_lib {course.version}, the version this notebook was released with." in said
    if not report["cuda"]:
        assert "No GPU found: this lesson runs on the CPU" in said
    for cell in grade_cells(ran):
        stderr = [o for o in cell.outputs if o.get("name") == "stderr"]
        assert not stderr, f"grade cell {cell.metadata['nbgrader']['grade_id']} wrote to stderr: {stderr}"
    measured_seconds[lesson] = round(report["seconds"], 1)
