"""PyTorch's compiled kernels for a refused shortcut, overwritten with traps (course_lib.grading.native_code),
tried in child processes: the kernel ends the process wherever it is reached from, what the student may
use still runs, and once the system-call filter is on the trapped code cannot be made to run again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from course_lib.grading import native_code

LIBRARY = Path(torch.__file__).parent / "lib" / native_code.REQUIRED
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64")
    or not LIBRARY.exists(), reason=f"traps are written on Linux, x86_64 and aarch64, into {native_code.REQUIRED}")
FOLDER = str(Path(native_code.__file__).parent)


def _run(body: str) -> subprocess.CompletedProcess:
    source = f"import ctypes, json, sys, torch\nsys.path.insert(0, {FOLDER!r})\nimport native_code, syscall_filter\n"
    return subprocess.run([sys.executable, "-c", source + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=300)


def test_the_kernels_named_are_found_whole():
    ranges, matched = native_code.functions_named(str(LIBRARY), ["softmax", "lstm"])
    assert matched["softmax"] > 100 and matched["lstm"] > 100
    assert len(ranges) and (ranges[:, 1] > ranges[:, 0]).all()
    _, none = native_code.functions_named(str(LIBRARY), ["no_kernel_is_called_this"])
    assert none == {"no_kernel_is_called_this": 0}


def test_a_trapped_kernel_ends_the_process_and_the_rest_of_torch_runs():
    ran = _run("""
        x = torch.randn(8, 8)
        written = native_code.trap(["softmax"])
        own = (x - x.amax(-1, keepdim=True)).exp()
        own = own / own.sum(-1, keepdim=True)
        print(json.dumps({"written": written, "own": own.sum().item()}), flush=True)
        print(torch.softmax(x, -1).sum().item(), flush=True)  # never printed
    """)
    assert ran.returncode in native_code.TRAP_EXIT, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 1, ran.stdout  # the student's softmax ran; PyTorch's did not
    found = json.loads(lines[0])
    assert found["written"][native_code.REQUIRED] > 1 << 20 and abs(found["own"] - 8) < 1e-4


def test_once_the_filter_is_on_the_trapped_code_cannot_run_again():
    # With ctypes kept (what native code could do): the kernel's page is a trap; it cannot be made writable
    # and executable, and a copy of the library's original code cannot be mapped to run.
    ran = _run(f"""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        path = native_code.loaded_libraries()[native_code.REQUIRED]
        ranges, _ = native_code.functions_named(path, ["softmax"])
        start = native_code.load_address(path) + int(ranges[0][0])
        native_code.trap(["softmax"])
        syscall_filter.install()
        page = start // 4096 * 4096
        import os
        found = {{"a trap": ctypes.string_at(start, 2) == native_code._TRAPS[{platform.machine().lower()!r}][:2],
                  "made writable and executable": libc.mprotect(page, 4096, 7),
                  "the library mapped to run": libc.mmap(None, 4096, 5, 2, os.open(path, os.O_RDONLY), 0)}}
        print(json.dumps(found), flush=True)
        torch.softmax(torch.randn(4, 4), -1)
    """)
    assert ran.returncode in native_code.TRAP_EXIT, ran.stderr
    assert json.loads(ran.stdout) == {"a trap": True, "made writable and executable": -1,
                                      "the library mapped to run": 2**64 - 1}  # MAP_FAILED


def test_words_that_name_no_kernel_are_refused_before_anything_is_written():
    ran = _run("""
        try:
            native_code.trap(["no_kernel_is_called_this", "nor_this"])
        except OSError as error:
            print(error, flush=True)
        print(torch.softmax(torch.zeros(2), 0).tolist(), flush=True)
    """)
    assert ran.returncode == 0, ran.stderr
    refusal, softmax = ran.stdout.splitlines()
    assert "is named after no_kernel_is_called_this, nor_this" in refusal
    assert softmax == "[0.5, 0.5]"


@pytest.mark.parametrize(("name", "spared"), [
    (b"_ZN2at4_ops11softmax_int4callERKNS_6TensorElSt8optionalIN3c1010ScalarTypeEE", True),  # the dispatcher's entry
    (b"_ZN4dnnl4impl24rnn_create_time_scales_t3setEifPKf", True),  # oneDNN's attributes, used by every primitive
    (b"_ZN2at6native12_GLOBAL__N_127softmax_lastdim_kernel_implERKNS_10TensorBaseES4_", False),
    (b"_ZZN2at6native4hostEvENKUlvE_clEv.cold._ZN2at4_ops", False),  # the entry's prefix counts at a name's start only
])
def test_what_is_spared_is_matched_from_a_name_s_start(name, spared):
    strings = b"\0xx" + name + b"\0"
    assert bool(native_code.SPARED.match(strings, 3, len(strings) - 1)) is spared
