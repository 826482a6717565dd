"""The sandbox a submission's code runs in while it is graded: Linux namespaces through bubblewrap,
a cgroup per sandbox for memory and processes, and rlimits for CPU time and file size.

Inside, the student's code

* has no network (its own network namespace) and sees only its own processes (PID namespace);
* sees the whole file system read-only, except its working copy (read-write) and a private,
  empty ``/tmp`` where HOME and the caches of matplotlib, Triton and IPython live;
* cannot see the folders listed as hidden (the course root — ``solutions/``, the gradebook, other
  students' submissions — and the exchange), except the paths re-exposed read-only (the Python
  environment and course_lib itself) and its working copy;
* runs as ``nobody`` (uid 65534 in its own user namespace) with no capabilities and a clean
  environment: no salt, no token, no variable the grader did not pass on purpose;
* is limited to ``Limits.memory_bytes`` and ``Limits.processes`` by a cgroup of its own (so one
  sandbox's fork bomb never fails another's grade), to ``cpu_seconds`` of CPU time and to
  ``file_bytes`` per written file; when the sandbox's first process ends, every process in it ends.

Where bubblewrap cannot run, ``unavailable_reason`` says why, and the grading refuses to start
unless the instructor allows unsandboxed grading explicitly (README, "Grading").
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
UNSANDBOXED_ENV_VAR = "COURSE_UNSANDBOXED_GRADING"  # "1": the instructor allows grading without a sandbox
# What the sandbox's environment keeps of the grader's; everything else (the salt among it) is dropped.
PASSED_ENVIRONMENT = (
    "PATH", "LANG", "LC_ALL", "TZ", "NBGRADER_EXECUTION", "COURSE_DEVICE", "TRITON_INTERPRET",
    "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)
PRIVATE_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")  # empty and private in each sandbox
PRIVATE_HOME = "/tmp/home"  # inside the sandbox, on its private /tmp


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. The defaults fit one lesson on a laptop; an instructor raises them in
    nbgrader_config.py (``c.SandboxedExecute.memory_limit_mb`` ...)."""

    memory_bytes: int = 8 << 30
    processes: int = 256
    cpu_seconds: int = 1800
    file_bytes: int = 1 << 30


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None where a sandbox can be made here; otherwise what is missing, in words."""
    if not sys.platform.startswith("linux"):
        return "grading in a sandbox needs Linux (bubblewrap); this machine runs " + sys.platform
    if shutil.which("bwrap") is None:
        return ("bubblewrap is not installed (`apt-get install bubblewrap`, `dnf install bubblewrap` "
                "or your distribution's package)")
    probe = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "true"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return ("bubblewrap cannot create namespaces on this machine (unprivileged user namespaces may be "
                f"disabled: sysctl kernel.unprivileged_userns_clone=1): {probe.stderr.strip()}")
    return None


def unsandboxed_allowed() -> bool:
    return os.environ.get(UNSANDBOXED_ENV_VAR, "").lower() in ("1", "yes", "true")


def environment_paths() -> list[Path]:
    """The Python environment that sandboxed code runs with (to re-expose inside hidden folders)."""
    return [Path(p) for p in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix))]


class Sandbox:
    """One sandbox: ``command(argv)`` wraps a command so that it runs inside; ``close()`` removes
    the sandbox's cgroups once its processes have ended."""

    def __init__(
        self,
        workdir: Path,
        *,
        hidden: Iterable[Path] = (),
        readable: Iterable[Path] = (),
        writable: Iterable[Path] = (),
        limits: Limits = Limits(),
        environment: dict[str, str] | None = None,
        gpu: bool = True,
    ):
        self.workdir = Path(workdir).resolve()
        self.gpu = gpu  # False: the GPU's device files are not there, so CUDA cannot start inside
        # Outer folders first: a folder hidden (or re-exposed) inside another is mounted after it.
        self.hidden = sorted({Path(p).resolve() for p in hidden}, key=lambda p: len(p.parts))
        self.readable = sorted({Path(p).resolve() for p in readable}, key=lambda p: len(p.parts))
        self.writable = [Path(p).resolve() for p in writable]
        self.limits = limits
        self.environment = environment if environment is not None else dict(os.environ)
        self.cgroups = _make_cgroups(limits)
        # Which mechanism limits memory and processes, for the grading record.
        self.limited_by = "cgroup" if self.cgroups else "rlimit"

    def command(self, argv: list[str]) -> list[str]:
        reason = unavailable_reason()
        if reason is None:
            return [*self._cgroup_prefix(), *self._rlimit_prefix(), *self._bwrap(), "--", *argv]
        if not unsandboxed_allowed():
            raise RuntimeError(f"cannot make a sandbox here: {reason} (set {UNSANDBOXED_ENV_VAR}=1 to allow "
                               "grading without one)")
        return [*self._cgroup_prefix(), *self._rlimit_prefix(), *argv]

    def close(self) -> None:
        for folder in self.cgroups:
            try:
                folder.rmdir()
            except OSError:
                pass  # a process is still ending; the folder is empty soon and harmless

    # -- pieces of the command --

    def _bwrap(self) -> list[str]:
        args = [
            "bwrap", "--die-with-parent", "--new-session",
            "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--remount-ro", "/proc",  # no process may write its own memory (/proc/self/mem)
        ]
        for device in sorted(Path("/dev").glob("nvidia*")) if self.gpu else ():  # CUDA needs its device files
            args += ["--dev-bind", str(device), str(device)]
        hidden = [Path(p) for p in PRIVATE_FOLDERS] + [h for h in self.hidden if h.exists()]
        for folder in hidden:
            args += ["--tmpfs", str(folder)]
        for path in self.readable:
            if path.exists() and any(_inside(path, h) or path == h for h in hidden):
                args += ["--ro-bind", str(path), str(path)]
        for path in [*self.writable, self.workdir]:
            args += ["--bind", str(path), str(path)]
        args += ["--dir", PRIVATE_HOME]
        args += ["--chdir", str(self.workdir), "--clearenv"]
        environment = {k: v for k, v in self.environment.items() if k in PASSED_ENVIRONMENT}
        environment.update(
            HOME=PRIVATE_HOME, TMPDIR="/tmp", MPLCONFIGDIR=f"{PRIVATE_HOME}/.matplotlib",
            XDG_CACHE_HOME=f"{PRIVATE_HOME}/.cache", TRITON_CACHE_DIR=f"{PRIVATE_HOME}/.triton",
            IPYTHONDIR=f"{PRIVATE_HOME}/.ipython", JUPYTER_RUNTIME_DIR=f"{PRIVATE_HOME}/.jupyter",
        )
        for key, value in sorted(environment.items()):
            args += ["--setenv", key, value]
        return args

    def _cgroup_prefix(self) -> list[str]:
        if not self.cgroups:
            return []
        # The shell joins each cgroup, then becomes bubblewrap: everything started inside is counted.
        join = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; exec "$@"'
        return ["sh", "-c", join, "sh", *map(str, self.cgroups), "--"]

    def _rlimit_prefix(self) -> list[str]:
        limits = [f"--cpu={self.limits.cpu_seconds}", f"--fsize={self.limits.file_bytes}", "--core=0"]
        if not self.cgroups:
            # Without cgroups: an address-space limit (it breaks CUDA's start, so only without a GPU), and
            # a process limit that counts every process of the grading user (README says so).
            if not any(Path("/dev").glob("nvidia*")):
                limits.append(f"--as={self.limits.memory_bytes}")
            limits.append(f"--nproc={self.limits.processes}")
        return ["prlimit", *limits, "--"]


