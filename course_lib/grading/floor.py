"""The floor under the replay worker's shortcut guard: before any of a notebook's code runs, the
shortcuts an exercise refuses are taken out of the worker's process, so that no trick of Python can
reach them — the guard of ``course_lib.shortcuts`` is a pair of PyTorch modes, which code in the same
process can pop or step around; a kernel that is no longer there cannot be stepped around.

* **ATen operators** (``aten._softmax``, ``aten.scaled_dot_product_attention``, ...): a raising kernel
  is registered at the dispatcher for every overload and every dispatch key the operator has a kernel
  for (CPU, CUDA, Meta, sparse, nested, oneDNN, the composite keys, ...). The dispatcher keeps the
  newest registration, and nothing in PyTorch's Python API calls a kernel that has been overridden.
  The registration would be undone if its handle died: the handle is kept alive for good and nothing
  refers to it.
* **PyTorch's Python implementations** of those operators and of the refused Python functions
  (``F.multi_head_attention_forward``, ``torch._refs.softmax``, the decompositions, FlexAttention's
  dense path): their code objects are replaced in place by code that raises, so every reference to
  the function — a module attribute, a decomposition table, a closure — reaches the raising code.

The worker has the floor go through the modules again before each graded call, for those the
notebook's code imported since (one imported inside a graded function is gone through before the next
call, and every exercise makes several); its audit hook (``confinement``) refuses running again a
file whose functions were replaced.
This file imports nothing of course_lib: it is copied beside the worker.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import sysconfig
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

ALIAS_KEYS_WITHOUT_KERNELS = {"debug"}
# Library modules whose functions compute a refused operator under other names: every function of theirs
# is refused with it, once the notebook has imported the module (Inductor's attention patterns are SDPA
# written out; loading Inductor up front would cost every worker that refuses SDPA about 2.5 s).
COMPUTING_MODULES = {"scaled_dot_product_attention": ("torch._inductor.fx_passes.fuse_attention",)}
LIBRARY_FOLDERS = tuple(sorted({os.path.join(os.path.abspath(path), "") for key, path in sysconfig.get_paths().items()
                                if key in ("stdlib", "platstdlib", "purelib", "platlib")}))  # a line of the dispatcher's dump that is not a dispatch key
_REGISTERED = re.compile(r"^(\w+)(?:\[alias\])?: registered at")


class ShortcutUsed(AssertionError):
    """The floor's refusal (``course_lib.shortcuts.ShortcutUsed``'s counterpart: this file imports
    nothing of course_lib)."""


POISONED = "course.replay.poisoned"  # the audit event that names a file and a function of it that was replaced
_audit = sys.audit
MARK = "which computes the answer for you"  # in every refusal's message, however PyTorch wraps it (TorchScript)


def operator_message(name: str, why: str) -> str:
    return f"your function called PyTorch's operator aten.{name}, {MARK} ({why}) — write the computation yourself"


def function_message(name: str, why: str) -> str:
    return f"your function called {name}, {MARK} ({why}) — write the computation yourself"


class Floor:
    """The refused ``operators`` (ATen names, or the names of higher-order operators such as
    ``flex_attention``) and ``functions`` (PyTorch's qualified names), taken out of this process for
    good; ``cover_python`` goes again through the modules, for one loaded since."""

    def __init__(self, operators: dict[str, str], functions: dict[str, str]):
        self.operators = {**operators, **_operators_of(functions)}
        self.functions = dict(functions)
        self.aten = {name: why for name, why in self.operators.items() if hasattr(torch.ops.aten, name)}
        self.poisoned: set[int] = set()
        # The files whose functions were replaced, with those functions' names: running their definitions
        # again would undo it.
        self.files: dict[str, set[str]] = {}
        library = torch._C._dispatch_library("IMPL", "aten", "")
        with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore")
            for name, why in self.aten.items():
                packet = getattr(torch.ops.aten, name)
                for overload in packet.overloads():
                    schema = getattr(packet, overload)._schema
                    qualified = schema.name + (f".{schema.overload_name}" if schema.overload_name else "")
                    kernel = _raising_kernel(operator_message(name, why))
                    for key in _registered_keys(qualified):
                        library.impl(qualified.removeprefix("aten::"), key, kernel, False)
        # The registrations last while the handle lives: it is kept alive for good and referred to by
        # nothing, so no code can reach its reset().
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(library))
        self.cover_python()

    def cover_python(self) -> None:
        """Replace the code of the Python implementations of what is refused (see the module)."""
        self.modules = len(sys.modules)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for function, message in _python_implementations(self.aten, self.operators, self.functions):
                if id(function) not in self.poisoned:  # the first, most specific, message stays
                    self.poisoned.add(id(function))
                    file, name = function.__code__.co_filename, function.__code__.co_name
                    if name not in self.files.setdefault(file, set()):
                        self.files[file].add(name)
                        _audit(POISONED, file, name)  # the worker's audit hook keeps a list
                    _poison(function, message)


def _raising_kernel(message: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ShortcutUsed(message)
    return refuse


def _registered_keys(qualified: str) -> list[str]:
    """The dispatch keys (alias keys included) at which the operator overload has a kernel now."""
    keys = []
    for line in torch._C._dispatch_dump(qualified).splitlines():
        found = _REGISTERED.match(line)
        if found and found.group(1) not in ALIAS_KEYS_WITHOUT_KERNELS:
            keys.append(found.group(1))
    return keys


def _operators_of(functions: dict[str, str]) -> dict[str, str]:
    """The ATen operators behind refused functions that are bindings of one (``torch.softmax`` is
    ``aten.softmax``, ``torch.Tensor.softmax`` too)."""
    found = {}
    for name, why in functions.items():
        short = name.rsplit(".", 1)[-1]
        if hasattr(torch.ops.aten, short) and not isinstance(_resolve(name), types.FunctionType):
            found[short] = why
    return found


def _resolve(name: str) -> Any:
    """The object a qualified name (``torch.nn.functional.softmax``, ``torch.Tensor.softmax``) names."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is not None:
            target: Any = module
            for part in parts[split:]:
                target = getattr(target, part, None)
            return target
    return None


def _python_implementations(aten: dict[str, str], operators: dict[str, str],
                            functions: dict[str, str]) -> Iterator[tuple[types.FunctionType, str]]:
    """The Python functions that compute a refused operator or are a refused function: the refused
    functions themselves, the decompositions and Python kernels registered for the operators, every
    library function named after a refused operator (``torch._refs.softmax``, and
    ``scipy.special.softmax`` where SciPy is installed, Triton's ``tl.softmax``), and every function of a
    refused higher-order operator's module (FlexAttention's dense path) or of a module that computes a
    refused operator under other names (``COMPUTING_MODULES``)."""
    for name, why in functions.items():
        target = _resolve(name)
        if isinstance(target, types.FunctionType):
            yield target, function_message(name, why)
    overloads = {getattr(getattr(torch.ops.aten, name), overload): name
                 for name in aten for overload in getattr(torch.ops.aten, name).overloads()}
    tables = getattr(sys.modules.get("torch._decomp"), "global_decomposition_table", {})
    for table in tables.values():
        for op, implementation in table.items():
            if op in overloads:
                yield from _functions_in(implementation, operator_message(overloads[op], aten[overloads[op]]))
    for op, name in overloads.items():
        for implementation in op.py_kernels.values():
            yield from _functions_in(implementation, operator_message(name, aten[name]))
    higher_order = {name: why for name, why in operators.items() if name not in aten}
    modules = {}
    for name, why in higher_order.items():
        operator = torch._ops._higher_order_ops.get(name)
        if operator is not None:
            modules[type(operator).__module__] = operator_message(name, why)
            for implementation in operator.py_kernels.values():
                yield from _functions_in(implementation, operator_message(name, why))
    for name, why in operators.items():
        modules.update(dict.fromkeys(COMPUTING_MODULES.get(name, ()), operator_message(name, why)))
    named = {name.lstrip("_"): operator_message(name, why) for name, why in operators.items()}
    for module_name, module in list(sys.modules.items()):
        if not isinstance(module, types.ModuleType) or not _is_library(module_name, module):
            continue
        for value in list(vars(module).values()):
            for function in _functions_in(value):
                if function.__module__ in modules:
                    yield function, modules[function.__module__]
                elif function.__module__ == module_name and function.__name__.lstrip("_") in named:
                    yield function, named[function.__name__.lstrip("_")]


def _is_library(name: str, module: types.ModuleType) -> bool:
    """Whether a module is a library's (not the notebook's ``__main__``, nor a file of its own)."""
    file = getattr(module, "__file__", None)
    return name != "__main__" and (not isinstance(file, str) or os.path.abspath(file).startswith(LIBRARY_FOLDERS))


def _functions_in(value: Any, message: str | None = None) -> Iterator[Any]:
    """The Python functions a value is or holds: itself, a method's function, a class's methods, and
    what a wrapper wraps (``__wrapped__``, and a closure's function of the same name). With a
    ``message``, pairs of (function, message)."""
    found: list[types.FunctionType] = []
    if issubclass(type(value), type):  # type(), not isinstance: some of torch's objects answer __class__ lazily
        for member in list(vars(value).values()):
            found += _unwrapped(_function_of(member))
    else:
        found += _unwrapped(_function_of(value))
    for function in found:
        yield function if message is None else (function, message)


def _function_of(value: Any) -> Any:
    """The function of a method, of a static or class method, or of a Triton kernel function (whose
    Python function Triton's interpreter runs); anything else as it is. Only types and instance
    dictionaries are looked at: an attribute of some of torch's objects runs code (CUDA's start)."""
    if issubclass(type(value), (staticmethod, classmethod, types.MethodType)):
        return value.__func__
    module = getattr(type(value), "__module__", None)
    if isinstance(module, str) and module.startswith("triton") and isinstance(getattr(value, "__dict__", None), dict):
        inner = value.__dict__.get("fn")
        if isinstance(inner, types.FunctionType):
            return inner
    return value


def _unwrapped(value: Any) -> list[types.FunctionType]:
    chain: list[types.FunctionType] = []
    while isinstance(value, types.FunctionType) and value not in chain:
        chain.append(value)
        inner = [cell.cell_contents for cell in value.__closure__ or ()
                 if _filled(cell) and isinstance(cell.cell_contents, types.FunctionType)
                 and cell.cell_contents.__name__ == value.__name__]
        value = getattr(value, "__wrapped__", inner[0] if inner else None)
    return chain


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _poison(function: types.FunctionType, message: str) -> None:
    """Replace the function's code, in place, with code that raises ``AssertionError(message)``; the
    replacement keeps the function's free variables, as Python requires."""
    free = function.__code__.co_freevars
    source = (f"def outer():\n    {' = '.join(free) + ' = None' if free else 'pass'}\n"
              f"    def refused(*args, **kwargs):\n        {', '.join(free) if free else 'pass'}\n"
              f"        raise AssertionError({message!r})\n    return refused\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<refused {function.__qualname__}>", "exec"), namespace)  # noqa: S102
    function.__code__ = namespace["outer"]().__code__
