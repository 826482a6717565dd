"""Students' copies of the lessons, in work/ (run by `make lab`).

Each lesson of notebooks/ is copied into work/ the first time only and never overwritten, so `git pull`
and `make release` leave a student's answers alone. When notebooks/ later holds another release of a
lesson (an erratum: its cells differ from those the student's copy was made from), this says so and
how to take it: a fresh copy beside the student's, which stays as it is.

A copy carries the Python version of the interpreter running this (the venv's, whose kernel `make lab`
starts) in ``metadata.language_info``: the release carries the rest of what the kernel reports, so
JupyterLab, which writes the kernel's ``language_info`` into a notebook on opening, finds it already
there and does not mark the notebook modified.

Run: ``python -m course_lib.work notebooks work``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def kernel_python_version() -> str:
    """The Python version ipykernel reports in its ``language_info``, for this interpreter."""
    return sys.version.split()[0]


def copy_lesson(lesson_dir: Path, destination: Path) -> None:
    """Copy a released lesson's folder, its notebook's ``language_info`` completed with this Python's version."""
    shutil.copytree(lesson_dir, destination)
    notebook = destination / f"{lesson_dir.name}.ipynb"
    if notebook.is_file():
        nb = json.loads(notebook.read_text(encoding="utf-8"))
        nb.setdefault("metadata", {}).setdefault("language_info", {})["version"] = kernel_python_version()
        # nbformat's own layout, so that the copy differs from the release by this one field
        notebook.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _course_metadata(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("course", {})


def _as_numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def update_work(notebooks: Path, work: Path) -> list[str]:
    """Copy new lessons from ``notebooks`` into ``work``; return what to tell the student, line by line."""
    messages = []
    work.mkdir(exist_ok=True)
    for lesson_dir in sorted(p for p in notebooks.iterdir() if p.is_dir()):
        lesson = lesson_dir.name
        mine = work / lesson
        if not mine.exists():
            copy_lesson(lesson_dir, mine)
            messages.append(f"copied {lesson} into {work.name}/")
            continue
        released, copy = lesson_dir / f"{lesson}.ipynb", mine / f"{lesson}.ipynb"
        if not released.is_file() or not copy.is_file():
            continue
        new, old = _course_metadata(released), _course_metadata(copy)
        if not new.get("release") or new.get("release") == old.get("release"):
            continue
        new_version, old_version = new.get("version", "?"), old.get("version", "an earlier version")
        newer = "a newer" if _as_numbers(new_version) >= _as_numbers(old.get("version", "0")) else "another"
        fresh = mine / f"{lesson}-{new_version}-{new['release'][:8]}.ipynb"
        how = (f"a fresh copy is already beside it: {fresh}" if fresh.exists()
               else f"for a fresh copy beside it: cp {released} {fresh}")
        messages.append(
            f"{lesson}: notebooks/ holds {newer} release (course {new_version}) than your copy in {work.name}/ "
            f"(course {old_version}). Your copy is kept as it is; CHANGELOG.md says what changed; {how}"
        )
    return messages


def main(argv: list[str] | None = None) -> None:
    notebooks, work = (Path(a) for a in (argv if argv is not None else sys.argv[1:]))
    for line in update_work(notebooks, work):
        print(line)


if __name__ == "__main__":
    main()