def _inside(path: Path, folder: Path) -> bool:
    return folder in path.parents


def _own_cgroup(controller: str) -> tuple[Path, str] | None:
    """The (hierarchy root, own path) of ``controller`` (cgroup v1), or of the unified v2 hierarchy."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller, path.lstrip("/")
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and controller in v2.read_text().split():
        own = next((line.split("::", 1)[1] for line in lines if line.startswith("0::")), "/")
        return Path("/sys/fs/cgroup"), own.lstrip("/")
    return None


def _make_cgroups(limits: Limits) -> list[Path]:
    """A new cgroup (per controller hierarchy) with the memory and process limits, or [] where this
    process may not make one (then rlimits stand in)."""
    name = f"course-sandbox-{uuid.uuid4().hex[:12]}"
    settings = {
        "memory": {"memory.limit_in_bytes": limits.memory_bytes, "memory.max": limits.memory_bytes,
                   "memory.swap.max": 0, "memory.memsw.limit_in_bytes": limits.memory_bytes},
        "pids": {"pids.max": limits.processes},
    }
    made: list[Path] = []
    try:
        for controller, files in settings.items():
            found = _own_cgroup(controller)
            if found is None:
                raise OSError(f"no {controller} cgroup")
            root, own = found
            folder = root / own / name
            if folder in made:  # cgroup v2: one folder holds both controllers
                pass
            else:
                folder.mkdir()
                made.append(folder)
            written = False
            for file, value in files.items():
                if (folder / file).exists():
                    (folder / file).write_text(str(value))
                    written = written or file in ("memory.limit_in_bytes", "memory.max", "pids.max")
            if not written:
                raise OSError(f"cannot limit {controller} in {folder}")
    except OSError:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                pass
        return []
    return made
