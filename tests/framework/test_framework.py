"""The check machinery on small exercises of its own (no lesson's): results that are tensors, trees
of tensors and modules; each way a student's code can go wrong said in words, as fields of a
Failure; timeouts, stderr, salt, requirements, dependencies and typed mistake variants."""

import sys
import warnings
from typing import Literal, NamedTuple

import pytest
import torch
from torch import nn

from course_lib import runtime
from course_lib.grading import framework
from course_lib.grading.framework import (
    Case,
    CheckFailed,
    Exercise,
    GradingEnvironmentError,
    Mistake,
    ModuleSpec,
    Requirement,
    variant,
)

# --- a function returning one tensor -----------------------------------------------------------------


def double(x, factor=2.0):
    return factor * x


def _double_cases(gen):
    return [
        Case("float32", (runtime.randn(3, 4, gen=gen),)),
        Case("factor=0.5", (runtime.randn(5, gen=gen, dtype=torch.float64),), {"factor": 0.5}),
        Case("float64, and its gradient", (runtime.randn(2, 3, gen=gen, dtype=torch.float64),), check_gradients=True),
    ]


DOUBLE = Exercise(
    name="double",
    reference=double,
    make_cases=_double_cases,
    mistakes=(Mistake("ignores `factor`", "multiply by `factor`, not by 2", lambda x, factor=2.0: 2.0 * x),),
)


