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
inputs are not tensors or plain data. Behaviours run here too, peak memory included: it is measured
in the worker, where the notebook's kernel (and whatever it patched there) is not. Each set of
refusals (``torch_shortcuts``) has its own worker, whose floor (``floor.Floor``) takes those shortcuts
out of its process before the notebook's code runs. Before any of it, the student's cells are read
(``policy``): a grade cell below one that could switch the checks off fails without being replayed.
"""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import resolve_name

from course_lib import runtime
from course_lib.grading import framework, memory_meter, policy, replay_worker
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


class WorkerEnded(RuntimeError):
    """The replay worker ended or stopped answering."""


class ReplayWorker:
    """A sandboxed interpreter that runs a notebook's code up to a point, ready for calls there."""

    def __init__(self, *, refused: dict[str, dict[str, str]], hidden: list[Path], limits: Limits, cell_timeout: float):
        self.folder = Path(tempfile.mkdtemp(prefix="course-replay-"))
        for file in _WORKER_FILES:
            shutil.copy(file, self.folder / file.name)
        # Triton's CPU interpreter, even on a GPU: it compiles nothing, so the worker runs no compiler
        # (replay_worker.harden refuses every other process), and a kernel's verdict is the same everywhere.
        environment = {**os.environ, "TRITON_INTERPRET": "1"}
        self.sandbox = Sandbox(self.folder, hidden=[*hidden, COURSE_LIB], readable=environment_paths(),
                               limits=limits, environment=environment)
        # The floor (``floor.lay``) is laid from the first argument before any of the notebook's code runs.
        command = self.sandbox.command([sys.executable, "-I", str(self.folder / "replay_worker.py"), json.dumps(refused)])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=self.folder, env=environment)
        # The key the worker's memory meter signs its measures with: the first line it reads, before
        # any of the notebook's code runs (memory_meter.Meter).
        self.key = os.urandom(32)
        self.measured = 0  # how many measures the meter has signed
        self.process.stdin.write(self.key.hex().encode() + b"\n")
        self.process.stdin.flush()
        self._reader = concurrent.futures.ThreadPoolExecutor(1)
        self.cell_timeout = cell_timeout
        self.ran = 0  # how many of the notebook's definitions it has run (or skipped)
        self.fatal: str | None = None  # the definition that ended the worker, if one did

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
        """The worker's reply; for a measured call, with "peak_bytes" from the meter's signed line (None
        where the measurement was spoiled). Anything else on the stream ends the worker."""
        try:
            replay_worker.write_message(self.process.stdin, header, tensors)
            future = self._reader.submit(self._read_reply, bool(header.get("measure")))
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.close()
            raise WorkerEnded(f"did not finish within {timeout:g} s") from None
        except ValueError as error:  # the notebook's code wrote on the worker's reply stream
            self.close()
            raise WorkerEnded(f"its replies were tampered with ({error})") from None
        except (EOFError, OSError) as error:
            self.close()
            code = self.process.wait()
            why = "it ran out of memory or was killed" if code in (-9, 137) else f"exit status {code}"
            raise WorkerEnded(f"the grading process ended ({why}): {error}") from None

    def _read_reply(self, measured: bool) -> tuple[dict, dict]:
        first = self.process.stdout.readline(1 << 24)
        if not measured:
            return replay_worker.read_message(self.process.stdout, line=first)
        signed = memory_meter.signed(first, self.key)
        if signed is None or signed[0] != self.measured + 1:
            raise ValueError("the line where the memory meter's measure belongs is not the meter's")
        self.measured += 1
        reply, out = replay_worker.read_message(self.process.stdout)
        reply["peak_bytes"] = None if signed[1] < 0 else signed[1]
        return reply, out

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
                failure, decided = _verify_call(workers[key], exercise, call, secret)
                verdict.decided_by.append(f"{call.exercise}: {decided}")
                if failure and verdict.failure is None:
                    verdict.failure = failure
    finally:
        for worker in workers.values():
            worker.close()
    return verdicts


def torch_shortcuts(exercise: Exercise) -> dict[str, dict[str, str]]:
    """What the exercise refuses of PyTorch, by name, as the worker's floor takes it: ATen operators
    and PyTorch's functions (course_lib's references need nothing: course_lib is not importable there)."""
    return {"operators": dict(exercise.forbidden.operators),
            "functions": {_torch_name(f): why for f, why in exercise.forbidden.functions.items()}}


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


def _verify_call(worker: ReplayWorker, exercise: Exercise, call: CheckCall, secret: str) -> tuple[Failure | None, str]:
    if exercise.adapt is not None and not exercise.adapt_only_refuses and exercise.adapt_outside is None:
        return None, "in-kernel only (what the student passes is adapted inside the kernel)"
    device = runtime.device()
    cases = exercise.make_cases(runtime.generator(secret_seed(secret, call)))
    timeout = exercise.timeout_s or framework.student_code.CALL_TIMEOUT_SECONDS
    try:
        for case in cases:
            failure = _replay_case(worker, exercise, call.function, case, device, timeout)
            if failure:
                return failure, "outside"
    except _NotReplayable as reason:
        return None, f"in-kernel only ({reason})"
    for behaviour in exercise.behaviours:
        problem = _replay_behaviour(worker, exercise, call.function, behaviour, device, timeout, secret, call)
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
        return fail("timeout" if "within" in str(ended) else "exception", f"your function {ended}")
    if "error" in reply:
        return fail(reply["error"] if reply["error"] == "shortcut" else "exception", reply.get("problem", ""))
    out = {k: t.to(device) for k, t in out.items()}
    result = replay_worker.decode(reply["result"], out)
    gradients = replay_worker.decode(reply["gradients"], out) if "gradients" in reply else None
    return exercise.judge(case, result, device, gradients)


def _replay_behaviour(worker, exercise, function, behaviour, device, timeout, secret, call) -> str | None:  # noqa: ANN001
    def request(args: tuple, kwargs: dict, measure: bool) -> tuple[torch.Tensor, dict]:
        tensors: dict[str, torch.Tensor] = {}
        case = None
        if exercise.module:  # a module behaviour's call builds the module with a Case's init and state
            case = Case("behaviour", args, kwargs, init=kwargs.pop("init"), state=kwargs.pop("state"))
        header = {**_call_header(exercise, function, device, tensors, args, kwargs, case), "measure": measure}
        reply, out = worker.request(header, tensors, timeout)
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
        result, reply = request(args, kwargs, measure=True)
        if reply["peak_bytes"] is None:
            raise _BehaviourCallFailed("the memory measurement was stopped or restarted during the call")
        return result, int(reply["peak_bytes"])

    remote.measured = measured

    try:
        return behaviour.test(remote, device, runtime.generator(secret_seed(secret, call) + 1))
    except _BehaviourCallFailed as failed:
        return str(failed)
    except WorkerEnded as ended:
        return f"your function {ended}"


class _BehaviourCallFailed(Exception):
    pass


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
