"""The replay worker's system-call filter, tried directly: a process that installs it (and, unlike the
worker, keeps ctypes: what native code could do) cannot give memory back to the system, keep memory
outside itself or start another process; the memory it touches is counted from outside
(course_lib.grading.touched_memory) whatever it tries."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from course_lib.grading import syscall_filter, touched_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
                                reason="the filter is for Linux on x86_64 and aarch64")

# The child: installs the filter, then reports what each attempt returned (an errno name, or "done").
CHILD = textwrap.dedent("""
    import ctypes, errno, fcntl, json, os, select, signal, socket, struct, sys, threading
    sys.path.insert(0, {folder!r})
    import syscall_filter
    syscall_filter.install()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = libc.sbrk.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.syscall.restype = ctypes.c_long

    def outcome(value, failed=-1):
        return errno.errorcode.get(ctypes.get_errno(), "?") if value == failed else "done"

    def attempt(action):
        try:
            action()
            return "done"
        except OSError as error:
            return errno.errorcode.get(error.errno, str(error))
        except ImportError as error:
            return "ImportError"

    size = 32 << 20
    block = libc.mmap(None, size, 3, 0x22, -1, 0)  # read-write, private anonymous
    shared = libc.mmap(None, size, 3, 0x21, -1, 0)  # read-write, shared anonymous ("/dev/zero (deleted)")
    ctypes.memset(block, 1, size)
    ctypes.memset(shared, 1, size)
    print("touched", flush=True)
    sys.stdin.readline()  # the parent has counted; now every way to make the pages disappear
    ctypes.memset(block, 2, size)
    ctypes.memset(shared, 2, size)
    found = {{
        "mprotect read-only": outcome(libc.mprotect(block, size, 1)),
        "munmap": outcome(libc.munmap(block, size)),
        "madvise DONTNEED": outcome(libc.madvise(block, size, 4)),
        "mmap over it": outcome(libc.mmap(block, size, 3, 0x32, -1, 0), failed=ctypes.c_void_p(-1).value),
        "brk below the break": outcome(libc.syscall(ctypes.c_long({brk}), ctypes.c_long(libc.sbrk(0) - (1 << 20)))),
        "fork": attempt(os.fork),
        "a program": attempt(lambda: os.execv("/bin/true", ["true"])),
        "a pipe": attempt(os.pipe),
        "a socket pair": attempt(socket.socketpair),
        "a memfd": attempt(lambda: os.memfd_create("x")),
        "a file written": attempt(lambda: open({scratch!r}, "wb")),
        "a folder made": attempt(lambda: os.mkdir({scratch!r} + ".d")),
        "a C extension loaded now": attempt(lambda: __import__("_decimal")),
        "semaphores": outcome(libc.syscall(ctypes.c_long({semget}), 0, 16, 0o1600)),
        "epoll": attempt(select.epoll),
        "an eventfd": attempt(lambda: os.eventfd(0)),
        "a new namespace": outcome(libc.unshare(0x10000000)),  # CLONE_NEWUSER
        "huge pages": outcome(libc.mmap(None, 2 << 20, 3, 0x22 | 0x40000, -1, 0), failed=ctypes.c_void_p(-1).value),
        # a red team kept the whole score matrix in byte-range locks on files opened for reading
        "a lock": attempt(lambda: fcntl.fcntl(os.open(os.__file__, os.O_RDONLY), 37, struct.pack("hhqqi", 0, 0, 0, 8, 0))),
        "a flags query": attempt(lambda: fcntl.fcntl(0, fcntl.F_GETFL)),
        "another filter": outcome(libc.prctl(22, 2, 0, 0, 0)),  # PR_SET_SECCOMP
        "a thread's name": outcome(libc.prctl(15, b"worker", 0, 0, 0)),
        "flock": attempt(lambda: fcntl.flock(os.open(os.__file__, os.O_RDONLY), fcntl.LOCK_SH)),
        # a red team wrote the matrix into terminals' buffers, through the writable end TIOCGPTPEER hands out
        "a terminal's other end": attempt(lambda: fcntl.ioctl(os.open("/dev/ptmx", os.O_RDONLY | os.O_NOCTTY), 0x5441,
                                                              os.O_RDWR | os.O_NOCTTY)),
        "is it a terminal": attempt(lambda: os.isatty(0)),
        # no page may become executable: the kernels that native_code overwrote stay traps
        "code mapped": outcome(libc.mmap(None, 4096, 7, 0x22, -1, 0), failed=ctypes.c_void_p(-1).value),
        "a library's code mapped": outcome(libc.mmap(None, 4096, 5, 0x02, os.open({library!r}, os.O_RDONLY), 0),
                                           failed=ctypes.c_void_p(-1).value),
        "a page made executable": outcome(libc.mprotect(block, 4096, 7)),
        "a page made writable": outcome(libc.mprotect(block, 4096, 3)),
        # a trapped kernel ends the process: no handler lets it go on
        "a handler for SIGILL": attempt(lambda: signal.signal(signal.SIGILL, lambda *a: None)),
        "a handler for SIGTRAP": attempt(lambda: signal.signal(signal.SIGTRAP, lambda *a: None)),
        "a handler for SIGUSR1": attempt(lambda: signal.signal(signal.SIGUSR1, lambda *a: None)),
    }}
    ran = []
    thread = threading.Thread(target=lambda: ran.append(sum(range(10))))
    thread.start(); thread.join()
    found["a thread"] = "done" if ran == [45] else "failed"
    found["a file read"] = attempt(lambda: open(os.__file__).read(10))
    print(json.dumps(found), flush=True)
    sys.stdin.readline()
