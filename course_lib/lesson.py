"""What a lesson's set-up cell says first: which course_lib it runs with, and on which device.

Each notebook's first code cell (written by ``make release``, :mod:`course_lib.release`) ends with
``start_lesson("NN_slug", released_with="X.Y.Z")``. It prints two lines, on stdout only:

- the installed course_lib's version, and a warning when it is not the one the notebook was released
  with (the checks and references may then not match the notebook: CHANGELOG.md lists what changed);
- the device in words, with the lesson's measured run time on it ("No GPU found: this lesson runs on
  the CPU, about 2 minutes on 2 CPU cores").

Run times are measured by the tests (tests/e2e/test_clean_room.py runs every solution in a fresh
environment) and shipped in ``course_lib/data/lesson_times.json``.
"""

from __future__ import annotations

import json
from importlib import metadata, resources

import torch

from course_lib.runtime import device

TIMES_FILE = "lesson_times.json"


def installed_version() -> str | None:
    """course_lib's version as installed (pip's metadata), or None where it is imported from a checkout."""
    try:
        return metadata.version("course_lib")
    except metadata.PackageNotFoundError:
        return None


def version_line(released_with: str, installed: str | None) -> str:
    if installed == released_with:
        return f"course_lib {installed}, the version this notebook was released with."
    if installed is None:
        return (f"This notebook was released with course_lib {released_with}; the course_lib imported here is "
                "not an installed package, so its version is unknown.")
    return (
        f"WARNING: this notebook was released with course_lib {released_with}, but course_lib {installed} is "
        f"installed: its checks may not match this notebook. Take the notebook released with {installed} "
        f"(CHANGELOG.md says what changed), or install course_lib {released_with} (on Colab: Runtime > "
        "Restart session, then run this cell again)."
    )


def measured_seconds(lesson: str) -> dict[str, tuple[float, str]]:
    """Device kind ("cpu", "cuda") -> (seconds the lesson's solution took, the machine it was measured on)."""
    data = json.loads(resources.files("course_lib").joinpath("data", TIMES_FILE).read_text(encoding="utf-8"))
    return {
        kind: (entry["seconds"][lesson], entry["machine"])
        for kind, entry in data.items()
        if lesson in entry["seconds"]
    }


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"about {minutes} minute{'s' if minutes > 1 else ''}"


def device_line(lesson: str, where: torch.device, times: dict[str, tuple[float, str]]) -> str:
    if where.type == "cuda":
        opening = f"GPU found ({torch.cuda.get_device_name(where)}): this lesson runs on it"
    elif where.type == "mps":
        opening = "This lesson runs on Apple's MPS (COURSE_DEVICE=mps)"
    elif torch.cuda.is_available():
        opening = "This lesson runs on the CPU (COURSE_DEVICE=cpu), though there is a GPU"
    else:
        opening = "No GPU found: this lesson runs on the CPU"
    if where.type in times:
        seconds, machine = times[where.type]
        return f"{opening}, {_minutes(seconds)} ({machine})."
    if "cpu" in times:
        seconds, machine = times["cpu"]
        return f"{opening}; not timed on this kind of device ({_minutes(seconds)} on the CPU, {machine})."
    return f"{opening}; its run time has not been measured yet."


def start_lesson(lesson: str, released_with: str) -> None:
    """Print the course_lib version (warning when it is not ``released_with``) and the device in words."""
    print(version_line(released_with, installed_version()))
    print(device_line(lesson, device(), measured_seconds(lesson)))
