"""nbgrader_config.py prepares the grading machine before autograde, and only then."""

import runpy
import sys
from pathlib import Path

import pytest

from course_lib.grading import machine

Config = pytest.importorskip("traitlets.config").Config  # the GPU image has no Jupyter
CONFIG = Path(__file__).resolve().parents[2] / "nbgrader_config.py"


@pytest.mark.parametrize("argv,prepared", [
    (["nbgrader", "autograde", "05_scaled_dot_product", "--force"], ["softmax", "attention_weights", "scaled_dot_product_attention"]),
    (["nbgrader", "generate_assignment", "05_scaled_dot_product"], None),
])
def test_autograde_prepares_the_machine_for_the_assignments_exercises(argv, prepared, monkeypatch):
    calls = []
    monkeypatch.setattr(machine, "prepare_grading_machine", lambda exercises: calls.append([e.name for e in exercises]))
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(CONFIG), init_globals={"get_config": Config})
    assert calls == ([prepared] if prepared else [])
