"""The grading sandbox on its own: what code inside it can and cannot do (needs bubblewrap)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from course_lib.grading import sandbox

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox.unavailable_reason()}")


def _run(tmp_path, code: str, **options) -> subprocess.CompletedProcess:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    box = sandbox.Sandbox(workdir, readable=sandbox.environment_paths(), **options)
    try:
        return subprocess.run(box.command([sys.executable, "-I", "-c", textwrap.dedent(code)]),
                              capture_output=True, text=True, timeout=120)
    finally:
        box.close()


def test_code_inside_writes_its_own_folder_and_nothing_else(tmp_path):
    """Writes elsewhere fail (read-only), or land in the sandbox's private /tmp and vanish with it."""
    repository = Path(__file__).resolve().parents[2]
    targets = [tmp_path / "outside.txt", Path(sys.prefix) / "planted.py", repository / "planted.txt",
               Path.home() / "planted.txt"]
    result = _run(tmp_path, f"""
        open("mine.txt", "w").write("ok")
        for path in {[str(t) for t in targets]!r}:
            try:
                open(path, "w").write("x")
            except OSError:
                pass
    """)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "mine.txt").read_text() == "ok"
    assert [t for t in targets if t.exists()] == []


def test_hidden_folders_are_empty_inside(tmp_path):
    secret = tmp_path / "course" / "solutions"
    secret.mkdir(parents=True)
    (secret / "answer.ipynb").write_text("the answer")
    result = _run(tmp_path, f"import os; print(os.listdir({str(tmp_path / 'course')!r}))", hidden=[tmp_path / "course"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_environment_keeps_no_secret_and_the_user_is_nobody(tmp_path):
    result = _run(tmp_path, "import os; print(os.getuid(), sorted(os.environ))",
                  environment={"COURSE_HIDDEN_SALT": "s3cret", "PATH": "/usr/bin", "GITHUB_TOKEN": "t"})
    assert result.returncode == 0, result.stderr
    uid, names = result.stdout.split(" ", 1)
    assert int(uid) == sandbox.NOBODY
    assert "COURSE_HIDDEN_SALT" not in names and "GITHUB_TOKEN" not in names and "PATH" in names


def test_there_is_no_network(tmp_path):
    import socket  # noqa: PLC0415

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = _run(tmp_path, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("connected")
            except OSError as error:
                print("refused", type(error).__name__)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused"), result.stdout


def test_memory_and_processes_are_limited(tmp_path):
    limits = sandbox.Limits(memory_bytes=256 << 20, processes=32)
    hog = _run(tmp_path, "x = bytearray(1 << 30); x[::4096] = b'1' * len(x[::4096]); print('allocated')", limits=limits)
    assert "allocated" not in hog.stdout and hog.returncode != 0
    forks = _run(tmp_path, """
        import os, time
        started = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                started += 1
            except OSError:
                break
        print(started)
    """, limits=limits)
    assert forks.returncode == 0, forks.stderr
    assert int(forks.stdout) < 32
