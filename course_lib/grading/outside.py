"""The recorded grade's second opinion: the graded functions of a submission, called again outside
the student's kernel, on inputs drawn from the grader's secret, and judged by the grader.

After nbgrader has run a notebook (in its sandbox), ``verify_notebook`` starts a *fresh* sandboxed
interpreter (``replay_worker.py``) that runs the notebook's code again — the student's answer
cells, and the instructor's cells statement by statement — without course_lib (it is not
importable there, so nothing that needs it runs), never the grade cells — and asks it to call each function that a grade cell checks, case by case. Only tensors
and plain data come back (safetensors and JSON). The grader draws the cases, runs the references
and judges with the same ``Exercise`` as the in-kernel check, so messages and named mistakes are
the same. The recorded score of a grade cell is the lower of the two verdicts: a failure here adds
an error to the cell, which nbgrader scores 0.

What is not replayed here is said in the grading record, never silently passed: exercises that
adapt what the student passes without saying how the worker does it (``Exercise.adapt_outside``;
lesson 08's Triton step says: the worker runs it in a copy of the skeleton kernel) and cases whose
inputs are not tensors or plain data. Behaviours run here too, memory included: the grader counts the
pages the worker's process touches during the call (``touched_memory``), from outside that process. Each set of
refusals (``torch_shortcuts``) has its own worker, whose floor (``floor.Floor``) takes those shortcuts
out of its process before the notebook's code runs. Before any of it, the student's cells are read
(``policy``): a grade cell below one that could switch the checks off fails without being replayed.
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import resolve_name

from course_lib import runtime
from course_lib.grading import floor, framework, native_code, policy, replay_worker, touched_memory
from course_lib.grading.framework import Case, Exercise, Failure
from course_lib.grading.sandbox import Limits, Sandbox, environment_paths

COURSE_LIB = Path(__file__).resolve().parents[1]
_WORKER_FILES = (Path(__file__).with_name("replay_worker.py"),
                 *(COURSE_LIB.parent.joinpath(*module.split(".")).with_suffix(".py")
                   for module in replay_worker.BESIDE.values()))


@dataclass(frozen=True)
class CheckCall:
    """One ``check_<exercise>(<function>, hidden=..., seed=...)`` of a grade cell."""

    exercise: str
    function: str
    hidden: bool = False
    seed: int | None = None


@dataclass
class CellVerdict:
    """The outside verdict on one grade cell: the first failure (None: every call passed), and per
    check call what decided (``outside``, or ``in-kernel only: <why>``)."""

    grade_id: str
    failure: Failure | None = None
    decided_by: list[str] = field(default_factory=list)


def check_calls(source: str) -> list[CheckCall]:
    """The ``check_*`` calls of a grade cell, with literal arguments (others are ignored)."""
    try:
        tree = ast.parse(_without_magics(source))
    except SyntaxError:
        return []
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_")
                and node.args and isinstance(node.args[0], ast.Name)):
            continue
        options = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
        calls.append(CheckCall(node.func.id.removeprefix("check_"), node.args[0].id,
                               bool(options.get("hidden", False)), options.get("seed")))
    return calls


def definitions(nb: Any) -> list[tuple[int, str, str]]:
    """(cell index, label, source) of what the replay worker runs, in notebook order: every answer cell whole,
    and the instructor's code cells statement by statement (so a statement that needs course_lib,
    which the worker cannot import, fails alone and the constants and helpers around it are kept)."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or meta.get("grade"):
            continue
        label = f"cell {index}" + (f" ({meta['grade_id']})" if meta.get("grade_id") else "")
        source = _without_magics(cell.source)
        if meta.get("solution"):
            found.append((index, label, source))
        else:
            found += [(index, f"{label}, line {line}", statement) for line, statement in _statements(source)]
    return [(index, label, source) for index, label, source in found if source.strip()]


