"""The native half of the replay worker's floor: PyTorch's compiled kernels for the refused shortcuts
are overwritten with undefined instructions, before any of the notebook's code runs.

``floor`` takes the shortcuts out of the dispatcher and out of PyTorch's Python code, but both live in
the worker's memory, where code that reaches raw memory could restore them (a red team did: it reset
the dispatcher's registrations through a NumPy array at an address of its choosing). What this file
does lives in the machine code itself, and the worker's system-call filter (``syscall_filter``) keeps
it there: no page may be made executable once the filter is on (no ``PROT_EXEC`` in ``mmap`` or
``mprotect``), so a page can be executable or writable but never become executable after being
written, and no copy of the original code can be mapped to run. A refused kernel reached in any way at
all — through PyTorch's API, a restored dispatcher, or a jump from native code — executes a trap and
the worker ends with SIGILL (``TRAP_EXIT``), which the grader reports as a refused shortcut.

What is overwritten: every function of PyTorch's CPU library (``LIBRARIES``) whose symbol name contains
one of the words an exercise refuses (``Forbidden.native``: "softmax", "attention", "lstm", ...) —
the vectorised kernels, their parallel loops' lambdas, oneDNN's primitives, the dispatcher's wrappers —
whole, byte for byte, but those ``SPARED`` and those that share bytes with another function (a linker
may fold identical code). On a GPU the filter refuses other processes only, so there the traps could be
written back: the grader replays every case on the CPU as well (``outside._verify_call``).
The symbols come from the library's own ELF symbol table (its ``.symtab``: PyTorch's wheels keep it),
read here without any tool. This file imports nothing of course_lib: it is copied beside the worker.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import re
import struct

import numpy as np

# The libraries whose kernels are trapped: PyTorch's CPU operators (all of ATen, oneDNN and the CPU
# attention kernels) and, on CUDA builds, the host side of the CUDA ones.
LIBRARIES = ("libtorch_cpu.so", "libtorch_cuda.so")
REQUIRED = "libtorch_cpu.so"  # must be found, with every word in it
# Named functions that are spared: the dispatcher's entry points (at::_ops::<operator>::call and
# ::redispatch, by their mangled names), which only look the kernel up, and where the worker's floor has
# a raising one registered that must be reached to refuse the call in words; and oneDNN's attribute
# code named after RNNs that every oneDNN primitive goes through (a red team found GELU trapped).
SPARED = re.compile(rb"_ZN2at4_ops|[^\0]*rnn_create_time_scales")  # matched from a name's start
# An undefined instruction, repeated over a function: x86's ``ud2``, AArch64's ``udf #0``. Unlike a
# breakpoint (int3), it faults without moving on: a signal handler that returns runs it again, so no
# handler can slide through the trapped code into what follows (a red team did, with int3).
_TRAPS = {"x86_64": b"\x0f\x0b", "amd64": b"\x0f\x0b", "aarch64": b"\x00\x00\x00\x00", "arm64": b"\x00\x00\x00\x00"}
# How the worker ends when it runs one: SIGILL, as the sandbox's launcher passes it on (128 + 4) or as
# Python reports a signal (-4). The system-call filter refuses a handler for it.
TRAP_EXIT = (132, -4)
_PROT_READ, _PROT_WRITE, _PROT_EXEC = 1, 2, 4
_SYMBOL = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("section", "<u2"),
                    ("value", "<u8"), ("size", "<u8")])
_SHT_SYMTAB, _SHT_DYNSYM, _STT_FUNC, _PT_LOAD = 2, 11, 2, 1


def functions_named(path: str, words: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """The (start, end) addresses, relative to the library's load address, of the functions of the ELF
    library at ``path`` whose names contain one of ``words`` (case ignored), without those that share
    bytes with a function not named so; and how many functions each word matched."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as image:
        if image[:6] != b"\x7fELF\x02\x01":
            raise OSError(f"{path} is not a 64-bit little-endian ELF library")
        section_offset, = struct.unpack_from("<Q", image, 0x28)
        section_size, sections = struct.unpack_from("<HH", image, 0x3A)
        # Each section header: name, type, flags, address, offset, size, link, info, align, entry size.
        headers = [struct.unpack_from("<IIQQQQIIQQ", image, section_offset + i * section_size) for i in range(sections)]
        tables = ([h for h in headers if h[1] == _SHT_SYMTAB] or [h for h in headers if h[1] == _SHT_DYNSYM])
        if not tables:
            raise OSError(f"{path} has no symbol table")
        table = tables[0]
        names = headers[table[6]]  # the string table the symbol table links to
        symbols = np.frombuffer(image, dtype=_SYMBOL, count=table[5] // _SYMBOL.itemsize, offset=table[4]).copy()
        strings = image[names[4]:names[4] + names[5]]
    functions = symbols[((symbols["info"] & 0xF) == _STT_FUNC) & (symbols["size"] > 0)]
    name_at = functions["name"].astype(np.int64)
    # A name contains a word if a match lies at or after the name's start and before the next NUL.
    lowered = strings.lower()
    found = sorted((m.start(), word) for word in words for m in re.finditer(re.escape(word.lower().encode()), lowered))
    at = np.array([position for position, _ in found], dtype=np.int64)
    chosen = np.zeros(len(functions), dtype=bool)
    matched = dict.fromkeys(words, 0)
    if found:
        begins = np.array([lowered.rfind(b"\0", 0, position) + 1 for position in at], dtype=np.int64)
        nearest = np.minimum(np.searchsorted(at, name_at), len(at) - 1)
        chosen = (at[nearest] >= name_at) & (begins[nearest] <= name_at)
        for function in np.flatnonzero(chosen):
            start = int(name_at[function])
            chosen[function] = not SPARED.match(strings, start, strings.find(b"\0", start))
        for index in nearest[chosen]:  # each chosen name counted for the first word in it
            matched[found[index][1]] += 1
    starts = functions["value"].astype(np.int64)
    ends = starts + functions["size"].astype(np.int64)
    # Without the functions that share a byte with one that is kept (identical code folded by the linker).
    kept_starts, kept_ends = starts[~chosen], ends[~chosen]
    order = np.argsort(kept_starts)
    kept_starts, reach = kept_starts[order], np.maximum.accumulate(kept_ends[order])
    before = np.searchsorted(kept_starts, ends[chosen])  # kept functions that start before each end
    shared = (before > 0) & (reach[np.maximum(before - 1, 0)] > starts[chosen]) if len(reach) else before > 0
    ranges = np.stack([starts[chosen][~shared], ends[chosen][~shared]], axis=1)
    return ranges, matched


def load_address(path: str) -> int | None:
    """Where this process has mapped the library at ``path`` (None if it has not)."""
    real = os.path.realpath(path)
    with open(path, "rb") as file:
        header = file.read(64)
        program_offset, = struct.unpack_from("<Q", header, 0x20)
        entry_size, entries = struct.unpack_from("<HH", header, 0x36)
        file.seek(program_offset)
        table = file.read(entry_size * entries)
    # The segment loaded from the file's start: its address in the file's own numbering.
    first = min(struct.unpack_from("<IIQQ", table, i * entry_size)[3] for i in range(entries)
                if struct.unpack_from("<IIQQ", table, i * entry_size)[0] == _PT_LOAD)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and int(fields[2], 16) == 0 and os.path.realpath(fields[5].strip()) == real:
                return int(fields[0].split("-")[0], 16) - (first & ~(mmap.PAGESIZE - 1))
    return None


def loaded_libraries() -> dict[str, str]:
    """The paths of this process's ``LIBRARIES``, by name, as its memory map shows them."""
    found = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip()
            if os.path.basename(path) in LIBRARIES:
                found.setdefault(os.path.basename(path), path)
    return found


def trap(words: list[str]) -> dict[str, int]:
    """Overwrite with traps every function of the loaded ``LIBRARIES`` whose name contains one of
    ``words``; the bytes overwritten, by library. Raises OSError, before writing anything, where
    PyTorch's CPU library is not found or the words name none of its functions."""
    if not words:
        return {}
    instruction = _TRAPS.get(platform.machine().lower())
    if instruction is None:
        raise OSError(f"the replay worker traps kernels on x86_64 and aarch64, not {platform.machine()}")
    libraries = loaded_libraries()
    if REQUIRED not in libraries:
        raise OSError(f"the replay worker found no {REQUIRED} in its memory to take refused kernels out of")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    found = {}
    for name, path in libraries.items():  # all found before any is written: a refusal leaves the code whole
        ranges, matched = functions_named(path, words)
        # A word may name nothing (a kernel this PyTorch version does not have); none named means
        # symbols that do not name the kernels at all.
        if name == REQUIRED and not any(matched.values()):
            raise OSError(f"no function of {path} is named after {', '.join(words)}: "
                          "this PyTorch build's kernels for them cannot be taken out")
        base = load_address(path)
        if base is not None and len(ranges):
            found[name] = base + ranges
    return {name: _overwrite(libc, ranges, instruction) for name, ranges in found.items()}


def _overwrite(libc: ctypes.CDLL, ranges: np.ndarray, instruction: bytes) -> int:
    """Fill each (start, end) with ``instruction``, a run of pages at a time: made writable and still
    executable meanwhile (another thread may be running code on the same pages), then read and execute."""
    page = mmap.PAGESIZE
    ranges = ranges[np.argsort(ranges[:, 0])]
    first_pages, last_pages = ranges[:, 0] // page, (ranges[:, 1] - 1) // page
    # Runs of consecutive pages: a new run starts where a range's first page is past the run's last.
    reach = np.maximum.accumulate(last_pages)
    starts_run = np.flatnonzero(first_pages[1:] > reach[:-1] + 1) + 1
    total = 0
    for members, run_reach in zip(np.split(ranges, starts_run), np.split(reach, starts_run)):
        low, high = int(members[0, 0]) // page * page, (int(run_reach[-1]) + 1) * page
        _protect(libc, low, high - low, _PROT_READ | _PROT_WRITE | _PROT_EXEC)
        for start, end in members.tolist():
            size = end - start
            ctypes.memmove(start, (instruction * (size // len(instruction) + 1))[:size], size)
            total += size
        _protect(libc, low, high - low, _PROT_READ | _PROT_EXEC)
    return total


def _protect(libc: ctypes.CDLL, address: int, size: int, protection: int) -> None:
    if libc.mprotect(address, size, protection) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot rewrite PyTorch's code to take refused kernels out: {os.strerror(error)}")
