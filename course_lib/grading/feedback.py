"""Feedback that names every test and leaks none: ``nbgrader generate_feedback`` runs
``HiddenTestsRemoved`` (the course's nbgrader_config.py adds it) before it renders a notebook, and
``MathAsMathML``, so that the lessons' formulas show without MathJax's CDN (offline, say).

nbgrader's stock feedback shows each grade cell as it ran, hidden tests included. Here a grade
cell's source keeps its public lines and says how many hidden checks it made; its outputs keep,
for each check, whether it passed and the check's own message (which names the case, shapes and
the known mistake — never expected values), without seeds, tracebacks or code.
"""

from __future__ import annotations

import re
from typing import Any

try:  # the instructor's side: nbgrader comes with the [lab] extra
    from latex2mathml.converter import convert as latex_to_mathml
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


# $$display$$ or $inline$ math, outside code: fenced blocks and `spans` are matched first and kept.
_MATH_OR_CODE = re.compile(r"(?P<code>```.*?```|`[^`\n]*`)|\$\$(?P<display>.+?)\$\$|\$(?P<inline>[^$\n]+?)\$", re.S)


def math_as_mathml(markdown: str) -> str:
    """``markdown`` with each LaTeX formula replaced by MathML, which browsers draw by themselves.

    nbgrader's feedback page loads MathJax from a CDN to typeset ``$…$``; without a network its
    formulas stay raw TeX. A formula latex2mathml cannot read is left as it was.
    """
    def replace(match: re.Match) -> str:
        if match.group("code"):
            return match.group(0)
        display = match.group("display") is not None
        try:
            mathml = latex_to_mathml(match.group("display" if display else "inline"),
                                     display="block" if display else "inline")
        except Exception:  # noqa: BLE001 - keep the TeX for MathJax where it is online
            return match.group(0)
        return f"\n\n{mathml}\n\n" if display else mathml

    return _MATH_OR_CODE.sub(replace, markdown)


class MathAsMathML(NbGraderPreprocessor):
    """Markdown cells with their formulas in MathML (see ``math_as_mathml``)."""

    def preprocess_cell(self, cell: Any, resources: Any, index: int) -> tuple[Any, Any]:
        if cell.cell_type == "markdown":
            cell.source = math_as_mathml(cell.source)
        return cell, resources