def _failure(exercise, fn, **kwargs) -> framework.Failure:
    with pytest.raises(CheckFailed) as info:
        exercise.check(fn, **kwargs)
    assert str(info.value) == info.value.failure.message
    assert "Traceback" not in str(info.value)
    return info.value.failure


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch):
    """These fakes build CPU tensors; the device itself is tested in test_runtime.py."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.delenv(framework.HIDDEN_SALT_ENV_VAR, raising=False)


def test_a_correct_function_passes_with_one_line_and_returns_none(capfd):
    assert DOUBLE.check(lambda x, factor=2.0: x * factor) is None
    out, err = capfd.readouterr()
    assert out == "✓ check_double passed: 3 cases on cpu\n" and err == ""


def test_a_known_mistake_is_named_as_fields():
    failure = _failure(DOUBLE, DOUBLE.mistakes[0].function)
    assert (failure.kind, failure.case, failure.mistake) == ("values", "factor=0.5", "ignores `factor`")
    assert failure.hint == "multiply by `factor`, not by 2" and failure.largest_error > 0.1
    assert failure.inputs == "x=(5,) float64, factor=0.5"


def test_jupyter_shows_the_message_without_a_traceback():
    with pytest.raises(CheckFailed) as info:
        DOUBLE.check(DOUBLE.mistakes[0].function)
    lines = info.value._render_traceback_()
    assert lines[0] == '✗ check_double: case "factor=0.5" failed'
    assert "\n".join(lines).removeprefix("✗ ") == str(info.value)
    assert isinstance(info.value, AssertionError)  # nbgrader still sees the cell fail


@pytest.mark.parametrize(
    "fn,kind,words",
    [
        (lambda x, factor=2.0: x.sum(), "shape", "expected shape (3, 4), got ()"),
        (lambda x, factor=2.0: (factor * x).double(), "dtype", "convert the result back with .to(<input>.dtype)"),
        (lambda x, factor=2.0: torch.tensor((factor * x).tolist()), "dtype", "expected dtype torch.float64"),
        (lambda x, factor=2.0: (factor * x).to("meta"), "device", "got it on meta"),
        (lambda x, factor=2.0: (factor * x).tolist(), "type", "build the result with torch operations"),
        (lambda x, factor=2.0: None, "type", "did you forget `return`"),
        (lambda x, factor=2.0: (factor * x).numpy(), "type", "stay in torch"),
        (lambda x, factor=2.0: factor * x * torch.nan, "nan", "NaN at 12 position(s)"),
        (lambda x, factor=2.0: factor * x / 0.0, "inf", "inf at"),
        (lambda x, factor=2.0: (factor * x, x), "structure", "returned a tuple of 2 items"),
    ],
)
def test_a_wrong_result_is_said_in_words(fn, kind, words):
    failure = _failure(DOUBLE, fn)
    assert failure.kind == kind and words in failure.problem, failure.message


def test_a_stub_an_exception_and_an_in_place_change():
    def stub(x, factor=2.0):
        raise NotImplementedError()

    assert _failure(DOUBLE, stub).kind == "not_implemented"

    def pytorch_refuses(x, factor=2.0):  # PyTorch's own NotImplementedError is not an unfinished stub
        return torch.nn.functional.interpolate(x, scale_factor=factor, mode="bicubic")

    failure = _failure(DOUBLE, pytorch_refuses)
    assert failure.kind == "exception" and "raised NotImplementedError" in failure.problem

    def index_error(x, factor=2.0):
        return x[99]

    failure = _failure(DOUBLE, index_error)
    assert failure.kind == "exception" and "raised IndexError" in failure.problem and "return x[99]" in failure.problem

    def in_place(x, factor=2.0):
        return x.mul_(factor)

    assert _failure(DOUBLE, in_place).kind == "in_place"


def test_an_infinite_loop_is_stopped_after_the_exercises_own_timeout():
    def forever(x, factor=2.0):
        while True:
            try:
                pass
            except Exception:  # a student's bare except must not swallow the time limit
                pass

    quick = Exercise("double", double, _double_cases, timeout_s=0.3)
    failure = _failure(quick, forever)
    assert failure.kind == "timeout" and "within 0.3 s" in failure.problem


def test_gradients_cut_off_and_wrong_are_reported():
    def cut_off(x, factor=2.0):
        return torch.tensor((factor * x).tolist(), dtype=x.dtype)

    assert _failure(DOUBLE, cut_off).kind == "gradient"

    class Doubled(torch.autograd.Function):  # right forwards, a wrong backward
        @staticmethod
        def forward(ctx, x):
            return 2.0 * x

        @staticmethod
        def backward(ctx, grad):
            return 3.0 * grad

    failure = _failure(DOUBLE, lambda x, factor=2.0: Doubled.apply(x) if factor == 2.0 else factor * x)
    assert failure.kind == "gradient" and "with respect to `x`" in failure.problem


def test_a_tolerance_override_is_used():
    loose = Exercise("double", double, _double_cases, tolerances={torch.float32: runtime.Tolerance(0.1, 0.1),
                                                                 torch.float64: runtime.Tolerance(0.1, 0.1)})
    nearly = lambda x, factor=2.0: factor * x * 1.01  # noqa: E731
    loose.check(nearly)
    assert _failure(DOUBLE, nearly).kind == "values"


def test_nothing_reaches_stderr_even_from_a_noisy_student(capfd):
    def noisy(x, factor=2.0):
        warnings.warn("a student's warning")
        print("debugging output", file=sys.stderr)
        return factor * x

    DOUBLE.check(noisy)
    with pytest.raises(CheckFailed):
        DOUBLE.check(lambda x, factor=2.0: warnings.warn("w") or x)
    assert capfd.readouterr().err == ""


def test_usage_errors():
    failure = _failure(DOUBLE, None)
    assert failure.kind == "usage" and "needs your function, got NoneType" in failure.problem
    with pytest.raises(ValueError, match="needs a seed"):
        DOUBLE.check(double, hidden=True)


def test_hidden_cases_change_with_the_seed_and_with_the_salt(monkeypatch, capsys):
    def first_input(**kwargs):
        return DOUBLE.cases(**kwargs)[0].args[0]

    assert torch.equal(first_input(), first_input())
    assert not torch.equal(first_input(hidden=True, seed=1), first_input(hidden=True, seed=2))
    unsalted = first_input(hidden=True, seed=1)
    monkeypatch.setenv(framework.HIDDEN_SALT_ENV_VAR, "a secret")
    assert not torch.equal(first_input(hidden=True, seed=1), unsalted)
    assert torch.equal(first_input(), DOUBLE.cases()[0].args[0])  # public cases are never salted
    DOUBLE.check(double, hidden=True, seed=1)
    assert "hidden cases, seed 1 (salted)" in capsys.readouterr().out


# --- a function returning a tree of tensors ------------------------------------------------------


class State(NamedTuple):
    h: torch.Tensor
    c: torch.Tensor


def gates(x):
    return State(torch.tanh(x), torch.sigmoid(x))


GATES = Exercise(
    name="gates",
    reference=gates,
    make_cases=lambda gen: [Case("a vector, and its gradient", (runtime.randn(4, gen=gen, dtype=torch.float64),),
                                 check_gradients=True)],
    mistakes=(Mistake("h and c swapped", "return (h, c) in that order", lambda x: State(torch.sigmoid(x), torch.tanh(x))),),
)


def test_a_tree_passes_as_a_tuple_or_named_tuple():
    GATES.check(lambda x: (torch.tanh(x), torch.sigmoid(x)))
    GATES.check(lambda x: State(h=x.tanh(), c=1 / (1 + torch.exp(-x))))


def test_the_wrong_leaf_is_named():
    failure = _failure(GATES, lambda x: State(torch.tanh(x), torch.sigmoid(x) + 0.5))
    assert failure.leaf == "c" and "in `c`: values differ" in failure.message
    failure = _failure(GATES, lambda x: State(torch.tanh(x), torch.sigmoid(x).float()))
    assert failure.leaf == "c" and failure.kind == "dtype"


def test_a_tree_mistake_is_recognised():
    assert _failure(GATES, lambda x: (torch.sigmoid(x), torch.tanh(x))).mistake == "h and c swapped"


@pytest.mark.parametrize("fn,words", [
    (lambda x: torch.tanh(x), "expected a State of 2 (2 items), got a tensor of shape (4,)"),
    (lambda x: (torch.tanh(x),), "got a tuple of 1"),
])
def test_a_tree_of_the_wrong_structure_is_said_in_words(fn, words):
    failure = _failure(GATES, fn)
    assert failure.kind == "structure" and words in failure.problem, failure.problem


def test_gradients_flow_through_every_leaf():
    failure = _failure(GATES, lambda x: State(torch.tanh(x), torch.sigmoid(x).detach()))
    assert failure.kind == "gradient"


def test_output_names_name_a_plain_tuples_items():
    named = Exercise("pair", lambda x: (x, 2 * x), lambda gen: [Case("c", (runtime.randn(3, gen=gen),))],
                     output_names=("output", "weights"))
    failure = _failure(named, lambda x: (x, 3 * x))
    assert failure.leaf == "weights"
    assert "expected a tuple of 2 (output, weights)" in _failure(named, lambda x: x).problem


# --- a module ------------------------------------------------------------------------------------


class Affine(nn.Module):
    """The reference: y = x Wᵀ + b."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x):
        return x @ self.weight.T + self.bias


