"""The feedback's grade cells: public code, a count of the hidden checks, verdicts without seeds."""

import pytest

pytest.importorskip("nbgrader", reason="needs nbgrader (the [lab] extra)")

from nbformat import NotebookNode  # noqa: E402

from course_lib.grading.feedback import math_as_mathml, public_outputs, public_source  # noqa: E402

GRADE_CELL = """from course_lib.grading import check_softmax
check_softmax(softmax)
### BEGIN HIDDEN TESTS
check_softmax(softmax, hidden=True, seed=1)
check_softmax(softmax, hidden=True, seed=2)
### END HIDDEN TESTS"""


def test_the_hidden_region_becomes_a_count_of_its_checks():
    source = public_source(GRADE_CELL)
    assert "hidden=True" not in source and "seed" not in source
    assert source.splitlines() == [
        "from course_lib.grading import check_softmax",
        "check_softmax(softmax)",
        "# ... and 2 hidden checks (their results are below)",
    ]


def test_a_cell_without_hidden_tests_is_unchanged():
    assert public_source("check_softmax(softmax)") == "check_softmax(softmax)"


def test_outputs_keep_verdicts_and_messages_but_no_seed_or_traceback():
    outputs = [
        NotebookNode(output_type="stream", name="stdout",
                     text="✓ check_softmax passed: 5 cases on cpu\n✓ check_softmax passed: 5 hidden cases, seed 1 (salted) on cpu\n"),
        NotebookNode(output_type="error", ename="CheckFailed", evalue="check_softmax: case \"x\" failed",
                     traceback=["  File secret.py, line 3, in <module>", "check_softmax(softmax, hidden=True, seed=2)"]),
        NotebookNode(output_type="display_data", data={"text/plain": "expected tensor([...])"}, metadata={}),
    ]
    shown = public_outputs(outputs)
    text = "".join(o.get("text", "") + o.get("evalue", "") + "".join(o.get("traceback", [])) for o in shown)
    assert "seed" not in text and "secret.py" not in text and "expected" not in text
    assert "✓ check_softmax passed: 5 hidden cases on cpu" in text
    assert 'check_softmax: case "x" failed' in text
    assert [o.output_type for o in shown] == ["stream", "error"]


def test_formulas_become_mathml_and_code_keeps_its_dollars():
    shown = math_as_mathml("Scores $e_{ij}$ then\n$$c_i = \\sum_j \\alpha_{ij} h_j$$\nand `x = \"$5\"` and\n```\nprint('$a$')\n```")
    assert shown.count("<math") == 2 and 'display="block"' in shown and "<msub>" in shown
    assert "`x = \"$5\"`" in shown and "print('$a$')" in shown  # code is left alone
    assert "$" not in shown.replace("`x = \"$5\"`", "").replace("print('$a$')", "")
    assert math_as_mathml("$\\frac{1}{$") == "$\\frac{1}{$"  # what latex2mathml cannot read stays TeX
