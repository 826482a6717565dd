"""The machinery every ``check_<function>`` shares.

An ``Exercise`` names the reference, builds its cases from a seed, lists the known mistakes (each a
working implementation *of the mistake*) and the PyTorch callables that would be the answer.
``run_check`` calls the student's function on each case and either prints one "passed" line or
raises ``AssertionError`` with a message a student can act on:

* the case, the input shapes and dtypes, the largest error and where it is;
* the name of the known mistake whose output the student's matches, with a hint;
* wrong type, shape, dtype or device said in words; a student's exception, NaN, a shortcut or an
  infinite loop reported as such, never as a traceback from inside the checker.

Inputs are drawn on the CPU from a seeded generator, then moved to ``runtime.device()`` (the GPU
when there is one), where the reference also runs. Nothing is written to stderr: nbgrader gives a
grade cell with any stderr output zero points.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import re
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from course_lib import runtime
from course_lib.shortcuts import ShortcutUsed, forbid

# One call of the student's function may take this long before it is stopped.
CALL_TIMEOUT_SECONDS = 10.0
# The course is open, so anyone can draw the hidden cases of `hidden=True, seed=N` and tabulate the
# answers. An instructor who sets this variable while autograding mixes a secret into every hidden
# seed: the hidden inputs can then not be known in advance.
HIDDEN_SALT_ENV_VAR = "COURSE_HIDDEN_SALT"
_MAX_MESSAGE_VALUES = 3
_TYPE_HINTS = {
    "NoneType": " — did you forget `return`?",
    "ndarray": " — stay in torch (torch.exp, .sum, ...) so the result keeps its device and gradients",
    "list": " — build the result with torch operations instead of a Python list",
}


@dataclass
class Case:
    """One call: positional tensors and keyword options, as a student would write it."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    check_gradients: bool = False


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer: its name, a hint to fix it, and an implementation of it."""

    name: str
    hint: str
    function: Callable[..., Any]


@dataclass(frozen=True)
class Behaviour:
    """A property the output must have that values alone could fake (e.g. causality).

    ``test(call, device, gen)`` calls the student's function through ``call`` and returns None
    when the property holds, or a sentence saying how it is broken.
    """

    name: str
    test: Callable[[Callable[..., Any], torch.device, torch.Generator], str | None]


@dataclass(frozen=True)
class Exercise:
    name: str
    reference: Callable[..., Any]
    make_cases: Callable[[torch.Generator], list[Case]]
    mistakes: tuple[Mistake, ...] = ()
    forbidden: dict[Callable[..., Any], str] = field(default_factory=dict)
    forbidden_references: tuple[Callable[..., Any], ...] = ()
    forbidden_operators: dict[str, str] = field(default_factory=dict)  # ATen names, e.g. "_softmax"
    behaviours: tuple[Behaviour, ...] = ()
    public_seed: int = 0


class _StudentFailed(Exception):
    """The student's function raised, looped or took a shortcut; ``str`` says which, in words."""


def run_check(exercise: Exercise, fn: Any, *, hidden: bool = False, seed: int | None = None) -> None:
    """Check ``fn`` against ``exercise``; print one line if it passes, raise AssertionError if not."""
    __tracebackhide__ = True
    label = f"check_{exercise.name}"
    if not callable(fn):
        raise AssertionError(
            f"{label} needs your function, got {type(fn).__name__} — run the cell that defines "
            f"`{exercise.name}` and pass the function itself: {label}({exercise.name})"
        )
    if hidden and seed is None:
        raise ValueError(f"{label}(..., hidden=True) needs a seed")
    case_seed = exercise.public_seed if seed is None else int(seed)
    draw_seed = _salted(case_seed) if hidden else case_seed
    device = runtime.device()
    problem = None
    with _quiet():
        cases = exercise.make_cases(runtime.generator(draw_seed))
        for case in cases:
            problem = _run_case(exercise, fn, case, device)
            if problem:
                break
        else:
            for behaviour in exercise.behaviours:
                problem = _run_behaviour(exercise, fn, behaviour, device, draw_seed)
                if problem:
                    break
    if problem:
        raise AssertionError(f"{label}: {problem}")
    total = len(cases) + len(exercise.behaviours)
    where = f"hidden cases, seed {case_seed}" if hidden else "cases"
    if hidden and draw_seed != case_seed:
        where += " (salted)"
    print(f"✓ {label} passed: {total} {where} on {device.type}")


