"""Refusing shortcuts: while a student's function runs under a check, the callables that *are* the
answer (PyTorch's SDPA, ``torch.softmax`` in the softmax exercise, course_lib's own references)
raise ``ShortcutUsed`` instead of answering.

Three hooks, one rule:

* PyTorch functions are caught with a ``TorchFunctionMode``: it sees the Python-level call
  (``F.scaled_dot_product_attention``, ``Tensor.softmax``, ...), which a ``TorchDispatchMode`` would
  not (it only sees the ``bmm``/``_safe_softmax`` the call turns into).
* ``torch.ops.aten.*`` called directly skips the function mode, so the ATen operators behind the
  answer (``aten._softmax``, the ``_scaled_dot_product_*`` kernels) are caught one level down, by a
  ``TorchDispatchMode``.
* course_lib's references are plain Python, so each is decorated with ``@reference``; the decorator
  consults a context variable that ``forbid`` sets.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import torch._dynamo  # noqa: F401 - the first TorchFunctionMode entered imports it (seconds on a busy
# machine): here, at import, rather than inside a student's time limit
from torch._ops import HigherOrderOperator
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._python_dispatch import TorchDispatchMode

F = TypeVar("F", bound=Callable[..., Any])


class ShortcutUsed(AssertionError):
    """Raised when a graded function calls something that is itself the answer."""


_forbidden_references: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "course_lib_forbidden_references", default=frozenset()
)
# References that are running right now: a reference calling another reference is never refused.
_inside_reference: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "course_lib_inside_reference", default=False
)


def reference(function: F) -> F:
    """Mark a course_lib function as a reference answer, refused while a check forbids it."""
    name = f"{function.__module__}.{function.__qualname__}"

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not _inside_reference.get() and name in _forbidden_references.get():
            raise ShortcutUsed(
                f"your function called {name}, the course's own reference answer — "
                "write the computation yourself"
            )
        token = _inside_reference.set(True)
        try:
            return function(*args, **kwargs)
        finally:
            _inside_reference.reset(token)

    guarded.reference_name = name  # type: ignore[attr-defined]
    return guarded  # type: ignore[return-value]


class _RefuseTorchFunctions(TorchFunctionMode):
    def __init__(self, forbidden: dict[Callable[..., Any], str]):
        super().__init__()
        self.forbidden = forbidden

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in self.forbidden:
            raise ShortcutUsed(
                f"your function called {resolve_name(func) or self.forbidden[func]}, "
                f"which computes the answer for you ({self.forbidden[func]}) — "
                "write the computation yourself"
            )
        return func(*args, **kwargs)


class _RefuseAtenOperators(TorchDispatchMode):
    # Higher-order operators (FlexAttention's `flex_attention`) reach this mode too, so that they
    # can be refused by name; one that is not refused is left to PyTorch's other handlers.
    supports_higher_order_operators = True

    def __init__(self, forbidden: dict[str, str]):
        super().__init__()
        self.forbidden = forbidden

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        higher_order = isinstance(func, HigherOrderOperator)
        name = func.name() if higher_order else func.overloadpacket.__name__
        if name in self.forbidden:
            where = "operator " if higher_order else "operator aten."
            raise ShortcutUsed(
                f"your function called PyTorch's {where}{name}, which computes the answer "
                f"for you ({self.forbidden[name]}) — write the computation yourself"
            )
        if higher_order:
            return NotImplemented
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Forbidden:
    """What a graded function may not call, each with a few words on why it would be the answer.

    ``functions``: PyTorch callables (caught by a TorchFunctionMode); ``operators``: ATen operator
    names such as ``"_softmax"`` (caught by a TorchDispatchMode); ``references``: course_lib
    functions decorated with ``@reference``; ``native``: words (case ignored) in the names of PyTorch's
    compiled functions that compute them, which the grader's replay worker overwrites with traps
    (``course_lib.grading.native_code``). Sets compose with ``|``, so several lessons share one.
    """

    functions: Mapping[Callable[..., Any], str] = field(default_factory=lambda: MappingProxyType({}))
    operators: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    references: tuple[Callable[..., Any], ...] = ()
    native: tuple[str, ...] = ()

    def __or__(self, other: "Forbidden") -> "Forbidden":
        return Forbidden(
            functions=MappingProxyType({**self.functions, **other.functions}),
            operators=MappingProxyType({**self.operators, **other.operators}),
            references=tuple(dict.fromkeys(self.references + other.references)),
            native=tuple(dict.fromkeys(self.native + other.native)),
        )

    def refused(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, calling any of them raises ``ShortcutUsed``."""
        return forbid(dict(self.functions), self.references, dict(self.operators))


@contextlib.contextmanager
def forbid(
    torch_functions: dict[Callable[..., Any], str],
    references: tuple[Callable[..., Any], ...] = (),
    aten_operators: dict[str, str] | None = None,
) -> Iterator[None]:
    """Within the block, calling any of ``torch_functions``, ``references`` or ``aten_operators``
    (ATen operator names, e.g. ``"_softmax"``) raises ``ShortcutUsed``.

    The dictionaries map each refused callable or operator to a few words on why it is refused.
    """
    names = frozenset(ref.reference_name for ref in references)
    token = _forbidden_references.set(_forbidden_references.get() | names)
    try:
        with _RefuseTorchFunctions(torch_functions), _RefuseAtenOperators(aten_operators or {}):
            yield
    finally:
        _forbidden_references.reset(token)