def _affine_cases(gen):
    init = {"n_in": 3, "n_out": 2}
    state = {"weight": runtime.randn(2, 3, gen=gen, dtype=torch.float64), "bias": runtime.randn(2, gen=gen, dtype=torch.float64)}
    return [Case("a batch of 4", (runtime.randn(4, 3, gen=gen, dtype=torch.float64),), init=init, state=state,
                 check_gradients=True)]


class NoBias(Affine):
    def forward(self, x):
        return x @ self.weight.T


AFFINE = Exercise(
    name="Affine",
    reference=Affine,
    make_cases=_affine_cases,
    module=ModuleSpec(parameter_names={"weight": "W"}),
    mistakes=(Mistake("the bias is left out", "add self.bias", NoBias),),
)


def _student_affine(forward_fn=lambda self, x: x @ self.W.T + self.bias, extra=False, w_shape=None):
    """A student's class with the weight named `W`; ``forward_fn`` is its forward."""

    class StudentAffine(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.W = nn.Parameter(torch.zeros(w_shape or (n_out, n_in)))
            self.bias = nn.Parameter(torch.zeros(n_out))
            if extra:
                self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return forward_fn(self, x)

    return StudentAffine


def test_a_module_gets_the_references_weights_and_passes_with_parameter_gradients():
    AFFINE.check(_student_affine())


def test_a_modules_mistake_is_named():
    failure = _failure(AFFINE, _student_affine(forward_fn=lambda self, x: x @ self.W.T))
    assert failure.mistake == "the bias is left out"


@pytest.mark.parametrize("student,kind,words", [
    (_student_affine(extra=True), "structure", "parameters the exercise does not ask for: `scale`"),
    (_student_affine(w_shape=(3, 2)), "structure", "`W` has shape (3, 2), expected (2, 3)"),
    (lambda n_in, n_out: "not a module", "type", "does your class inherit from nn.Module"),
    (_student_affine(forward_fn=lambda self, x: x @ self.W.detach().T + self.bias), "gradient", "`parameter weight`"),
])
def test_a_wrong_module_is_said_in_words(student, kind, words):
    failure = _failure(AFFINE, student)
    assert failure.kind == kind and words in failure.problem, failure.message


def test_a_module_without_the_mapped_parameter_is_told_its_names():
    class Plain(Affine):  # the reference's own names, where the exercise asks for `W`
        pass

    failure = _failure(AFFINE, Plain)
    assert "no parameter `W`" in failure.problem and "found `weight`, `bias`" in failure.problem


# --- requirements, dependencies, variants ---------------------------------------------------------


NEEDS_SOMETHING = Exercise(
    "double", double, _double_cases,
    requires=(Requirement("a compiler", lambda: False, "install it with `pip install a-compiler`"),),
)


def test_a_missing_requirement_is_said_in_words_to_a_student():
    failure = _failure(NEEDS_SOMETHING, double)
    assert failure.kind == "requirement" and "pip install a-compiler" in failure.problem


def test_a_missing_requirement_stops_grading_instead_of_scoring(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(GradingEnvironmentError, match="cannot be graded on this machine"):
        NEEDS_SOMETHING.check(double)


QUADRUPLE = Exercise(
    "quadruple", lambda x: 4 * x, lambda gen: [Case("c", (runtime.randn(3, gen=gen),))], depends_on=(DOUBLE,)
)


def test_a_failing_helper_is_blamed_and_a_passing_one_is_not():
    def double(x, factor=2.0):  # noqa: F811 - the student's own, wrong
        return 2.0 * x

    def quadruple(x):
        return double(double(x))

    failure = _failure(QUADRUPLE, quadruple)
    assert failure.kind == "dependency" and failure.blamed == "double" and failure.mistake == "ignores `factor`"
    assert "your `double`, which this function calls, fails its own check" in failure.problem

    def double(x, factor=2.0):  # noqa: F811 - now right
        return factor * x

    QUADRUPLE.check(quadruple)


def knobbed(x, *, how: Literal["right", "wrong"] = "right"):
    return x if how == "right" else -x


def test_a_misspelt_variant_fails_at_import():
    assert variant(knobbed, how="wrong")(torch.ones(1)).item() == -1
    with pytest.raises(ValueError, match="not one of"):
        variant(knobbed, how="wrnog")
    with pytest.raises(TypeError, match="no knob"):
        variant(knobbed, hwo="wrong")


def test_check_functions_are_named_and_documented():
    check = DOUBLE.check_function()
    assert check.__name__ == "check_double" and "double(x, factor=2.0)" in check.__doc__
    assert "class `Affine(n_in, n_out)`" in AFFINE.check_function().__doc__


def test_a_grading_machine_without_a_requirement_stops_before_grading():
    from course_lib.grading.machine import exercises_of, prepare_grading_machine

    with pytest.raises(GradingEnvironmentError, match="a compiler is missing"):
        prepare_grading_machine([DOUBLE, NEEDS_SOMETHING], environ={}, cuda=True)
    environ = {}
    prepare_grading_machine([DOUBLE], environ=environ, cuda=False)
    assert environ == {"TRITON_INTERPRET": "1"}  # Triton kernels graded in the CPU interpreter
    environ = {}
    prepare_grading_machine([DOUBLE], environ=environ, cuda=True)
    assert environ == {}
    assert [e.name for e in exercises_of(["05_scaled_dot_product"])] == [
        "softmax", "attention_weights", "scaled_dot_product_attention"]


def test_judge_gives_the_checks_verdict_on_plain_result_tensors():
    """A process that never ran the student's code judges the tensors that came back from it."""
    device = torch.device("cpu")
    cases = DOUBLE.cases()
    wrong = [2.0 * c.args[0] for c in cases]  # what `ignores factor` returns, as plain tensors
    verdicts = [DOUBLE.judge(c, w, device) for c, w in zip(cases, wrong)]
    assert [v.mistake if v else None for v in verdicts] == [None, "ignores `factor`", None]
    gradient_case = cases[2]
    right = double(gradient_case.args[0])
    # gradients of a fixed weighting of the output, linspace(-1, 1) over its entries: 2 × the weights
    weights = torch.linspace(-1.0, 1.0, right.numel(), dtype=right.dtype).reshape(right.shape)
    assert DOUBLE.judge(gradient_case, right, device, {"x": 2.0 * weights}) is None
    failure = DOUBLE.judge(gradient_case, right, device, {"x": 3.0 * weights})
    assert failure.kind == "gradient" and "with respect to `x`" in failure.problem
