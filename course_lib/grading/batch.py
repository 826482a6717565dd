"""Grade a whole folder of submissions in parallel, resumably:
``python -m course_lib.grading.batch ASSIGNMENT [--workers N]`` (``make grade``), from the course root.

nbgrader grades one submission at a time, and several nbgrader processes on one SQLite gradebook
lock it. So each worker has a scratch course of its own (``.grading/worker-N``: a copy of the
gradebook, the assignment's source, one submission at a time) where it runs the real
``nbgrader autograde`` — with the course's configuration, so in the sandbox and with the outside
verdict — and this process alone writes the course's gradebook: it merges each graded submission
(its grades, comments and late penalty), copies the autograded folder and the grading record, and
notes the submission's checksum. Run again after a kill, it skips every submission whose checksum
it has noted and grades the rest; a re-submission (new checksum) is graded again. Submitted files
are only read. A notebook renamed by Colab or an LMS (``Copy of 05_x.ipynb``) is graded as the
assignment's notebook when its nbgrader cell ids are the assignment's.

Past one machine the same split serves: each job grades in a scratch course of its own, and one
writer merges (README, "Grading").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

SCRATCH = ".grading"
RECORDS = "grading_records"


@dataclass(frozen=True)
class Outcome:
    student: str
    ok: bool
    log: str


def submission_checksum(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def grade_ids(notebook: Path) -> set[str]:
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in cells} - {None}


def matched_notebooks(submission: Path, source: Path) -> dict[Path, str]:
    """Each submitted notebook -> the name it is graded under: its own where the source has it,
    else the source notebook whose grade ids it holds (Colab's ``Copy of …``, an LMS's renaming)."""
    expected = {p.name: grade_ids(p) for p in source.glob("*.ipynb")}
    names = {}
    for notebook in sorted(submission.glob("*.ipynb")):
        if notebook.name in expected:
            names[notebook] = notebook.name
            continue
        ids = grade_ids(notebook)
        match = [name for name, wanted in expected.items() if wanted and wanted <= ids]
        if len(match) == 1 and not (submission / match[0]).exists():
            names[notebook] = match[0]
    return names


class Batch:
    def __init__(self, root: Path, assignment: str, workers: int):
        self.root, self.assignment, self.workers = root, assignment, workers
        self.scratch = root / SCRATCH
        self.done_file = root / RECORDS / assignment / "merged.json"
        self.source = root / _source_directory(root) / assignment

    def submissions(self) -> dict[str, Path]:
        found = {}
        for folder in sorted((self.root / "submitted").glob(f"*/{self.assignment}")):
            found[folder.parent.name] = folder
        return found

    def merged(self) -> dict[str, str]:
        return json.loads(self.done_file.read_text()) if self.done_file.exists() else {}

    def run(self, progress: bool = True) -> list[Outcome]:
        submissions = self.submissions()
        done = self.merged()
        todo = {s: f for s, f in submissions.items() if done.get(s) != submission_checksum(f)}
        print(f"{self.assignment}: {len(submissions)} submissions, {len(submissions) - len(todo)} already graded, "
              f"{len(todo)} to grade with {self.workers} worker(s)", flush=True)
        scratches: queue.Queue[Path] = queue.Queue()
        for n in range(min(self.workers, len(todo)) or 1):
            scratches.put(self._prepare_scratch(n))
        outcomes = []
        bar = _progress(len(todo), progress)
        with ThreadPoolExecutor(self.workers) as pool:
            jobs = [pool.submit(self._grade_one, student, folder, scratches) for student, folder in todo.items()]
            for job in as_completed(jobs):
                outcome, scratch = job.result()
                if outcome.ok:
                    self._merge(outcome.student, scratch, submissions[outcome.student])
                outcomes.append(outcome)
                scratches.put(scratch)
                bar.update(1)
                bar.set_postfix_str(f"{outcome.student}: {'graded' if outcome.ok else 'FAILED'}")
        bar.close()
        for outcome in outcomes:
            if not outcome.ok:
                print(f"{outcome.student}: not graded — nbgrader said:\n{outcome.log[-2000:]}", file=sys.stderr)
        return outcomes

    # -- a worker's scratch course --

    def _prepare_scratch(self, n: int) -> Path:
        scratch = self.scratch / f"worker-{n}"
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "source").mkdir(parents=True)
        shutil.copytree(self.source, scratch / "source" / self.assignment)
        shutil.copy(self.root / "gradebook.db", scratch / "gradebook.db")
        (scratch / "nbgrader_config.py").write_text(
            "c = get_config()\n"
            f"load_subconfig({str(self.root / 'nbgrader_config.py')!r})\n"
            f"c.CourseDirectory.root = {str(scratch)!r}\n"
            "c.CourseDirectory.source_directory = 'source'\n"
            f"c.SandboxLimits.hidden_paths = [{str(self.root)!r}]  # the course itself, around the scratch\n"
        )
        return scratch

    def _grade_one(self, student: str, folder: Path, scratches: queue.Queue) -> tuple[Outcome, Path]:
        scratch = scratches.get()
        for old in ("submitted", "autograded", RECORDS):
            shutil.rmtree(scratch / old, ignore_errors=True)
        target = scratch / "submitted" / student / self.assignment
        target.mkdir(parents=True)
        renamed = matched_notebooks(folder, self.source)
        for path in folder.rglob("*"):  # copies: the submitted files are only read
            if path.is_file() and not path.is_symlink():
                destination = target / (renamed.get(path, path.name) if path.parent == folder else path.relative_to(folder))
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)
        for path in target.glob("*.ipynb"):  # a notebook that is not the assignment's is not graded
            if path.name not in {p.name for p in self.source.glob("*.ipynb")}:
                path.unlink()
        nbgrader = str(Path(sys.executable).with_name("nbgrader"))
        result = subprocess.run([nbgrader, "autograde", self.assignment, f"--student={student}", "--force"],
                                cwd=scratch, capture_output=True, text=True)
        ok = result.returncode == 0 and (scratch / "autograded" / student / self.assignment).is_dir()
        return Outcome(student, ok, result.stdout + result.stderr), scratch

    # -- the one writer --

    def _merge(self, student: str, scratch: Path, folder: Path) -> None:
        try:  # noqa: SIM105 - nbgrader is the instructor's, from the [lab] extra
            from nbgrader.api import Gradebook, MissingEntry  # noqa: PLC0415
        except ImportError as error:
            raise ImportError(f"grading needs nbgrader: pip install -e '.[lab]' ({error})") from error

        with Gradebook(f"sqlite:///{scratch / 'gradebook.db'}") as source, \
                Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as course:
            graded = source.find_submission(self.assignment, student)
            course.update_or_create_student(student)
            try:
                course.remove_submission(self.assignment, student)
            except MissingEntry:
                pass
            course.add_submission(self.assignment, student, timestamp=graded.timestamp, extension=graded.extension)
            for notebook in graded.notebooks:
                target = course.find_submission_notebook(notebook.name, self.assignment, student)
                target.late_submission_penalty = notebook.late_submission_penalty
                target.flagged = notebook.flagged
                for grade in notebook.grades:
                    into = course.find_grade(grade.name, notebook.name, self.assignment, student)
                    for column in ("auto_score", "manual_score", "extra_credit", "needs_manual_grade"):
                        setattr(into, column, getattr(grade, column))
                for comment in notebook.comments:
                    into = course.find_comment(comment.name, notebook.name, self.assignment, student)
                    into.auto_comment, into.manual_comment = comment.auto_comment, comment.manual_comment
            course.db.commit()
        autograded = self.root / "autograded" / student / self.assignment
        shutil.rmtree(autograded, ignore_errors=True)
        shutil.copytree(scratch / "autograded" / student / self.assignment, autograded, symlinks=True)
        records = self.root / RECORDS / self.assignment
        records.mkdir(parents=True, exist_ok=True)
        for record in (scratch / RECORDS / self.assignment).glob(f"{student}.*.json"):
            shutil.copyfile(record, records / record.name)
        done = self.merged()
        done[student] = submission_checksum(folder)
        temporary = self.done_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, self.done_file)  # a kill leaves the old list or the new one, never half


def _source_directory(root: Path) -> str:
    config = (root / "nbgrader_config.py").read_text() if (root / "nbgrader_config.py").exists() else ""
    return "solutions" if "solutions" in config or (root / "solutions").is_dir() else "source"


def _progress(total: int, enabled: bool):  # noqa: ANN202
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, unit="submission", disable=not enabled, file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment", help="the assignment (lesson) id, e.g. 05_scaled_dot_product")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="submissions graded at once (default: half the cores)")
    parser.add_argument("--course", default=".", help="the course root (default: here)")
    args = parser.parse_args(argv)
    root = Path(args.course).resolve()
    if not (root / "gradebook.db").exists():
        parser.error(f"no gradebook.db in {root}: run `nbgrader generate_assignment {args.assignment}` there first")
    outcomes = Batch(root, args.assignment, args.workers).run()
    failed = [o.student for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(failed)} graded, {len(failed)} not graded" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
