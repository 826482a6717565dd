"""Can a notebook fake its grade? One batch of adversarial submissions, graded by the instructor's
command (``make grade``: ``python -m course_lib.grading.batch``, 2 workers, each running the real
``nbgrader autograde``) on the fixture assignment (softmax: 1 point, attention_weights: 2 points).

Every attacker writes the *wrong* attention_weights (no 1/√d_k scale, as dan does in
test_nbgrader_students.py) plus one attack from tests/e2e/attacks/, in the same answer cell; a
correct softmax. So each attacker earns exactly 1 point, whatever the attack — and the controls
graded before and after them (right, no scale, blank) earn 3, 1 and 0. Checked after the batch:
scores, the gradebook, files outside the submissions, the network, the salt, and the batch itself.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sysconfig
import threading
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
pytest.importorskip("nbgrader", reason="needs nbgrader (the [lab] extra)")

from nbgrader_course import (  # noqa: E402 - after the skips above
    FIXTURE,
    FIXTURE_SOLUTIONS,
    FORGETS_THE_SCALE,
    HIDDEN_SALT,
    REPO,
    Course,
    answered,
    notebook_path,
    solution_answers,
)

pytestmark = pytest.mark.nbgrader
ATTACKS = Path(__file__).with_name("attacks")
ATTACK_NAMES = sorted(p.stem for p in ATTACKS.glob("*.py"))
RIGHT = solution_answers(notebook_path(FIXTURE_SOLUTIONS, FIXTURE))
CONTROLS = {"a_right": 3.0, "b_noscale": 1.0, "c_blank": 0.0, "y_colab_copy": 3.0, "z_noscale_after": 1.0,
            "z_right_after": 3.0}
RENAMED = {"y_colab_copy": f"Copy of {FIXTURE}.ipynb"}  # as Colab names a download
ATTACKERS = {f"x_{name}": 1.0 for name in ATTACK_NAMES}
EXPECTED = {**CONTROLS, **ATTACKERS}
OUTSIDE_FILES = ("/tmp/attack_file", os.path.expanduser("~/attack_file"))
# What the course's grading writes; everything else under the course root must stay as it was.
GRADER_OUTPUTS = ("autograded", "feedback", "grading_records", "gradebook.db", ".nbgrader.log", ".grading")


def _answers(student: str, port: int) -> dict[str, str]:
    if student == "c_blank":
        return {}
    if student.endswith(("right", "right_after", "colab_copy")):
        return RIGHT
    wrong = {**RIGHT, "attention_weights": FORGETS_THE_SCALE}
    if student in ATTACKERS:
        attack = (ATTACKS / f"{student.removeprefix('x_')}.py").read_text().replace("ATTACK_PORT", str(port))
        wrong["attention_weights"] = FORGETS_THE_SCALE + "\n\n" + attack
    return wrong


def _course_root_listing(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in GRADER_OUTPUTS
    }


def _site_customizations() -> list[str]:
    return [p for key in ("purelib", "platlib", "stdlib") if Path(p := sysconfig.get_paths()[key] + "/sitecustomize.py").exists()]


class _Listener:
    """A TCP server on the grader's loopback that counts the connections it gets."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()


@pytest.fixture(scope="module")
def batch(tmp_path_factory, autograde_times):
    course = Course.create(tmp_path_factory.mktemp("attacks"), [FIXTURE], solutions=FIXTURE_SOLUTIONS)
    with open(course.root / "nbgrader_config.py", "a") as config:  # short limits: the attacks hit them quickly
        config.write("c.Execute.timeout = 20\nc.SandboxLimits.memory_limit_mb = 2048\nc.SandboxLimits.process_limit = 128\n")
    listener = _Listener()
    try:
        release = nbformat.read(course.generate(FIXTURE), as_version=4)
        for student in EXPECTED:
            submitted = notebook_path(course.root / "submitted" / student, FIXTURE)
            submitted = submitted.with_name(RENAMED.get(student, submitted.name))
            submitted.parent.mkdir(parents=True)
            nbformat.write(answered(nbformat.from_dict(release), _answers(student, listener.port)), submitted)
        before = {"course": _course_root_listing(course.root), "site": _site_customizations(),
                  "outside": [p for p in OUTSIDE_FILES if Path(p).exists()]}
        start = time.perf_counter()
        result = course.grade(FIXTURE, workers=2)
        seconds = time.perf_counter() - start
        autograde_times[f"{FIXTURE}: {len(EXPECTED)} adversarial submissions, 2 workers, per submission"] = round(
            seconds / len(EXPECTED), 1)
        course.scores_after_first_run = {s: course.score(s, FIXTURE) for s in EXPECTED}
        course.again = course.grade(FIXTURE, workers=2)  # as after a kill: nothing left to grade
        yield course, result, before, listener
    finally:
        listener.socket.close()
        course.write_log(REPO / "build" / "nbgrader-attacks.log")
        for path in _site_customizations():  # never leave one behind, whatever happened
            Path(path).unlink()


def test_the_batch_finishes_and_grades_everyone(batch):
    course, result, _, _ = batch
    assert result.returncode == 0, result.stderr[-3000:]
    for student in EXPECTED:
        assert course.autograded(student, FIXTURE) is not None, student


@pytest.mark.parametrize("student", list(EXPECTED))
def test_no_attack_raises_a_grade_and_no_control_changes(batch, student):
    course, _, _, _ = batch
    assert course.score(student, FIXTURE) == EXPECTED[student]


def test_run_again_it_grades_nothing_twice(batch):
    course, _, _, _ = batch
    assert course.again.returncode == 0, course.again.stderr[-3000:]
    assert f"{len(EXPECTED)} already graded, 0 to grade" in course.again.stdout
    assert {s: course.score(s, FIXTURE) for s in EXPECTED} == course.scores_after_first_run


def test_nothing_outside_the_submissions_is_touched(batch):
    course, _, before, _ = batch
    assert _course_root_listing(course.root) == before["course"]
    assert _site_customizations() == before["site"]
    assert [p for p in OUTSIDE_FILES if Path(p).exists()] == before["outside"]
    assert not list((course.root / "autograded").glob("attack_file"))
    assert not (course.root / "attack_file").exists()


def test_the_network_is_unreachable(batch):
    assert batch[3].connections == 0


def test_the_salt_reaches_no_notebook(batch):
    course, _, _, _ = batch
    for student in EXPECTED:
        text = notebook_path(course.root / "autograded" / student, FIXTURE).read_text()
        assert HIDDEN_SALT not in text, student


def test_the_record_says_the_kernel_was_sandboxed_and_which_verdict_decided(batch):
    import json  # noqa: PLC0415

    course, _, _, _ = batch
    record = json.loads((course.root / "grading_records" / FIXTURE / f"x_patch_check_in_module.{FIXTURE}.json").read_text())
    assert record["sandboxed"] is True
    assert record["cells"]["check_attention_weights"]["decided"] == "outside"
    # The kernel's check was patched to pass; the grader's reading refused the patch before replaying it.
    assert "an assignment to `grading.check_attention_weights`" in record["cells"]["check_attention_weights"]["outside_failure"]
    assert record["cells"]["check_softmax"]["decided"] == "both passed"
