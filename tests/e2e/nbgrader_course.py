"""Throw-away nbgrader courses for the tests: the repository's configuration, a temporary course
root and exchange, and students who submit through the real exchange.

Every nbgrader step runs as the real command line (``nbgrader ...`` in a subprocess), as an
instructor or a student would run it. Importing this module needs nbformat: a test module imports
it after ``pytest.importorskip("nbformat")``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import nbformat

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOLUTIONS = REPO / "solutions"
RELEASE = REPO / "notebooks"
COURSE_ID = "attention-course"
LESSONS = sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").is_file())
# A small assignment kept for the tests alone: two exercises checked by the course's real checks.
FIXTURE_SOLUTIONS = HERE / "fixture_course" / "solutions"
FIXTURE = "99_fixture"
NBGRADER = str(Path(sys.executable).with_name("nbgrader"))
HIDDEN_SALT = "the test course's secret"  # set while grading, as README tells instructors
# A classic mistake in the fixture's attention_weights: the 1/sqrt(d_k) scale forgotten.
FORGETS_THE_SCALE = '''def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
    scores = q @ k.transpose(-2, -1)  # the 1/sqrt(d_k) is missing
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, -math.inf)
    elif attn_mask is not None:
        scores = scores + attn_mask
    return softmax(scores, dim=-1)
'''


def notebook_path(folder: Path, lesson: str) -> Path:
    return folder / lesson / f"{lesson}.ipynb"


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@dataclass
class Course:
    root: Path
    exchange: Path
    students_root: Path
    solutions: Path
    log: list[str] = field(default_factory=list)
    autograde_seconds: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def create(cls, base: Path, lessons: list[str], solutions: Path = SOLUTIONS) -> Course:
        """A course root under ``base`` with ``lessons`` copied from ``solutions`` and the repository's
        nbgrader_config.py loaded as is (only the course root and the exchange are moved)."""
        course = cls(
            root=base / "course", exchange=base / "exchange", students_root=base / "students", solutions=solutions
        )
        course.root.mkdir(parents=True)
        course.exchange.mkdir()
        course.students_root.mkdir()
        for lesson in lessons:
            shutil.copytree(solutions / lesson, course.root / "solutions" / lesson)
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
        env = dict(os.environ, PATH=os.pathsep.join(path), COURSE_HIDDEN_SALT=HIDDEN_SALT)
        env.pop("COURSE_DEVICE", None)
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

    def write_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.log) + "\n")

    # --- instructor ----------------------------------------------------------------------------

    def generate(self, lesson: str) -> Path:
        """``nbgrader generate_assignment``, then the release normalised as `make release` does."""
        from course_lib import release  # noqa: PLC0415 - beside the nbformat-only imports above

        self.nbgrader("generate_assignment", lesson, "--force")
        path = notebook_path(self.root / "notebooks", lesson)
        course = release.Course.from_pyproject(REPO / "pyproject.toml")
        release.write_if_changed(path, release.normalise_release(release.read_notebook(path), course))
        return path

    def autograde(self, student: str, lesson: str) -> None:
        start = time.perf_counter()
        self.nbgrader("autograde", lesson, f"--student={student}", "--force")
        self.autograde_seconds[(student, lesson)] = time.perf_counter() - start

    def grade(self, lesson: str, workers: int) -> subprocess.CompletedProcess:
        """The instructor's batch command (``make grade``): every submission, ``workers`` at a time."""
        env = dict(os.environ, COURSE_HIDDEN_SALT=HIDDEN_SALT)
        env.pop("COURSE_DEVICE", None)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "course_lib.grading.batch", lesson, f"--workers={workers}"],
            cwd=self.root, env=env, capture_output=True, text=True, timeout=1800,
        )
        self.log.append(f"$ python -m course_lib.grading.batch {lesson} --workers={workers}  (exit {result.returncode}, "
                        f"{time.perf_counter() - start:.1f} s)\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def autograded(self, student: str, lesson: str) -> nbformat.NotebookNode | None:
        path = notebook_path(self.root / "autograded" / student, lesson)
        return nbformat.read(path, as_version=4) if path.exists() else None

    def score(self, student: str, lesson: str) -> float:
        from nbgrader.api import Gradebook  # noqa: PLC0415 - nbgrader is imported only where it is needed

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as gradebook:
            return gradebook.find_submission(lesson, student).score

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


T = TypeVar("T")


class OncePerLesson(Generic[T]):
    """Runs ``build(lesson)`` once per lesson and remembers what it returned, or how it failed.

    A failure is raised again, with its own traceback, to every test of that lesson that asks;
    other lessons never see it. (Skips are not remembered: they propagate as pytest raises them.)
    """

    def __init__(self, build: Callable[[str], T]):
        self._build = build
        self._results: dict[str, T] = {}
        self._failures: dict[str, tuple[Exception, object]] = {}

    def __call__(self, lesson: str) -> T:
        if lesson not in self._results and lesson not in self._failures:
            try:
                self._results[lesson] = self._build(lesson)
            except Exception as error:  # noqa: BLE001 - kept for this lesson's tests, raised below
                self._failures[lesson] = (error, error.__traceback__)
        if lesson in self._failures:
            error, traceback = self._failures[lesson]
            raise error.with_traceback(traceback)
        return self._results[lesson]


class LessonCourses:
    """One throw-away course per lesson, kept for the session.

    ``generated(lesson)``: ``nbgrader generate_assignment`` has run (a few seconds).
    ``graded(lesson)``: the solution has also been submitted, autograded once (timed) and given
    feedback. ``graded_untouched(lesson)``: the release, submitted as fetched, autograded too (in the
    same course, after the solution). A lesson whose step fails fails its own tests only.
    """

    STUDENT = "solution"
    UNTOUCHED = "untouched"

    def __init__(self, make_folder: Callable[[str], Path]):
        self._make_folder = make_folder
        self.courses: dict[str, Course] = {}
        self.generated = OncePerLesson(self._generate)
        self.graded = OncePerLesson(self._grade)
        self.graded_untouched = OncePerLesson(self._grade_untouched)

    def _generate(self, lesson: str) -> Course:
        course = Course.create(self._make_folder(lesson), [lesson])
        self.courses[lesson] = course
        course.generate(lesson)
        return course

    def _grade(self, lesson: str) -> Course:
        course = self.generated(lesson)
        release = nbformat.read(notebook_path(course.root / "notebooks", lesson), as_version=4)
        # Where `nbgrader collect` and `zip_collect` put a submission (the exchange is tested on the
        # fixture assignment, test_nbgrader_students.py).
        submitted = notebook_path(course.root / "submitted" / self.STUDENT, lesson)
        submitted.parent.mkdir(parents=True)
        nbformat.write(answered_like_the_solution(release, notebook_path(SOLUTIONS, lesson)), submitted)
        course.autograde(self.STUDENT, lesson)
        course.nbgrader("generate_feedback", lesson, f"--student={self.STUDENT}")
        return course

    def _grade_untouched(self, lesson: str) -> Course:
        course = self.graded(lesson)  # one course per lesson: its gradebook is not shared between processes
        release = nbformat.read(notebook_path(course.root / "notebooks", lesson), as_version=4)
        submitted = notebook_path(course.root / "submitted" / self.UNTOUCHED, lesson)
        submitted.parent.mkdir(parents=True)
        nbformat.write(release, submitted)
        course.autograde(self.UNTOUCHED, lesson)
        return course

    def solution_seconds(self) -> dict[str, float]:
        return {
            lesson: round(seconds, 1)
            for lesson, course in self.courses.items()
            for (student, _), seconds in course.autograde_seconds.items()
            if student == self.STUDENT
        }


# --- notebooks ---------------------------------------------------------------------------------


def answered(release: nbformat.NotebookNode, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The release with the solution cells named in ``answers`` (by grade id) replaced."""
    solution_ids = {nbgrader_meta(c).get("grade_id") for c in release.cells if nbgrader_meta(c).get("solution")}
    unknown = set(answers) - solution_ids
    assert not unknown, f"no solution cell with grade id {sorted(unknown)}"
    for cell in release.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution") and meta["grade_id"] in answers:
            cell.source = answers[meta["grade_id"]]
    return release


def solution_answers(source_path: Path) -> dict[str, str]:
    """Every solution cell of a source notebook, by grade id, as a student who got it right writes it."""
    source = nbformat.read(source_path, as_version=4)
    return {
        nbgrader_meta(c)["grade_id"]: without_solution_markers(c.source)
        for c in source.cells
        if nbgrader_meta(c).get("solution")
    }


def answered_like_the_solution(release: nbformat.NotebookNode, source_path: Path) -> nbformat.NotebookNode:
    """The release with every solution cell filled in as in the source: a student who got it right."""
    return answered(release, solution_answers(source_path))


def without_solution_markers(source: str) -> str:
    markers = ("### BEGIN SOLUTION", "### END SOLUTION")
    return "\n".join(line for line in source.splitlines() if line.strip() not in markers)


def without_hidden_tests(source: str) -> str:
    """A grade cell's source without its ``### BEGIN HIDDEN TESTS`` … ``### END HIDDEN TESTS`` lines."""
    kept, hidden = [], False
    for line in source.split("\n"):
        if "BEGIN HIDDEN TESTS" in line:
            hidden = True
        elif "END HIDDEN TESTS" in line:
            hidden = False
        elif not hidden:
            kept.append(line)
    return "\n".join(kept)


def grade_cells(nb: nbformat.NotebookNode) -> list:
    return [c for c in nb.cells if nbgrader_meta(c).get("grade") and c.cell_type == "code"]


def total_points(nb: nbformat.NotebookNode) -> float:
    return sum(float(nbgrader_meta(c).get("points", 0)) for c in grade_cells(nb))


def checked_names(source: str) -> list[str]:
    """The names handed to ``check_<name>(...)`` calls as their first argument, in order."""
    return [
        node.args[0].id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id.startswith("check_")
        and node.args
        and isinstance(node.args[0], ast.Name)
    ]
