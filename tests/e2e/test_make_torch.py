"""Which torch `make lab` installs: the commands it runs, run by the real Makefile against a stand-in
python that records its arguments (PyTorch's wheel indexes are not reachable from the test machines,
so the command is tested, not the download).

- Linux without an NVIDIA GPU: the CPU build, from PyTorch's CPU wheel index;
- Linux with one, or macOS: PyPI's torch (a CUDA build; the macOS build);
- a torch already in the environment (CI's local CPU build): left alone;
- `make lab TORCH_INDEX=...` chooses the index, `TORCH_INDEX=` PyPI's.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="needs make")

# The stand-in for .venv/bin/python: records its arguments; `-c "import torch"` succeeds only when
# the test says torch is installed.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
    "-c import torch") exit {torch_status} ;;
    *"print(torch.__version__)"*) echo 2.13.0+cpu ;;
esac
exit 0
"""
FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _make_lab_install(tmp_path: Path, *, uname: str, gpu: bool, torch_installed: bool = False,
                      extra: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """Run the Makefile's install step of `make lab`; return the stand-in python's calls and make's output."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    _script(venv / "bin" / "python", FAKE_PYTHON.format(log=log, torch_status=0 if torch_installed else 1))
    nvidia_smi = _script(tmp_path / "nvidia-smi", FAKE_NVIDIA_SMI) if gpu else tmp_path / "no-nvidia-smi"
    result = subprocess.run(
        [MAKE, "--no-print-directory", "-C", str(REPO), f"VENV={venv}", f"UNAME={uname}", f"NVIDIA_SMI={nvidia_smi}",
         *extra, str(venv / ".installed")],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "TORCH_INDEX"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return log.read_text().splitlines(), result.stdout


def test_linux_without_an_nvidia_gpu_gets_the_cpu_build(tmp_path):
    calls, _ = _make_lab_install(tmp_path, uname="Linux", gpu=False)
    assert calls == ["-c import torch", f"-m pip install torch --index-url {CPU_INDEX}", "-m pip install -e .[lab]"]


def test_linux_with_an_nvidia_gpu_gets_pypi_s_cuda_build(tmp_path):
    calls, _ = _make_lab_install(tmp_path, uname="Linux", gpu=True)
    assert calls == ["-c import torch", "-m pip install torch", "-m pip install -e .[lab]"]


def test_macos_gets_pypi_s_build(tmp_path):
    calls, _ = _make_lab_install(tmp_path, uname="Darwin", gpu=False)
    assert "-m pip install torch" in calls


def test_an_installed_torch_is_left_alone(tmp_path):
    calls, out = _make_lab_install(tmp_path, uname="Linux", gpu=False, torch_installed=True)
    assert not [c for c in calls if c.startswith("-m pip install torch")]
    assert "torch 2.13.0+cpu is installed: kept" in out
    assert calls[-1] == "-m pip install -e .[lab]"


@pytest.mark.parametrize(("index", "expected"), [
    ("https://download.pytorch.org/whl/cu126", "-m pip install torch --index-url https://download.pytorch.org/whl/cu126"),
    ("", "-m pip install torch"),
])
def test_torch_index_chooses(tmp_path, index, expected):
    calls, _ = _make_lab_install(tmp_path, uname="Linux", gpu=False, extra=(f"TORCH_INDEX={index}",))
    assert expected in calls


def test_readme_says_how_to_choose():
    readme = (REPO / "README.md").read_text()
    assert "TORCH_INDEX=" in readme and CPU_INDEX in readme
