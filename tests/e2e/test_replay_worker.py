"""The replay worker refuses what reading the code cannot see. Its floor (course_lib.grading.floor) takes
an exercise's shortcuts out of the process before the notebook's code runs, so every route to them
fails, however the code steps around PyTorch's modes; and replay_worker.harden lets that code start no
thread and no process, unpickle nothing, walk no live objects, use no ctypes and load or re-run none of
torch's modules — each of those runs without the floor or reaches past it. These cells are run as they
would be if the grader's reading (course_lib.grading.policy) had missed them."""

from __future__ import annotations

import pytest

pytest.importorskip("safetensors", reason="needs safetensors (the [lab] extra)")

import torch  # noqa: E402

from course_lib.grading import outside, replay_worker, sandbox  # noqa: E402
from course_lib.grading.l02_lstm_seq2seq import LSTM_CELL  # noqa: E402
from course_lib.grading.l05_scaled_dot_product import SCALED_DOT_PRODUCT_ATTENTION, SOFTMAX  # noqa: E402
from course_lib.grading.l07_sliding_window import SLIDING_WINDOW_ATTENTION  # noqa: E402

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
    "ctypes": ("import ctypes\nctypes.CDLL(None)", "ctypes.dlopen"),
    "mmap": ("import mmap\nmmap.mmap(-1, 4096)", "maps memory by hand"),
    "a process's memory": ("open('/proc/self/mem', 'rb')", "opens a process's memory"),
    "a torch module run again": ("import importlib, torch.nn.functional\nimportlib.reload(torch.nn.functional)",
                                 "a function the floor replaced"),
}

# Ways to reach a softmax that the in-kernel guard (PyTorch's modes) alone does not stop, each the body of
# `answer(x)`; the worker's floor refuses every one. The first three got past both verdicts before the floor.
ESCAPES = {
    "with PyTorch's modes switched off": (
        "from torch.utils._python_dispatch import _disable_current_modes\n"
        "def answer(x):\n    with torch._C.DisableTorchFunction(), _disable_current_modes():\n"
        "        return torch.softmax(x, -1)"),
    "inside a dispatch handler": (
        "from torch.utils._python_dispatch import TorchDispatchMode\n"
        "class Through(TorchDispatchMode):\n    def __torch_dispatch__(self, func, types, args=(), kwargs=None):\n"
        "        return func(*args, **(kwargs or {}))\n"
        "def answer(x):\n    with Through():\n        return torch.ops.aten._softmax(x, -1, False)"),
    "with the operator's name patched": (
        "type(torch.ops.aten._softmax.default).overloadpacket = property(lambda self: torch.ops.aten.add)\n"
        "def answer(x):\n    return torch.ops.aten._softmax(x, -1, False)"),
    "by a string": ("import string\ndef answer(x):\n    return string.Formatter().get_field('0.softmax', [torch], {})[0](x, -1)"),
    "PyTorch's Python reference": ("def answer(x):\n    return torch._refs.softmax(x, -1)"),
    "a decomposition": ("def answer(x):\n    return torch._decomp.decomposition_table[torch.ops.aten._softmax.default](x, -1, False)"),
    "a sparse tensor": ("def answer(x):\n    return torch.sparse.softmax(x.to_sparse(), -1).to_dense()"),
    "a masked softmax": ("def answer(x):\n    return torch.masked.softmax(x, -1)"),
    "the Python dispatcher": ("def answer(x):\n    torch._C._EnablePythonDispatcher()\n    return torch.softmax(x, -1)"),
    "vmap": ("def answer(x):\n    return torch.vmap(lambda row: row.softmax(-1))(x)"),
    "Triton's softmax": ("import triton, triton.language as tl\n@triton.jit\ndef rows(X, Y, N: tl.constexpr):\n"
                         "    r = tl.program_id(0)\n    c = tl.arange(0, N)\n"
                         "    tl.store(Y + r * N + c, tl.softmax(tl.load(X + r * N + c)))\n"
                         "def answer(x):\n    x = torch.nn.functional.pad(x, (0, 3), value=float('-inf'))\n"
                         "    y = torch.empty_like(x)\n    rows[(x.shape[0],)](x, y, x.shape[1])\n    return y[:, :5]"),
    "TorchScript": ("def soft(x):\n    return torch.softmax(x, -1)\nscripted = torch.jit.script(soft)\n"
                    "def answer(x):\n    return scripted(x)"),
    "PyTorch's SDPA": ("import torch.nn.functional as F\ndef answer(x):\n"
                       "    return F.scaled_dot_product_attention(x[None], torch.eye(x.shape[-1])[None], torch.eye(x.shape[-1])[None])[0]"),
}
OWN_SOFTMAX = "def answer(x):\n    e = (x - x.amax(-1, keepdim=True)).exp()\n    return e / e.sum(-1, keepdim=True)"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    started = outside.ReplayWorker(refused=outside.torch_shortcuts(SOFTMAX), hidden=[tmp_path_factory.mktemp("hidden")],
                                   limits=sandbox.Limits(), cell_timeout=60)
    yield started
    started.close()