def _salted(seed: int) -> int:
    salt = os.environ.get(HIDDEN_SALT_ENV_VAR, "")
    if not salt:
        return seed
    digest = hashlib.sha256(f"{salt}:{seed}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # a 56-bit seed


# --- one case ---------------------------------------------------------------------------------


def _run_case(exercise: Exercise, fn: Any, case: Case, device: torch.device) -> str | None:
    ref_args, ref_kwargs = _to_device(case.args, device), _to_device(case.kwargs, device)
    expected = exercise.reference(*ref_args, **ref_kwargs)
    args, kwargs = _to_device(case.args, device), _to_device(case.kwargs, device)
    originals = _to_device(args, device), _to_device(kwargs, device)  # copies to compare with
    if case.check_gradients:
        args = tuple(_requires_grad(a) for a in args)
    names = _parameter_names(exercise)
    intro = f'case "{case.name}" failed\n  inputs: {_describe_call(case, names)}\n '
    try:
        actual = _call_student(exercise, fn, args, kwargs)
    except _StudentFailed as failure:
        return f"{intro} {failure}"
    changed = _changed_inputs(originals, (args, kwargs), names)
    if changed:
        return f"{intro} your function changed its input `{changed}` in place — work on new tensors"
    problem = _compare(actual, expected, device)
    if problem:
        return f"{intro} {problem}{_diagnose(exercise, actual, ref_args, ref_kwargs, device)}"
    if case.check_gradients:
        problem = _compare_gradients(exercise, actual, args, ref_args, ref_kwargs, names)
        if problem:
            return f"{intro} {problem}"
    return None


def _call_student(exercise: Exercise, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    try:
        forbidden = forbid(exercise.forbidden, exercise.forbidden_references, exercise.forbidden_operators)
        with forbidden, _time_limit():
            return fn(*args, **kwargs)
    except ShortcutUsed as error:
        raise _StudentFailed(str(error)) from None
    except _Timeout:
        raise _StudentFailed(
            f"your function did not return within {CALL_TIMEOUT_SECONDS:g} s — is there a loop "
            "that never ends?"
        ) from None
    except NotImplementedError as error:
        frame = _student_frame(error)
        if frame is not None and frame.name not in (exercise.name, "<lambda>"):
            raise _StudentFailed(
                f"your function calls `{frame.name}`, which still raises NotImplementedError — "
                f"finish `{frame.name}` (and pass its check) first"
            ) from None
        raise _StudentFailed(
            "your function still raises NotImplementedError — replace "
            "`raise NotImplementedError()` with your code"
        ) from None
    except Exception as error:  # noqa: BLE001 - any exception of the student's is reported
        raise _StudentFailed(
            f"your function raised {type(error).__name__}: {error}{_where_student_failed(error)}"
        ) from None


def _compare(actual: Any, expected: torch.Tensor, device: torch.device) -> str | None:
    if isinstance(actual, tuple):
        return (
            f"your function returned a tuple of {len(actual)} items; return only the tensor "
            f"of shape {tuple(expected.shape)}"
        )
    if not isinstance(actual, torch.Tensor):
        return (
            f"expected a torch.Tensor of shape {tuple(expected.shape)}, got "
            f"{type(actual).__name__}" + _TYPE_HINTS.get(type(actual).__name__, "")
        )
    if actual.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}"
    if actual.device != expected.device:
        return (
            f"expected the result on {expected.device} (where the inputs are), got it on "
            f"{actual.device} — create new tensors with device=<input>.device"
        )
    if actual.dtype != expected.dtype:
        return (
            f"expected dtype {expected.dtype} (the inputs' dtype), got {actual.dtype} — "
            f"create new tensors with dtype=<input>.dtype"
        )
    return _compare_values(actual.detach(), expected.detach(), runtime.tolerance(expected.dtype, device))


def _compare_values(actual: torch.Tensor, expected: torch.Tensor, tol: runtime.Tolerance) -> str | None:
    if tol.close(actual, expected):
        return None
    bad_nan = torch.isnan(actual) & ~torch.isnan(expected)
    if bad_nan.any():
        return (
            f"your result has NaN at {int(bad_nan.sum())} position(s) where the answer is a number, "
            f"first at index {_index(bad_nan)}"
        )
    bad_inf = torch.isinf(actual) & ~torch.isinf(expected)
    if bad_inf.any():
        return f"your result has inf at {int(bad_inf.sum())} position(s), first at index {_index(bad_inf)}"
    if torch.isnan(expected).any() and not torch.isnan(actual).any():
        return "the answer has NaN here (the input has NaN); yours does not"
    error = (actual.double() - expected.double()).abs().nan_to_num(0.0)
    where = torch.unravel_index(error.argmax(), error.shape)
    where = tuple(int(i) for i in where)
    largest = error.max().item()
    digits = 6 if largest > 1e-4 else 12  # enough digits for the two numbers to differ visibly
    message = (
        f"values differ: largest error {largest:.3g} at index {where} "
        f"(expected {expected[where].item():.{digits}g}, got {actual[where].item():.{digits}g}; "
        f"tolerance rtol={tol.rtol:g}, atol={tol.atol:g})"
    )
    if expected.dtype == torch.float64 and largest < 1e-4:
        message += (
            "\n  Hint: an error this small on float64 inputs is float32 rounding — is part of your "
            "computation in float32 (a .float(), or a new tensor made without dtype=<input>.dtype)?"
        )
    return message


def _compare_gradients(
    exercise: Exercise,
    actual: torch.Tensor,
    student_args: tuple,
    ref_args: tuple,
    ref_kwargs: dict,
    names: list[str],
) -> str | None:
    if actual.grad_fn is None:
        return (
            "your output is cut off from autograd (no gradient reaches the inputs) — avoid "
            ".detach(), .numpy(), .item() and torch.tensor(...) on intermediate results"
        )
    ref_args = tuple(_requires_grad(a) for a in ref_args)
    expected = exercise.reference(*ref_args, **ref_kwargs)
    weights = torch.linspace(-1.0, 1.0, expected.numel(), dtype=expected.dtype, device=expected.device)
    weights = weights.reshape(expected.shape)  # a fixed direction, so every entry matters
    inputs = [a for a in student_args if isinstance(a, torch.Tensor) and a.requires_grad]
    try:
        with _time_limit():
            student_grads = torch.autograd.grad((actual * weights).sum(), inputs, allow_unused=True)
    except _Timeout:
        return f"the backward pass did not finish within {CALL_TIMEOUT_SECONDS:g} s"
    except Exception as error:  # noqa: BLE001
        return f"the backward pass through your function raised {type(error).__name__}: {error}"
    ref_inputs = [a for a in ref_args if isinstance(a, torch.Tensor) and a.requires_grad]
    ref_grads = torch.autograd.grad((expected * weights).sum(), ref_inputs, allow_unused=True)
    for name, mine, theirs in zip(names, student_grads, ref_grads):
        if mine is None:
            return (
                f"no gradient reaches `{name}` through your function — does it, or a function it "
                "calls, use .detach(), .numpy(), .item() or torch.tensor(...) on the way?"
            )
        problem = _compare_values(mine, theirs, runtime.tolerance(theirs.dtype, theirs.device))
        if problem:
            return f"the gradient with respect to `{name}` is wrong: {problem}"
    return None


def _diagnose(exercise: Exercise, actual: Any, args: tuple, kwargs: dict, device: torch.device) -> str:
    if not isinstance(actual, torch.Tensor):
        return ""
    actual = actual.detach()
    for mistake in exercise.mistakes:
        try:
            with _quiet():
                wrong = mistake.function(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a mistake that cannot run on this case does not match
            continue
        if not isinstance(wrong, torch.Tensor) or wrong.shape != actual.shape:
            continue
        if wrong.dtype == actual.dtype and wrong.device == actual.device:
            tol = runtime.tolerance(actual.dtype, device)
            if tol.close(actual, wrong.detach()):
                return f"\n  This looks like a known mistake: {mistake.name}.\n  Hint: {mistake.hint}"
    return ""


def _run_behaviour(exercise: Exercise, fn: Any, behaviour: Behaviour, device: torch.device, seed: int):
    def call(*args: Any, **kwargs: Any) -> Any:
        result = _call_student(exercise, fn, args, kwargs)
        if not isinstance(result, torch.Tensor):
            raise _StudentFailed(f"expected a torch.Tensor, got {type(result).__name__}")
        return result.detach()

    try:
        problem = behaviour.test(call, device, runtime.generator(seed + 1))
    except _StudentFailed as failure:
        problem = str(failure)
    return f'behaviour "{behaviour.name}" failed\n  {problem}' if problem else None


# --- helpers ----------------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised inside the student's function when its time is up (BaseException: not swallowed
    by a student's ``except Exception``)."""


@contextlib.contextmanager
def _time_limit() -> Iterator[None]:
    """Interrupt the block after CALL_TIMEOUT_SECONDS (SIGALRM; only in the main thread, on Unix)."""
    seconds = CALL_TIMEOUT_SECONDS
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings and no stderr while checking: nbgrader zeroes a grade cell that writes there."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# Advice for an exception, chosen by a pattern in the student's failing line or in the error.
_EXCEPTION_HINTS = (
    (re.compile(r"\.T\b"), "on a tensor with batch dimensions `.T` reverses *all* dimensions; "
     "swap the last two with .transpose(-2, -1) or .mT"),
    (re.compile(r"\.numpy\(|np\.|requires grad"),
     "NumPy has no bfloat16, no GPU tensors and no gradients: stay in torch"),
    (re.compile(r"leaf Variable that requires grad is being used in an in-place operation"),
     "your function changes one of its inputs in place (`x -= ...`, `x.exp_()`): work on new tensors"),
)


def _student_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the traceback that is the student's (not course_lib's or torch's)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__)
        if "course_lib" not in f.filename and "/torch/" not in f.filename
    ]
    return frames[-1] if frames else None


def _where_student_failed(error: BaseException) -> str:
    """' (line N of your code: `text`)', and advice where the line shows a known pitfall."""
    frame = _student_frame(error)
    if frame is None:
        return ""
    line = (frame.line or "").strip()
    where = f" (line {frame.lineno} of your code" + (f": `{line}`)" if line else ")")
    for pattern, hint in _EXCEPTION_HINTS:
        if pattern.search(line) or pattern.search(str(error)):
            return f"{where}\n  Hint: {hint}"
    return where


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


def _changed_inputs(
    originals: tuple[tuple, dict], current: tuple[tuple, dict], names: list[str]
) -> str | None:
    (old_args, old_kwargs), (new_args, new_kwargs) = originals, current
    pairs = list(zip(names, old_args, new_args))
    pairs += [(k, old_kwargs[k], new_kwargs[k]) for k in old_kwargs]
    for name, old, new in pairs:
        if isinstance(old, torch.Tensor) and not torch.equal(old.nan_to_num(), new.detach().nan_to_num()):
            return name
    return None


def _parameter_names(exercise: Exercise) -> list[str]:
    return list(inspect.signature(exercise.reference).parameters)


def _index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _describe_call(case: Case, names: list[str]) -> str:
    parts = [f"{name}={_describe(v)}" for name, v in zip(names, case.args)]
    parts += [f"{k}={_describe(v)}" for k, v in case.kwargs.items()]
    return ", ".join(parts)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= _MAX_MESSAGE_VALUES:
            return f"tensor({value.tolist()}, dtype={value.dtype})"
        return f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return repr(value)
