"""The replay worker: a fresh interpreter, inside a sandbox, that runs a submission's definitions and
calls its graded functions on inputs the grader sends; only plain data and tensors go back.

It is the outside half of grading (``course_lib.grading.outside`` is the grader's half). It runs as
a script (``python -I replay_worker.py``), with course_lib *not* importable — the sandbox hides it —
so a graded function cannot hand the course's own reference answer back. It imports nothing of
course_lib but the files of ``BESIDE``, copied beside it: ``floor.py`` to take PyTorch's shortcuts
out of the process before any of the notebook's code runs (the refusals come as the first argument:
one worker per set of them), ``native_code.py`` to overwrite their compiled kernels with traps,
``syscall_filter.py`` and ``confinement.py`` to keep the notebook's code
from the operating system and from the worker's own guards, ``toy_decoder.py`` to rebuild the
decoder step that lesson 01's cases pass, and ``flash_triton.py`` to run lesson 08's Triton step
inside its kernel.

Protocol, on the file descriptors it is started with (the student's code gets /dev/null for stdin,
stdout and stderr): each message is a JSON header line, then (for messages with tensors) a
safetensors payload of the length the header gives — never pickle. Requests: ``{"op": "run", "source"}``
runs a cell's code; ``{"op": "call", ...}`` calls a graded function or builds a graded module, and
answers with its result (a tree of tensors and plain values) and, if asked, the gradients of the
fixed weighting that ``weighted_gradients`` defines.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import linecache
import os
import sys
import types
from typing import Any, BinaryIO

if __name__ == "__main__":  # the worker, before it allocates much: no transparent huge pages, whose
    # 2 MiB would be counted whole where a call touches a byte of one (touched_memory)
    import ctypes
    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE

import torch

TENSOR = "__tensor__"


# --- trees of tensors and plain values, as JSON plus named tensors --------------------------------


def encode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able form of ``tree``; its tensors go into ``tensors`` under the names it refers to."""
    if isinstance(tree, torch.Tensor):
        if type(tree) not in (torch.Tensor, torch.nn.Parameter):  # a subclass computes its values when asked
            raise TypeError(f"a {type(tree).__name__}, a subclass of torch.Tensor: return plain tensors")
        name = f"t{len(tensors)}"
        # A contiguous copy: safetensors refuses strided views and tensors that share memory.
        tensors[name] = tree.detach().cpu().clone(memory_format=torch.contiguous_format)
        return {TENSOR: name}
    if isinstance(tree, tuple):  # named tuples too: the grader compares items
        return {"tuple": [encode(v, tensors) for v in tree]}
    if isinstance(tree, list):
        return {"list": [encode(v, tensors) for v in tree]}
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("a dict with keys that are not strings")
        return {"dict": {k: encode(v, tensors) for k, v in tree.items()}}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {"value": tree}
    if isinstance(tree, torch.dtype):
        return {"dtype": str(tree).removeprefix("torch.")}
    if callable(getattr(tree, "replay_form", None)):  # an object a case passes, rebuilt from its tensors
        kind, fields = tree.replay_form()
        if kind not in REPLAYABLE:
            raise TypeError(f"a {type(tree).__name__} of unknown kind {kind!r}")
        return {"object": {"kind": kind, "fields": encode(dict(fields), tensors)}}
    raise TypeError(f"a {type(tree).__name__}, which is not a tensor or plain data")


def decode(form: Any, tensors: dict[str, torch.Tensor]) -> Any:
    (kind, value), = form.items()
    if kind == TENSOR:
        return tensors[value]
    if kind == "tuple":
        return tuple(decode(v, tensors) for v in value)
    if kind == "list":
        return [decode(v, tensors) for v in value]
    if kind == "dict":
        return {k: decode(v, tensors) for k, v in value.items()}
    if kind == "dtype":
        return getattr(torch, value)
    if kind == "object":
        module, name = REPLAYABLE[value["kind"]]  # a fixed table: nothing else is ever built
        return getattr(_beside(module), name)(**decode(value["fields"], tensors))
    return value