@pytest.mark.parametrize("name", list(REFUSED))
def test_the_worker_refuses(worker, name):
    source, words = REFUSED[name]
    reply, _ = worker.request({"op": "run", "source": source, "label": name}, {}, 60)
    assert reply.get("error") == "exception" and "refused by the grader's replay" in reply["problem"], reply
    assert words in reply["problem"], reply
    assert worker.alive


def _call(worker, name: str, args: tuple, measure: bool = False) -> tuple[dict, dict]:
    """Call the notebook's ``name`` in the worker on ``args`` (tensors and plain values): its reply."""
    tensors: dict[str, torch.Tensor] = {}
    header = {"op": "call", "name": name, "device": "cpu", "module": False, "grad": False, "measure": measure,
              "input_names": [f"a{i}" for i in range(len(args))], "args": replay_worker.encode(tuple(args), tensors),
              "kwargs": replay_worker.encode({}, tensors)}
    return worker.request(header, tensors, 120)


def _answer(worker, source: str, label: str) -> dict:
    """Run ``source`` in the worker, then call its ``answer`` on a 3 x 5 tensor: the reply, with the result."""
    ran, _ = worker.request({"op": "run", "source": source, "label": label}, {}, 60)
    assert ran == {"ok": True}, ran
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    reply, out = _call(worker, "answer", (x,))
    if "result" in reply:
        reply["result"] = replay_worker.decode(reply["result"], out)
        assert torch.allclose(reply["result"], torch.softmax(x, -1))  # it did compute the answer
    return reply


@pytest.mark.parametrize("name", list(ESCAPES))
def test_the_floor_refuses_every_route_to_a_shortcut(worker, name):
    reply = _answer(worker, ESCAPES[name], name)
    assert reply.get("error") == "shortcut" and "your function called" in reply["problem"], reply
    assert worker.alive


def test_the_floor_leaves_a_student_s_own_softmax_alone(worker):
    reply = _answer(worker, OWN_SOFTMAX, "own softmax")
    assert "error" not in reply, reply


def test_a_triton_kernel_may_use_the_library_functions_beside_triton_s_softmax(worker):
    # Triton's interpreter compiles tl.max and tl.sum again from the file where the floor replaced
    # tl.softmax: a red team found every such kernel refused.
    source = ("import triton, triton.language as tl\n@triton.jit\ndef rows(X, Y, N: tl.constexpr):\n"
              "    r = tl.program_id(0)\n    c = tl.arange(0, N)\n    x = tl.load(X + r * N + c)\n"
              "    e = tl.exp(x - tl.max(x, 0))\n    tl.store(Y + r * N + c, e / tl.sum(e, 0))\n"
              "def answer(x):\n    x = torch.nn.functional.pad(x, (0, 3), value=float('-inf'))\n"
              "    y = torch.empty_like(x)\n    rows[(x.shape[0],)](x, y, x.shape[1])\n    return y[:, :5]")
    reply = _answer(worker, "import torch\n" + source, "triton softmax of one's own")
    assert "error" not in reply, reply


