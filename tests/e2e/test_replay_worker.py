"""The replay worker refuses what reading the code cannot see (replay_worker.harden): a notebook's code
there starts no thread and no process, unpickles nothing and walks no live objects — each of those runs
without the shortcut guard or reaches past it. These cells are run as they would be if the grader's
reading (course_lib.grading.policy) had missed them."""

from __future__ import annotations

import pytest

pytest.importorskip("safetensors", reason="needs safetensors (the [lab] extra)")

import torch  # noqa: E402

from course_lib.grading import outside, replay_worker, sandbox  # noqa: E402

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


def test_kernels_run_in_triton_s_interpreter_there_even_on_a_gpu(worker):
    reply, _ = worker.request({"op": "run", "source": "import os\nassert os.environ['TRITON_INTERPRET'] == '1'",
                               "label": "interpreter"}, {}, 60)
    assert reply == {"ok": True}


def test_a_result_that_is_a_tensor_subclass_is_refused():
    class Later(torch.Tensor):  # computes its values when an operation asks, after the call's guard
        pass

    with pytest.raises(TypeError, match="a Later, a subclass of torch.Tensor: return plain tensors"):
        replay_worker.encode((torch.zeros(2), torch.zeros(2).as_subclass(Later)), {})
    assert replay_worker.encode(torch.nn.Parameter(torch.zeros(2)), {}) == {"__tensor__": "t0"}
