"""`make release`: every lesson found in solutions/ gets the course's set-up cells, then nbgrader's
release, then the release is normalised. Idempotent: a second run changes nothing.

What it writes, from the one place the course's version and repository live (pyproject.toml's
``[project]`` ``version`` and ``[project.urls]`` ``Repository``):

- into each solution, as its first cells: an "Open in Colab" link to the lesson's release at the
  version's tag (only where a GitHub repository is set: no address, no link), and a locked set-up
  cell that installs course_lib at this version on Colab only and then calls
  :func:`course_lib.lesson.start_lesson`, which says which version and device the lesson runs with;
  and the version in the notebook's metadata (``metadata.course``);
- into each release, after ``nbgrader generate_assignment``: the notebook metadata JupyterLab's
  Python kernel would write on opening (so opening it does not mark it modified), and a digest of
  the release's cells, by which ``make lab`` tells a student's copy from a newer release
  (:mod:`course_lib.work`).

Run: ``python -m course_lib.release [NN_slug ...]`` from the repository root (all lessons by default).
Only the standard library is used here; nbgrader is run as its command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: JupyterLab (the [lab] extra, which releasing needs) brings tomli
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

LINK_CELL_ID = "course-colab-link"
SETUP_CELL_ID = "course-setup"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# What ipykernel reports as its language (the Python version aside), and JupyterLab writes into the
# notebook's metadata as soon as the kernel starts: a release without it shows as modified on opening.
PYTHON_LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
}
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
SETUP_NBGRADER = {
    "grade": False, "grade_id": "course_setup", "locked": True, "schema_version": 3, "solution": False, "task": False,
}


@dataclass(frozen=True)
class Course:
    """The course's version and public repository (None until it is published), from pyproject.toml."""

    version: str
    repository: str | None

    @classmethod
    def from_pyproject(cls, path: Path) -> Course:
        if tomllib is None:
            raise ImportError("reading pyproject.toml on Python 3.10 needs tomli: pip install -e '.[lab]'")
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        urls = project.get("urls", {})
        repository = urls.get("Repository") or urls.get("repository")
        return cls(version=project["version"], repository=repository.rstrip("/") if repository else None)

    @property
    def tag(self) -> str:
        return f"v{self.version}"

    @property
    def github(self) -> str | None:
        """``owner/name`` where the repository is on GitHub (the only host Colab opens notebooks from)."""
        match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?", self.repository or "")
        return match.group(1) if match else None

    def colab_url(self, lesson: str) -> str | None:
        if self.github is None:
            return None
        return f"https://colab.research.google.com/github/{self.github}/blob/{self.tag}/notebooks/{lesson}/{lesson}.ipynb"

    def pip_requirement(self) -> str | None:
        return f"course_lib @ git+{self.repository}@{self.tag}" if self.repository else None


