"""What a notebook's code may not do in the replay worker, enforced by an audit hook that nothing can
remove (``sys.addaudithook``), installed once the floor is laid and before any of the notebook's code.

Refused from then on, each because it runs code without the floor or reaches what the worker keeps
from the notebook:

* another process or thread (fork, exec, spawn, ``subprocess``, thread starts), another audit hook;
* unpickling (it calls any importable function by name) and walking the garbage collector's objects;
* ctypes, and opening a process's memory (``/proc/*/mem``; the sandbox mounts ``/proc`` read-only too):
  raw memory would reach past everything the process holds;
* ``mmap``;
* the frames of the hook, reached through a traceback: they hold the floor (a refusal is raised inside
  the hook, so its traceback passes through it);
* running again the definitions of functions the floor replaced (``importlib.reload``, ``runpy``, a
  module deleted from ``sys.modules`` and imported again): it would bring them back. Code compiled
  from such a file that defines none of them may run: Triton's interpreter compiles each ``@jit``
  function it runs (``tl.max``, ``tl.sum``) from its file again, ``tl.softmax``'s file among them.

The hook never runs the notebook's code: it looks only at arguments of Python's exact types (str,
int, bytes, tuple; code objects by identity, never by comparison), calls only what it took when it
was installed (the notebook's code may patch builtins, modules and classes afterwards), and holds the
garbage collector off while it runs (a collection runs finalizers). What the process may ask of the
operating system is limited below all this, by ``syscall_filter``, which no code in the process can
undo. This file imports nothing of course_lib: it is copied beside the worker.
"""

from __future__ import annotations

import _thread
import gc
import sys
import threading
import types
from typing import Any

EVENTS = {
    "os.fork": "starts a process", "os.forkpty": "starts a process", "os.system": "runs a program",
    "os.exec": "runs a program", "os.posix_spawn": "runs a program", "os.spawn": "runs a program",
    "subprocess.Popen": "runs a program", "pickle.find_class": "unpickles", "gc.get_objects": "walks live objects",
    "gc.get_referrers": "walks live objects", "gc.get_referents": "walks live objects",
    "sys.addaudithook": "watches what the grader's replay runs", "sys._current_frames": "reaches the grader's frames",
    "os.symlink": "makes a link (a way around the check on what is opened)", "os.link": "makes a link",
    "mmap.__new__": "maps memory by hand",
}
EVENT_PREFIXES = ("ctypes.",)
PROCESS_MEMORY = "mem"  # /proc/<pid>/mem, however the path is written


def confine(floor: Any, poisoned_event: str) -> None:
    """Install the hook (see the module) for the rest of the process. ``floor`` is kept alive, and the
    functions it replaced (``floor.files``: file -> names, and those it names later in a
    ``poisoned_event``) may not be defined again from their files."""
    # Taken now, kept in this closure: nothing below looks up a module global or a class attribute.
    _type, _str, _bytes, _tuple, _len = type, str, bytes, tuple, len
    _code, _traceback, _id, owners = types.CodeType, types.TracebackType, id, set()
    events, prefixes, memory = dict(EVENTS), EVENT_PREFIXES, PROCESS_MEMORY
    # This hook's own copy, file -> names: the floor is within the notebook's reach.
    poisoned = {file: set(names) for file, names in floor.files.items()}
    inside = [False]  # while the hook raises events of its own (a frame's attributes)
    nested = frozenset({"object.__getattr__"})
    _gc_on, _gc_off, _gc_back = gc.isenabled, gc.disable, gc.enable

    def refuse(event: str, why: str) -> None:
        raise PermissionError(f"graded code may not do what {event} does ({why}): refused by the grader's replay")

    def ours(trace: Any) -> bool:
        """Whether a traceback entry's frame is the hook's: by identity, never by a
        comparison (a code object's constants can be the notebook's objects, with its __eq__)."""
        inside[0] = True
        try:
            return _id(trace.tb_frame.f_code) in owners
        finally:
            inside[0] = False

    def redefined(code: Any, names: set[str]) -> str | None:
        """The first function of ``names`` that ``code`` defines, at any depth (by exact types only; a
        name that is not a plain str counts as one)."""
        pending = [code]
        while pending:
            for constant in pending.pop().co_consts:
                if _type(constant) is _code:
                    if _type(constant.co_name) is not _str or constant.co_name in names:
                        return constant.co_name if _type(constant.co_name) is _str else "?"
                    pending.append(constant)
        return None

    codes: list[Any] = []

    def hook(event: Any, args: Any, _keep: Any = (floor, codes)) -> None:  # keeps them alive
        if _type(event) is not _str or _type(args) is not _tuple or (inside[0] and event in nested):
            return
        collecting = _gc_on()
        _gc_off()  # no collection while the hook runs: a collection runs the notebook's finalizers
        try:
            check(event, args)
        finally:
            if collecting:
                _gc_back()

    def check(event: str, args: tuple) -> None:
        if event == poisoned_event and _len(args) == 2 and _type(args[0]) is _str and _type(args[1]) is _str:
            poisoned.setdefault(args[0], set()).add(args[1])
        elif event == "exec" and args and _type(args[0]) is _code and _type(args[0].co_filename) is _str:
            name = redefined(args[0], poisoned[args[0].co_filename]) if args[0].co_filename in poisoned else None
            if name is not None:
                refuse(event, f"runs {args[0].co_filename} again, which defines {name}, a function the floor replaced")
        elif event == "open" and args:
            path = args[0].decode("utf-8", "surrogateescape") if _type(args[0]) is _bytes else args[0]
            if _type(path) is _str and path.rstrip("/").rsplit("/", 1)[-1] == memory:
                refuse(event, "opens a process's memory")
        elif event == "object.__getattr__" and _len(args) == 2 and _type(args[1]) is _str and args[1] == "tb_frame":
            if _type(args[0]) is _traceback and ours(args[0]):
                refuse(event, "reaches the frames where the grader keeps its floor")
        elif event in events:
            refuse(event, events[event])
        elif event.startswith(prefixes):
            refuse(event, "reaches memory through ctypes")

    codes.extend(function.__code__ for function in (hook, check, refuse, ours, redefined))
    owners.update(_id(code) for code in codes)  # the functions live on, and so do their codes

    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError("graded code may not start a thread (it runs without the course's checks): refused by the grader's replay")

    # Python 3.11-3.12 start threads with start_new_thread, 3.13 with start_joinable_thread.
    for module, names in ((_thread, ("start_new_thread", "start_new", "start_joinable_thread")),
                          (threading, ("_start_new_thread", "_start_joinable_thread"))):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, no_thread)
    sys.addaudithook(hook)

