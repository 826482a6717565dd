"""Peak memory of a graded call in the replay worker, measured where the notebook's code cannot reach.

``course_lib.memory`` tracks live tensor storages with a PyTorch dispatch mode: code in the same
process can pop the mode, patch the tracker, or compute with NumPy, which no mode sees. Here the
measure is taken by what Python code cannot switch off once its controls are gone:

* **PyTorch's allocations** (any device), from PyTorch's profiler with ``profile_memory``: every block
  allocated during the call, counted from its allocation to its release (a release of a block from
  before the call is not counted, so freeing memory kept from before gains nothing); and every tensor
  kept from before the call, other than its inputs, that an operation reads or writes (so a buffer made
  beforehand and filled in place counts too);
* **Python's and NumPy's allocations**, from ``tracemalloc`` (NumPy reports its arrays to it), started
  afresh for the call;
* **buffers kept from before the call and written during it** (NumPy arrays, bytearrays, ``array.array``,
  CPU tensors: ``_buffer_watch``), which NumPy can fill in place without allocating or running any
  PyTorch operation.

The measure is the sum of the three. ``meter`` takes the profiler's and tracemalloc's controls and
removes them from every module, so the notebook cannot stop, restart or reset either; the worker's
audit hook (``confinement``) holds the meter and runs it on the events ``sys.audit(EVENT, "start",
inputs)`` and ``sys.audit(EVENT, "stop")``, which the worker raises around the call. The meter writes
each measure on the reply stream itself, signed with a key only it and the grader know: the notebook's code
can write on that stream too, and patch whatever the worker uses to write its replies. Any other of
those events while a measurement runs (the notebook's code can raise them too) spoils it, and an extra
"stop" adds a line the grader does not expect.
This file imports nothing of course_lib: it is copied beside the worker.
"""

from __future__ import annotations

import array
import gc
import hashlib
import hmac
import inspect
import math
import os
import sys
import tracemalloc
import types
from collections.abc import Callable
from typing import Any

import torch
import torch._C._autograd as _autograd
import torch._C._profiler as _profiler

EVENT = "course.replay.measure"
# The controls that would stop, restart or reset a measurement, taken away from the notebook.
_PROFILER_CONTROLS = ("_prepare_profiler", "_enable_profiler", "_disable_profiler", "_enable_profiler_legacy",
                      "_disable_profiler_legacy")
_TRACEMALLOC_CONTROLS = ("start", "stop", "reset_peak", "clear_traces")


def meter(key: bytes, fd: int) -> Callable[[str | None, frozenset[int]], None]:
    """``handle(what, inputs)``: runs the meter on an ``EVENT`` ("start", with the addresses of the call's
    input storages, or "stop"; None for anything else, which spoils a measurement running). Each
    measure is written, signed with ``key``, as a line ``meter <count> <bytes or -1> <signature>`` on
    the file descriptor ``fd`` (the worker's replies): the grader checks the signature and the count,
    so no other line passes for it.

    Everything it uses is taken now and kept in this closure (no class, no module global is looked up
    later): the notebook's code may patch builtins, modules and classes afterwards."""
    profile = torch.autograd.profiler.profile(profile_memory=True, record_shapes=True)
    config, activities = profile.config(), profile.kineto_activities
    profiler = {name: getattr(_autograd, name) for name in _PROFILER_CONTROLS if hasattr(_autograd, name)}
    traces = {name: getattr(tracemalloc, name) for name in _TRACEMALLOC_CONTROLS}
    traced, object_traceback = tracemalloc.get_traced_memory, tracemalloc._get_object_traceback
    write, sign, buffer, failure = os.write, hashlib.blake2b, bytearray, RuntimeError
    peak_of = _reader()
    snapshot, changed = _buffer_watch()
    state = {"count": 0, "running": False, "spoiled": False, "sentinel": buffer(), "inputs": frozenset()}
    _remove_everywhere([*profiler.values(), *traces.values()])

    def report(peak: int) -> None:
        state["count"] += 1
        message = b"%d %d" % (state["count"], peak)
        signature = sign(message, key=key, digest_size=16).hexdigest().encode()
        write(fd, b"meter " + message + b" " + signature + b"\n")

    def handle(what: str | None, inputs: frozenset[int]) -> None:
        if what == "start" and not state["running"]:
            state["running"], state["spoiled"], state["inputs"] = True, False, inputs
            state["buffers"] = snapshot()
            traces["stop"]()
            traces["start"]()
            state["sentinel"] = buffer(64)  # traced while tracemalloc runs on from this start
            profiler["_prepare_profiler"](config, activities)
            profiler["_enable_profiler"](config, activities)
        elif what == "stop" and state["running"]:
            state["running"] = False
            result = None
            try:
                result = profiler["_disable_profiler"]()
            except failure:  # no session: it was stopped during the call
                state["spoiled"] = True
            restarted = object_traceback(state["sentinel"]) is None  # its traces were cleared
            python_peak = traced()[1]
            traces["stop"]()
            spoiled = state["spoiled"] or restarted or result is None
            written = changed(state.pop("buffers"))
            report(-1 if spoiled else peak_of(result, state["inputs"]) + python_peak + written)
        elif what == "stop":  # stopped already, by a "stop" that was not the worker's
            report(-1)
        else:
            state["spoiled"] = True

    return handle