def secret_seed(secret: str, call: CheckCall) -> int:
    """The seed of the outside cases of ``call``: unknown without the grader's secret."""
    message = f"{call.exercise}:{call.hidden}:{call.seed}".encode()
    return int.from_bytes(hmac.new(secret.encode(), message, hashlib.sha256).digest()[:7], "little")


# Memory a call may touch beyond the protocol's measured own (``ReplayWorker._used``) without it counting:
# Python's small allocations, which differ a little from one request to the next.
PROTOCOL_SLACK = 1 << 20


class WorkerEnded(RuntimeError):
    """The replay worker ended or stopped answering; ``shortcut``: it ran one of the kernels the
    exercise refuses, which its floor had overwritten with traps (``native_code``)."""

    def __init__(self, message: str, shortcut: bool = False):
        super().__init__(message)
        self.shortcut = shortcut


class ReplayWorker:
    """A sandboxed interpreter that runs a notebook's code up to a point, ready for calls there."""

    def __init__(self, *, refused: dict[str, dict[str, str]], hidden: list[Path], limits: Limits, cell_timeout: float,
                 gpu: bool = True):
        """``gpu=False``: a worker without CUDA (its device files hidden), where the memory a call uses can
        only be the process's own, which the grader counts (``touched_memory``) and its filter keeps."""
        self.folder = Path(tempfile.mkdtemp(prefix="course-replay-"))
        for file in _WORKER_FILES:
            shutil.copy(file, self.folder / file.name)
        # Triton's CPU interpreter, even on a GPU: it compiles nothing, so the worker runs no compiler
        # (its system-call filter refuses every other process), and a kernel's verdict is the same everywhere.
        environment = {**os.environ, "TRITON_INTERPRET": "1", **({} if gpu else {"CUDA_VISIBLE_DEVICES": ""})}
        self.sandbox = Sandbox(self.folder, hidden=[*hidden, COURSE_LIB], readable=environment_paths(),
                               limits=limits, environment=environment, gpu=gpu)
        # The floor (``floor.lay``) is laid from the first argument before any of the notebook's code runs.
        command = self.sandbox.command([sys.executable, "-I", str(self.folder / "replay_worker.py"), json.dumps(refused)])
        self.native = refused.get("native", [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=self.folder, env=environment)
        self._touched: touched_memory.TouchedMemory | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(1)
        self.cell_timeout = cell_timeout
        self.ran = 0  # how many of the notebook's definitions it has run (or skipped)
        self.fatal: str | None = None  # the definition that ended the worker, if one did
        # What reading a request and writing its reply touch, measured before any of the notebook's code
        # runs: (bytes for tiny tensors, bytes per byte of tensors in and out); None without /proc.
        self.protocol_memory: tuple[int, float] | None = None
        self.protocol_memory = self._measure_protocol() if touched_memory.available() else None

    def advance(self, cells: list[tuple[int, str, str]], before: int, skip: set[str]) -> None:
        """Run the definitions of cells before index ``before`` not run yet, as the kernel did before
        the grade cell at ``before``; those in ``skip`` (they ended a worker) are left out."""
        while self.ran < len(cells) and cells[self.ran][0] < before and self.fatal is None:
            _, label, source = cells[self.ran]
            self.ran += 1
            if label in skip:
                continue
            try:
                self.request({"op": "run", "source": source, "label": label}, {}, self.cell_timeout)
            except WorkerEnded:
                self.fatal = label  # an error the code raised is its own business: only an ending counts

    @property
    def alive(self) -> bool:
        return self.fatal is None and self.process.poll() is None

    def request(self, header: dict, tensors: dict[str, torch.Tensor], timeout: float) -> tuple[dict, dict]:
        """The worker's reply; for a measured call, with "touched_bytes": the memory the worker's process
        touched from the request to the reply, counted by the operating system (``touched_memory``), and
        "used_bytes": that, less what the protocol itself touches for tensors of those sizes (None
        without /proc). Anything but a message on the stream ends the worker."""
        measured = bool(header.get("measure"))
        try:
            if measured and self.touched is not None:
                self.touched.reset()
            replay_worker.write_message(self.process.stdin, header, tensors)
            future = self._reader.submit(replay_worker.read_message, self.process.stdout)
            reply, out = future.result(timeout=timeout)
            if measured:
                reply["touched_bytes"] = None if self.touched is None else self.touched.read()
                reply["used_bytes"] = self._used(reply["touched_bytes"], [*tensors.values(), *out.values()])
            return reply, out
        except concurrent.futures.TimeoutError:
            self.close()
            raise WorkerEnded(f"did not finish within {timeout:g} s") from None
        except ValueError as error:  # the notebook's code wrote on the worker's reply stream (bad JSON too)
            self.close()
            raise WorkerEnded(f"its replies were tampered with ({error})") from None
        except (EOFError, OSError) as error:  # the worker ended (its /proc files are gone, too)
            self.close()
            code = self.process.wait()
            if code in native_code.TRAP_EXIT:
                raise WorkerEnded(f"ran PyTorch's own compiled kernel for what this exercise refuses (the "
                                  f"grader had taken out the kernels named {', '.join(self.native)}; "
                                  f"{floor.MARK}): the grading process stopped there", shortcut=True) from None
            why = "it ran out of memory or was killed" if code in (-9, 137) else f"exit status {code}"
            raise WorkerEnded(f"the grading process ended ({why}): {error}") from None

    def _measure_protocol(self) -> tuple[int, float]:
        """Echo calls (the worker decodes three tensors and sends the first back, through the same code as
        a call), each measured twice after one unmeasured, at two sizes: the protocol's own memory."""
        sizes, touched = (16, 1 << 20), []  # bytes per tensor
        for size in sizes:
            args, tensors = tuple(torch.zeros(size // 4) for _ in range(3)), {}
            header = {"op": "echo", "args": replay_worker.encode(args, tensors)}
            self.request(header, tensors, self.cell_timeout)  # the first: what is set up once is not counted
            touched = [*touched, max(self.request({**header, "measure": True}, tensors, self.cell_timeout)[0]
                                     ["touched_bytes"] for _ in range(2))]
        return touched[0], max(0, touched[1] - touched[0]) / (4 * (sizes[1] - sizes[0]))  # 3 tensors in, 1 out

    def _used(self, touched: int | None, tensors: list[torch.Tensor]) -> int | None:
        if touched is None or self.protocol_memory is None:
            return None
        base, per_byte = self.protocol_memory
        carried = sum(t.numel() * t.element_size() for t in tensors)
        return max(0, touched - int(base + per_byte * carried) - PROTOCOL_SLACK)

    @property
    def touched(self) -> touched_memory.TouchedMemory | None:
        """The worker's memory counter (None where this machine has no /proc to count with): found once,
        at the first measured echo, after the worker has answered (the worker starts no process, so the
        chain that the sandbox's launcher began ends in it)."""
        if self._touched is None and touched_memory.available():
            self._touched = touched_memory.TouchedMemory(touched_memory.leaf_process(self.process.pid))
        return self._touched

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.shutdown(wait=False, cancel_futures=True)
        self.sandbox.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def verify_notebook(nb: Any, *, secret: str, exercises: dict[str, Exercise], hidden: list[Path],
                    limits: Limits = Limits(), cell_timeout: float = 60.0) -> dict[str, CellVerdict]:
    """The outside verdict on every grade cell of an executed notebook, by grade id. Each grade cell
    is judged where it stands: after the code of the cells above it, as in the kernel. A definition
    that ends the worker or runs past ``cell_timeout`` seconds is left out of the next worker (it
    scores 0 for itself)."""
    cells = definitions(nb)
    refused = _refused_cells(nb)
    verdicts: dict[str, CellVerdict] = {}
    skip: set[str] = set()
    workers: dict[str, ReplayWorker] = {}  # one per set of refusals: each worker's floor is laid at its start
    options = {"hidden": hidden, "limits": limits, "cell_timeout": cell_timeout}
    try:
        for index, cell in enumerate(nb.cells):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if not (meta.get("grade") and cell.cell_type == "code"):
                continue
            verdict = verdicts[meta["grade_id"]] = CellVerdict(meta["grade_id"])
            above = [problem for at, problem in refused if at < index]
            for call in check_calls(cell.source):
                if above:  # code above this cell could switch the checks off: nothing of it is run
                    verdict.decided_by.append(f"{call.exercise}: outside (refused before running)")
                    verdict.failure = verdict.failure or Failure(call.exercise, "refused", policy.explain(above))
                    continue
                exercise = exercises.get(call.exercise)
                if exercise is None:
                    verdict.decided_by.append(f"{call.exercise}: in-kernel only (no such exercise)")
                    continue
                shortcuts = torch_shortcuts(exercise)
                key = json.dumps(shortcuts, sort_keys=True)
                workers[key], skip = _worker_at(workers.get(key), cells, index, skip, {**options, "refused": shortcuts})
                without_gpu = functools.partial(_worker_without_gpu, workers, key, cells, index, skip,
                                                {**options, "refused": shortcuts})
                failure, decided = _verify_call(workers[key], exercise, call, secret, without_gpu)
                verdict.decided_by.append(f"{call.exercise}: {decided}")
                if failure and verdict.failure is None:
                    verdict.failure = failure
    finally:
        for worker in workers.values():
            worker.close()
    return verdicts


def torch_shortcuts(exercise: Exercise) -> dict[str, dict[str, str]]:
    """What the exercise refuses of PyTorch, by name, as the worker's floor takes it: ATen operators,
    PyTorch's functions and the words that name its compiled kernels (course_lib's references need
    nothing: course_lib is not importable there)."""
    return {"operators": dict(exercise.forbidden.operators),
            "functions": {_torch_name(f): why for f, why in exercise.forbidden.functions.items()},
            "native": sorted(exercise.forbidden.native)}


def _torch_name(function: Any) -> str:
    """The qualified name by which the worker's floor finds a refused function again."""
    if isinstance(function, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
        return str(function)  # aten.gru_cell: the floor refuses the operator
    resolved = resolve_name(function)
    if resolved:
        return resolved
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if qualname:  # a Python method (torch.ao's quantizable attention), or one of torch's C functions
        return f"{module or 'torch'}.{qualname}"
    return str(function)


def _refused_cells(nb: Any) -> list[tuple[int, str]]:
    """(index, what) of the student's cells that use what graded code may not (``policy``)."""
    found = []
    for index, source in policy.student_cells(nb):
        problems = policy.refusals(_without_magics(source))
        if problems:
            first = next((line.strip() for line in source.splitlines() if line.strip()), "")
            found.extend((index, f"in the cell that begins `{first[:60]}`, {problem}") for problem in problems)
    return found


def _worker_at(worker: ReplayWorker | None, cells: list[tuple[int, str, str]], index: int, skip: set[str],
               options: dict) -> tuple[ReplayWorker, set[str]]:
    """A live worker that has run the definitions above cell ``index``: ``worker`` advanced, or a new
    one where it has ended (what ended it is left out from then on)."""
    for _ in range(len(cells) + 2):
        if worker is not None and worker.alive:
            worker.advance(cells, index, skip)
            if worker.alive:
                return worker, skip
        if worker is not None:
            worker.close()
            if worker.fatal:
                skip = skip | {worker.fatal}
        worker = ReplayWorker(**options)
    raise RuntimeError("the replay worker does not start: see `python -m course_lib.grading.sandbox`")


def _worker_without_gpu(workers: dict[str, ReplayWorker], key: str, cells: list[tuple[int, str, str]], index: int,
                        skip: set[str], options: dict) -> ReplayWorker:
    """Where every case is replayed on the CPU and memory is measured: on a GPU machine, a worker of its
    own without CUDA, started when first needed (a GPU's memory is not the process's, which the grader
    counts; and only there does the whole system-call filter hold, see ``_verify_call``); elsewhere
    ``workers[key]``."""
    if runtime.device().type != "cuda":
        return workers[key]
    without = key + " without a GPU"
    workers[without], _ = _worker_at(workers.get(without), cells, index, skip, {**options, "gpu": False})
    return workers[without]


def _verify_call(worker: ReplayWorker, exercise: Exercise, call: CheckCall, secret: str,
                 without_gpu: Callable[[], ReplayWorker]) -> tuple[Failure | None, str]:
    if exercise.adapt is not None and not exercise.adapt_only_refuses and exercise.adapt_outside is None:
        return None, "in-kernel only (what the student passes is adapted inside the kernel)"
    device = runtime.device()
    cases = exercise.make_cases(runtime.generator(secret_seed(secret, call)))
    timeout = exercise.timeout_s or framework.student_code.CALL_TIMEOUT_SECONDS
    # Every case on the CPU, in a worker without a GPU, and on a GPU machine on the GPU as well: CUDA needs
    # what the whole system-call filter refuses (executable pages among them), so a GPU worker's filter
    # refuses other processes only, and raw memory could write its trapped kernels back (a red team did,
    # with the GPU's filter). A function that passes on the CPU was written without the shortcuts.
    places = [(without_gpu(), torch.device("cpu"))] + ([(worker, device)] if device.type == "cuda" else [])
    try:
        for case in cases:
            for where, on in places:
                failure = _replay_case(where, exercise, call.function, case, on, timeout)
                if failure:
                    return failure, "outside"
    except _NotReplayable as reason:
        return None, f"in-kernel only ({reason})"
    for behaviour in exercise.behaviours:
        problem = _replay_behaviour(worker, without_gpu, exercise, call.function, behaviour, device, timeout, secret, call)
        if problem:
            return Failure(exercise.name, "behaviour", problem, behaviour=behaviour.name), "outside"
    return None, "outside"


class _NotReplayable(Exception):
    pass


def _call_header(exercise: Exercise, function: str, device: torch.device, tensors: dict, args: tuple,
                 kwargs: dict, case: Case | None = None) -> dict:
    try:
        header = {
            "op": "call", "name": function, "device": str(device), "module": bool(exercise.module),
            "args": replay_worker.encode(tuple(args), tensors), "kwargs": replay_worker.encode(dict(kwargs), tensors),
            "grad": bool(case and case.check_gradients), "input_names": framework._input_names(exercise),
        }
        if exercise.adapt_outside is not None:
            module, function, options = exercise.adapt_outside
            header["adapt"] = [module, function, dict(options)]
        if exercise.module and case is not None:
            header["init"] = replay_worker.encode(dict(case.init or {}), tensors)
            header["state"] = replay_worker.encode(dict(case.state or {}), tensors)
            header["parameter_names"] = dict(exercise.module.parameter_names)
    except TypeError as error:
        raise _NotReplayable(f"its inputs hold {error}") from None
    return header


def _replay_case(worker: ReplayWorker, exercise: Exercise, function: str, case: Case, device: torch.device,
                 timeout: float) -> Failure | None:
    tensors: dict[str, torch.Tensor] = {}
    header = _call_header(exercise, function, device, tensors, case.args, case.kwargs, case)
    fail = exercise._fail(case)
    try:
        reply, out = worker.request(header, tensors, timeout)
    except WorkerEnded as ended:
        kind = "shortcut" if ended.shortcut else "timeout" if "within" in str(ended) else "exception"
        return fail(kind, f"your function {ended}")
    if "error" in reply:
        return fail(reply["error"] if reply["error"] == "shortcut" else "exception", reply.get("problem", ""))
    out = {k: t.to(device) for k, t in out.items()}
    result = replay_worker.decode(reply["result"], out)
    gradients = replay_worker.decode(reply["gradients"], out) if "gradients" in reply else None
    return exercise.judge(case, result, device, gradients)


def _replay_behaviour(worker, without_gpu, exercise, function, behaviour, device, timeout, secret, call) -> str | None:  # noqa: ANN001
    def request(args: tuple, kwargs: dict, measure: bool, on_cpu: bool = False) -> tuple[torch.Tensor, dict]:
        tensors: dict[str, torch.Tensor] = {}
        case = None
        if exercise.module:  # a module behaviour's call builds the module with a Case's init and state
            case = Case("behaviour", args, kwargs, init=kwargs.pop("init"), state=kwargs.pop("state"))
        # Memory is measured on the CPU, where the operating system counts it (touched_memory).
        header = {**_call_header(exercise, function, torch.device("cpu") if on_cpu else device, tensors, args,
                                 kwargs, case), "measure": measure}
        reply, out = (without_gpu() if on_cpu else worker).request(header, tensors, timeout)
        if "error" in reply:
            raise _BehaviourCallFailed(reply.get("problem", ""))
        result = replay_worker.decode(reply["result"], {k: t.to(device) for k, t in out.items()})
        if exercise.module and isinstance(result, tuple) and result:
            result = result[0]
        if not isinstance(result, torch.Tensor):
            raise _BehaviourCallFailed(f"expected a torch.Tensor, got {type(result).__name__}")
        return result, reply

    def remote(*args: Any, **kwargs: Any) -> torch.Tensor:
        return request(args, kwargs, measure=False)[0]

    def measured(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, int]:
        # First the same call on other values, unmeasured: what a first call sets up once (a library's
        # buffers, a module imported and gone through by the floor) is not counted, and nothing computed
        # there can be reused (the measured call's values are the grader's secret).
        request(_other_values(args), _other_values(kwargs), measure=False, on_cpu=True)
        result, reply = request(args, kwargs, measure=True, on_cpu=True)
        if reply["used_bytes"] is None:
            raise _BehaviourCallFailed("the memory a call uses is counted from Linux's /proc, which the grading "
                                       "machine has not: grade on Linux")
        return result, reply["used_bytes"]

    remote.measured = measured

    try:
        return behaviour.test(remote, device, runtime.generator(secret_seed(secret, call) + 1))
    except _BehaviourCallFailed as failed:
        return str(failed)
    except WorkerEnded as ended:
        return f"your function {ended}"


class _BehaviourCallFailed(Exception):
    pass


def _other_values(tree: Any) -> Any:
    """``tree`` with every floating-point tensor replaced by random values of its shape and dtype."""
    if isinstance(tree, torch.Tensor) and tree.is_floating_point():
        return torch.randn(tree.shape, dtype=tree.dtype, generator=torch.Generator().manual_seed(0)).to(tree.device)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_other_values(item) for item in tree)
    if isinstance(tree, dict):
        return {key: _other_values(value) for key, value in tree.items()}
    return tree


def _statements(source: str) -> list[tuple[int, str]]:
    """The top-level statements of an instructor's cell, with their line numbers; imports of course_lib left out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [(node.lineno, ast.unparse(node)) for node in tree.body
            if not (isinstance(node, (ast.Import, ast.ImportFrom))
                    and any(name.split(".")[0] == "course_lib" for name in _imported_modules(node)))]


def _imported_modules(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.ImportFrom):
        yield node.module or ""
    else:
        yield from (alias.name for alias in node.names)


def _without_magics(source: str) -> str:
    """A cell's source without IPython's line magics and shell escapes (plain Python runs it)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def grading_secret() -> str:
    """The grader's secret: the course's salt where the instructor set one, else a new random one."""
    return os.environ.get(framework.HIDDEN_SALT_ENV_VAR) or os.urandom(16).hex()
