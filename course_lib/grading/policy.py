"""What a student's code may not use in a graded notebook: the ways around the course's shortcut guard.

The guard that refuses PyTorch's own answers while a graded function runs (``course_lib.shortcuts``)
is made of PyTorch's function and dispatch *modes*, which live in the process that runs the
student's code: private PyTorch calls pop them (``torch._C.DisableTorchFunction``,
``torch.utils._python_dispatch._disable_current_modes``), and a thread or a child process does not
have them at all. No check inside that process can stop code that reaches that far, so the grader
reads the code before it runs: ``refusals(source)`` lists what a cell uses of

- **private names**: an attribute, an import or a pattern attribute that starts with ``_`` (PyTorch's
  modes, ``torch._C``, ``torch.ops.aten._softmax``), dunder attributes (``__class__.__subclasses__``,
  ``__globals__``, ``__dict__``) except ``__init__`` (``super().__init__()``), ``__name__`` and ``__version__``, and frames'
  attributes (``f_back``, ``gi_frame``, ...);
- **dynamic access**: ``eval``, ``exec``, ``compile``, ``getattr``, ``setattr``, ``delattr``,
  ``vars``, ``globals``, ``locals``, ``__import__`` and other dunder names but ``__name__``;
- **modules** outside ``ALLOWED_MODULES`` (an allowlist: a module that is not on it may be one the
  student wrote to disk, or one that turns strings into objects, as ``string.Formatter().get_field``
  and ``logging.config`` do), and the attributes by which libraries hand out the ones that run code
  elsewhere, see the interpreter's insides or resolve names (``torch.os``, ``numpy.ctypeslib``,
  ``torch.library``, ``torch.compile``, ``torch.fx``, ``plt.switch_backend``, ...);
- **hooks and patches**: special methods other than ``ALLOWED_SPECIAL_METHODS`` (a tensor subclass's
  ``__torch_dispatch__`` runs inside the guard's own handlers, where its modes are popped),
  ``type`` other than as ``type(x)``, metaclasses, ``make_dataclass``, and assignments to attributes of anything but ``self``/``ctx``
  (patching a library's classes or functions at a cell's top level, where no guard runs).

A graded function needs none of them: the lessons are written in public PyTorch, NumPy and Triton.
Reading cannot be complete — a library may hold one more way to turn a string into an object — so this
raises the bar rather than closing the door (a red team's four ways past it, now refused, are tested in
tests/framework/test_policy.py). The outside verdict does not rest on it: the replay worker runs the
graded call in a process where the refused kernels no longer exist (``floor``), and refuses what
reading cannot see (``replay_worker.harden``): threads, processes, unpickling, walking the garbage
collector's objects, ctypes. Reading is the first wall, and the one that explains itself.

Only the cells the student controls are read (answer cells and cells they added; ``student_cells``);
nbgrader restores the instructor's locked cells before grading.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator

# Top-level modules a student's cell may import (a dotted path may not pass through a private part or
# a refused attribute: ``torch.library``, ``torch.utils.cpp_extension``).
ALLOWED_MODULES = frozenset({
    "torch", "math", "numpy", "triton", "einops", "typing", "dataclasses", "functools", "itertools",
    "collections", "random", "time", "course_lib", "__future__",
})
# Builtins that reach any attribute, build code from strings, or see a namespace as a dict.
DYNAMIC_BUILTINS = frozenset({"eval", "exec", "compile", "getattr", "setattr", "delattr", "vars", "globals",
                              "locals", "breakpoint", "memoryview"})
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__version__"})
# Special methods a student's class may define; others are hooks that libraries call behind the code's
# back (``__torch_function__``, ``__torch_dispatch__``, ``__del__``, ``__getattr__``, descriptors, ...).
ALLOWED_SPECIAL_METHODS = frozenset({"__init__", "__post_init__", "__repr__", "__str__", "__len__", "__iter__",
                                     "__next__", "__getitem__", "__call__", "__enter__", "__exit__"})
# Roots of the attributes a cell may assign: a method's own object (and an autograd Function's ctx).
ASSIGNABLE_ROOTS = frozenset({"self", "ctx"})
# Modules that libraries re-export as attributes (``torch.os``, ``numpy.sys``): each reaches past the guard.
MODULE_ATTRIBUTES = frozenset({
    "os", "sys", "gc", "ctypes", "ctypeslib", "inspect", "importlib", "builtins", "operator", "subprocess",
    "threading", "multiprocessing", "concurrent", "asyncio", "queue", "signal", "socket", "pickle", "marshal",
    "types", "code", "codeop", "runpy", "pty", "weakref", "atexit", "linecache", "dis", "platform", "shutil",
    "site", "sysconfig", "cffi", "dill", "cloudpickle", "numba",
})
# PyTorch's and Python's doors to code that runs elsewhere or is built at run time, and NumPy's to any
# memory of the process (a view with strides of one's choosing, the addresses an array spans).
REFUSED_ATTRIBUTES = MODULE_ATTRIBUTES | frozenset({
    "library", "cpp_extension", "load_inline", "hub", "package", "compile", "compiler", "get_type_hints",
    "ForwardRef", "attrgetter", "methodcaller", "fx", "CompilationUnit", "switch_backend", "backend_registry",
    "import_item", "importstring", "import_module", "traitlets", "get_field", "resolve_name", "locate",
    "make_dataclass", "as_strided", "byte_bounds", "stride_tricks",
    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "gi_frame", "gi_code", "cr_frame", "cr_code",
    "ag_frame", "ag_code", "tb_frame", "tb_next", "co_code",
})


def explain(problems: list[str]) -> str:
    """The message for a student whose code uses what ``refusals`` lists."""
    return ("your code uses what graded code may not, because it can switch the course's checks off: "
            + "; ".join(problems) + ". Graded code uses public PyTorch, NumPy and Triton: take these out, "
            "and your functions are graded as usual")


def function_refusals(fn) -> list[str]:  # noqa: ANN001
    """``refusals`` of a function's or class's own source (the in-kernel check's early warning; the
    grader reads every cell the student controls). [] where there is no source, or for course_lib's own."""
    target = getattr(fn, "fn", fn)  # a Triton JITFunction keeps the Python function
    if str(getattr(target, "__module__", "")).startswith("course_lib"):
        return []
    try:
        source = textwrap.dedent(inspect.getsource(target))
        ast.parse(source)
    except (OSError, TypeError, SyntaxError):  # no source, or a lambda's line that is not a statement
        return _code_refusals(target)
    return refusals(source)