def test_a_torch_module_loaded_again_gets_no_fresh_copy(worker):
    source = "import sys, torch\ndel sys.modules['torch._refs']\nimport torch._refs"
    reply, _ = worker.request({"op": "run", "source": source, "label": "again"}, {}, 60)
    assert reply.get("error") == "exception" and "a function the floor replaced" in reply["problem"], reply
    assert _answer(worker, "def answer(x):\n    return torch._refs.softmax(x, -1)", "refs")["error"] == "shortcut"


def test_a_kernel_reached_past_the_floor_is_a_trap_that_ends_the_worker_as_a_shortcut(tmp_path):
    """Raw memory could undo the floor's registrations (a red team reset them): a worker without them is
    what that would leave, and PyTorch's compiled softmax is still not there (native_code)."""
    bare = {"operators": {}, "functions": {}, "native": outside.torch_shortcuts(SOFTMAX)["native"]}
    started = outside.ReplayWorker(refused=bare, hidden=[tmp_path], limits=sandbox.Limits(), cell_timeout=60)
    try:
        assert _answer(started, OWN_SOFTMAX, "own softmax")["result"].shape == (3, 5)
        ran, _ = started.request({"op": "run", "source": "import torch\ndef answer(x):\n    return torch.softmax(x, -1)",
                                  "label": "softmax"}, {}, 60)
        assert ran == {"ok": True}, ran
        # A handler would keep the process alive past the trap (a red team's, with breakpoints): refused.
        handler, _ = started.request({"op": "run", "source": "import signal\nsignal.signal(signal.SIGILL, print)",
                                      "label": "handler"}, {}, 60)
        assert handler.get("error") == "exception" and "Operation not permitted" in handler["problem"], handler
        with pytest.raises(outside.WorkerEnded, match="compiled kernel for what this exercise refuses") as ended:
            _call(started, "answer", (torch.randn(3, 5),))
        assert ended.value.shortcut and "softmax" in str(ended.value)
    finally:
        started.close()


def test_ordinary_operations_reach_no_trap_in_a_worker_that_refuses_recurrent_layers(tmp_path):
    """oneDNN's attribute code is named after RNNs, and every oneDNN primitive went through it (a red team
    found GELU and bfloat16 products ending the worker): it is spared, and oneDNN is off in the worker."""
    started = outside.ReplayWorker(refused=outside.torch_shortcuts(LSTM_CELL), hidden=[tmp_path],
                                   limits=sandbox.Limits(), cell_timeout=60)
    try:
        source = ("import torch\nimport torch.nn.functional as F\ndef answer(x):\n    b = x.bfloat16()\n"
                  "    return F.gelu(x) + (b @ b.T).float().sum() + F.conv1d(x[None], x[:, :, None]).sum() * 0")
        ran, _ = started.request({"op": "run", "source": source, "label": "ordinary"}, {}, 60)
        assert ran == {"ok": True}, ran
        x = torch.randn(5, 5)
        reply, out = _call(started, "answer", (x,))
        assert "error" not in reply, reply
        b = x.bfloat16()
        expected = torch.nn.functional.gelu(x) + (b @ b.T).float().sum()
        assert torch.allclose(replay_worker.decode(reply["result"], out), expected, atol=1e-2)
    finally:
        started.close()


def test_a_library_module_imported_later_is_covered_before_the_next_call(worker):
    # A module the worker had not loaded (PyTorch's ONNX exporter; SciPy's `scipy.special.softmax` would be
    # another, where installed): its function named after a refused operator is refused from then on.
    source = "import torch.onnx.symbolic_opset9 as exporter"
    ran, _ = worker.request({"op": "run", "source": source, "label": "library"}, {}, 60)
    assert ran == {"ok": True}, ran
    reply = _answer(worker, "def answer(x):\n    return exporter.softmax(None, x, -1)", "library softmax")
    assert reply.get("error") == "shortcut" and "it is softmax" in reply["problem"], reply


