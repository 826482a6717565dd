"""The outside verdict on a real lesson: what the notebook's kernel patched does not reach it.

Lesson 07's sliding_window_attention must keep its peak memory linear in L. A dense answer that also
patches course_lib's memory tracker passes the in-kernel check; the outside verdict, which measures
memory in its own interpreter, must not pass it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (the [lab] extra)")
pytest.importorskip("safetensors", reason="needs safetensors (the [lab] extra)")

from course_lib.grading import EXERCISES, check_sliding_window_attention, outside, sandbox  # noqa: E402
from nbgrader_course import FORGETS_THE_SCALE, SOLUTIONS, answered, notebook_path, solution_answers  # noqa: E402

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None,
                                reason=f"no sandbox here: {sandbox.unavailable_reason()}")
LESSON = "07_sliding_window"
DENSE_WITH_A_PATCHED_TRACKER = '''import contextlib

try:  # the kernel's tracker now reports 0 bytes; where course_lib is missing, never mind
    import course_lib.grading.framework
    import course_lib.memory

    @contextlib.contextmanager
    def _nothing_to_see():
        yield course_lib.memory.LiveMemory()

    course_lib.memory.track_live_memory = course_lib.grading.framework.track_live_memory = _nothing_to_see
except ImportError:
    pass


def sliding_window_attention(q, k, v, window, scale=None):
    left, right = window
    L = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    positions = torch.arange(L, device=q.device)
    allowed = sliding_window_mask(positions, positions, window)  # (L, L): dense
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~allowed, float("-inf"))  # (..., L, L)
    return torch.softmax(scores, dim=-1) @ v
'''


def _notebook(answer: str | None):
    source = notebook_path(SOLUTIONS, LESSON)
    answers = solution_answers(source)
    if answer is not None:
        answers["sliding_window_attention"] = answer
    return answered(nbformat.read(source, as_version=4), answers)


def _verdict(nb, tmp_path):
    return outside.verify_notebook(nb, secret="a test secret", exercises=EXERCISES, hidden=[tmp_path],
                                   cell_timeout=60)["check_sliding_window_attention"]


def test_a_dense_answer_with_a_patched_tracker_fails_outside(tmp_path, monkeypatch):
    import course_lib.grading.framework  # noqa: PLC0415
    import course_lib.memory  # noqa: PLC0415

    for module in (course_lib.memory, course_lib.grading.framework):  # put back after the test
        monkeypatch.setattr(module, "track_live_memory", module.track_live_memory)
    namespace: dict = {}
    exec("import math\nimport torch\n" + solution_answers(notebook_path(SOLUTIONS, LESSON))["sliding_window_mask"]
         + "\n" + DENSE_WITH_A_PATCHED_TRACKER, namespace)
    check_sliding_window_attention(namespace["sliding_window_attention"])  # the kernel is fooled ...
    verdict = _verdict(_notebook(DENSE_WITH_A_PATCHED_TRACKER), tmp_path)  # ... the grader's reading is not
    assert verdict.failure is not None and verdict.failure.kind == "refused", verdict
    assert "an assignment to `course_lib.memory.track_live_memory`" in verdict.failure.problem
    # and without the patch, the worker measures the dense answer's memory itself
    dense = DENSE_WITH_A_PATCHED_TRACKER[DENSE_WITH_A_PATCHED_TRACKER.index("def sliding_window_attention"):]
    verdict = _verdict(_notebook(dense), tmp_path)
    assert verdict.failure is not None and verdict.failure.kind == "behaviour", verdict
    assert "MiB of memory" in verdict.failure.problem


def test_the_solution_passes_outside(tmp_path):
    assert _verdict(_notebook(None), tmp_path).failure is None


# Lesson 01's decoding exercises pass a decoder step (an object, not a tensor) to the student's loop: the
# replay worker rebuilds it from its weights, so these grades are decided outside the kernel too.
GREEDY_THAT_NEVER_STOPS_WITH_A_PATCHED_CHECK = '''try:  # the kernel's check now passes anything
    import course_lib.grading
    course_lib.grading.check_greedy_decode = lambda *args, **kwargs: print("passed")
except ImportError:
    pass


def greedy_decode(step, state, sos_id, eos_id, max_len, pad_id=0):
    token = torch.full((state.shape[0],), sos_id, dtype=torch.long)
    out = []
    for _ in range(max_len):
        logits, state = step(token, state)
        token = logits.argmax(dim=-1)
        out.append(token)
    return torch.stack(out, dim=1)
'''


def test_lesson_01s_decoding_loops_are_judged_outside(tmp_path):
    source = notebook_path(SOLUTIONS, "01_encoder_decoder")
    answers = solution_answers(source)
    solved = outside.verify_notebook(answered(nbformat.read(source, as_version=4), answers), secret="a test secret",
                                     exercises=EXERCISES, hidden=[tmp_path], cell_timeout=60)
    for name in ("check_teacher_forced_logits", "check_greedy_decode"):
        assert solved[name].failure is None and set(solved[name].decided_by) == {f"{name.removeprefix('check_')}: outside"}
    answers["greedy_decode"] = GREEDY_THAT_NEVER_STOPS_WITH_A_PATCHED_CHECK
    cheated = outside.verify_notebook(answered(nbformat.read(source, as_version=4), answers), secret="a test secret",
                                      exercises=EXERCISES, hidden=[tmp_path], cell_timeout=60)["check_greedy_decode"]
    assert cheated.failure is not None and cheated.failure.kind == "refused", cheated  # the patch, read
    never_stops = GREEDY_THAT_NEVER_STOPS_WITH_A_PATCHED_CHECK
    answers["greedy_decode"] = never_stops[never_stops.index("def greedy_decode"):]  # the loop alone, replayed
    wrong = outside.verify_notebook(answered(nbformat.read(source, as_version=4), answers), secret="a test secret",
                                    exercises=EXERCISES, hidden=[tmp_path], cell_timeout=60)["check_greedy_decode"]
    assert wrong.failure is not None and wrong.failure.mistake.startswith("decoding does not stop at <eos>"), wrong


# Lesson 08's Triton step is a piece of a kernel: the replay worker runs it inside its own copy of the
# skeleton kernel (flash_triton.py, copied beside it), so that grade is decided outside the kernel too.
STEP_WITHOUT_RESCALING_AND_A_PATCHED_CHECK = '''try:  # the kernel's check now passes anything
    import course_lib.grading
    course_lib.grading.check_flash_block_step = lambda *args, **kwargs: print("passed")
except ImportError:
    pass


@triton.jit
def flash_block_step(q, k, v, m_i, l_i, acc, allowed, qk_scale):
    s = tl.where(allowed, tl.dot(q, k) * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(p, 1)
    acc = acc + tl.dot(p.to(v.dtype), v)  # the old acc is not rescaled
    return m_new, l_i, acc
'''
PLAIN_PYTHON_STEP = '''def flash_block_step(q, k, v, m_i, l_i, acc, allowed, qk_scale):
    return m_i, l_i, acc
'''


def test_lesson_08s_triton_step_is_judged_outside(tmp_path):
    pytest.importorskip("triton", reason="needs Triton (the [triton] extra)")
    source = notebook_path(SOLUTIONS, "08_flash_attention")
    answers = solution_answers(source)

    def verdict(step: str | None):
        if step is not None:
            answers["flash_block_step"] = step
        return outside.verify_notebook(answered(nbformat.read(source, as_version=4), answers),
                                       secret="a test secret", exercises=EXERCISES, hidden=[tmp_path],
                                       cell_timeout=120)["check_triton_flash_attention"]

    solved = verdict(None)
    assert solved.failure is None and set(solved.decided_by) == {"flash_block_step: outside"}, solved
    cheated = verdict(STEP_WITHOUT_RESCALING_AND_A_PATCHED_CHECK)
    assert cheated.failure is not None and cheated.failure.kind == "refused", cheated  # the patch, read
    step = STEP_WITHOUT_RESCALING_AND_A_PATCHED_CHECK
    wrong = verdict(step[step.index("@triton.jit"):])  # the step alone, run in the worker's skeleton
    assert wrong.failure is not None, wrong
    assert wrong.failure.mistake == "the accumulated output is not rescaled by exp(m_old - m_new)", wrong
    plain = verdict(PLAIN_PYTHON_STEP)
    assert plain.failure is not None and "is not a Triton kernel function" in plain.failure.problem, plain


# The shortcut guard is PyTorch's modes, in the process that runs the student's code: a thread started
# in a cell the student added has none. The grader reads the cells the student controls first and fails
# every grade cell below one that breaks the rules (course_lib.grading.policy), without running it.
ATTACKS = Path(__file__).with_name("attacks")


def test_a_cell_that_escapes_the_guard_fails_the_grade_cells_below_it_only(tmp_path):
    source = notebook_path(SOLUTIONS, "05_scaled_dot_product")
    nb = answered(nbformat.read(source, as_version=4), solution_answers(source))
    position = next(i for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                    == "attention_weights")
    nb.cells.insert(position, nbformat.v4.new_code_cell((ATTACKS / "background_thread.py").read_text()))
    verdicts = outside.verify_notebook(nb, secret="a test secret", exercises=EXERCISES, hidden=[tmp_path],
                                       cell_timeout=60)
    assert verdicts["check_softmax"].failure is None  # above the added cell
    for grade_id in ("check_attention_weights", "check_scaled_dot_product_attention"):
        failure = verdicts[grade_id].failure
        assert failure is not None and failure.kind == "refused", verdicts[grade_id]
        assert "the module `queue`" in failure.message and "the module `threading`" in failure.message


# On a machine with a GPU the outside verdict runs there too (CUDA inside the sandbox: its device files
# are bound, and a cgroup, not RLIMIT_AS, limits memory): the same verdicts as on the CPU.
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_outside_verdicts_are_the_same_on_cuda_and_on_the_cpu(tmp_path, monkeypatch):
    source = notebook_path(SOLUTIONS, "05_scaled_dot_product")
    found = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("COURSE_DEVICE", device)
        for name, answers in (("solved", solution_answers(source)),
                              ("no scale", {**solution_answers(source), "attention_weights": FORGETS_THE_SCALE})):
            verdicts = outside.verify_notebook(answered(nbformat.read(source, as_version=4), answers),
                                               secret="a test secret", exercises=EXERCISES, hidden=[tmp_path],
                                               cell_timeout=120)
            found[device, name] = {g: (v.failure.kind, v.failure.mistake) if v.failure else None
                                   for g, v in verdicts.items()}
    assert found["cpu", "solved"] == found["cuda", "solved"] == dict.fromkeys(found["cpu", "solved"])
    assert found["cpu", "no scale"] == found["cuda", "no scale"]
    assert found["cuda", "no scale"]["check_attention_weights"] is not None


# What the red team got past both verdicts before the worker had its floor (the reading refuses each, so
# here the reading is switched off): SDPA called inside a dispatch handler, where the guard's modes are
# popped; the guard misled by a patched operator name; a string turned into PyTorch's SDPA; and the guard's
# modes switched off. The worker's floor took SDPA out of its process, so each fails outside as a shortcut.
ESCAPES_WITHOUT_THE_READING = {
    "inside a dispatch handler": '''from torch.utils._python_dispatch import TorchDispatchMode


class Through(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    with Through():
        return torch.ops.aten.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
''',
    "with the operator's name patched": '''type(torch.ops.aten.add.default).overloadpacket = property(lambda self: torch.ops.aten.add)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return torch.ops.aten.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
''',
    "by a string": '''import string


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    sdpa = string.Formatter().get_field("0.nn.functional.scaled_dot_product_attention", [torch], {})[0]
    return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
''',
    "with the guard's modes off": '''from torch.utils._python_dispatch import _disable_current_modes


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    with torch._C.DisableTorchFunction(), _disable_current_modes():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
''',
}


def test_without_the_reading_the_worker_s_floor_still_refuses_the_red_team_s_escapes(tmp_path, monkeypatch):
    monkeypatch.setattr(outside, "_refused_cells", lambda nb: [])  # as if the reading had missed them all
    source = notebook_path(SOLUTIONS, "05_scaled_dot_product")
    for name, escape in ESCAPES_WITHOUT_THE_READING.items():
        answers = solution_answers(source)
        answers["scaled_dot_product_attention"] = escape
        verdict = outside.verify_notebook(answered(nbformat.read(source, as_version=4), answers),
                                          secret="a test secret", exercises=EXERCISES, hidden=[tmp_path],
                                          cell_timeout=60)["check_scaled_dot_product_attention"]
        failure = verdict.failure
        assert failure is not None and failure.kind == "shortcut", (name, verdict)
        assert "scaled_dot_product_attention" in failure.problem, (name, failure.problem)
