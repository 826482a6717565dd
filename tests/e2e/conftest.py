import json

from nbgrader_course import TIMES_FILE


def pytest_sessionstart(session):
    TIMES_FILE.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter):
    """Print each solution's autograde wall time (written by test_nbgrader's course fixture)."""
    if TIMES_FILE.exists():
        times = json.loads(TIMES_FILE.read_text())
        terminalreporter.write_sep("-", "autograde wall time of each solution notebook (s)")
        for lesson, seconds in sorted(times.items()):
            terminalreporter.write_line(f"{lesson}: {seconds}")
