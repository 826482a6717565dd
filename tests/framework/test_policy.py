"""What graded code may not use (course_lib.grading.policy): each way below the shortcut guard is refused
with its line and a reason, what the lessons need is not, and no solution's own cells are refused."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from course_lib.grading import check_attention_weights, policy

REPO = Path(__file__).resolve().parents[2]

REFUSED = {
    "a private PyTorch attribute": ("with torch._C.DisableTorchFunction():\n    pass", "line 1: `._C`, a private part"),
    "a private module": ("from torch.utils._python_dispatch import _disable_current_modes",
                         "the module `torch.utils._python_dispatch`: `._python_dispatch`, a private part"),
    "a private name imported": ("from torch import _C", "`._C`, a private part of a library (graded code uses public "
                                "APIs) (from torch)"),
    "a private ATen operator": ("torch.ops.aten._softmax(x, -1, False)", "`._softmax`, a private part"),
    "a dunder attribute": ("().__class__.__base__.__subclasses__()", "`.__subclasses__`, the interpreter's own"),
    "a dynamic builtin": ("f = getattr(torch, 'nn')", "line 1: `getattr`, which reaches any attribute"),
    "eval": ("x = 1\ny = eval('x')", "line 2: `eval`"),
    "a dunder name": ("__builtins__['print']('hi')", "`__builtins__`, the interpreter's own machinery"),
    "a module not on the list": ("import threading", "the module `threading`, which graded code may not import"),
    "a module the student wrote": ("import my_helpers", "the module `my_helpers`, which graded code may not import"),
    "a relative import": ("from . import helpers", "a relative import (.)"),
    "a module a library re-exports": ("torch.os.system('true')", "`.os`, which can run code outside the checks"),
    "torch.library": ("import torch.library", "the module `torch.library`: `.library`"),
    "torch.compile": ("fast = torch.compile(f)", "`.compile`, which can run code outside the checks"),
    "a frame": ("g = (i for i in ())\ng.gi_frame.f_back", "line 2: `.f_back`"),
    "a pattern that reads an attribute": ("match torch:\n    case object(_C=c):\n        pass",
                                          "line 2: `._C`, a private part"),
    # What a red team got past the first version of this reading, each passing the outside verdict then:
    "a tensor subclass's hook": ("class Later(torch.Tensor):\n    @classmethod\n    def __torch_dispatch__(cls, f, t, a=(), k=None):\n"
                                 "        pass", "line 3: a method `__torch_dispatch__`, a hook that libraries call"),
    "a library patched at a cell's top level": ("Overload = type(torch.ops.aten.add.default)\nOverload.overloadpacket = None",
                                                "line 2: an assignment to `Overload.overloadpacket`"),
    "an attribute of an object of its own": ("out = torch.empty(0)\nout.inputs = (1, 2)", "an assignment to `out.inputs`"),
    "a string that reaches any attribute": ("import string\nreach = string.Formatter().get_field",
                                            "line 1: the module `string`, which graded code may not import"),
    "a resolver reached by attribute": ("x = numpy.get_field", "`.get_field`, which can run code outside"),
    "a class built from strings": ("Hook = type('Hook', (torch.Tensor,), {})", "`type(name, bases, namespace)`"),
    "type under another name": ("make = type\nHook = make('Hook', (torch.Tensor,), {})", "line 1: `type` other than"),
    "a metaclass": ("class Hook(torch.Tensor, metaclass=builder):\n    pass", "a metaclass for `Hook`"),
    "a dataclass built from a dict": ("import dataclasses\nH = dataclasses.make_dataclass('H', [], namespace={})",
                                      "`.make_dataclass`"),
    # What a third red team used to read and write any memory of the replay worker:
    "a view past an array's end": ("import numpy\nv = numpy.lib.stride_tricks.as_strided(a, (1 << 30,), (1,))",
                                   "`.as_strided`"),
    "the addresses an array spans": ("start, end = numpy.byte_bounds(a)", "`.byte_bounds`"),
    "an array over any address": ("class At:\n    __array_interface__ = {'data': (1, False)}", "`__array_interface__`"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_each_way_below_the_guard_is_refused_with_its_line(name):
    source, expected = REFUSED[name]
    found = policy.refusals(source)
    assert any(expected in line for line in found), found


ALLOWED = '''
from __future__ import annotations
import math
import torch
import torch.nn.functional as F
from torch import nn
import numpy as np
import triton
import triton.language as tl
from course_lib.plots import attention_heatmap


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.proj.weight.requires_grad = True

    def __repr__(self):
        return f"Attention({type(self).__name__})"

    def forward(self, x):
        return F.relu(self.proj(x)) / math.sqrt(x.shape[-1])


@triton.jit
def step(q, k):
    return tl.dot(q, k) * tl.math.exp2(1.0)


if __name__ == "__main__":
    print(torch.__version__, type(Attention).__name__, np.zeros(2))
'''


def test_what_the_lessons_need_is_allowed():
    assert policy.refusals(ALLOWED) == []


def test_code_that_does_not_parse_is_left_to_python():
    assert policy.refusals("def broken(:\n") == []


def _notebooks() -> list[Path]:
    return sorted((REPO / "solutions").glob("*/*.ipynb")) + sorted((REPO / "tests/e2e/fixture_course").rglob("*.ipynb"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_no_solution_cell_is_refused(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    cells = policy.student_cells(nb)
    assert cells, "no answer cells found"
    for index, source in cells:
        plain = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        assert policy.refusals(plain) == [], (index, source)


def test_only_the_cells_a_student_controls_are_read():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os", metadata={"nbgrader": {"locked": True, "grade": False, "solution": False}}),
        nbformat.v4.new_code_cell("check_x(x)", metadata={"nbgrader": {"grade": True, "solution": False}}),
        nbformat.v4.new_code_cell("def x(): ...", metadata={"nbgrader": {"solution": True}}),
        nbformat.v4.new_code_cell("import sys"),  # a cell the student added
        nbformat.v4.new_markdown_cell("import os"),
    ])
    assert [index for index, _ in policy.student_cells(nb)] == [2, 3]


DISABLES_THE_MODES = textwrap.dedent('''
    import torch
    import torch.nn.functional as F


    def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
        from torch.utils._python_dispatch import _disable_current_modes
        identity = torch.eye(k.shape[-2], dtype=q.dtype).expand(*k.shape[:-1], k.shape[-2])
        with torch._C.DisableTorchFunction(), _disable_current_modes():
            return F.scaled_dot_product_attention(q, k, identity, attn_mask=attn_mask, is_causal=is_causal,
                                                  scale=scale)
''')


def test_the_in_kernel_check_refuses_a_function_that_switches_the_guard_off(tmp_path, monkeypatch):
    module = tmp_path / "student_answer.py"  # a file, so that inspect finds the source, as IPython's cells are found
    module.write_text(DISABLES_THE_MODES)
    monkeypatch.syspath_prepend(str(tmp_path))
    import student_answer  # noqa: PLC0415

    torch.manual_seed(0)
    with pytest.raises(AssertionError) as info:
        check_attention_weights(student_answer.attention_weights)
    failure = info.value.failure
    assert failure.kind == "refused", failure
    assert "`._C`, a private part of a library" in failure.message
    assert "`torch.utils._python_dispatch`" in failure.message