def test_a_torch_module_loaded_later_is_covered_before_the_next_call(tmp_path):
    flex = outside.torch_shortcuts(SLIDING_WINDOW_ATTENTION)  # lesson 07 refuses FlexAttention; the worker has not loaded it
    started = outside.ReplayWorker(refused=flex, hidden=[tmp_path], limits=sandbox.Limits(), cell_timeout=60)
    try:
        source = ("import torch\nfrom torch.nn.attention.flex_attention import flex_attention\n"
                  "def answer(q, k, v, window):\n    return flex_attention(q, k, v)")
        ran, _ = started.request({"op": "run", "source": source, "label": "flex"}, {}, 120)
        assert ran == {"ok": True}, ran
        q = torch.randn(1, 1, 8, 4)
        reply, _ = _call(started, "answer", (q, q, q, (2, 0)))
        assert reply.get("error") == "shortcut" and "flex_attention" in reply["problem"], reply
    finally:
        started.close()


def test_the_notebook_cannot_watch_what_the_worker_runs(worker):
    source = ("import sys, json\nseen = []\nsys.addaudithook(lambda event, args: seen.append(event))\n"
              "import email.utils\nassert not seen, seen")  # the hook was refused (silently, as Python does)
    reply, _ = worker.request({"op": "run", "source": source, "label": "audit hook"}, {}, 60)
    assert reply == {"ok": True}, reply


def test_ordinary_code_still_runs(worker):
    source = "import math, torch\nx = torch.ones(3).exp().sum().item()\nassert math.isclose(x, 3 * math.e, rel_tol=1e-6)"
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


# What a red team did with the first version of the floor, each now refused: the hook's own frame, reached
# through the traceback of one of its refusals, held the floor's dispatcher handle (whose reset() brought
# PyTorch's kernels back) and the switch that turned the hook off; the notebook's code ran inside the hook
# while it loaded a module; /proc/self/mem was opened by a path that was not a plain absolute str.
RED_TEAM = {
    "the hook's frame, through a refusal's traceback": (
        "import os\ntry:\n    os.system('true')\nexcept PermissionError as error:\n    trace = error.__traceback__\n"
        "seen = []\nwhile trace is not None:\n    try:\n        seen.append(trace.tb_frame.f_code.co_name)\n"
        "    except PermissionError:\n        seen.append('refused')\n    trace = trace.tb_next\n"
        "assert seen[0] == '<module>' and seen[-1] == 'refused', seen  # the cell's own frame is there, the hook's is not"),
    "the notebook's code run during an import": (
        "import builtins, gc\nplain = builtins.__import__\n"
        "def watching(*args, **kwargs):\n    gc.get_objects()\n    return plain(*args, **kwargs)\n"
        "builtins.__import__ = watching\ntry:\n    import wave\nexcept PermissionError as error:\n    refused = str(error)\n"
        "finally:\n    builtins.__import__ = plain\nassert 'gc.get_objects' in refused"),
    "/proc/self/mem by a bytes path": (
        "try:\n    open(b'/proc/self/mem', 'rb')\nexcept PermissionError as error:\n    assert 'memory' in str(error)\n"
        "else:\n    raise AssertionError('opened')"),
    "/proc/self/mem relative to a folder": (
        "import os\nfolder = os.open('/proc/self', os.O_RDONLY)\ntry:\n    os.open('mem', os.O_RDONLY, dir_fd=folder)\n"
        "except PermissionError as error:\n    assert 'memory' in str(error)\nelse:\n    raise AssertionError('opened')"),
    # (a second red team) code run inside the hook, through the hash of a code object whose constants
    # are the notebook's objects, which the hook looked up when it checked a traceback's frame
    "the notebook's code run inside the hook": (
        "import sys\nreached = []\nclass Hashed:\n    def __hash__(self):\n        reached.append(sys._getframe(1).f_code.co_name)\n"
        "        return 1\n    def __eq__(self, other):\n        return False\n"
        "def fails():\n    raise ValueError\nfails.__code__ = fails.__code__.replace(co_consts=fails.__code__.co_consts + (Hashed(),))\n"
        "try:\n    fails()\nexcept ValueError as error:\n    error.__traceback__.tb_next.tb_frame\n"
        "assert not reached, reached"),
    "/proc mounted read-only, under the hook": (  # so no path the hook misses opens mem for writing
        "mounts = [line.split() for line in open('/proc/mounts')]\n"
        "assert any(m[1] == '/proc' and 'ro' in m[3].split(',') for m in mounts), mounts"),
}


