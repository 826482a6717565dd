"""Batch grading with 1 and with 2 workers (``make bench BENCH=grading``): the wall time of the
instructor's command (``python -m course_lib.grading.batch``: sandboxed ``nbgrader autograde`` and the
outside verdict for each submission, one writer merging into the gradebook) on the same submissions.

The submissions are the test suite's fixture assignment (tests/e2e/fixture_course: softmax and
attention_weights, seconds of checks each), a third of them right, a third without the 1/√d_k scale
and a third blank, ``BENCH_SUBMISSIONS`` in all (30 by default). Each worker count grades a fresh
copy of the course, so the two runs do the same work; the grades of both runs must agree.

It needs the repository (the fixture lives in its tests), the ``[lab]`` extra and bubblewrap, as
grading does; it runs on the CPU whatever ``COURSE_DEVICE`` says.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

WORKERS = (1, 2)
TESTS = Path(__file__).resolve().parents[2] / "tests" / "e2e"


def _fixture() -> tuple[Any, Any]:
    """The test suite's course helpers and nbformat (from the [lab] extra)."""
    if not (TESTS / "nbgrader_course.py").is_file():
        raise SystemExit("the grading benchmark needs the course's repository (its tests/e2e fixture course)")
    sys.path.insert(0, str(TESTS))
    try:
        import nbformat  # noqa: PLC0415
        import nbgrader_course  # noqa: PLC0415 - from the repository's tests
    except ImportError as error:  # nbformat and nbgrader come with the [lab] extra
        raise SystemExit(f"the grading benchmark needs the [lab] extra: {error}") from error
    return nbgrader_course, nbformat


def _submissions(count: int) -> dict[str, str]:
    """Student name -> what they answered: right, no scale or blank, in turn."""
    kinds = ("right", "noscale", "blank")
    return {f"s{index:03d}_{kinds[index % 3]}": kinds[index % 3] for index in range(count)}


def grade_once(workers: int, count: int) -> dict[str, Any]:
    """Grade ``count`` fixture submissions with ``workers`` workers in a fresh course: seconds and scores."""
    fixture, nbformat = _fixture()

    right = fixture.solution_answers(fixture.notebook_path(fixture.FIXTURE_SOLUTIONS, fixture.FIXTURE))
    answers = {"right": right, "noscale": {**right, "attention_weights": fixture.FORGETS_THE_SCALE}, "blank": {}}
    with tempfile.TemporaryDirectory(prefix="grading-bench-") as folder:
        course = fixture.Course.create(Path(folder), [fixture.FIXTURE], solutions=fixture.FIXTURE_SOLUTIONS)
        release = nbformat.read(course.generate(fixture.FIXTURE), as_version=4)
        students = _submissions(count)
        for student, kind in students.items():
            submitted = fixture.notebook_path(course.root / "submitted" / student, fixture.FIXTURE)
            submitted.parent.mkdir(parents=True)
            nbformat.write(fixture.answered(nbformat.from_dict(release), answers[kind]), submitted)
        start = time.perf_counter()
        result = course.grade(fixture.FIXTURE, workers=workers)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"the batch failed with {workers} workers:\n{result.stderr[-2000:]}")
        scores = {student: course.score(student, fixture.FIXTURE) for student in students}
    return {"seconds": round(seconds, 1), "per_submission": round(seconds / count, 2), "scores": scores}


def run(device: torch.device) -> dict[str, Any]:
    count = int(os.environ.get("BENCH_SUBMISSIONS", "30"))
    runs = {workers: grade_once(workers, count) for workers in WORKERS}
    if len({tuple(sorted(r["scores"].items())) for r in runs.values()}) != 1:
        raise RuntimeError("the grades differ between worker counts")
    print(f"{count} submissions of the fixture assignment, {os.cpu_count()} CPU cores")
    for workers, result in runs.items():
        print(f"  {workers} worker{'s' * (workers > 1)}: {result['seconds']:7.1f} s  ({result['per_submission']:.2f} s per submission)")
    speedup = runs[1]["seconds"] / runs[2]["seconds"]
    print(f"  2 workers / 1 worker: {1 / speedup:.2f} of the time ({speedup:.2f}× faster)")
    return {"submissions": count, "cpu_cores": os.cpu_count(),
            "seconds": {str(w): r["seconds"] for w, r in runs.items()}, "speedup_2_over_1": round(speedup, 2),
            "scores": runs[1]["scores"]}
