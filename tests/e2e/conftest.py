"""What the end-to-end tests share: one throw-away nbgrader course per lesson, and the autograde
wall times, printed at the end of the run and kept in build/lesson_times.json.

Nothing here imports nbformat or nbgrader at module level: where they are not installed (the GPU
machine's image), the modules that need them skip and the others still run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMES_FILE = REPO / "build" / "lesson_times.json"
_TIMES = pytest.StashKey[dict]()


def _times(config: pytest.Config) -> dict[str, float]:
    return config.stash.setdefault(_TIMES, {})


@pytest.fixture(scope="session")
def autograde_times(pytestconfig) -> dict[str, float]:
    """Label -> seconds; what a test puts here is printed at the end of the run."""
    return _times(pytestconfig)


@pytest.fixture(scope="session")
def lesson_courses(tmp_path_factory, autograde_times):
    """Every lesson's own nbgrader course, generated (and graded) on first use; see LessonCourses."""
    from nbgrader_course import LessonCourses  # noqa: PLC0415 - needs nbformat, which may be absent

    courses = LessonCourses(tmp_path_factory.mktemp)
    yield courses
    for lesson, course in courses.courses.items():
        course.write_log(REPO / "build" / f"nbgrader-{lesson}.log")
    solution_times = courses.solution_seconds()
    if solution_times:
        autograde_times.update({f"{lesson} (solution)": s for lesson, s in solution_times.items()})
        TIMES_FILE.parent.mkdir(parents=True, exist_ok=True)
        TIMES_FILE.write_text(json.dumps(solution_times, indent=2, sort_keys=True) + "\n")


def pytest_sessionstart(session):
    TIMES_FILE.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter, config):
    times = _times(config)
    if times:
        terminalreporter.write_sep("-", "autograde wall time (s), nbgrader's start-up included")
        for label, seconds in sorted(times.items()):
            terminalreporter.write_line(f"{label}: {seconds}")
