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
        """Clear the marks, then flush the process's cached address translations: a page whose
        translation a CPU still holds is read and written without being marked again (a red team kept
        8 MiB uncounted that way, by touching it in a loop). Clearing the soft-dirty marks ("4") flushes
        them for the whole process, on any kernel (without soft-dirty tracking the flush is all it does)."""
        clear_refs = Path(f"/proc/{self.pid}/clear_refs")
        clear_refs.write_text("1")
        clear_refs.write_text("4")

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


# ``python -m course_lib.grading.touched_memory``: the count on this machine, for four ways to compute lesson
# 08's attention at its measured size, against its bound — a check that the count works here.
_WAYS = {
    "a copy of q (nothing)": "def attend(q, k, v):\n    return q.clone()",
    "tiled, one (64, 64) tile at a time": (
        "import math, torch\ndef attend(q, k, v, B=64):\n    out = torch.empty_like(q)\n"
        "    for i in range(0, q.shape[-2], B):\n        qi = q[..., i:i + B, :] / math.sqrt(q.shape[-1])\n"
        "        m = torch.full(qi.shape[:-1], -math.inf)\n        l, acc = torch.zeros(qi.shape[:-1]), torch.zeros_like(qi)\n"
        "        for j in range(0, k.shape[-2], B):\n            s = qi @ k[..., j:j + B, :].mT\n"
        "            m_new = torch.maximum(m, s.amax(-1))\n            p, c = (s - m_new[..., None]).exp(), (m - m_new).exp()\n"
        "            l, acc, m = c * l + p.sum(-1), c[..., None] * acc + p @ v[..., j:j + B, :], m_new\n"
        "        out[..., i:i + B, :] = acc / l[..., None]\n    return out"),
    "strips of (64, S) scores": (
        "import math, torch\ndef attend(q, k, v, B=64):\n    out = torch.empty_like(q)\n"
        "    for i in range(0, q.shape[-2], B):\n        s = q[..., i:i + B, :] @ k.mT / math.sqrt(q.shape[-1])\n"
        "        p = (s - s.amax(-1, keepdim=True)).exp()\n        out[..., i:i + B, :] = (p / p.sum(-1, keepdim=True)) @ v\n"
        "    return out"),
    "dense, one (L, S) matrix in place": (
        "import math, torch\ndef attend(q, k, v):\n    s = q @ k.mT / math.sqrt(q.shape[-1])\n"
        "    s.sub_(s.amax(-1, keepdim=True)).exp_()\n    return s.div_(s.sum(-1, keepdim=True)) @ v"),
}


def _demonstrate() -> None:
    import torch  # noqa: PLC0415 - the grader's side only

    from course_lib.grading import l08_flash_attention as lesson, outside, replay_worker, sandbox  # noqa: PLC0415

    worker = outside.ReplayWorker(refused={"operators": {}, "functions": {}}, hidden=[], limits=sandbox.Limits(),
                                  cell_timeout=120)
    bound = lesson.MEMORY_FACTOR * 2 * lesson.MEMORY_L * (2 * lesson.MEMORY_E + lesson.MEMORY_BLOCK) * 4
    try:
        base, per_byte = worker.protocol_memory
        print(f"the protocol's own memory: {base / 2**20:.2f} MiB + {per_byte:.2f} × the bytes in and out")
        print(f"L = S = {lesson.MEMORY_L}, E = {lesson.MEMORY_E}, float32; lesson 08's bound: {bound / 2**20:.1f} MiB")
        generator = torch.Generator().manual_seed(0)
        for name, source in _WAYS.items():
            worker.request({"op": "run", "source": source, "label": name}, {}, 120)
            used = []
            for measure in (False, True, True):  # first unmeasured, as the grader does
                tensors: dict[str, torch.Tensor] = {}
                args = tuple(torch.randn(1, lesson.MEMORY_L, lesson.MEMORY_E, generator=generator) for _ in range(3))
                header = {"op": "call", "name": "attend", "device": "cpu", "module": False, "grad": False,
                          "measure": measure, "input_names": ["q", "k", "v"],
                          "args": replay_worker.encode(args, tensors), "kwargs": replay_worker.encode({}, tensors)}
                reply, _ = worker.request(header, tensors, 120)
                used += [reply["used_bytes"] / 2**20] if measure else []
            verdict = "within" if max(used) <= bound / 2**20 else "over"
            print(f"  {name:36s} used {min(used):5.1f}–{max(used):5.1f} MiB ({verdict} the bound)")
    finally:
        worker.close()


if __name__ == "__main__":
    _demonstrate()
