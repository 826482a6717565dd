"""The machinery every ``check_<name>`` shares: an ``Exercise`` and how it is checked.

An ``Exercise`` names the reference (a function, or an ``nn.Module`` class), builds its cases from a
seed, lists the known mistakes (each a working implementation *of the mistake*) and the shortcuts
that would be the answer. ``Exercise.check(fn)`` calls the student's function (or builds the
student's module with the reference's weights) on each case, and either prints one "passed" line
or raises ``CheckFailed``, an ``AssertionError`` that carries a structured ``Failure``:

* the case, the input shapes and dtypes, the output leaf that is wrong and the largest error;
* the name of the known mistake whose output (or gradient) the student's matches, with a hint;
* wrong type, structure, shape, dtype or device said in words; a student's exception, NaN, a
  shortcut, an unfinished helper or an infinite loop reported as such, never as a traceback.

Cases, calls and results are plain data — tensors and options — so a process outside the
student's kernel can replay an exercise's cases (``cases``) and judge results (``judge``) itself.
Inputs are drawn on the CPU from a seeded generator, then moved to ``runtime.device()``, where the
reference also runs. Nothing is written to stderr: nbgrader gives a grade cell with any stderr
output zero points.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import hashlib
import inspect
import io
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from course_lib import runtime
from course_lib.memory import track_live_memory
from course_lib.grading import policy, student_code
from course_lib.grading.replay_worker import gradient_inputs, weighted_gradients
from course_lib.grading.compare import Mismatch, close_trees, compare_trees, compare_values, flatten, tolerance_for
from course_lib.grading.student_code import StudentFailed, call_student, quiet, time_limit
from course_lib.shortcuts import Forbidden

# The course is open, so anyone can draw the hidden cases of `hidden=True, seed=N` and tabulate the
# answers. Where this variable is set, hidden seeds are mixed with that secret. The course's autograde
# keeps it out of the student's kernel (course_lib/grading/sandbox.py): there it seeds the cases of
# the outside verdict (course_lib/grading/outside.py), which the notebook never sees.
HIDDEN_SALT_ENV_VAR = "COURSE_HIDDEN_SALT"
_MAX_MESSAGE_VALUES = 3


# --- what an exercise is made of ------------------------------------------------------------------


@dataclass
class Case:
    """One call: positional tensors and keyword options, as a student would write it.

    Module exercises add ``init`` (the constructor's keywords) and ``state`` (the reference's
    parameters, by the reference's names), which both the reference and the student's module get.
    """

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    check_gradients: bool = False
    init: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer: its name, a hint to fix it, and an implementation of it (with the
    reference's signature; a class for module exercises)."""

    name: str
    hint: str
    function: Callable[..., Any]


def variant(function: Callable[..., Any], **knobs: Any) -> Callable[..., Any]:
    """``function`` with ``knobs`` set — one known mistake of a reference computation written with
    knobs. Every knob annotated ``Literal[...]`` is checked here, at import: a misspelt variant
    fails loudly instead of silently equalling the reference."""
    hints = typing.get_type_hints(function)
    parameters = inspect.signature(function).parameters
    for name, value in knobs.items():
        if name not in parameters:
            raise TypeError(f"{function.__name__} has no knob {name!r}")
        allowed = typing.get_args(hints.get(name)) if typing.get_origin(hints.get(name)) is typing.Literal else None
        if allowed is not None and value not in allowed:
            raise ValueError(f"{function.__name__}({name}={value!r}): not one of {allowed}")
    return functools.partial(function, **knobs)


@dataclass(frozen=True)
class Behaviour:
    """A property the output must have that values alone could fake (e.g. causality, linear memory).

    ``test(call, device, gen)`` calls the student's function through ``call`` and returns None
    when the property holds, or a sentence saying how it is broken. In a module exercise ``call``
    also takes ``init`` and ``state`` (as a ``Case``'s): it builds the student's module with them and
    returns its output (the first item of a tuple). ``call.measured(*args)`` gives
    ``(result, used_bytes)``: the call under ``no_grad``, and the memory it used. In the kernel (the
    instant check) that is the most bytes of tensor storage alive at once (``course_lib.memory``); for
    the recorded grade, the memory the replay worker's process touched during the call, counted by the
    grader from outside it (``touched_memory``). A bound written for the first holds for the second:
    memory reused within a call is touched once.
    """

    name: str
    test: Callable[[Callable[..., Any], torch.device, torch.Generator], str | None]


@dataclass(frozen=True)
class Requirement:
    """Something an exercise needs beyond the course's own packages (e.g. Triton)."""

    name: str
    available: Callable[[], bool]
    how: str  # what to do where it is missing


@dataclass(frozen=True)
class ModuleSpec:
    """How a student's ``nn.Module`` is matched with the reference's.

    ``parameter_names`` maps a reference parameter's name to the student's where the exercise lets
    them differ (e.g. ``{"weight_ih": "W_ih"}``); other parameters keep the reference's names.
    """

    parameter_names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# --- what a failed check carries -----------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why a check failed, as fields (tests assert on these, students read ``message``).

    ``kind``: exception | timeout | shortcut | not_implemented | type | structure | shape | device |
    dtype | nan | inf | values | in_place | gradient | behaviour | dependency | requirement | usage |
    refused (the notebook's code uses what ``grading.policy`` refuses; decided outside the kernel).
    """

    exercise: str
    kind: str
    problem: str
    case: str | None = None
    inputs: str | None = None
    leaf: str | None = None
    largest_error: float | None = None
    mistake: str | None = None
    hint: str | None = None
    blamed: str | None = None  # an earlier graded function, called by this one, that fails its own check
    detail: str | None = None  # the blamed function's own failure message
    behaviour: str | None = None

    @property
    def message(self) -> str:
        label = f"check_{self.exercise}"
        if self.kind in ("dependency", "requirement", "usage", "refused"):
            return f"{label}: {self.problem}"
        if self.behaviour:
            lines = [f'{label}: behaviour "{self.behaviour}" failed', f"  {self.problem}"]
        else:
            where = f"in `{self.leaf}`: " if self.leaf else ""
            lines = [f'{label}: case "{self.case}" failed', f"  inputs: {self.inputs}", f"  {where}{self.problem}"]
        if self.mistake:
            lines.append(f"  This looks like a known mistake: {self.mistake}.")
        if self.hint:
            lines.append(f"  Hint: {self.hint}")
        return "\n".join(lines)


class CheckFailed(AssertionError):
    """A failed check: ``str()`` is the message; ``.failure`` holds its fields.

    In Jupyter the message is shown alone, without a traceback through the checker (IPython
    renders ``_render_traceback_`` when an exception has one); the cell still fails, as nbgrader
    needs it to.
    """

    def __init__(self, failure: Failure):
        super().__init__(failure.message)
        self.failure = failure

    def _render_traceback_(self) -> list[str]:
        return ["✗ " + self.failure.message.split("\n")[0], *self.failure.message.split("\n")[1:]]


class GradingEnvironmentError(RuntimeError):
    """The grading machine lacks what an exercise needs: grading must stop, not give 0 or full points."""


# --- the exercise ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """One graded function or module. ``check`` is what ``check_<name>`` calls."""

    name: str  # the function or class the student writes
    reference: Callable[..., Any]  # a function, or an nn.Module class
    make_cases: Callable[[torch.Generator], list[Case]]
    mistakes: tuple[Mistake, ...] = ()
    forbidden: Forbidden = Forbidden()
    behaviours: tuple[Behaviour, ...] = ()
    output_names: tuple[str, ...] | None = None  # names of a returned tuple's items, for messages
    module: ModuleSpec | None = None  # set for module exercises
    depends_on: tuple["Exercise", ...] = ()  # earlier exercises whose function this one may call
    requires: tuple[Requirement, ...] = ()
    timeout_s: float | None = None  # per call; None: student_code.CALL_TIMEOUT_SECONDS
    tolerances: Mapping[torch.dtype, runtime.Tolerance] = field(default_factory=lambda: MappingProxyType({}))
    public_seed: int = 0
    # Turns what the student passes into the function the cases call (e.g. a Triton kernel piece into
    # a function of tensors, by running it inside a provided kernel); None: called as it is.
    adapt: Callable[[Any], Any] | None = None
    # True where ``adapt`` only refuses (e.g. a class built on course_lib's cells) and otherwise passes
    # the student's object on: the replay worker, where course_lib cannot be imported, needs no adapting.
    adapt_only_refuses: bool = False
    # What does ``adapt``'s work in the replay worker, where course_lib cannot be imported:
    # (a module of ``replay_worker.BESIDE``, a function of it in ``replay_worker.ADAPTERS``, keyword
    # arguments), called as function(student_object, **kwargs). None: the grade is decided in the kernel.
    adapt_outside: tuple[str, str, Mapping[str, Any]] | None = None

    # -- the public entry point --

    def check(self, fn: Any, *, hidden: bool = False, seed: int | None = None) -> None:
        """Check ``fn``; print one line if it passes, raise ``CheckFailed`` if not. Returns None
        (nbgrader would read a number as partial credit)."""
        __tracebackhide__ = True
        failure, total, where = self._verdict(fn, hidden, seed)
        if failure:
            raise CheckFailed(failure)
        print(f"✓ check_{self.name} passed: {total} {where} on {runtime.device().type}")

    def check_function(self) -> Callable[..., None]:
        """``check_<name>``, a plain function with its own name and docstring, for the notebooks."""

        def check(fn: Any, *, hidden: bool = False, seed: int | None = None) -> None:
            __tracebackhide__ = True
            self.check(fn, hidden=hidden, seed=seed)

        what = "class" if self.module else "function"
        check.__name__ = check.__qualname__ = f"check_{self.name}"
        check.__doc__ = (
            f"Check your {what} `{self.name}{_signature(self)}` against the course's reference.\n\n"
            f"Prints one line if it passes; raises AssertionError saying what is wrong if not.\n"
            f"Grade cells add hidden cases: check_{self.name}({self.name}, hidden=True, seed=N)."
        )
        return check

    # -- plain data: cases to replay, results to judge --

    def cases(self, *, hidden: bool = False, seed: int | None = None) -> list[Case]:
        """The cases a check runs, drawn on the CPU: public ones, or hidden ones for ``seed``."""
        return self.make_cases(runtime.generator(self._draw_seed(hidden, seed)))

    def expected(self, case: Case, device: torch.device, *, with_grad: bool = False) -> tuple[Any, tuple, Any]:
        """The reference's result for ``case`` on ``device``: (result, inputs, module or None)."""
        return self._result_of(self.reference, case, device, with_grad)

    def _result_of(self, implementation: Callable[..., Any], case: Case, device: torch.device,
                   with_grad: bool) -> tuple[Any, tuple, Any]:
        """What a trusted implementation (the reference or a mistake) gives for ``case``."""
        args, kwargs = _to_device(case.args, device), _to_device(case.kwargs, device)
        if with_grad:
            args = tuple(_requires_grad(a) for a in args)
        if self.module:
            module = _load_state(implementation(**case.init), case.state, {}, device)
            return module(*args, **kwargs), args, module
        return implementation(*args, **kwargs), args, None

    # -- the steps --

    def _draw_seed(self, hidden: bool, seed: int | None) -> int:
        case_seed = self.public_seed if seed is None else int(seed)
        return _salted(case_seed) if hidden else case_seed

    def _verdict(self, fn: Any, hidden: bool, seed: int | None) -> tuple[Failure | None, int, str]:
        if not callable(fn):
            thing = "class" if self.module else "function"
            return self._usage(
                f"needs your {thing}, got {type(fn).__name__} — run the cell that defines "
                f"`{self.name}` and pass the {thing} itself: check_{self.name}({self.name})"
            ), 0, ""
        if hidden and seed is None:
            raise ValueError(f"check_{self.name}(..., hidden=True) needs a seed")
        missing = [r for r in self.requires if not r.available()]
        if missing:
            problem = "; ".join(f"{r.name} is missing here: {r.how}" for r in missing)
            if os.environ.get("NBGRADER_EXECUTION") == "autograde":
                raise GradingEnvironmentError(f"check_{self.name} cannot be graded on this machine: {problem}")
            return Failure(self.name, "requirement", f"this exercise needs {problem}"), 0, ""
        refused = policy.function_refusals(fn)
        if refused:
            return Failure(self.name, "refused", policy.explain(refused)), 0, ""
        failure = self._check_dependencies(fn, hidden, seed)
        if failure:
            return failure, 0, ""
        if self.adapt is not None:
            fn = self.adapt(fn)
        device = runtime.device()
        draw_seed = self._draw_seed(hidden, seed)
        with quiet():
            cases = self.cases(hidden=hidden, seed=seed)
            failure = next((f for f in (self._run_case(fn, c, device) for c in cases) if f), None)
            if failure is None:
                failure = next(
                    (f for f in (self._run_behaviour(fn, b, device, draw_seed) for b in self.behaviours) if f), None
                )
        case_seed = self.public_seed if seed is None else int(seed)
        where = f"hidden cases, seed {case_seed}" if hidden else "cases"
        if hidden and draw_seed != case_seed:
            where += " (salted)"
        return failure, len(cases) + len(self.behaviours), where

    def _usage(self, problem: str) -> Failure:
        return Failure(self.name, "usage", problem)

    def _check_dependencies(self, fn: Any, hidden: bool, seed: int | None) -> Failure | None:
        """An earlier graded function that ``fn`` calls must pass its own check first, so that the
        message blames it and not the function being checked."""
        for earlier in self.depends_on:
            helper = _called_helper(fn, earlier.name)
            if helper is None:
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                failure, _, _ = earlier._verdict(helper, hidden, seed)
            if failure:
                if failure.kind == "dependency":  # the earlier function's own helper is to blame
                    blamed, detail = failure.blamed, failure.detail
                    via = f", which your `{earlier.name}` calls,"
                else:
                    blamed, detail, via = earlier.name, failure.message, ""
                thing = "class" if self.module else "function"
                return Failure(
                    self.name, "dependency",
                    f"your `{blamed}`{via or f', which this {thing} calls,'} fails its own check — fix it first "
                    f"(run check_{blamed}({blamed}) to see it alone):\n  " + detail.replace("\n", "\n  "),
                    case=failure.case, mistake=failure.mistake, blamed=blamed, detail=detail,
                )
        return None

    def _call(self, fn: Any, case: Case, args: tuple, kwargs: dict, device: torch.device) -> tuple[Any, Any]:
        """The student's result (and module, for module exercises)."""
        if not self.module:
            return call_student(self.name, fn, args, kwargs, self.forbidden, self.timeout_s), None
        module = self._build_module(fn, case.init, case.state, device)
        return call_student(self.name, module, args, kwargs, self.forbidden, self.timeout_s), module

    def _build_module(self, fn: Any, init: dict, state: dict | None, device: torch.device) -> nn.Module:
        """The student's module, built with ``init`` and given the reference's ``state``."""
        module = call_student(self.name, fn, (), dict(init), self.forbidden, self.timeout_s)
        if not isinstance(module, nn.Module):
            raise StudentFailed("type", f"{self.name}(...) built a {type(module).__name__}, not an nn.Module — "
                                "does your class inherit from nn.Module?")
        try:
            _load_state(module, state, self.module.parameter_names, device)
        except ValueError as error:
            raise StudentFailed("structure", str(error)) from None
        return module

    def _run_case(self, fn: Any, case: Case, device: torch.device) -> Failure | None:
        """Call the student's code on ``case`` (and take its gradients), then judge them as ``judge`` does,
        with the reference run once."""
        args, kwargs = _to_device(case.args, device), _to_device(case.kwargs, device)
        originals = _to_device(args, device), _to_device(kwargs, device)  # copies to compare with
        if case.check_gradients:
            args = tuple(_requires_grad(a) for a in args)
        names = _input_names(self)
        fail = self._fail(case)
        try:
            actual, module = self._call(fn, case, args, kwargs, device)
        except StudentFailed as failed:
            return fail(failed.kind, failed.problem, hint=failed.hint)
        changed = _changed_inputs(originals, (args, kwargs), names)
        if changed:
            return fail("in_place", f"your function changed its input `{changed}` in place — work on new tensors")
        reference = self.expected(case, device, with_grad=case.check_gradients)
        failure = self._judge_values(case, actual, device, reference[0])
        if failure or not case.check_gradients:
            return failure
        if not any(t.grad_fn is not None for _, t in _float_leaves(actual)):
            return fail("gradient", "your output is cut off from autograd (no gradient reaches the inputs) — "
                        "avoid .detach(), .numpy(), .item() and torch.tensor(...) on intermediate results")
        renamed = {v: k for k, v in self.module.parameter_names.items()} if self.module else {}
        seconds = self.timeout_s or student_code.CALL_TIMEOUT_SECONDS
        try:
            with time_limit(seconds):
                gradients = _gradients(actual, args, module, names, renamed)
        except student_code.Timeout:
            return fail("timeout", f"the backward pass did not finish within {seconds:g} s")
        except Exception as error:  # noqa: BLE001
            return fail("gradient", f"the backward pass through your function raised {type(error).__name__}: {error}")
        return self._judge_gradients(case, actual, gradients, reference, device)

    def judge(self, case: Case, result: Any, device: torch.device, gradients: dict | None = None) -> Failure | None:
        """The verdict on a student's ``result`` for ``case`` (and, for a gradient case, its
        ``gradients`` by input name), against the reference run here: plain tensors in, so a process
        that never ran the student's code can judge what came back from it."""
        reference = self.expected(case, device, with_grad=case.check_gradients)
        failure = self._judge_values(case, result, device, reference[0])
        if failure or not case.check_gradients:
            return failure
        return self._judge_gradients(case, result, gradients or {}, reference, device)

    def _fail(self, case: Case) -> Callable[..., Failure]:
        return functools.partial(Failure, self.name, case=case.name, inputs=_describe_call(case, _input_names(self)))

    def _judge_values(self, case: Case, result: Any, device: torch.device, expected: Any) -> Failure | None:
        mismatch = compare_trees(result, expected, device, self._tolerances, self.output_names)
        if not mismatch:
            return None
        mistake = self._matching_mistake(
            lambda m: close_trees(result, self._result_of(m.function, case, device, False)[0], device, self._tolerances)
        )
        return self._failure(self._fail(case), mismatch, mistake)

    def _judge_gradients(self, case: Case, result: Any, gradients: dict, reference: tuple, device: torch.device
                         ) -> Failure | None:
        expected, ref_args, ref_module = reference
        names = _input_names(self)
        for name, grad in _gradients(expected, ref_args, ref_module, names, {}).items():
            if gradients.get(name) is None:
                return self._fail(case)(
                    "gradient", f"no gradient reaches `{name}` through your function — does it, or a function "
                    "it calls, use .detach(), .numpy(), .item() or torch.tensor(...) on the way?")
            mismatch = compare_values(gradients[name], grad, tolerance_for(grad.dtype, device, self._tolerances))
            if mismatch:
                def same_mistake(mistake: Mistake) -> bool:  # the same outputs and the same gradient
                    wrong, m_args, m_module = self._result_of(mistake.function, case, device, True)
                    if not close_trees(result, wrong, device, self._tolerances):
                        return False
                    wrong_grad = _gradients(wrong, m_args, m_module, names, {}).get(name)
                    return wrong_grad is not None and compare_values(
                        gradients[name], wrong_grad, tolerance_for(grad.dtype, device, self._tolerances)) is None

                problem = f"the gradient with respect to `{name}` is wrong: {mismatch.problem}"
                mismatch = Mismatch("gradient", problem, None, mismatch.largest_error)
                return self._failure(self._fail(case), mismatch, self._matching_mistake(same_mistake))
        return None

    @property
    def _tolerances(self) -> dict:
        return dict(self.tolerances)

    def _failure(self, fail: Callable[..., Failure], mismatch: Mismatch, mistake: Mistake | None) -> Failure:
        return fail(
            mismatch.kind, mismatch.problem, leaf=mismatch.leaf, largest_error=mismatch.largest_error,
            mistake=mistake.name if mistake else None, hint=mistake.hint if mistake else None,
        )

    def _matching_mistake(self, matches: Callable[[Mistake], bool]) -> Mistake | None:
        for mistake in self.mistakes:
            try:
                with quiet():
                    if matches(mistake):
                        return mistake
            except Exception:  # noqa: BLE001 - a mistake that cannot run on this case does not match
                continue
        return None

    def _run_behaviour(self, fn: Any, behaviour: Behaviour, device: torch.device, seed: int) -> Failure | None:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.module:
                module = self._build_module(fn, kwargs.pop("init"), kwargs.pop("state"), device)
                result = call_student(self.name, module, args, kwargs, self.forbidden, self.timeout_s)
                result = result[0] if isinstance(result, tuple) and result else result
            else:
                result = call_student(self.name, fn, args, kwargs, self.forbidden, self.timeout_s)
            if not isinstance(result, torch.Tensor):
                raise StudentFailed("type", f"expected a torch.Tensor, got {type(result).__name__}")
            return result.detach()

        def measured(*args: Any, **kwargs: Any) -> tuple[Any, int]:
            with torch.no_grad(), track_live_memory() as memory:
                result = call(*args, **kwargs)
            return result, memory.peak_bytes

        call.measured = measured

        try:
            problem = behaviour.test(call, device, runtime.generator(seed + 1))
        except StudentFailed as failed:
            problem = failed.problem
        return Failure(self.name, "behaviour", problem, behaviour=behaviour.name) if problem else None


# --- helpers ---------------------------------------------------------------------------------------


def _salted(seed: int) -> int:
    salt = os.environ.get(HIDDEN_SALT_ENV_VAR, "")
    if not salt:
        return seed
    digest = hashlib.sha256(f"{salt}:{seed}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # a 56-bit seed


def _signature(exercise: Exercise) -> str:
    target = exercise.reference.__init__ if exercise.module else exercise.reference
    parameters = list(inspect.signature(target).parameters.values())
    if exercise.module:
        parameters = parameters[1:]  # without self
    return "(" + ", ".join(str(p).split(":")[0] if p.default is p.empty else f"{p.name}={p.default!r}" for p in parameters) + ")"


def _called_helper(fn: Any, name: str) -> Callable[..., Any] | None:
    """The student's own ``name`` that ``fn`` calls as a global of the notebook (or a variable of an
    enclosing function), if any; ``x.name`` attributes do not count."""
    target = fn.forward if inspect.isclass(fn) and hasattr(fn, "forward") else fn
    code = getattr(target, "__code__", None)
    if code is None:
        return None
    loads = {(i.opname, i.argval) for i in dis.get_instructions(code)}
    if ("LOAD_DEREF", name) in loads and name in code.co_freevars:
        helper = target.__closure__[code.co_freevars.index(name)].cell_contents
    elif ("LOAD_GLOBAL", name) in loads:
        helper = target.__globals__.get(name)
    else:
        return None
    return helper if callable(helper) and helper is not fn else None


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device).clone()
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _requires_grad(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().clone().requires_grad_(True)
    return value


def _load_state(module: nn.Module, state: dict[str, torch.Tensor] | None, names: Mapping[str, str], device: torch.device) -> nn.Module:
    """Copy ``state`` (by the reference's names; ``names`` maps to the module's own) into
    ``module``, on ``device`` and in the state's dtype. ValueError says what does not fit."""
    state = state or {}
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    own = dict(module.named_parameters())
    wanted = {names.get(k, k): k for k in state}
    missing = [n for n in wanted if n not in own]
    if missing:
        raise ValueError(f"your module has no parameter {', '.join(f'`{n}`' for n in missing)}; it should have "
                         f"{', '.join(f'`{n}`' for n in wanted)} (found {', '.join(f'`{n}`' for n in own) or 'none'})")
    extra = [n for n in own if n not in wanted]
    if extra:
        raise ValueError(f"your module has parameters the exercise does not ask for: "
                         f"{', '.join(f'`{n}`' for n in extra)} (expected {', '.join(f'`{n}`' for n in wanted)})")
    with torch.no_grad():
        for own_name, ref_name in wanted.items():
            if own[own_name].shape != state[ref_name].shape:
                raise ValueError(f"your parameter `{own_name}` has shape {tuple(own[own_name].shape)}, expected "
                                 f"{tuple(state[ref_name].shape)}")
            own[own_name].copy_(state[ref_name])
    return module


def _float_leaves(result: Any) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in flatten(result) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _gradients(result: Any, args: tuple, module: nn.Module | None, names: list[str], renamed: Mapping[str, str]) -> dict:
    """Gradients of a fixed weighting of every output entry, with respect to the floating inputs and
    (for modules) the parameters — named as the reference names them — so every entry of the
    output matters (the replay worker computes the same, outside the student's kernel)."""
    return weighted_gradients(result, gradient_inputs(args, names, module, dict(renamed)))


def _changed_inputs(originals: tuple[tuple, dict], current: tuple[tuple, dict], names: list[str]) -> str | None:
    (old_args, old_kwargs), (new_args, new_kwargs) = originals, current
    pairs = list(zip(names, old_args, new_args))
    pairs += [(k, old_kwargs[k], new_kwargs[k]) for k in old_kwargs]
    for name, old, new in pairs:
        if isinstance(old, torch.Tensor) and not torch.equal(old.nan_to_num(), new.detach().nan_to_num()):
            return name
    return None


def _input_names(exercise: Exercise) -> list[str]:
    target = exercise.reference.forward if exercise.module else exercise.reference
    names = list(inspect.signature(target).parameters)
    return names[1:] if exercise.module else names  # forward's self


def _describe_call(case: Case, names: list[str]) -> str:
    parts = [f"{k}={v!r}" for k, v in (case.init or {}).items()]
    parts += [f"{name}={_describe(v)}" for name, v in zip(names, case.args)]
    parts += [f"{k}={_describe(v)}" for k, v in case.kwargs.items()]
    return ", ".join(parts)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= _MAX_MESSAGE_VALUES:
            return f"tensor({value.tolist()}, dtype={value.dtype})"
        return f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return repr(value)
