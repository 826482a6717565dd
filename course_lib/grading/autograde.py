"""nbgrader's autograde, hardened: the course's nbgrader_config.py puts these preprocessors in
``c.Autograde.autograde_preprocessors`` in place of nbgrader's ``Execute``.

* ``SandboxedExecute`` runs the notebook in a kernel inside ``sandbox.Sandbox`` (always the
  course's Python kernel: a notebook's own metadata cannot choose another), over IPC sockets (TCP
  on loopback does not cross the network namespace). A cell that ends its kernel (``os._exit``, a
  kill, the memory limit) gets an error and scores 0; a new kernel replays the cells before it and
  the notebook goes on.
* ``VerifyOutside`` then asks ``outside.verify_notebook`` for the second verdict on every grade
  cell, adds an error to a cell that fails it (nbgrader scores it 0: the recorded score is the
  lower of the two verdicts), and writes the grading record (which verdict decided, whether the
  kernel was sandboxed) under ``<course root>/grading_records/``, out of the student's reach.

Where the sandbox cannot be made, grading stops with ``GradingEnvironmentError`` unless the
instructor sets ``COURSE_UNSANDBOXED_GRADING=1`` (the record and the grades CSV then say so).
Importing this module needs nbgrader.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

try:  # the instructor's side: nbgrader and what it brings come with the [lab] extra
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbformat import NotebookNode
    from nbgrader.preprocessors import Execute, NbGraderPreprocessor
    from traitlets import Bool, Integer, List, Unicode
    from traitlets.config import Configurable
except ImportError as error:
    raise ImportError(f"grading needs nbgrader: pip install -e '.[lab]' ({error})") from error

from course_lib.grading import outside, sandbox
from course_lib.grading.framework import GradingEnvironmentError

RECORDS_FOLDER = "grading_records"


def require_sandbox() -> None:
    """Stop before any grading where the sandbox cannot be made and unsandboxed grading was not allowed."""
    reason = sandbox.unavailable_reason()
    if reason and not sandbox.unsandboxed_allowed():
        raise GradingEnvironmentError(
            f"cannot grade in a sandbox here: {reason}. Install what is missing, or set "
            f"{sandbox.UNSANDBOXED_ENV_VAR}=1 to grade without one (the grading records and the grades CSV will say so; "
            "a submission can then read and write what the grader can)."
        )


def _limits(pre: Any) -> sandbox.Limits:
    return sandbox.Limits(memory_bytes=pre.memory_limit_mb << 20, processes=pre.process_limit,
                          cpu_seconds=pre.cpu_limit_s)


def _hidden(pre: Any) -> list[Path]:
    """What the sandboxes hide: the course root, the exchange and the grader's home, plus extras."""
    course = pre.config.get("CourseDirectory", {})
    exchange = pre.config.get("Exchange", {})
    folders = [course.get("root") or os.getcwd(), exchange.get("root") or "/srv/nbgrader/exchange",
               os.path.expanduser("~"), *pre.hidden_paths]
    return [Path(f).resolve() for f in folders if f]


def hardened_preprocessors(defaults: list) -> list:
    """nbgrader's autograde preprocessors with ``Execute`` replaced by ``SandboxedExecute`` followed
    by ``VerifyOutside``; the others kept, in order."""
    if Execute not in defaults:
        raise GradingEnvironmentError("this nbgrader's autograde does not run its Execute preprocessor; "
                                      "the course's grading needs nbgrader 0.9")
    index = defaults.index(Execute)
    return [*defaults[:index], SandboxedExecute, VerifyOutside, *defaults[index + 1:]]


class SandboxLimits(Configurable):
    """The limits of every sandbox, for both preprocessors: ``c.SandboxLimits.memory_limit_mb = 4096``."""

    memory_limit_mb = Integer(8192, help="Memory limit of each sandbox, in MiB").tag(config=True)
    process_limit = Integer(256, help="Process limit of each sandbox").tag(config=True)
    cpu_limit_s = Integer(1800, help="CPU-time limit of each sandbox, in seconds").tag(config=True)
    hidden_paths = List(Unicode(), help="More folders the graded code must not see").tag(config=True)


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager that starts its kernel inside a ``Sandbox``, talking over IPC sockets in a
    private folder that the sandbox can write."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.runtime_folder = Path(tempfile.mkdtemp(prefix="course-kernel-"))
        self.transport = "ipc"
        self.ip = str(self.runtime_folder / "kernel")  # IPC: the absolute prefix of the socket files
        self.connection_file = str(self.runtime_folder / "kernel.json")
        self.sandbox_options: dict[str, Any] = {}
        self.sandbox: sandbox.Sandbox | None = None

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        command = super().format_kernel_cmd(extra_arguments)
        # A signal sent to the sandbox would stop at bubblewrap: interrupt through the kernel's control channel.
        self.kernel_spec.interrupt_mode = "message"
        if self.sandbox is not None:  # a restart: the old sandbox's processes are gone
            self.sandbox.close()
        workdir = self._launch_args.get("cwd") or os.getcwd()
        self.sandbox = sandbox.Sandbox(workdir, writable=[self.runtime_folder], **self.sandbox_options,
                                       readable=[*sandbox.environment_paths(), outside.COURSE_LIB])
        return self.sandbox.command(command)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            if self.sandbox is not None:
                self.sandbox.close()
            shutil.rmtree(self.runtime_folder, ignore_errors=True)

    cleanup_resources = _async_cleanup_resources