def _code_refusals(fn) -> list[str]:  # noqa: ANN001
    """``refusals`` by the names a function's compiled code uses (its own and its nested functions')."""
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "forward", None), "__code__", None)
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if hasattr(c, "co_names"))
    found = []
    for name in sorted(names):
        problem = (_module(name) if "." in name else _attribute(name)) or (
            f"`{name}`, which reaches any attribute or runs code built from strings" if name in DYNAMIC_BUILTINS else None)
        if problem:
            found.append(f"in `{getattr(fn, '__name__', 'your function')}`: {problem}")
    return found


def student_cells(nb) -> list[tuple[int, str]]:  # noqa: ANN001 - an nbformat notebook
    """(index, source) of the code cells a student controls: answer cells, and cells without nbgrader's
    lock (cells they added). Locked and grade cells are the instructor's: nbgrader restores them."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and (meta.get("solution") or not (meta.get("locked") or meta.get("grade"))):
            found.append((index, cell.source))
    return found


def refusals(source: str) -> list[str]:
    """What ``source`` (a cell's code) uses that graded code may not, one line each with its line
    number, in order; [] when nothing. Code that does not parse is left to Python to refuse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = sorted(set(_refused(tree)))
    return [f"line {line}: {what}" for line, what in found]


def _refused(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute):
            problem = _attribute(node.attr)
            if problem:
                yield line, problem
            if isinstance(node.ctx, (ast.Store, ast.Del)) and _root(node) not in ASSIGNABLE_ROOTS:
                yield line, (f"an assignment to `{ast.unparse(node)}`: a cell changes attributes of its own objects "
                             "only (`self.` in a method), never of a library's")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type":
            if len(node.args) != 1 or node.keywords:
                yield line, "`type(name, bases, namespace)`, which builds a class from a dict of strings"
        elif isinstance(node, ast.Name):
            if node.id == "type" and not _called_with_one_argument(node, tree):
                yield line, "`type` other than as `type(x)`: as `type(name, bases, namespace)` it builds a class"
            elif node.id in DYNAMIC_BUILTINS:
                yield line, f"`{node.id}`, which reaches any attribute or runs code built from strings"
            elif _dunder(node.id) and node.id not in ALLOWED_DUNDERS:
                yield line, f"`{node.id}`, the interpreter's own machinery"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                problem = _module(alias.name)
                if problem:
                    yield line, problem
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            problem = _module(module)
            if problem:
                yield line, problem
            for alias in node.names:
                problem = _attribute(alias.name) if alias.name != "*" else None
                if problem:
                    yield line, f"{problem} (from {module})"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _dunder(node.name):
            if node.name not in ALLOWED_SPECIAL_METHODS:
                yield line, f"a method `{node.name}`, a hook that libraries call behind the code's back"
        elif isinstance(node, ast.ClassDef) and any(k.arg == "metaclass" for k in node.keywords):
            yield line, f"a metaclass for `{node.name}`, which builds a class from a dict of strings"
        elif isinstance(node, ast.MatchClass):  # `case object(_C=c)` reads an attribute by name
            for name in node.kwd_attrs:
                problem = _attribute(name)
                if problem:
                    yield line, problem


def _called_with_one_argument(name: ast.Name, tree: ast.AST) -> bool:
    """Whether ``name`` is the function of a call ``name(x)`` somewhere in ``tree``."""
    return any(isinstance(node, ast.Call) and node.func is name and len(node.args) == 1 and not node.keywords
               for node in ast.walk(tree))


def _root(node: ast.expr) -> str | None:
    """The name an attribute chain starts from (``self`` for ``self.linear.weight``), None if not a name."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__") and len(name) > 4


def _attribute(name: str) -> str | None:
    if _dunder(name):
        return None if name in ALLOWED_DUNDERS else f"`.{name}`, the interpreter's own machinery"
    if name.startswith("_"):
        return f"`.{name}`, a private part of a library (graded code uses public APIs)"
    if name in REFUSED_ATTRIBUTES:
        return f"`.{name}`, which can run code outside the checks or see the interpreter's insides"
    return None


def _module(dotted: str) -> str | None:
    if dotted.startswith("."):
        return f"a relative import ({dotted})"
    parts = dotted.split(".")
    allowed = any(dotted == m or dotted.startswith(m + ".") for m in ALLOWED_MODULES)
    if not allowed:
        return (f"the module `{dotted}`, which graded code may not import (it may use "
                f"{', '.join(sorted(m for m in ALLOWED_MODULES if not m.startswith('_')))})")
    bad = next((p for p in parts[1:] if p.startswith("_") or p in REFUSED_ATTRIBUTES), None)
    if bad is not None:
        return f"the module `{dotted}`: {_attribute(bad)}"
    return None