def _buffer_watch() -> tuple[Callable[[], list[Any]], Callable[[list[Any]], int]]:
    """``snapshot()``: the buffers the process holds — NumPy arrays (and the arrays they view), bytearrays,
    ``array.array``s, CPU tensors, subclasses of each — found from every object the garbage collector
    tracks (and the untracked tuples, dicts, lists and object arrays among them, a few levels deep), each
    with a digest of its bytes; ``changed(snapshot)``: the bytes of those whose contents changed since.
    NumPy writing in place into an array made before the call (``out=``) allocates nothing and runs no
    PyTorch operation: this is how the meter sees it. Only C code of these types runs here (a subclass's
    own methods are never called), so none of the notebook's code runs inside the hook."""
    objects, referents, tracked = gc.get_objects, gc.get_referents, gc.is_tracked
    _type, _id, _bytes, _issubclass, digest, view = type, id, bytes, issubclass, hashlib.blake2b, memoryview
    _len, _set, _range = len, set, range
    tensor, detach, to_numpy = torch.Tensor, torch._C.TensorBase.detach, torch._C.TensorBase.numpy
    on_cpu = inspect.getattr_static(torch._C.TensorBase, "is_cpu").__get__
    no_function, no_dispatch = torch._C.DisableTorchFunctionSubclass, torch._C._DisableTorchDispatch
    raw = (bytearray, array.array)
    try:
        import numpy  # noqa: PLC0415
        ndarray, tobytes, ravel, listed = numpy.ndarray, numpy.ndarray.tobytes, numpy.ndarray.ravel, numpy.ndarray.tolist
        has_objects = inspect.getattr_static(numpy.dtype, "hasobject").__get__
        dtype_of = inspect.getattr_static(numpy.ndarray, "dtype").__get__
        base_of = inspect.getattr_static(numpy.ndarray, "base").__get__
    except ImportError:
        ndarray = type("NoNumPy", (), {})

    def contents(buffer: Any) -> bytes | None:
        kind = _type(buffer)
        try:
            if _issubclass(kind, ndarray):
                return tobytes(buffer)
            if _issubclass(kind, raw):
                return _bytes(view(buffer))
            if _issubclass(kind, tensor) and on_cpu(buffer):
                with no_function(), no_dispatch():  # a subclass's own hooks are not called
                    return tobytes(to_numpy(detach(buffer)))
        except (TypeError, RuntimeError, ValueError, BufferError):  # one NumPy cannot view (sparse, meta, ...)
            return None
        return None

    def snapshot() -> list[Any]:
        found, seen = [], _set()
        frontier = referents(*objects())
        for _ in _range(6):
            deeper = []
            for value in frontier:
                kind = _type(value)
                if _id(value) in seen:
                    continue
                seen.add(_id(value))
                if _issubclass(kind, ndarray):
                    if has_objects(dtype_of(value)):
                        deeper.extend(listed(ravel(value)))
                        continue
                    if base_of(value) is not None:
                        deeper.append(base_of(value))  # the array, or the buffer, that owns the memory
                if _issubclass(kind, ndarray) or _issubclass(kind, raw) or _issubclass(kind, tensor):
                    data = contents(value)
                    if data is not None:
                        found.append((value, digest(data).digest(), _len(data)))
                elif (kind is tuple or kind is dict or kind is list) and not tracked(value):  # identity: no __eq__
                    deeper.extend(referents(value))
            frontier = deeper
        return found

    def changed(found: list[Any]) -> int:
        total = 0
        for value, before, size in found:
            data = contents(value)
            if data is None or digest(data).digest() != before:
                total += size
        return total

    return snapshot, changed