""")


def test_memory_stays_counted_and_nothing_leaves_the_process(tmp_path):
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    brk, semget = (12, 64) if x86 else (214, 190)
    source = CHILD.format(folder=str(syscall_filter.__file__).rsplit("/", 1)[0], scratch=str(tmp_path / "scratch"),
                          brk=brk, semget=semget, library=sys.executable)
    child = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "touched"
        counter = touched_memory.TouchedMemory(touched_memory.leaf_process(child.pid))
        assert counter.pid == child.pid
        counter.reset()
        child.stdin.write("go\n")
        child.stdin.flush()
        found = json.loads(child.stdout.readline())
        # Written again, then made read-only, "unmapped", advised away and mapped over: still there, and
        # counted, with the shared block.
        assert counter.read() >= 64 << 20
        assert found == {
            "mprotect read-only": "EPERM", "munmap": "done",  # answered as if done: glibc aborts where a thread stack's unmapping fails
            "madvise DONTNEED": "EPERM", "mmap over it": "EPERM", "brk below the break": "EPERM",
            "fork": "EPERM", "a program": "EPERM", "a pipe": "EPERM", "a socket pair": "EPERM", "a memfd": "EPERM",
            "a file written": "EROFS", "a folder made": "EROFS", "a C extension loaded now": "ImportError",
            "semaphores": "ENOSYS", "epoll": "ENOSYS", "an eventfd": "ENOSYS", "a new namespace": "ENOSYS",
            "huge pages": "EPERM", "a lock": "EPERM", "a flags query": "done", "another filter": "EPERM",
            "a thread's name": "done", "flock": "ENOSYS", "a terminal's other end": "EPERM", "is it a terminal": "done", "a thread": "done", "a file read": "done",
            "code mapped": "EPERM", "a library's code mapped": "EPERM", "a page made executable": "EPERM",
            "a page made writable": "done", "a handler for SIGILL": "EPERM", "a handler for SIGTRAP": "EPERM",
            "a handler for SIGUSR1": "done",
        }
        assert not (tmp_path / "scratch").exists()
    finally:
        child.kill()
        child.wait()


def test_the_count_is_of_what_a_process_touches_not_of_what_it_holds():
    child = subprocess.Popen([sys.executable, "-c", "import sys\nheld = bytearray(64 << 20)\nprint('ready', flush=True)\n"
                              "sys.stdin.readline()\nheld[::4096] = bytes(len(held) // 4096)\nprint('done', flush=True)\n"
                              "sys.stdin.readline()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        counter = touched_memory.TouchedMemory(child.pid)
        counter.reset()
        assert counter.read() < 8 << 20  # 64 MiB held, untouched since the reset
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        assert counter.read() >= 64 << 20  # one byte in every page written: every page counted
    finally:
        child.kill()
        child.wait()


def test_an_unknown_architecture_is_refused_by_name():
    with pytest.raises(OSError, match="knows x86_64 and aarch64, not riscv64"):
        syscall_filter.program(None, "riscv64")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_every_jump_lands_inside_the_program(machine):
    for keeping in (None, 0x5555_0000_1000):
        code = syscall_filter.program(keeping, machine)
        for at, (operation, if_true, if_false, _) in enumerate(code):
            if operation & 0x07 == 0x05:  # a jump
                assert at + 1 + max(if_true, if_false) < len(code)
        # Anything not named: refused (ENOSYS) by the whole filter, let through by the GPU's.
        assert code[-1] == ((0x06, 0, 0, 0x7FFF0000) if keeping is None else (0x06, 0, 0, 0x50000 | 38))


def test_on_a_gpu_only_other_processes_are_refused():
    """CUDA opens device files for writing and maps and unmaps device memory as it runs (install(cuda=True))."""
    compared = {constant for operation, _, _, constant in syscall_filter.program(None, "x86_64") if operation == 0x15}
    assert {57, 58, 59, 322, 56} <= compared  # fork, vfork, execve, execveat, clone (a thread is let through)
    assert not compared & {22, 293, 257, 11, 28, 12, 10}  # pipe, pipe2, openat, munmap, madvise, brk, mprotect
    everything = {constant for operation, _, _, constant in syscall_filter.program(1 << 40, "x86_64") if operation == 0x15}
    assert {22, 293, 257, 11, 28, 12, 10} <= everything