# --- notebooks as JSON, written exactly as nbformat (and so nbgrader) writes them ------------------


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def notebook_text(nb: dict) -> str:
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_if_changed(path: Path, nb: dict) -> bool:
    text = notebook_text(nb)
    if path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def _lines(text: str) -> list[str]:
    """A cell's source as nbformat stores it: a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


# --- the solution's set-up cells ---------------------------------------------------------------------


def link_cell_source(course: Course, lesson: str) -> str | None:
    url = course.colab_url(lesson)
    return None if url is None else f"[![Open In Colab]({COLAB_BADGE})]({url})"


def setup_cell_source(course: Course, lesson: str) -> str:
    requirement = course.pip_requirement()
    if requirement is None:
        install = (
            '    raise RuntimeError("this notebook names no repository to install course_lib from: upload course_lib\'s "\n'
            '                       "wheel to Colab, `pip install` it, and run this cell again")\n'
        )
    else:
        install = (
            '    kept = [f"{name}=={metadata.version(name)}" for name in ("torch", "ipywidgets")]  # Colab\'s own\n'
            f'    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", {json.dumps(requirement)}, *kept], check=True)\n'
            "    importlib.invalidate_caches()  # so that this session imports it straight away\n"
        )
    return (
        f"# Set-up. On Google Colab, this installs the course's package, course_lib {course.version}, and keeps\n"
        "# Colab's own torch and ipywidgets; elsewhere the course is installed already (`make lab`, conda).\n"
        "import importlib\n"
        "import subprocess\n"
        "import sys\n"
        "from importlib import metadata\n"
        "\n"
        'on_colab = "google.colab" in sys.modules\n'
        "try:\n"
        '    installed = metadata.version("course_lib")\n'
        "except metadata.PackageNotFoundError:\n"
        "    installed = None\n"
        f"if on_colab and installed != {json.dumps(course.version)}:\n"
        f"{install}"
        "\n"
        "from course_lib.lesson import start_lesson\n"
        "\n"
        f"start_lesson({json.dumps(lesson)}, released_with={json.dumps(course.version)})"
    )


def prepare_solution(nb: dict, lesson: str, course: Course) -> dict:
    """The solution with its first cells the Colab link (where there is an address) and the set-up
    cell, both as this course version writes them, and ``metadata.course`` set. Idempotent."""
    cells = [c for c in nb["cells"] if c.get("id") not in (LINK_CELL_ID, SETUP_CELL_ID)]
    setup = {
        "cell_type": "code", "execution_count": None, "id": SETUP_CELL_ID,
        "metadata": {"nbgrader": dict(SETUP_NBGRADER)}, "outputs": [],
        "source": _lines(setup_cell_source(course, lesson)),
    }
    first = [setup]
    link = link_cell_source(course, lesson)
    if link is not None:
        first.insert(0, {"cell_type": "markdown", "id": LINK_CELL_ID, "metadata": {}, "source": _lines(link)})
    metadata = dict(nb["metadata"], course={"lesson": lesson, "version": course.version})
    return dict(nb, cells=first + cells, metadata=metadata)


def missing_setup(nb: dict, lesson: str, course: Course) -> list[str]:
    """What ``prepare_solution`` would change in this solution, in words (empty: it is up to date)."""
    expected = prepare_solution(nb, lesson, course)
    problems = []
    for index, cell in enumerate(expected["cells"][:2]):
        if cell.get("id") in (LINK_CELL_ID, SETUP_CELL_ID) and nb["cells"][index:index + 1] != [cell]:
            problems.append(f"cell {index} is not the {cell['id']} cell of course_lib {course.version}")
    if nb["cells"] != expected["cells"] and not problems:
        problems.append("a stale Colab link or set-up cell is left")
    if nb["metadata"].get("course") != expected["metadata"]["course"]:
        problems.append(f"metadata.course is {nb['metadata'].get('course')!r}, not {expected['metadata']['course']!r}")
    return problems


# --- the release ------------------------------------------------------------------------------------


def release_digest(nb: dict) -> str:
    """A digest of what a release gives students: its cells' ids, kinds and sources."""
    content = [(c.get("id"), c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:16]


def normalise_release(nb: dict, course: Course) -> dict:
    """The release with the metadata JupyterLab's Python kernel would add on opening, and its digest.

    ``language_info.version`` is left out: it is the student's Python, not known in advance (JupyterLab
    writes it once, on the first save the student makes anyway).
    """
    language_info = dict(PYTHON_LANGUAGE_INFO, **{k: v for k, v in nb["metadata"].get("language_info", {}).items()
                                                  if k == "version"})
    course_meta = dict(nb["metadata"].get("course", {}), version=course.version, release=release_digest(nb))
    metadata = dict(nb["metadata"], kernelspec=dict(KERNELSPEC), language_info=language_info, course=course_meta)
    return dict(nb, metadata=metadata)


def notebook_path(folder: Path, lesson: str) -> Path:
    return folder / lesson / f"{lesson}.ipynb"


def lessons_in(solutions: Path) -> list[str]:
    return sorted(p.name for p in solutions.iterdir() if notebook_path(solutions, p.name).is_file())


def release(root: Path, lessons: list[str] | None = None, nbgrader: str | None = None) -> None:
    """Prepare every solution, generate its release with nbgrader, and normalise the release."""
    course = Course.from_pyproject(root / "pyproject.toml")
    solutions, notebooks = root / "solutions", root / "notebooks"
    nbgrader = nbgrader or str(Path(sys.executable).with_name("nbgrader"))
    for lesson in lessons or lessons_in(solutions):
        source = notebook_path(solutions, lesson)
        if write_if_changed(source, prepare_solution(read_notebook(source), lesson, course)):
            print(f"{lesson}: set-up cells of course_lib {course.version} written into solutions/")
        subprocess.run([nbgrader, "generate_assignment", lesson, "--force"], cwd=root, check=True)
        released = notebook_path(notebooks, lesson)
        write_if_changed(released, normalise_release(read_notebook(released), course))


# --- measured run times, which the set-up cell prints (course_lib.lesson) ---------------------------

TIMES_PATH = Path(__file__).resolve().parent / "data" / "lesson_times.json"


def record_times(measured: Path, shipped: Path = TIMES_PATH) -> dict:
    """Merge the run times a clean-room test measured (``{"device", "machine", "seconds": {lesson: s}}``)
    into the shipped table (``{device: {"machine", "seconds"}}``); lessons not measured keep theirs."""
    run = json.loads(measured.read_text(encoding="utf-8"))
    table = json.loads(shipped.read_text(encoding="utf-8")) if shipped.exists() else {}
    entry = table.setdefault(run["device"], {"machine": run["machine"], "seconds": {}})
    if entry["machine"] != run["machine"]:  # another machine: its times replace the old machine's
        entry.update(machine=run["machine"], seconds={})
    entry["seconds"].update({lesson: round(s, 1) for lesson, s in run["seconds"].items()})
    entry["seconds"] = dict(sorted(entry["seconds"].items()))
    shipped.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return table


README_TIMES = ("<!-- lesson times: written by `make lesson-times` -->", "<!-- end of lesson times -->")


def times_table(table: dict) -> str:
    """The README's table of measured run times, one row per lesson measured on any device."""
    lessons = sorted({lesson for entry in table.values() for lesson in entry["seconds"]})
    kinds = [("cpu", "CPU"), ("cuda", "GPU")]
    header = " | ".join(f"{name} ({table[kind]['machine']})" if kind in table else f"{name} (not measured)"
                        for kind, name in kinds)
    rows = [f"| lesson | {header} |", "|---|---|---|"]
    for lesson in lessons:
        cells = [f"{table[kind]['seconds'][lesson]:.0f} s" if lesson in table.get(kind, {}).get("seconds", {})
                 else "–" for kind, _ in kinds]
        rows.append(f"| {lesson} | {' | '.join(cells)} |")
    return "\n".join([README_TIMES[0], *rows, README_TIMES[1]])


def write_readme_times(readme: Path, table: dict) -> None:
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_TIMES[0]), text.index(README_TIMES[1]) + len(README_TIMES[1])
    readme.write_text(text[:start] + times_table(table) + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="NN_slug of the lessons to release (default: every lesson)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the course's repository (default: here)")
    parser.add_argument("--record-times", type=Path, metavar="MEASURED_JSON",
                        help="only merge these measured run times into course_lib/data/lesson_times.json "
                             "and README.md's table")
    args = parser.parse_args(argv)
    if args.record_times:
        write_readme_times(args.root / "README.md", record_times(args.record_times))
    else:
        release(args.root, args.lessons)


if __name__ == "__main__":
    main()