def signed(line: bytes, key: bytes) -> tuple[int, int] | None:
    """(count, peak bytes; -1 where the measurement was spoiled) of a meter line signed with ``key``,
    or None where it is not one."""
    parts = line.split()
    if len(parts) != 4 or parts[0] != b"meter":
        return None
    message = parts[1] + b" " + parts[2]
    expected = hashlib.blake2b(message, key=key, digest_size=16).hexdigest().encode()
    if not hmac.compare_digest(expected, parts[3]):
        return None
    return int(parts[1]), int(parts[2])


def _reader() -> Callable[[Any, frozenset[int]], int]:
    """``measure(result, inputs)``: from a profiler session, the most bytes that blocks allocated during
    it kept alive at once, plus the bytes of every tensor kept from before it (other than the storages
    ``inputs``, by address) that an operation read or wrote — a buffer made before the call and written
    in place is memory the call used. It uses the profiler's classes' getters and Python's builtins as
    they are now: the notebook's code may patch either later."""
    tree = inspect.getattr_static(_autograd._ProfilerResult, "experimental_event_tree")
    event = {name: inspect.getattr_static(_profiler._ProfilerEvent, name).fget
             for name in ("children", "tag", "start_time_ns", "extra_fields")}
    field = {name: inspect.getattr_static(_profiler._ExtraFields_Allocation, name).fget for name in ("ptr", "alloc_size")}
    operands = inspect.getattr_static(_profiler._ExtraFields_TorchOp, "inputs").fget
    tensor = {name: inspect.getattr_static(_profiler._TensorMetadata, name).fget
              for name in ("storage_data_ptr", "sizes", "dtype")}
    allocation, operation = _profiler._EventType.Allocation, _profiler._EventType.TorchOp
    _list, _sorted, _max, _sum, _type, _prod = list, sorted, max, sum, type, math.prod
    _metadata = _profiler._TensorMetadata
    same = type(allocation).__eq__  # the enum's comparison, before anything can replace it

    def measure(result: Any, inputs: frozenset[int]) -> int:
        allocations, touched = [], {}
        stack = _list(tree(result))
        while stack:
            node = stack.pop()
            stack.extend(event["children"](node))
            kind = event["tag"](node)
            if same(kind, allocation):
                extra = event["extra_fields"](node)
                allocations.append((event["start_time_ns"](node), field["ptr"](extra), field["alloc_size"](extra)))
            elif same(kind, operation):
                for operand in operands(event["extra_fields"](node)):
                    if _type(operand) is _metadata and tensor["storage_data_ptr"](operand):
                        pointer = tensor["storage_data_ptr"](operand)
                        size = _prod(tensor["sizes"](operand)) * tensor["dtype"](operand).itemsize
                        touched[pointer] = _max(touched.get(pointer, 0), size)
        live: dict[int, int] = {}
        now = most = 0
        for _, pointer, size in _sorted(allocations):
            if size > 0:
                live[pointer] = live.get(pointer, 0) + size
                now += size
                most = _max(most, now)
            elif pointer in live:  # a release of a block allocated during the session
                now -= live.pop(pointer)
        made = {pointer for _, pointer, size in allocations if size > 0}
        kept = _sum(size for pointer, size in touched.items() if pointer not in made and pointer not in inputs)
        return most + kept

    return measure


def _remove_everywhere(controls: list[Any]) -> None:
    """Delete every module attribute that is one of ``controls`` (``torch.autograd.profiler`` and
    ``tracemalloc`` import them by name): afterwards only the meter holds them."""
    wanted = {id(control) for control in controls}
    for module in list(sys.modules.values()):
        if not isinstance(module, types.ModuleType):
            continue
        namespace = vars(module)
        for name in [name for name, value in list(namespace.items()) if id(value) in wanted]:
            del namespace[name]
