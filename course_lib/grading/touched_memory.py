"""The memory a graded call uses, counted by the grader from outside the replay worker's process.

The operating system marks every page a process reads or writes (the page table's accessed bit).
Writing ``1`` to ``/proc/<pid>/clear_refs`` clears the marks; ``/proc/<pid>/smaps`` then says, for
each mapping, how much of it was touched since ("Referenced"). Around one call, that is every byte the
call computed with: its allocations (however it made them — PyTorch, NumPy, Python's objects), and
memory kept from before that it wrote or read again (a buffer filled in place, a ballast freed and
reused). Nothing in the worker's process can change what the kernel counted, and the worker's system-
call filter (``syscall_filter``) keeps the count honest: no page leaves the process (so a matrix freed
before the call returns is still counted), no memory outside it (pipes, files, other processes).

Only writable mappings count (the filter refuses taking write access away): the code of Python and
of the libraries a call runs is touched too, but it is not memory the call uses. A GPU's device
memory is not counted at all: the grader measures on the CPU. This reads ``/proc`` of a Linux machine; elsewhere ``available``
is False and the grading record says the measure could not be taken.
"""

from __future__ import annotations

from pathlib import Path


def available() -> bool:
    return Path("/proc/self/clear_refs").exists()


def leaf_process(pid: int) -> int:
    """The last process of the chain that ``pid`` started (the sandbox's launcher starts the worker
    through a process or two; the worker itself starts none: its filter refuses)."""
    for _ in range(16):
        children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                    for child in (task / "children").read_text().split()]
        if not children:
            return pid
        if len(children) > 1:
            raise RuntimeError(f"process {pid} has {len(children)} children: the replay worker is not a chain")
        pid = children[0]
    raise RuntimeError("the replay worker's chain of processes is too long")


class TouchedMemory:
    """``reset()`` then, after the call, ``read()``: the bytes of writable memory the process ``pid``
    touched in between."""

    def __init__(self, pid: int):
        self.pid = pid

    def reset(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("1")

    def read(self) -> int:
        total, writable = 0, False
        for line in Path(f"/proc/{self.pid}/smaps").read_text().splitlines():
            fields = line.split()
            if not fields:
                continue
            if not fields[0].endswith(":"):  # a mapping's first line: "start-end perms offset dev inode [path]"
                path = fields[5] if len(fields) > 5 else ""
                # Not a GPU's device memory; shared anonymous memory ("/dev/zero (deleted)") counts.
                writable = "w" in fields[1] and not path.startswith("/dev/nvidia")
            elif fields[0] == "Referenced:" and writable:
                total += int(fields[1]) * 1024  # in kB
        return total