@pytest.mark.parametrize("name", list(RED_TEAM))
def test_the_red_team_s_ways_past_the_first_floor_are_closed(worker, name):
    reply, _ = worker.request({"op": "run", "source": RED_TEAM[name], "label": name}, {}, 60)
    assert reply == {"ok": True}, reply


# Memory, counted by the operating system from outside the worker (the pages its process touches during
# the call), not by a mode the notebook's code can pop: a dense attention at L = S = 1024 computes with
# two 4 MiB score matrices (one, where it works in place: at least the 4 MiB scores are seen, however
# they are hidden, less the slack the count allows the protocol).
DENSE = ("def answer(q, k, v):\n    weights = (q @ k.transpose(-2, -1) / 8).exp()\n"
         "    return (weights / weights.sum(-1, keepdim=True)) @ v")
HIDDEN_FROM_A_TRACKER = {
    "as it is": DENSE,
    "with PyTorch's modes switched off": (
        "from torch.utils._python_dispatch import _disable_current_modes\n"
        "def answer(q, k, v):\n    with torch._C.DisableTorchFunction(), _disable_current_modes():\n"
        "        weights = (q @ k.transpose(-2, -1) / 8).exp()\n        return (weights / weights.sum(-1, keepdim=True)) @ v"),
    "in NumPy": ("import numpy\ndef answer(q, k, v):\n    a, b, c = q.numpy(), k.numpy(), v.numpy()\n"
                 "    weights = numpy.exp(a @ b.swapaxes(-2, -1) / 8)\n"
                 "    return torch.from_numpy((weights / weights.sum(-1, keepdims=True)) @ c)"),
    "written into a buffer kept from before the call": (
        "buffer = torch.zeros(1 << 20)\n"
        "def answer(q, k, v):\n    scores = buffer[: q.shape[-2] * k.shape[-2]].view(q.shape[-2], k.shape[-2])\n"
        "    torch.matmul(q[0], k[0].transpose(-2, -1), out=scores)\n    scores.div_(8).exp_()\n"
        "    scores.div_(scores.sum(-1, keepdim=True))\n    return (scores @ v[0])[None]"),
    "in NumPy, in place, into an array made before the call": (  # (a second red team)
        "import numpy\nbuffer = numpy.empty((1, 1024, 1024), numpy.float32)\n"
        "def answer(q, k, v):\n    s = numpy.matmul(q.numpy(), k.numpy().swapaxes(-2, -1), out=buffer)\n"
        "    numpy.exp(numpy.multiply(s, 1 / 8, out=s), out=s)\n    numpy.divide(s, s.sum(-1, keepdims=True), out=s)\n"
        "    return torch.from_numpy(s @ v.numpy())"),
    "in NumPy, in place, through a subclass's view of an array made before": (  # (a third red team)
        "import numpy\nclass Hidden(numpy.ndarray):\n    pass\n"
        "buffer = numpy.empty((1, 1024, 1024), numpy.float32).view(Hidden)\n"
        "def answer(q, k, v):\n    s = numpy.matmul(q.numpy(), k.numpy().swapaxes(-2, -1), out=buffer)\n"
        "    numpy.exp(numpy.multiply(s, 1 / 8, out=s), out=s)\n    numpy.divide(s, s.sum(-1, keepdims=True), out=s)\n"
        "    return torch.from_numpy(numpy.matmul(s, v.numpy()).view(numpy.ndarray))"),
    "in NumPy, in place, over an array.array made before": (
        "import array, numpy\nstore = array.array('f', bytes(4 << 20))\n"
        "def answer(q, k, v):\n    s = numpy.frombuffer(store, numpy.float32)[: 1024 * 1024].reshape(1, 1024, 1024)\n"
        "    numpy.matmul(q.numpy(), k.numpy().swapaxes(-2, -1), out=s)\n    numpy.exp(s / 8, out=s)\n"
        "    numpy.divide(s, s.sum(-1, keepdims=True), out=s)\n    return torch.from_numpy(s @ v.numpy())"),
    "after freeing memory kept from before the call": (
        "ballast = [torch.ones(16 << 20, dtype=torch.uint8)]\n" + DENSE.replace(
            "def answer(q, k, v):\n", "def answer(q, k, v):\n    ballast.clear()\n")),
}


