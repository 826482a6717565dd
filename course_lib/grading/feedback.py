"""Feedback that names every test and leaks none: ``nbgrader generate_feedback`` runs
``HiddenTestsRemoved`` (the course's nbgrader_config.py adds it) before it renders a notebook.

nbgrader's stock feedback shows each grade cell as it ran, hidden tests included. Here a grade
cell's source keeps its public lines and says how many hidden checks it made; its outputs keep,
for each check, whether it passed and the check's own message (which names the case, shapes and
the known mistake — never expected values), without seeds, tracebacks or code.
"""

from __future__ import annotations

import re
from typing import Any

try:  # the instructor's side: nbgrader comes with the [lab] extra
    from nbformat import NotebookNode
    from nbgrader.preprocessors import NbGraderPreprocessor
except ImportError as error:
    raise ImportError(f"feedback needs nbgrader: pip install -e '.[lab]' ({error})") from error

from course_lib.grading.outside import check_calls

_BEGIN, _END = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
_SEED = re.compile(r"hidden cases, seed \d+( \(salted\))?")


def public_source(source: str) -> str:
    """A grade cell's source with its hidden region replaced by a line that counts its checks."""
    kept, hidden, inside = [], [], False
    for line in source.split("\n"):
        if _BEGIN in line:
            inside = True
        elif _END in line:
            inside = False
            count = len(check_calls("\n".join(hidden)))
            kept.append(f"# ... and {count} hidden check{'s' * (count != 1)} (their results are below)")
            hidden = []
        elif inside:
            hidden.append(line)
        else:
            kept.append(line)
    return "\n".join(kept)


def public_outputs(outputs: list[Any]) -> list[NotebookNode]:
    """Each check's pass line or failure message, seeds and tracebacks left out."""
    shown = []
    for output in outputs:
        if output.get("output_type") == "stream":
            text = _SEED.sub("hidden cases", output.get("text", ""))
            shown.append(NotebookNode(output_type="stream", name="stdout", text=text))
        elif output.get("output_type") == "error":
            message = _SEED.sub("hidden cases", f"{output.get('ename')}: {output.get('evalue')}")
            shown.append(NotebookNode(output_type="error", ename=output.get("ename", ""),
                                      evalue=message, traceback=[message]))
    return shown


class HiddenTestsRemoved(NbGraderPreprocessor):
    """Grade cells as a student may see them: public code, every test's verdict and message."""

    def preprocess_cell(self, cell: Any, resources: Any, index: int) -> tuple[Any, Any]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("grade"):
            cell.source = public_source(cell.source)
            cell.outputs = public_outputs(cell.get("outputs", []))
        return cell, resources
