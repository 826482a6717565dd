"""A seccomp filter for the replay worker: what its process may ask of the operating system, once its
own start is over and before any of the notebook's code runs.

The worker's other guards (``floor``, ``confinement``) live in its own memory, where code that reaches
raw memory could undo them. This one lives in the kernel: once installed (on every thread of the
process) it cannot be removed or loosened, whatever the process does. It keeps the grader's count of
memory (``touched_memory``: the pages the process touches during a call) sound. **Only what Python,
PyTorch, NumPy and Triton's interpreter ask for once started is allowed** (``_ALLOWED``: found by
tracing the replays of the solutions of lessons 01, 02 and 05 to 08, and calls of the same kind); anything else fails with
ENOSYS — other processes, pipes, sockets, shared memory, semaphores, message queues, keys, memfds,
epoll, eventfds, timers, io_uring, BPF, more seccomp filters. Some calls get a clear refusal instead
(``_REFUSED``), and some are allowed only with some arguments (``_ALLOWED_WHEN``, ``_ALLOWED_VALUES``:
no file lock, lease or pipe size through ``fcntl``, nothing but a thread's name through ``prctl``, no
terminal's other end through ``ioctl``):

* **no memory leaves the process during its life**: ``munmap`` is answered "done" without unmapping,
  ``madvise`` is refused (its DONTNEED, FREE, COLD and PAGEOUT would drop pages or their marks), and so
  are ``mremap``, a fixed ``mmap`` (which would replace pages in place), huge-page mappings (which
  have no count of touched pages), an ``mprotect`` that takes write access away (the count is of
  writable memory), and a ``brk`` below the break the filter found. A page placed just above that break
  keeps the heap from growing there (glibc then grows it with ``mmap``, and never gives that back);
* **no memory outside the process**: no file opened for writing (nor made, linked or renamed), and no
  kernel object that holds data, as above; a thread is allowed (it shares the process's memory), a
  process is not;
* **no code is made**: no ``mmap`` or ``mprotect`` asks for an executable page, so the kernels that
  ``native_code`` overwrote with traps stay traps (a page of code made writable is no longer
  executable, and cannot be made so again), and no library is loaded or code written to run; and no
  handler may be set for SIGILL or SIGTRAP, so running a trapped kernel ends the process. oneDNN's
  JIT cannot run either: the worker turns oneDNN off (PyTorch then uses its own kernels).

Freed memory therefore stays mapped (glibc's ``free`` ignores a failed unmap; the process is short-
lived), and every byte a call computes with lies in pages of the worker that the count sees.
A fixed ``mmap`` is also how a shared library is loaded: C extensions are imported before the filter
(``replay_worker.PRELOADED``); one imported later fails to load.

On a GPU (``install(cuda=True)``) only other processes are refused: CUDA opens device files for
writing, maps and unmaps device memory, and uses calls of its own as it runs. The grader measures
memory in a worker without a GPU (``outside.verify_notebook``).
Linux only, x86_64 and aarch64; this file imports nothing of course_lib: it is copied beside the worker.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# seccomp and classic BPF, from <linux/seccomp.h>, <linux/filter.h> and <linux/audit.h>.
_PR_SET_NO_NEW_PRIVS = 38
_LOAD_WORD, _JUMP_EQUAL, _JUMP_SET, _JUMP_GREATER, _JUMP_GREATER_EQUAL, _RETURN = 0x20, 0x15, 0x45, 0x25, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_NUMBER, _ARCHITECTURE = 0, 4  # offsets in struct seccomp_data; the arguments follow at 16 + 8·i
_CLONE_THREAD, _MAP_FIXED, _MAP_HUGETLB, _PROT_WRITE, _PROT_EXEC = 0x00010000, 0x10, 0x40000, 0x2, 0x4
_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000  # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC

# System call numbers: (x86_64, aarch64); None where the architecture has no such call.
_CALLS = {
    # Allowed.
    "read": (0, 63), "write": (1, 64), "close": (3, 57), "fstat": (5, 80), "lseek": (8, 62), "pread64": (17, 67),
    "readv": (19, 65), "writev": (20, 66), "newfstatat": (262, 79), "statx": (332, 291), "stat": (4, None),
    "lstat": (6, None), "access": (21, None), "faccessat": (269, 48), "faccessat2": (439, 439),
    "readlink": (89, None), "readlinkat": (267, 78), "getdents64": (217, 61), "getcwd": (79, 17),
    "dup": (32, 23), "dup2": (33, None), "dup3": (292, 24),
    "futex": (202, 98), "sched_yield": (24, 124), "sched_getaffinity": (204, 123), "sched_setaffinity": (203, 122),
    "getpid": (39, 172), "gettid": (186, 178), "getppid": (110, 173), "getuid": (102, 174), "geteuid": (107, 175),
    "getgid": (104, 176), "getegid": (108, 177), "getresuid": (118, 148), "getresgid": (120, 150),
    "uname": (63, 160), "sysinfo": (99, 179), "prlimit64": (302, 261), "getrlimit": (97, 163),
    "getrusage": (98, 165), "times": (100, 153), "clock_gettime": (228, 113), "clock_getres": (229, 114),
    "clock_nanosleep": (230, 115), "nanosleep": (35, 101), "gettimeofday": (96, 169), "time": (201, None),
    "getrandom": (318, 278), "rt_sigaction": (13, 134), "rt_sigprocmask": (14, 135), "rt_sigreturn": (15, 139),
    "sigaltstack": (131, 132), "rt_sigsuspend": (130, 133), "rt_sigtimedwait": (128, 137),
    "rt_sigpending": (127, 136), "restart_syscall": (219, 128), "tgkill": (234, 131), "kill": (62, 129),
    "exit": (60, 93), "exit_group": (231, 94), "set_robust_list": (273, 99), "rseq": (334, 293),
    "set_tid_address": (218, 96), "poll": (7, None),
    "ppoll": (271, 73), "select": (23, None), "pselect6": (270, 72), "membarrier": (324, 283),
    "sched_getparam": (143, 121), "sched_getscheduler": (145, 120), "sched_get_priority_max": (146, 125),
    "sched_get_priority_min": (147, 126), "getpriority": (140, 141), "capget": (125, 90), "wait4": (61, 260),
    "mincore": (27, 232), "msync": (26, 227), "fsync": (74, 82), "fdatasync": (75, 83),
    "fadvise64": (221, 223), "close_range": (436, 436), "statfs": (137, 43), "fstatfs": (138, 44),
    "umask": (95, 166), "chdir": (80, 49), "fchdir": (81, 50), "getpgid": (121, 155), "getsid": (124, 156),
    "getpgrp": (111, None), "alarm": (37, None), "setitimer": (38, 103), "getitimer": (36, 102),
    # Allowed with some arguments only, or answered as if done.
    "fcntl": (72, 25), "prctl": (157, 167), "ioctl": (16, 29), "arch_prctl": (158, None), "clone": (56, 220), "mmap": (9, 222), "mprotect": (10, 226), "open": (2, None), "openat": (257, 56),
    "munmap": (11, 215), "brk": (12, 214),
    # Refused, with an error that says why (anything else not allowed gets ENOSYS).
    "fork": (57, None), "vfork": (58, None), "execve": (59, 221), "execveat": (322, 281), "clone3": (435, 435),
    "mremap": (25, 216), "madvise": (28, 233), "pipe": (22, None), "pipe2": (293, 59), "socket": (41, 198),
    "socketpair": (53, 199), "memfd_create": (319, 279), "creat": (85, None), "mkdir": (83, None),
    "mkdirat": (258, 34), "symlink": (88, None), "symlinkat": (266, 36), "link": (86, None), "linkat": (265, 37),
    "rename": (82, None), "renameat": (264, 38), "renameat2": (316, 276), "openat2": (437, 437),
    "seccomp": (317, 277),
}
_ARCHITECTURES = {"x86_64": (0, 0xC000003E), "amd64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7),
                  "arm64": (1, 0xC00000B7)}


def _refuse(code: int) -> int:
    return _ERRNO | code


_ALLOWED = tuple(_CALLS)[:tuple(_CALLS).index("fcntl")]
# Allowed with one argument among a few values only: (argument, values). fcntl: duplicating a descriptor
# and its flags (a lock, a lease or a pipe's size would keep data in the kernel: a red team kept the
# whole score matrix in byte-range locks); prctl: a thread's name (a filter, or a mapping's name, would
# keep data too).
# ioctl: what asks whether a descriptor is a terminal, or sets its flags (a red team opened a terminal's
# writable end through TIOCGPTPEER and kept the matrix in its buffers); arch_prctl: all but asking for
# the AMX registers (8 KiB more of kernel-held state per thread).
_ALLOWED_VALUES = {
    "fcntl": (1, (0, 1, 2, 3, 4, 1030)),  # F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC
    "prctl": (0, (15, 16)),  # PR_SET_NAME, PR_GET_NAME
    "ioctl": (1, (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)),  # TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO, FIONCLEX, FIOCLEX
    "arch_prctl": (0, (0x1001, 0x1002, 0x1003, 0x1004, 0x1011, 0x1021, 0x1022)),  # GS, FS, CPUID, XCOMP_SUPP/_PERM
}
# Allowed only where each test of an argument's bits passes: (argument, bits, all clear? — else all set),
# and what the call gets otherwise. No page is made executable once the filter is on: the kernels that
# ``native_code`` overwrote with traps cannot be written back and run (a page may be writable or
# executable, and one made writable stays so), and no code can be mapped anew.
_ALLOWED_WHEN = {
    "clone": ([(0, _CLONE_THREAD, False)], _refuse(errno.EPERM)),  # a thread; a new process is refused
    "mmap": ([(3, _MAP_FIXED | _MAP_HUGETLB, True), (2, _PROT_EXEC, True)], _refuse(errno.EPERM)),
    "mprotect": ([(2, _PROT_WRITE, False), (2, _PROT_EXEC, True)], _refuse(errno.EPERM)),
    "open": ([(1, _WRITE_FLAGS, True)], _refuse(errno.EROFS)),
    "openat": ([(2, _WRITE_FLAGS, True)], _refuse(errno.EROFS)),
}
# Refused for a few values of one argument: (argument, values, what the call gets then). rt_sigaction: no
# handler for SIGILL or SIGTRAP, which would keep the worker alive past a trapped kernel (``native_code``).
_REFUSED_VALUES = {"rt_sigaction": (0, (4, 5), _refuse(errno.EPERM))}
_REFUSED = {
    # ``munmap`` is answered as if done (errno 0): glibc aborts where a thread stack's unmapping fails.
    "munmap": _refuse(0),
    "mremap": _refuse(errno.ENOMEM),  # glibc's realloc falls back to copying
    "clone3": _refuse(errno.ENOSYS),  # glibc then starts threads with clone, whose flags a filter can read
    "openat2": _refuse(errno.ENOSYS),  # its flags are behind a pointer; glibc's open uses openat
    **dict.fromkeys(("fork", "vfork", "execve", "execveat", "madvise", "pipe", "pipe2", "socket", "socketpair",
                     "memfd_create", "seccomp"), _refuse(errno.EPERM)),  # seccomp: more filters keep data too
    **dict.fromkeys(("creat", "mkdir", "mkdirat", "symlink", "symlinkat", "link", "linkat", "rename", "renameat",
                     "renameat2"), _refuse(errno.EROFS)),
}
# On a GPU, other processes only are refused (with clone and clone3 as above), and anything else is allowed.
_PROCESSES = ("fork", "vfork", "execve", "execveat")


def program(lowest_break: int | None, machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter, as classic BPF instructions (code, jump if true, jump if false, constant). With a
    ``lowest_break`` (no GPU), the whole filter, with ``brk`` allowed from that address up (below it,
    heap pages would be given back); with None, other processes only are refused."""
    machine = (machine or platform.machine()).lower()
    if machine not in _ARCHITECTURES:
        raise OSError(f"the replay worker's system-call filter knows x86_64 and aarch64, not {machine}")
    column, architecture = _ARCHITECTURES[machine]
    code = [(_LOAD_WORD, 0, 0, _ARCHITECTURE), (_JUMP_EQUAL, 1, 0, architecture), (_RETURN, 0, 0, _KILL_PROCESS),
            (_LOAD_WORD, 0, 0, _NUMBER)]
    if column == 0:  # x86_64's x32 calls (numbers from 0x40000000) are another way in to the same calls
        code += [(_JUMP_GREATER_EQUAL, 0, 1, 0x40000000), (_RETURN, 0, 0, _refuse(errno.ENOSYS))]

    def each(names: tuple[str, ...], action: int) -> None:
        for name in names:
            number = _CALLS[name][column]
            if number is not None:
                code.extend([(_JUMP_EQUAL, 0, 1, number), (_RETURN, 0, 0, action)])

    def depending(name: str, tests: list[tuple[int, int, bool]], otherwise: int) -> None:
        # Matched: for each test, load the argument's low 32 bits (flags all live there) and go on to the
        # next test or jump to the refusal; past the last test, allow. Not matched: skip all of it, to the
        # next test of the number (still in the accumulator).
        number = _CALLS[name][column]
        if number is None:
            return
        code.append((_JUMP_EQUAL, 0, 2 * len(tests) + 2, number))
        for at, (argument, bits, clear) in enumerate(tests):
            to_refuse = 2 * len(tests) + 1 - (2 * at + 2)  # from the instruction after this test's jump
            code.extend([(_LOAD_WORD, 0, 0, 16 + 8 * argument),
                         (_JUMP_SET, to_refuse, 0, bits) if clear else (_JUMP_SET, 0, to_refuse, bits)])
        code.extend([(_RETURN, 0, 0, _ALLOW), (_RETURN, 0, 0, otherwise)])

    def by_value(name: str, argument: int, values: tuple[int, ...], among: int, otherwise: int) -> None:
        # Matched: load the argument and compare it with each value; one of them jumps to ``among``, the
        # last instruction, and none falls through to ``otherwise``. Not matched: skip all of it.
        number = _CALLS[name][column]
        if number is not None:
            code.extend([(_JUMP_EQUAL, 0, len(values) + 3, number), (_LOAD_WORD, 0, 0, 16 + 8 * argument),
                         *((_JUMP_EQUAL, len(values) - at, 0, value) for at, value in enumerate(values)),
                         (_RETURN, 0, 0, otherwise), (_RETURN, 0, 0, among)])

    if lowest_break is None:
        depending("clone", *_ALLOWED_WHEN["clone"])
        each(("clone3",), _REFUSED["clone3"])
        each(_PROCESSES, _refuse(errno.EPERM))
        return [*code, (_RETURN, 0, 0, _ALLOW)]
    for name, rule in _ALLOWED_WHEN.items():
        depending(name, *rule)
    for name, (argument, values) in _ALLOWED_VALUES.items():
        by_value(name, argument, values, _ALLOW, _refuse(errno.EPERM))
    for name, (argument, values, action) in _REFUSED_VALUES.items():
        by_value(name, argument, values, action, _ALLOW)
    for name, action in _REFUSED.items():
        each((name,), action)
    each(_ALLOWED, _ALLOW)
    # brk: its 64-bit argument compared with lowest_break in two 32-bit halves (high, then low).
    # Refused, it returns a huge "break": glibc never asks for less than it has (its heap only grows).
    high, low = lowest_break >> 32, lowest_break & 0xFFFFFFFF
    code += [(_JUMP_EQUAL, 0, 7, _CALLS["brk"][column]), (_LOAD_WORD, 0, 0, 16 + 4), (_JUMP_GREATER, 4, 0, high),
             (_JUMP_EQUAL, 0, 2, high), (_LOAD_WORD, 0, 0, 16), (_JUMP_GREATER_EQUAL, 1, 0, low),
             (_RETURN, 0, 0, _refuse(errno.EPERM)), (_RETURN, 0, 0, _ALLOW)]
    return [*code, (_RETURN, 0, 0, _refuse(errno.ENOSYS))]


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

    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.syscall.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p]
    whole = Program(len(instructions), ctypes.addressof(filters))
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ...): on every thread of the process,
    # those started before (PyTorch's) too, not on the calling thread only as prctl would.
    number = _CALLS["seccomp"][_ARCHITECTURES[platform.machine().lower()][0]]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(number, 1, 1, ctypes.addressof(whole)) != 0:
        raise OSError(ctypes.get_errno(), f"cannot install the replay worker's system-call filter: "
                      f"{os.strerror(ctypes.get_errno())}")
