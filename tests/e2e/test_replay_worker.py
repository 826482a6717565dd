"""The replay worker refuses what reading the code cannot see (replay_worker.harden): a notebook's code
there starts no thread and no process, unpickles nothing and walks no live objects — each of those runs
without the shortcut guard or reaches past it. These cells are run as they would be if the grader's
reading (course_lib.grading.policy) had missed them."""

from __future__ import annotations

import pytest

pytest.importorskip("safetensors", reason="needs safetensors (the [lab] extra)")

from course_lib.grading import outside, sandbox  # noqa: E402

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox.unavailable_reason()}")

REFUSED = {
    "a thread": ("import threading\nthreading.Thread(target=print).start()", "may not start a thread"),
    "a thread from _thread": ("import _thread\n_thread.start_new_thread(print, ())", "may not start a thread"),
    "a process": ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
    "a fork": ("import os\nos.fork()", "os.fork"),
    "a program": ("import os\nos.system('true')", "os.system"),
    "unpickling": ("import pickle\npickle.loads(pickle.dumps(print))", "pickle.find_class"),
    "the garbage collector's objects": ("import gc\ngc.get_objects()", "gc.get_objects"),
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    started = outside.ReplayWorker(hidden=[tmp_path_factory.mktemp("hidden")], limits=sandbox.Limits(),
                                   cell_timeout=60)
    yield started
    started.close()


@pytest.mark.parametrize("name", list(REFUSED))
def test_the_worker_refuses(worker, name):
    source, words = REFUSED[name]
    reply, _ = worker.request({"op": "run", "source": source, "label": name}, {}, 60)
    assert reply.get("error") == "exception" and "Refused" in reply["problem"] and words in reply["problem"], reply
    assert worker.alive


def test_ordinary_code_still_runs(worker):
    source = "import math, torch\nx = torch.ones(3).softmax(-1).sum().item()\nassert math.isclose(x, 1.0)"
    reply, _ = worker.request({"op": "run", "source": source, "label": "ordinary"}, {}, 60)
    assert reply == {"ok": True}