class SandboxedExecute(SandboxLimits, Execute):
    """nbgrader's ``Execute``, in a sandbox, going on past a cell that ends its kernel."""

    def __init__(self, **kwargs: Any):
        self.sandboxed = sandbox.unavailable_reason() is None
        require_sandbox()  # raises unless a sandbox can be made, or grading without one is allowed
        kwargs["kernel_manager_class"] = SandboxedKernelManager
        super().__init__(**kwargs)
        self.kernel_name = "python3"

    def create_kernel_manager(self):  # noqa: ANN201
        self.kernel_name = "python3"  # never the kernel a submitted notebook names
        manager = super().create_kernel_manager()
        if isinstance(manager, SandboxedKernelManager):
            manager.sandbox_options = {"hidden": _hidden(self), "limits": _limits(self)}
        return manager

    def preprocess(self, nb: NotebookNode, resources: Any = None, km: Any = None) -> tuple[NotebookNode, Any]:
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        fatal: list[int] = []
        start, limited_by = 0, None
        while start < len(self.nb.cells):
            with self.setup_kernel():
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                limited_by = getattr(getattr(self.km, "sandbox", None), "limited_by", None)
                self._replay(start, fatal)
                start = self._run_from(start, resources, fatal)
        self.set_widgets_metadata()
        resources.setdefault("course_grading", {}).update(
            sandboxed=self.sandboxed,
            limited_by=limited_by,
            cells_that_ended_the_kernel=fatal,
        )
        _remove_links(Path(resources.get("metadata", {}).get("path") or "."))
        return self.nb, self.resources

    def _run_from(self, start: int, resources: Any, fatal: list[int]) -> int:
        """Run cells from ``start``; the index to go on from (past the end when all ran)."""
        for index in range(start, len(self.nb.cells)):
            try:
                self.preprocess_cell(self.nb.cells[index], resources, index)
            except DeadKernelError:
                fatal.append(index)
                self.nb.cells[index].outputs.append(NotebookNode(
                    output_type="error", ename="KernelDied", evalue="this cell ended the kernel",
                    traceback=["KernelDied: this cell ended the kernel (os._exit, a kill, or the memory limit); "
                               "it scores 0 and the notebook goes on in a new kernel"]))
                return index + 1
        return len(self.nb.cells)

    def _replay(self, stop: int, fatal: list[int]) -> None:
        """Run cells before ``stop`` again in a new kernel (outputs dropped), except those that ended one."""
        for index in range(stop):
            cell = self.nb.cells[index]
            if cell.cell_type == "code" and index not in fatal:
                try:
                    self.execute_cell(copy.deepcopy(cell), index, store_history=False)
                except DeadKernelError:
                    return


class VerifyOutside(SandboxLimits, NbGraderPreprocessor):
    """The outside verdict on each grade cell (see ``outside``); the lower of the two is recorded."""

    enabled = Bool(True, help="Verify graded functions outside the student's kernel").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        from course_lib.grading import EXERCISES  # noqa: PLC0415 - the lesson modules are heavy

        record = resources.setdefault("course_grading", {})
        if not self.enabled:
            return nb, resources
        verdicts = outside.verify_notebook(
            nb, secret=outside.grading_secret(), exercises=EXERCISES, hidden=_hidden(self),
            limits=_limits(self), cell_timeout=float(self.config.get("Execute", {}).get("timeout") or 60),
        )
        cells = {}
        for cell in nb.cells:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            verdict = verdicts.get(grade_id)
            if verdict is None:
                continue
            in_kernel_failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            if verdict.failure and not in_kernel_failed:
                message = verdict.failure.message
                cell.outputs.append(NotebookNode(
                    output_type="error", ename="FailedOutside", evalue=message,
                    traceback=["Checked again outside your notebook, on new inputs:", *message.split("\n")]))
            decided = "in-kernel" if in_kernel_failed else ("outside" if verdict.failure else "both passed")
            cells[grade_id] = {"decided": decided, "calls": verdict.decided_by,
                               "outside_failure": verdict.failure.message if verdict.failure else None}
        record["cells"] = cells
        self._write_record(resources, record)
        return nb, resources

    def _write_record(self, resources: Any, record: dict) -> None:
        course_root = Path(self.config.get("CourseDirectory", {}).get("root") or os.getcwd())
        nbgrader = resources.get("nbgrader", {})
        folder = course_root / RECORDS_FOLDER / str(nbgrader.get("assignment", "unknown"))
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{nbgrader.get('student', 'unknown')}.{nbgrader.get('notebook', 'notebook')}.json"
        (folder / name).write_text(json.dumps(record, indent=1, default=str) + "\n")


def _remove_links(folder: Path) -> None:
    """Remove what the graded code left in its working copy that is not a plain file or folder
    (a symbolic link there would make nbgrader write the graded notebook somewhere else)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            path.unlink(missing_ok=True)