def _measured(worker, source: str, label: str) -> dict:
    ran, _ = worker.request({"op": "run", "source": "import torch\n" + source, "label": label}, {}, 60)
    assert ran == {"ok": True}, ran
    q = torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(0))
    _call(worker, "answer", (torch.randn(1, 1024, 64),) * 3)  # first, unmeasured, as the grader does
    return _call(worker, "answer", (q, q, q), measure=True)[0]


@pytest.mark.parametrize("name", list(HIDDEN_FROM_A_TRACKER))
def test_the_outside_count_sees_a_dense_computation_however_it_is_hidden(worker, name):
    reply = _measured(worker, HIDDEN_FROM_A_TRACKER[name], name)
    assert "error" not in reply and reply["used_bytes"] >= (4 << 20) - outside.PROTOCOL_SLACK, reply


def test_the_outside_count_sees_little_where_little_is_used(worker):
    reply = _measured(worker, "def answer(q, k, v):\n    return q + v", "small")
    assert "error" not in reply and reply["used_bytes"] < 1 << 19, reply  # the 256 KiB output and a little
    assert reply["touched_bytes"] > reply["used_bytes"]  # the protocol's own memory is taken off


# Memory outside the worker's process, where the count would not see it: its system-call filter refuses
# each way to it (the audit hook refuses some of them first; these are the ones it lets through).
OUTSIDE_THE_PROCESS = {
    "a pipe": "import os\ndef answer(q, k, v):\n    os.pipe()\n    return q + v",
    "a file in /tmp": "def answer(q, k, v):\n    open('/tmp/scores', 'wb').write(bytes(1 << 20))\n    return q + v",
    "a file beside the worker": "def answer(q, k, v):\n    open('scores', 'wb')\n    return q + v",
    "a socket pair": "import socket\ndef answer(q, k, v):\n    socket.socketpair()\n    return q + v",
    "a folder's names": "import os\ndef answer(q, k, v):\n    os.mkdir('/tmp/' + 'x' * 200)\n    return q + v",
}


@pytest.mark.parametrize("name", list(OUTSIDE_THE_PROCESS))
def test_memory_outside_the_process_is_refused(worker, name):
    reply = _measured(worker, OUTSIDE_THE_PROCESS[name], name)
    assert reply.get("error") == "exception" and ("not permitted" in reply["problem"]
                                                  or "Read-only file system" in reply["problem"]), reply


def test_a_reply_the_notebook_writes_itself_ends_the_worker(tmp_path):
    started = outside.ReplayWorker(refused=outside.torch_shortcuts(SOFTMAX), hidden=[tmp_path],
                                   limits=sandbox.Limits(), cell_timeout=60)
    source = ("import os, stat\ndef answer(q, k, v):\n    for fd in range(3, 64):\n        try:\n"
              "            if stat.S_ISFIFO(os.fstat(fd).st_mode):\n                os.write(fd, b'done\\n')\n"
              "        except OSError:\n            pass\n    return q + v")
    try:
        with pytest.raises(outside.WorkerEnded, match="tampered"):
            _measured(started, source, "a reply of its own")
    finally:
        started.close()


