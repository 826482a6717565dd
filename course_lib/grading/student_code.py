"""Running a student's code safely inside a check: a time limit, no shortcuts, no stderr, and
every way it can go wrong (an exception, an unfinished stub, a loop, a shortcut) said in words.

``call_student`` is the one door through which a check calls student code; it raises
``StudentFailed`` carrying a ``Failure`` (framework's structured verdict) when the call goes wrong.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from course_lib.shortcuts import Forbidden, ShortcutUsed

# One call of the student's function may take this long before it is stopped (an Exercise may
# set its own ``timeout_s``).
CALL_TIMEOUT_SECONDS = 10.0


class StudentFailed(Exception):
    """The student's code raised, looped or took a shortcut: ``kind`` and ``problem`` say which."""

    def __init__(self, kind: str, problem: str, hint: str | None = None):
        super().__init__(problem)
        self.kind, self.problem, self.hint = kind, problem, hint


class Timeout(BaseException):
    """Raised inside the student's code when its time is up (a BaseException, so that a student's
    ``except Exception`` cannot swallow it)."""


def call_student(
    name: str,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    forbidden: Forbidden,
    timeout_s: float | None = None,
) -> Any:
    """``fn(*args, **kwargs)`` with ``forbidden`` refused and a time limit; ``name`` is the function
    the student was asked to write (to tell it apart from a helper it calls)."""
    seconds = CALL_TIMEOUT_SECONDS if timeout_s is None else timeout_s
    try:
        with forbidden.refused(), time_limit(seconds):
            return fn(*args, **kwargs)
    except ShortcutUsed as error:
        raise StudentFailed("shortcut", str(error)) from None
    except Timeout:
        raise StudentFailed(
            "timeout", f"your function did not return within {seconds:g} s — is there a loop that never ends?"
        ) from None
    except NotImplementedError as error:
        if not _raised_by_student(error):  # PyTorch's own NotImplementedError: an error like any other
            where, hint = where_student_failed(error)
            raise StudentFailed("exception", f"your function raised NotImplementedError: {error}{where}", hint) from None
        frame = student_frame(error)
        if frame is not None and frame.name not in (name, "<lambda>", "forward", "__init__"):
            raise StudentFailed(
                "not_implemented",
                f"your function calls `{frame.name}`, which still raises NotImplementedError — "
                f"finish `{frame.name}` (and pass its check) first",
            ) from None
        raise StudentFailed(
            "not_implemented",
            "your function still raises NotImplementedError — replace `raise NotImplementedError()` "
            "with your code",
        ) from None
    except Exception as error:  # noqa: BLE001 - any exception of the student's is reported
        where, hint = where_student_failed(error)
        raise StudentFailed("exception", f"your function raised {type(error).__name__}: {error}{where}", hint) from None


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; only in the main thread, on Unix)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings and no stderr while checking: nbgrader zeroes a grade cell that writes there."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# Advice for an exception, chosen by a pattern in the student's failing line or in the error.
_EXCEPTION_HINTS = (
    (re.compile(r"\.T\b"), "on a tensor with batch dimensions `.T` reverses *all* dimensions; "
     "swap the last two with .transpose(-2, -1) or .mT"),
    (re.compile(r"transpose\(\s*(0\s*,\s*1|1\s*,\s*0)\s*\)|\.t\(\)"),
     "transpose(0, 1) and .t() swap the first two dimensions, which are batch dimensions once "
     "there are any; swap the last two with .transpose(-2, -1) or .mT"),
    (re.compile(r"shapes cannot be multiplied|must match the size of tensor b|Expected size for first two dimensions"),
     "q (..., L, E) and k (..., S, E) share their *last* dimension: the scores are "
     "q @ k.transpose(-2, -1), shape (..., L, S)"),
    (re.compile(r"bitwise_not|operator\.invert|\(~\) is only"),
     "`~` only works on a boolean mask; a float attn_mask is not a boolean: it is *added* to the scores"),
    (re.compile(r"\.numpy\(|np\.|requires grad"),
     "NumPy has no bfloat16, no GPU tensors and no gradients: stay in torch"),
    (re.compile(r"leaf Variable that requires grad is being used in an in-place operation"),
     "your function changes one of its inputs in place (`x -= ...`, `x.exp_()`): work on new tensors"),
)


def student_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the traceback that is the student's (not course_lib's or torch's)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__)
        if "course_lib" not in f.filename and "/torch/" not in f.filename
    ]
    return frames[-1] if frames else None


def _raised_by_student(error: BaseException) -> bool:
    """True when the student's code (their `raise NotImplementedError()`) or the course's own (which
    says so of a student's unfinished piece) raised it — not PyTorch or another library."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and (student_frame(error) == frames[-1] or "course_lib" in frames[-1].filename)


def where_student_failed(error: BaseException) -> tuple[str, str | None]:
    """(' (line N of your code: `text`)', advice) — advice where the line or error shows a pitfall."""
    frame = student_frame(error)
    if frame is None:
        return "", None
    line = (frame.line or "").strip()
    where = f" (line {frame.lineno} of your code" + (f": `{line}`)" if line else ")")
    for pattern, hint in _EXCEPTION_HINTS:
        if pattern.search(line) or pattern.search(str(error)):
            return where, hint
    return where, None
