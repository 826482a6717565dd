"""A throw-away nbgrader course for the tests: the repository's solutions and configuration, a
temporary course root and exchange, and students who submit through the real exchange.

Every nbgrader step runs as the real command line (``nbgrader ...`` in a subprocess), as an
instructor or a student would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
RELEASE = REPO / "notebooks"
COURSE_ID = "attention-course"
LESSONS = sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").is_file())
NBGRADER = str(Path(sys.executable).with_name("nbgrader"))
TIMES_FILE = REPO / "build" / "lesson_times.json"  # autograde wall time of each solution


def notebook_path(folder: Path, lesson: str) -> Path:
    return folder / lesson / f"{lesson}.ipynb"


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@dataclass
class Course:
    root: Path
    exchange: Path
    students_root: Path
    log: list[str] = field(default_factory=list)
    autograde_seconds: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def create(cls, base: Path) -> "Course":
        course = cls(root=base / "course", exchange=base / "exchange", students_root=base / "students")
        course.root.mkdir(parents=True)
        course.exchange.mkdir()
        course.students_root.mkdir()
        shutil.copytree(SOLUTIONS, course.root / "solutions")
        config = REPO / "nbgrader_config.py"
        (course.root / "nbgrader_config.py").write_text(
            f"c = get_config()\n"
            f"load_subconfig({str(config)!r})\n"
            f"c.CourseDirectory.root = {str(course.root)!r}\n"
            f"c.Exchange.root = {str(course.exchange)!r}\n"
        )
        return course

    def nbgrader(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``nbgrader ARGS`` in ``cwd`` (the course root by default)."""
        # Without the environment's bin/ on PATH, as from a plain shell: nbgrader_config.py must add it.
        env_bin = os.path.dirname(sys.executable)
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.abspath(p) != env_bin]
        env = dict(os.environ, PATH=os.pathsep.join(path))
        env.pop("COURSE_DEVICE", None)
        env["COURSE_HIDDEN_SALT"] = "the test course's secret"  # as README tells instructors
        start = time.perf_counter()
        result = subprocess.run(
            [NBGRADER, *args], cwd=cwd or self.root, env=env, capture_output=True, text=True, timeout=900
        )
        self.log.append(
            f"$ nbgrader {' '.join(args)}  (exit {result.returncode}, {time.perf_counter() - start:.1f} s)"
            f"\n{result.stderr[-3000:]}"
        )
        if check and result.returncode != 0:
            raise AssertionError(f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    # --- instructor ----------------------------------------------------------------------------

    def generate(self, lesson: str) -> Path:
        self.nbgrader("generate_assignment", lesson, "--force")
        return notebook_path(self.root / "notebooks", lesson)

    # --- students ------------------------------------------------------------------------------

    def student_dir(self, student: str) -> Path:
        folder = self.students_root / student
        folder.mkdir(exist_ok=True)
        (folder / "nbgrader_config.py").write_text(
            f"c = get_config()\n"
            f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
            f"c.Exchange.root = {str(self.exchange)!r}\n"
        )
        return folder

    def fetch(self, student: str, lesson: str) -> Path:
        folder = self.student_dir(student)
        self.nbgrader("fetch_assignment", lesson, cwd=folder)
        return notebook_path(folder, lesson)

    def submit(self, student: str, lesson: str) -> None:
        self.nbgrader("submit", lesson, f"--student={student}", cwd=self.student_dir(student))

    def autograde(self, student: str, lesson: str) -> None:
        start = time.perf_counter()
        self.nbgrader("autograde", lesson, f"--student={student}", "--force")
        self.autograde_seconds[(student, lesson)] = time.perf_counter() - start

    def autograded(self, student: str, lesson: str) -> nbformat.NotebookNode | None:
        path = notebook_path(self.root / "autograded" / student, lesson)
        return nbformat.read(path, as_version=4) if path.exists() else None


def answered_like_the_solution(release: nbformat.NotebookNode, lesson: str) -> nbformat.NotebookNode:
    """The release with every solution cell filled in as in the source: a student who got it right."""
    source = nbformat.read(notebook_path(SOLUTIONS, lesson), as_version=4)
    answers = {
        nbgrader_meta(c)["grade_id"]: without_solution_markers(c.source)
        for c in source.cells
        if nbgrader_meta(c).get("solution")
    }
    for cell in release.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            cell.source = answers[meta["grade_id"]]
    return release


def without_solution_markers(source: str) -> str:
    markers = ("### BEGIN SOLUTION", "### END SOLUTION")
    return "\n".join(line for line in source.splitlines() if line.strip() not in markers)


def grade_cells(nb: nbformat.NotebookNode) -> list:
    return [c for c in nb.cells if nbgrader_meta(c).get("grade") and c.cell_type == "code"]


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