# Multi-head attention with identity projections is SDPA, and Inductor's attention patterns are SDPA
# written out: where softmax is allowed (lesson 05's SDPA exercise), they are refused as SDPA is.
MULTI_HEAD = {
    "nn.MultiheadAttention": ("    attention = torch.nn.MultiheadAttention(q.shape[-1], 1, bias=False, batch_first=True)\n"
                              "    return attention(q, k, v, need_weights=True)[0]"),
    "the quantizable one": ("    attention = torch.ao.nn.quantizable.MultiheadAttention(q.shape[-1], 1, bias=False, batch_first=True)\n"
                            "    return attention(q, k, v, need_weights=True)[0]"),
    "Inductor's attention pattern": ("    from torch._inductor.fx_passes.fuse_attention import _sfdp_pattern_1\n"
                                     "    return _sfdp_pattern_1(q, k, v, q.shape[-1] ** 0.5)"),
}


def test_multi_head_attention_is_refused_where_sdpa_is(tmp_path):
    started = outside.ReplayWorker(refused=outside.torch_shortcuts(SCALED_DOT_PRODUCT_ATTENTION), hidden=[tmp_path],
                                   limits=sandbox.Limits(), cell_timeout=60)
    try:
        for name, body in MULTI_HEAD.items():
            source = "import torch, torch.ao.nn.quantizable\ndef answer(q, k, v):\n" + body
            ran, _ = started.request({"op": "run", "source": source, "label": name}, {}, 60)
            assert ran == {"ok": True}, ran
            q = torch.randn(1, 8, 4)
            _call(started, "answer", (q, q, q))  # a module first imported inside the call is gone through
            reply, _ = _call(started, "answer", (q, q, q))  # before the next one (an exercise makes several)
            assert reply.get("error") == "shortcut" and "attention" in reply["problem"], (name, reply)
        # The student's own module, built of nn.Linear (whose forward is not PyTorch's attention), runs.
        own = ("def answer(q, k, v):\n    project = torch.nn.Linear(q.shape[-1], q.shape[-1])\n"
               "    weights = (project(q) @ k.transpose(-2, -1)).softmax(-1)\n    return weights @ v")
        started.request({"op": "run", "source": own, "label": "own"}, {}, 60)
        reply, _ = _call(started, "answer", (q, q, q))
        assert "error" not in reply, reply
    finally:
        started.close()


def test_memory_is_measured_in_a_worker_without_a_gpu(tmp_path):
    """On a GPU machine, a graded function could move its work to the GPU, whose memory is not the process's:
    measured calls go to a worker whose sandbox has no GPU device files (outside.verify_notebook)."""
    started = outside.ReplayWorker(refused=outside.torch_shortcuts(SOFTMAX), hidden=[tmp_path],
                                   limits=sandbox.Limits(), cell_timeout=60, gpu=False)
    try:
        assert not any("nvidia" in part for part in started.sandbox.command(["true"]))
        assert started.sandbox.environment["CUDA_VISIBLE_DEVICES"] == ""
        source = "import torch\nassert not torch.cuda.is_available()"
        reply, _ = started.request({"op": "run", "source": source, "label": "no GPU"}, {}, 60)
        assert reply == {"ok": True}, reply
    finally:
        started.close()


def test_the_worker_has_no_transparent_huge_pages(worker):
    """Where the machine backs memory with 2 MiB pages by default, a call that touched one byte of one would be
    counted 2 MiB: the worker turns them off for itself before it allocates much."""
    status = dict(line.split(":", 1) for line in open(f"/proc/{worker.touched.pid}/status"))
    assert status["THP_enabled"].strip() == "0"


def test_a_command_shows_the_count_on_this_machine(capsys):
    from course_lib.grading import touched_memory

    touched_memory._demonstrate()
    lines = {line.split(" used ")[0].strip(): line for line in capsys.readouterr().out.splitlines() if " used " in line}
    assert lines["tiled, one (64, 64) tile at a time"].endswith("(within the bound)"), lines
    assert lines["strips of (64, S) scores"].endswith("(within the bound)"), lines
    assert lines["dense, one (L, S) matrix in place"].endswith("(over the bound)"), lines
