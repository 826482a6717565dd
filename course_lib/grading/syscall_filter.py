"""A seccomp filter for the replay worker: what its process may not ask of the operating system, once
its own start is over and before any of the notebook's code runs.

The worker's other guards (``floor``, ``confinement``) live in its own memory, where code that reaches
raw memory could undo them. This one lives in the kernel: once installed it cannot be removed or
loosened, whatever the process does. It keeps the grader's outside measure of memory
(``outside.TouchedMemory``, which counts the pages the process touches during a call) sound:

* **no memory leaves the process during its life**: ``munmap`` is answered "done" without unmapping,
  ``madvise`` is refused (its DONTNEED, FREE, COLD and PAGEOUT would drop pages or their marks), and so
  are ``mremap``, a fixed ``mmap`` (which would replace pages in place), an ``mprotect`` that takes
  write access away (the count is of writable memory), the NUMA calls that move pages,
  and a ``brk`` below the break the filter found. A page placed just above that break keeps the heap
  from growing there (glibc then grows it with ``mmap``, and never gives that back);
* **no memory outside the process**: no other process (fork, exec, a clone that is not a thread), no
  pipe, socket, shared memory, message queue, key, memfd, io_uring or BPF map, no write to any file,
  and no reaching into another process's memory.

On a GPU only the processes are refused (``install(cuda=True)``): CUDA opens device files for writing,
and maps and unmaps device memory, as it runs. The memory count there is then as sound as the worker's
in-process guards (``confinement``), which native code could undo.

Freed memory therefore stays mapped (glibc's ``free`` ignores a failed unmap; the process is short-
lived), and every byte a call computes with lies in pages of the worker that the measure sees.
A fixed ``mmap`` is also how a shared library is loaded: C extensions are imported before the filter
(``replay_worker.PRELOADED``); one imported later fails to load.
Linux only, x86_64 and aarch64; this file imports nothing of course_lib: it is copied beside the worker.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# seccomp and classic BPF, from <linux/seccomp.h>, <linux/filter.h> and <linux/audit.h>.
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_LOAD_WORD, _JUMP_EQUAL, _JUMP_SET, _JUMP_GREATER, _JUMP_GREATER_EQUAL, _RETURN = 0x20, 0x15, 0x45, 0x25, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_NUMBER, _ARCHITECTURE = 0, 4  # offsets in struct seccomp_data; the arguments follow at 16 + 8·i
_CLONE_THREAD, _MAP_FIXED, _PROT_WRITE = 0x00010000, 0x10, 0x2
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000  # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC

# System call numbers: (x86_64, aarch64); None where the architecture has no such call.
_CALLS = {
    "fork": (57, None), "vfork": (58, None), "execve": (59, 221), "execveat": (322, 281),
    "clone": (56, 220), "clone3": (435, 435),
    "munmap": (11, 215), "mremap": (25, 216), "madvise": (28, 233), "process_madvise": (440, 440),
    "brk": (12, 214), "mmap": (9, 222), "remap_file_pages": (216, 234), "mprotect": (10, 226),
    "pkey_mprotect": (329, 288),
    "move_pages": (279, 239), "migrate_pages": (256, 238), "mbind": (237, 235), "userfaultfd": (323, 282),
    "pipe": (22, None), "pipe2": (293, 59), "vmsplice": (278, 75), "socket": (41, 198), "socketpair": (53, 199),
    "shmget": (29, 194), "shmat": (30, 196), "msgget": (68, 186), "msgsnd": (69, 189),
    "mq_open": (240, 180), "mq_timedsend": (242, 182), "add_key": (248, 217), "request_key": (249, 218),
    "keyctl": (250, 219), "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "io_uring_setup": (425, 425), "io_setup": (206, 0), "bpf": (321, 280), "perf_event_open": (298, 241),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "ptrace": (101, 117),
    "pidfd_getfd": (438, 438),
    "open": (2, None), "openat": (257, 56), "openat2": (437, 437), "creat": (85, None),
    "mkdir": (83, None), "mkdirat": (258, 34), "mknod": (133, None), "mknodat": (259, 33),
    "symlink": (88, None), "symlinkat": (266, 36), "link": (86, None), "linkat": (265, 37),
    "rename": (82, None), "renameat": (264, 38), "renameat2": (316, 276),
    "truncate": (76, 45), "setxattr": (188, 5), "lsetxattr": (189, 6), "fsetxattr": (190, 7),
}
_ARCHITECTURES = {"x86_64": (0, 0xC000003E), "amd64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7),
                  "arm64": (1, 0xC00000B7)}


def _refuse(code: int) -> int:
    return _ERRNO | code


# What each call gets, unconditionally, in three groups. Other processes, refused everywhere:
_PROCESSES = {
    **dict.fromkeys(("fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev",
                     "pidfd_getfd"), _refuse(errno.EPERM)),
    "clone3": _refuse(errno.ENOSYS),  # glibc then starts threads with clone, whose flags a filter can read
}
# Memory outside the process: kernel buffers, shared memory, files.
_OUTSIDE = {
    **dict.fromkeys(("pipe", "pipe2", "vmsplice", "socket", "socketpair", "shmget", "shmat", "msgget", "msgsnd",
                     "mq_open", "mq_timedsend", "add_key", "request_key", "keyctl", "memfd_create", "memfd_secret",
                     "io_uring_setup", "io_setup", "bpf", "perf_event_open"), _refuse(errno.EPERM)),
    "openat2": _refuse(errno.ENOSYS),  # its flags are behind a pointer; glibc's open uses openat
    **dict.fromkeys(("creat", "mkdir", "mkdirat", "mknod", "mknodat", "symlink", "symlinkat", "link", "linkat",
                     "rename", "renameat", "renameat2", "truncate", "setxattr", "lsetxattr", "fsetxattr"),
                    _refuse(errno.EROFS)),
}
# Memory given back. ``munmap`` is answered as if done (errno 0): glibc aborts when a thread stack's
# unmapping fails, and nothing else needs the pages gone.
_KEEPING_MEMORY = {
    "munmap": _refuse(0),
    "mremap": _refuse(errno.ENOMEM),  # glibc's realloc falls back to copying
    **dict.fromkeys(("madvise", "process_madvise", "remap_file_pages", "move_pages", "migrate_pages", "mbind",
                     "userfaultfd"), _refuse(errno.EPERM)),
}
# Calls refused only for some values of one argument: (argument index, bits, refused when the bits are
# set (True) or clear (False), what it gets).
_PROCESSES_WHEN = {"clone": (0, _CLONE_THREAD, False, _refuse(errno.EPERM))}  # a new process; a thread is let through
_OUTSIDE_WHEN = {"open": (1, _WRITE_FLAGS, True, _refuse(errno.EROFS)),
                 "openat": (2, _WRITE_FLAGS, True, _refuse(errno.EROFS))}
# The count covers writable mappings only (the code of libraries is touched too, and is no memory a
# call uses): memory made read-only again would leave it. JIT compilers (oneDNN's) keep write.
_KEEPING_MEMORY_WHEN = {"mmap": (3, _MAP_FIXED, True, _refuse(errno.EPERM)),
                        "mprotect": (2, _PROT_WRITE, False, _refuse(errno.EPERM)),
                        "pkey_mprotect": (2, _PROT_WRITE, False, _refuse(errno.EPERM))}


def program(lowest_break: int | None, machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter, as classic BPF instructions (code, jump if true, jump if false, constant). With a
    ``lowest_break``, memory is kept in the process too: a ``brk`` below it (which would give heap pages
    back) is refused, and so are the calls of ``_OUTSIDE`` and ``_KEEPING_MEMORY``; None refuses other
    processes only."""
    machine = (machine or platform.machine()).lower()
    if machine not in _ARCHITECTURES:
        raise OSError(f"the replay worker's system-call filter knows x86_64 and aarch64, not {machine}")
    column, architecture = _ARCHITECTURES[machine]
    code = [(_LOAD_WORD, 0, 0, _ARCHITECTURE), (_JUMP_EQUAL, 1, 0, architecture), (_RETURN, 0, 0, _KILL_PROCESS),
            (_LOAD_WORD, 0, 0, _NUMBER)]
    if column == 0:  # x86_64's x32 calls (numbers from 0x40000000) are another way in to the same calls
        code += [(_JUMP_GREATER_EQUAL, 0, 1, 0x40000000), (_RETURN, 0, 0, _refuse(errno.ENOSYS))]
    keeping = lowest_break is not None
    for name, action in {**_PROCESSES, **(_OUTSIDE if keeping else {}), **(_KEEPING_MEMORY if keeping else {})}.items():
        number = _CALLS[name][column]
        if number is not None:
            code += [(_JUMP_EQUAL, 0, 1, number), (_RETURN, 0, 0, action)]
    conditional = {**_PROCESSES_WHEN, **(_OUTSIDE_WHEN if keeping else {}), **(_KEEPING_MEMORY_WHEN if keeping else {})}
    for name, (argument, bits, when_set, action) in conditional.items():
        number = _CALLS[name][column]
        if number is None:
            continue
        # Matched: load the argument's low 32 bits (the flags all live there) and decide; not matched:
        # skip those four instructions, to the next test of the number (still in the accumulator).
        refuse_if_set, refuse_if_clear = (0, 1) if when_set else (1, 0)
        code += [(_JUMP_EQUAL, 0, 4, number), (_LOAD_WORD, 0, 0, 16 + 8 * argument),
                 (_JUMP_SET, refuse_if_set, refuse_if_clear, bits), (_RETURN, 0, 0, action), (_RETURN, 0, 0, _ALLOW)]
    if not keeping:
        return [*code, (_RETURN, 0, 0, _ALLOW)]
    # brk: its 64-bit argument compared with lowest_break in two 32-bit halves (high, then low).
    # Refused, it returns a huge "break": glibc never asks for less than it has (its heap only grows).
    high, low = lowest_break >> 32, lowest_break & 0xFFFFFFFF
    code += [(_JUMP_EQUAL, 0, 7, _CALLS["brk"][column]), (_LOAD_WORD, 0, 0, 16 + 4), (_JUMP_GREATER, 4, 0, high),
             (_JUMP_EQUAL, 0, 2, high), (_LOAD_WORD, 0, 0, 16), (_JUMP_GREATER_EQUAL, 1, 0, low),
             (_RETURN, 0, 0, _refuse(errno.EPERM)), (_RETURN, 0, 0, _ALLOW)]
    return [*code, (_RETURN, 0, 0, _ALLOW)]


def install(cuda: bool = False) -> None:
    """Install the filter on this process (and any thread it starts); it cannot be taken back. With
    ``cuda``, only other processes are refused: CUDA opens device files for writing and maps and unmaps
    device memory as it runs."""
    if not platform.system() == "Linux":
        raise OSError(f"the replay worker's system-call filter needs Linux, not {platform.system()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = libc.mmap.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    top = None
    if not cuda:
        page = os.sysconf("SC_PAGE_SIZE")
        top = -(-libc.sbrk(0) // page) * page  # the break, rounded up to a page
        # MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, no access: nothing may ever live there.
        if libc.mmap(top, page, 0, 0x02 | 0x20 | 0x100000, -1, 0) != top:
            raise OSError(f"cannot fence the heap's break for the replay worker's system-call filter: "
                          f"{os.strerror(ctypes.get_errno())}")
    instructions = program(top)
    packed = b"".join(struct.pack("HBBI", *instruction) for instruction in instructions)
    filters = ctypes.create_string_buffer(packed, len(packed))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    whole = Program(len(instructions), ctypes.addressof(filters))
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0 or \
            prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(whole), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"cannot install the replay worker's system-call filter: "
                      f"{os.strerror(ctypes.get_errno())}")