def write_message(stream: BinaryIO, header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
    payload = _safetensors().save(tensors) if tensors else b""
    stream.write(json.dumps({**header, "payload": len(payload)}).encode() + b"\n" + payload)
    stream.flush()


def read_message(stream: BinaryIO, max_bytes: int = 1 << 31, line: bytes | None = None,
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A message from ``stream``; ``line``: its header line, where the caller has read it already."""
    line = stream.readline(1 << 24) if line is None else line
    if not line:
        raise EOFError("the other side closed the connection")
    header = json.loads(line)
    size = int(header.pop("payload", 0))
    if not 0 <= size <= max_bytes:
        raise ValueError(f"a message of {size} bytes")
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        raise EOFError("the message was cut short")
    if not payload:
        return header, {}
    return header, _safetensors().load(payload)


def _safetensors():  # noqa: ANN202
    try:  # the instructor's side: safetensors comes with the [lab] extra
        import safetensors.torch  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(f"grading needs safetensors: pip install -e '.[lab]' ({error})") from error
    return safetensors.torch


# --- what is computed from a result ---------------------------------------------------------------


def float_leaves(result: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a result (a tensor, or tuples, lists and dicts of them), in order."""
    if isinstance(result, torch.Tensor):
        return [result] if result.is_floating_point() else []
    if isinstance(result, (tuple, list)):
        return [leaf for item in result for leaf in float_leaves(item)]
    if isinstance(result, dict):
        return [leaf for item in result.values() for leaf in float_leaves(item)]
    return []


def gradient_inputs(args: tuple, names: list[str], module: torch.nn.Module | None,
                    renamed: dict[str, str]) -> dict[str, torch.Tensor]:
    """What gradients are taken for: the inputs that require one, by name, and (for modules) the
    parameters, named as the reference names them (``renamed``: the student's name -> the reference's)."""
    inputs = {n: a for n, a in zip(names, args) if isinstance(a, torch.Tensor) and a.requires_grad}
    if module is not None:
        inputs.update({f"parameter {renamed.get(n, n)}": p for n, p in module.named_parameters()})
    return inputs


def weighted_gradients(result: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """Gradients of a fixed weighting of every output entry (weights from -1 to 1 along the flattened
    leaf) with respect to ``inputs``, so every entry of the output matters; None where none flows."""
    loss = 0
    for leaf in float_leaves(result):
        if leaf.grad_fn is None and not leaf.requires_grad:
            continue
        weights = torch.linspace(-1.0, 1.0, leaf.numel(), dtype=leaf.dtype, device=leaf.device).reshape(leaf.shape)
        loss = loss + (leaf * weights).sum()
    if not isinstance(loss, torch.Tensor) or not inputs:
        return dict.fromkeys(inputs)
    grads = torch.autograd.grad(loss, list(inputs.values()), allow_unused=True)
    return dict(zip(inputs, grads))


# --- the worker -----------------------------------------------------------------------------------


def _cover_new_modules() -> None:
    if len(sys.modules) != _FLOOR.modules:  # the notebook imported modules since: the floor goes through them
        _FLOOR.cover_python()


def _call(namespace: dict[str, Any], header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    _cover_new_modules()
    name = header["name"]
    if name not in namespace:
        return {"error": "name", "problem": f"the notebook does not define `{name}`"}, {}
    target = namespace[name]
    device = torch.device(header.get("device", "cpu"))
    tensors = {k: t.to(device) for k, t in tensors.items()}
    args = decode(header["args"], tensors)
    kwargs = decode(header["kwargs"], tensors)
    if header.get("grad"):
        args = tuple(a.detach().clone().requires_grad_(True)
                     if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    if header.get("module"):
        module = target(**decode(header["init"], tensors))
        if not isinstance(module, torch.nn.Module):
            return {"error": "type", "problem": f"{name}(...) did not build an nn.Module"}, {}
        state = decode(header["state"], tensors)
        names = header.get("parameter_names", {})
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        own = dict(module.named_parameters())
        with torch.no_grad():
            for ref_name, value in state.items():
                own[names.get(ref_name, ref_name)].copy_(value)
        target = module
    if header.get("adapt"):
        module_name, function, options = header["adapt"]
        if (module_name, function) not in ADAPTERS:  # a fixed table: nothing else is ever called
            raise ValueError(f"no adapter {module_name}.{function}")
        target = getattr(_beside(module_name), function)(target, **options)
    if header.get("measure"):  # the grader counts the memory this process touches meanwhile (touched_memory)
        with torch.no_grad():
            result = target(*args, **kwargs)
    else:
        result = target(*args, **kwargs)
    # Here, not later: a result's values and gradients are computed before the reply is written.
    out: dict[str, torch.Tensor] = {}
    answer = {"result": encode(result, out)}
    if header.get("grad"):
        renamed = {v: k for k, v in header.get("parameter_names", {}).items()}
        module = target if header.get("module") else None
        inputs = gradient_inputs(args, header["input_names"], module, renamed)
        answer["gradients"] = encode(weighted_gradients(result, inputs), out)
    return answer, out


def _compiled(source: str, label: str) -> Any:
    """A cell's code, its source kept where ``inspect.getsource`` finds it, as IPython keeps a cell's:
    ``@triton.jit`` reads the source of the functions it decorates."""
    filename = f"<{label}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    return compile(source, filename, "exec")


def serve(requests: BinaryIO, replies: BinaryIO, namespace: dict[str, Any]) -> None:
    namespace["__builtins__"] = __builtins__
    while True:
        try:
            header, tensors = read_message(requests)
        except EOFError:
            return
        try:
            try:
                answer, out = _answer(namespace, header, tensors)
            finally:
                if not header.get("measure"):
                    _settle()
        except BaseException as error:  # noqa: BLE001 - the student's code may raise anything, SystemExit too
            where = f" (line {_innermost_line(error.__traceback__)})" if error.__traceback__ else ""
            # The floor's refusals say so, whether PyTorch passes them on as they are or wraps them.
            shortcut = _BESIDE["floor"].MARK in str(error)
            answer, out = {"error": "shortcut" if shortcut else "exception",
                           "problem": f"{type(error).__name__}{where}: {error}"}, {}
        write_message(replies, answer, out)


def _answer(namespace: dict[str, Any], header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    if header["op"] == "run":
        exec(_compiled(header["source"], header.get("label", "cell")), namespace)  # noqa: S102
        return {"ok": True}, {}
    if header["op"] == "echo":  # the protocol's own work, which the grader measures before any notebook code
        out: dict[str, torch.Tensor] = {}
        return {"result": encode(decode(header["args"], tensors)[0].clone(), out)}, out
    return _call(namespace, header, tensors)


def _settle() -> None:
    """After each request that is not measured: the floor goes through the modules imported meanwhile
    (before the next cell can copy what they hold), and garbage is collected, so that neither happens
    during a measured call (either would count as memory the call touched)."""
    _cover_new_modules()
    gc.collect()


def _innermost_line(trace: Any) -> int:
    """The line where an exception was raised, read without its frames (the worker refuses those)."""
    while trace.tb_next is not None:
        trace = trace.tb_next
    return trace.tb_lineno


# The files of course_lib copied beside this script (they import nothing of course_lib): name -> module.
BESIDE = {
    "floor": "course_lib.grading.floor",
    "native_code": "course_lib.grading.native_code",
    "syscall_filter": "course_lib.grading.syscall_filter",
    "confinement": "course_lib.grading.confinement",
    "toy_decoder": "course_lib.grading.toy_decoder",
    "flash_triton": "course_lib.attention.flash_triton",
}
_BESIDE: dict[str, Any] = {}  # the modules of BESIDE, once loaded
_FLOOR: Any = None  # the worker's floor.Floor
# Objects that cases pass and the worker rebuilds: kind -> (module beside this script, class).
REPLAYABLE = {"toy_decoder": ("toy_decoder", "ToyDecoderStep")}
# What may turn a student's object into the function the cases call (an Exercise's ``adapt_outside``).
ADAPTERS = {("flash_triton", "skeleton_attention")}


def _beside(name: str) -> Any:
    """A module of ``BESIDE``: the copy beside this script in the worker, course_lib's own in the grader."""
    if name not in _BESIDE:
        _BESIDE[name] = importlib.import_module(BESIDE[name])
    return _BESIDE[name]


def _load_beside(name: str) -> Any:
    """The module ``name``.py from this script's folder (course_lib itself is not importable here)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"course_replay_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


# Loaded before the floor is laid, so that a graded function's first call does not wait for them.
# torch._dynamo brings in most of torch (about 2,000 modules), which the floor then goes through.
# The C extensions (the protocol's safetensors, and those of the modules graded code may import, ``policy``)
# come first: once the system-call filter is on, no shared library can be loaded.
PRELOADED = ("safetensors.torch", "math", "cmath", "random", "time", "array", "numpy", "numpy.random", "numpy.linalg", "numpy.fft",
             "torch._dynamo", "torch.nn.functional", "torch.testing", "einops", "triton", "triton.language")


def main() -> None:
    # The floor's refusals come as the first argument: {"operators": {...}, "functions": {...}}.
    refused = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"operators": {}, "functions": {}}
    # The protocol keeps its own copies of stdin and stdout; the student's code gets /dev/null.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sys.argv = ["replay"]
    for name in BESIDE:  # loaded before any call is timed
        _BESIDE[name] = _load_beside(name)
    for name in PRELOADED:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.init()  # CUDA's first use loads libraries through ctypes, refused once confined
    global _FLOOR
    _FLOOR = _BESIDE["floor"].Floor(refused["operators"], refused["functions"])
    # The refused kernels' machine code, overwritten with traps, which the filter then keeps (no page may
    # become executable again): what the floor's registrations, in this process's memory, hold up front.
    _BESIDE["native_code"].trap(refused.get("native", []))
    # oneDNN compiles its kernels as it goes, which the filter refuses (no executable page): PyTorch's own
    # kernels instead (GELU, bfloat16 products, convolutions).
    torch.backends.mkldnn.enabled = False
    _BESIDE["syscall_filter"].install(cuda=cuda)  # on a GPU, other processes only (see the filter)
    _BESIDE["confinement"].confine(_FLOOR, _BESIDE["floor"].POISONED)
    # What the worker has made so far is never collected: a collection during a measured call then goes
    # through the notebook's objects only, not the whole of torch (which would count as memory touched).
    gc.freeze()
    # The notebook's code runs as __main__, in a module of its own.
    notebook = sys.modules["__main__"] = types.ModuleType("__main__")
    serve(requests, replies, vars(notebook))
    # Ended without the interpreter's and the libraries' clean-up, some of which is trapped code.
    os._exit(0)


if __name__ == "__main__":
    main()
