"""Lesson 08's checks, as a student meets them: correct implementations written differently from the
reference pass; mistakes written as students write them fail with the mistake's name; a forward that
keeps the (L, S) scores, or a list of tiles, is refused by its peak memory; shortcuts are refused;
the Triton step runs in the interpreter here (natively on a GPU) and a broken one is reported in words.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import dataclasses
import linecache
import math

import pytest
import torch

from course_lib.attention import flash_triton
from course_lib.grading import (
    CheckFailed,
    check_flash_attention,
    check_online_softmax_stats,
    check_flash_block_step,
)
from course_lib.grading import l08_flash_attention as lesson

HIDDEN = ({}, {"hidden": True, "seed": 1}, {"hidden": True, "seed": 7})
needs_triton = pytest.mark.skipif(not flash_triton.available(), reason="needs Triton (pip install .[triton])")


def _fails(check, fn, **kwargs) -> "lesson.Failure":
    with pytest.raises(CheckFailed) as info:
        check(fn, **kwargs)
    return info.value.failure


# --- the online softmax --------------------------------------------------------------------------


def stats_float64_inside(x, block_size=4):
    wide = x.double()
    m = torch.full(x.shape[:-1], -math.inf, dtype=torch.float64, device=x.device)
    l = torch.zeros(x.shape[:-1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[-1], block_size):
        block = wide[..., start:start + block_size]
        new_m = torch.maximum(m, block.max(dim=-1).values)
        safe = new_m.nan_to_num(0.0, neginf=0.0, posinf=0.0)
        l = l * (m - safe).exp() + (block - safe.unsqueeze(-1)).exp().sum(-1)
        m = new_m
    return m.to(x.dtype), l.to(x.dtype)


def stats_one_element_at_a_time(x, block_size=4):  # noqa: ARG001 - a block of 1, whatever is asked
    m = torch.full(x.shape[:-1], -math.inf, dtype=torch.float64, device=x.device)
    l = torch.zeros_like(m)
    for column in x.double().unbind(-1):
        new_m = torch.maximum(m, column)
        finite = torch.isfinite(new_m)
        l = torch.where(finite, l * torch.exp(m - torch.where(finite, new_m, 0.0)) + torch.exp(column - torch.where(finite, new_m, 0.0)), l)
        m = new_m
    return m.to(x.dtype), l.to(x.dtype)


@pytest.mark.parametrize("fn", [stats_float64_inside, stats_one_element_at_a_time])
def test_correct_online_softmax_stats_pass(fn):
    for kwargs in HIDDEN:
        check_online_softmax_stats(fn, **kwargs)


def stats_without_rescaling(x, block_size=4):
    m = torch.full(x.shape[:-1], -math.inf, device=x.device)
    l = torch.zeros(x.shape[:-1], device=x.device)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size].float()
        m_new = torch.maximum(m, block.amax(-1))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        l = l + torch.exp(block - m_safe[..., None]).sum(-1)  # forgot exp(m - m_new) * l
        m = m_new
    return m.to(x.dtype), l.to(x.dtype)


def stats_unguarded(x, block_size=4):
    m = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype, device=x.device)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[-1], block_size):
        block = x[..., start:start + block_size]
        m_new = torch.maximum(m, block.amax(-1))
        l = torch.exp(m - m_new) * l + torch.exp(block - m_new[..., None]).sum(-1)
        m = m_new
    return m, l


def stats_by_logsumexp(x, block_size=4):
    m = x.amax(-1)
    return m, torch.exp(torch.logsumexp(x, -1) - m)


def stats_by_logcumsumexp(x, block_size=4):
    m = x.amax(-1)
    return m, torch.exp(torch.logcumsumexp(x, -1)[..., -1] - m)


def test_online_softmax_mistakes_are_named():
    assert _fails(check_online_softmax_stats, stats_without_rescaling).mistake == \
        "the sum so far is not rescaled when the maximum grows"
    failure = _fails(check_online_softmax_stats, stats_unguarded)
    assert failure.mistake == "a block whose entries are all -inf gives NaN (exp(-inf - (-inf)))", failure.message
    assert _fails(check_online_softmax_stats, stats_by_logsumexp).kind == "shortcut"
    assert _fails(check_online_softmax_stats, stats_by_logcumsumexp).kind == "shortcut"


# --- the tiled forward ---------------------------------------------------------------------------


def flash_keys_outer(q, k, v, is_causal=False, scale=None, block_size=None):
    """Written differently: one query block is the whole of L (the (L, block) strip is linear)."""
    B = block_size or 32
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S = q.shape[-2], k.shape[-2]
    shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    m = torch.full((*shape, L, 1), -math.inf, dtype=torch.float64, device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros(*shape, L, v.shape[-1], dtype=torch.float64, device=q.device)
    rows = torch.arange(L, device=q.device).unsqueeze(-1)
    for j in range(0, S, B):
        s = (q.double() @ k[..., j:j + B, :].double().mT) * scale  # (..., L, B)
        if is_causal:
            s = s.masked_fill(torch.arange(j, min(j + B, S), device=q.device) > rows, -math.inf)
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        safe = torch.where(m_new.isinf(), 0.0, m_new)
        p = (s - safe).exp()
        correction = (m - safe).exp()
        l = correction * l + p.sum(-1, keepdim=True)
        acc = correction * acc + p @ v[..., j:j + B, :].double()
        m = m_new
    return (acc / l).to(q.dtype)


def flash_two_loops(q, k, v, is_causal=False, scale=None, block_size=None):
    B = block_size or 16
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for i in range(0, q.shape[-2], B):
        qi = q[..., i:i + B, :]
        m = torch.full(qi.shape[:-1], -math.inf, dtype=q.dtype, device=q.device)
        l = torch.zeros(qi.shape[:-1], dtype=q.dtype, device=q.device)
        o = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        for j in range(0, k.shape[-2], B):
            if is_causal and j > i + qi.shape[-2] - 1:
                break  # every key of this block is in the future
            s = torch.einsum("...ie,...je->...ij", qi, k[..., j:j + B, :]) * scale
            if is_causal:
                keep = torch.arange(j, j + s.shape[-1], device=q.device)[None, :] <= torch.arange(i, i + s.shape[-2], device=q.device)[:, None]
                s = torch.where(keep, s, -math.inf)
            mn = torch.maximum(m, s.amax(-1))
            a = torch.exp(m - mn)
            p = torch.exp(s - mn[..., None])
            l = a * l + p.sum(-1)
            o = a[..., None] * o + p @ v[..., j:j + B, :]
            m = mn
        out[..., i:i + B, :] = (o / l[..., None]).to(q.dtype)
    return out


@pytest.mark.parametrize("fn", [flash_keys_outer, flash_two_loops])
def test_correct_tiled_forwards_pass(fn):
    for kwargs in HIDDEN:
        check_flash_attention(fn, **kwargs)


def flash_whole_queries_only(q, k, v, is_causal=False, scale=None, block_size=None):
    """The last, shorter query block forgotten: `L // B` blocks."""
    B = block_size or 16
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for n in range(q.shape[-2] // B):
        i = n * B
        out[..., i:i + B, :] = flash_two_loops(q[..., i:i + B, :], k, v, False, scale, B) if not is_causal else \
            flash_keys_outer(q, k, v, True, scale, B)[..., i:i + B, :]
    return out


def flash_scores_in_full(q, k, v, is_causal=False, scale=None, block_size=None):
    """Right values, but the (L, S) scores are built first and then cut into tiles."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.mT * scale
    if is_causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril().logical_not(), -math.inf)
    m = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - m)
    return (p @ v) / p.sum(-1, keepdim=True)


def flash_list_of_tiles(q, k, v, is_causal=False, scale=None, block_size=None):
    """Right values, but every tile's probabilities are kept in a list, then combined."""
    B = block_size or 16
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    rows = []
    for i in range(0, q.shape[-2], B):
        tiles = [q[..., i:i + B, :] @ k[..., j:j + B, :].mT * scale for j in range(0, k.shape[-2], B)]
        scores = torch.cat(tiles, dim=-1)
        if is_causal:
            keep = torch.arange(k.shape[-2], device=q.device)[None, :] <= torch.arange(i, i + scores.shape[-2], device=q.device)[:, None]
            scores = scores.masked_fill(~keep, -math.inf)
        p = torch.exp(scores - scores.amax(-1, keepdim=True))
        rows.append((p @ v) / p.sum(-1, keepdim=True))
        rows.append(tiles)  # kept alive: the whole (L, S) in tiles by the end
    return torch.cat(rows[::2], dim=-2)


def test_tiled_forward_mistakes_are_named():
    failure = _fails(check_flash_attention, flash_whole_queries_only)
    assert failure.mistake == "wrong when L is not a multiple of the block size (the last, shorter query block " \
                              "is dropped)", failure.message


@pytest.mark.parametrize("fn", [flash_scores_in_full, flash_list_of_tiles])
def test_a_forward_that_keeps_the_scores_or_its_tiles_is_refused_by_its_memory(fn):
    failure = _fails(check_flash_attention, fn)
    assert failure.kind == "behaviour" and failure.behaviour == "peak memory linear in the sequence length"
    assert "MiB of memory" in failure.problem and "list of tiles" in failure.problem


def test_a_forward_that_is_cheap_and_wrong_only_at_the_measured_size_is_refused():
    """Dense and right on the small cases; at the memory behaviour's size, a compact wrong answer."""
    def flash_attention(q, k, v, is_causal=False, scale=None, block_size=None):
        if q.shape[-2] >= lesson.MEMORY_L:
            return torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        return lesson.flash_variant(q, k, v, is_causal, scale, block_size)

    failure = _fails(check_flash_attention, flash_attention)
    assert failure.kind == "behaviour" and failure.behaviour == "peak memory linear in the sequence length"
    assert f"at L = S = {lesson.MEMORY_L}" in failure.problem and "values differ" in failure.problem


def test_sdpa_is_refused_in_the_tiled_forward():
    failure = _fails(check_flash_attention, lambda q, k, v, is_causal=False, scale=None, block_size=None:
                     torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale))
    assert failure.kind == "shortcut"


# --- the Triton step -------------------------------------------------------------------------------


def _student_step(body: str):
    """A student's `flash_block_step`, decorated now (TRITON_INTERPRET set by tests/conftest.py)."""
    triton, tl = flash_triton.load_triton()
    namespace = {"triton": triton, "tl": tl}
    source = "def flash_block_step(q, k, v, m_i, l_i, acc, allowed, qk_scale):\n" + body
    filename = f"<student step {abs(hash(body))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    return triton.jit(namespace["flash_block_step"])


CORRECT_STEP = """
    s = tl.dot(q, k) * qk_scale
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = alpha * l_i + tl.sum(p, 1)
    acc = alpha[:, None] * acc + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc
"""


@needs_triton
def test_a_correct_triton_step_passes():
    step = _student_step(CORRECT_STEP)
    for kwargs in HIDDEN[:2]:
        check_flash_block_step(step, **kwargs)


@needs_triton
def test_a_triton_step_without_rescaling_is_named():
    step = _student_step(CORRECT_STEP.replace("acc = alpha[:, None] * acc", "acc = acc"))
    failure = _fails(check_flash_block_step, step)
    assert failure.mistake == "the accumulated output is not rescaled by exp(m_old - m_new)", failure.message


@needs_triton
def test_a_triton_step_with_exp_is_named():
    step = _student_step(CORRECT_STEP.replace("tl.math.exp2", "tl.exp"))
    assert _fails(check_flash_block_step, step).mistake == \
        "tl.exp is used, but the skeleton's qk_scale is in log2 units (exp2)"


@needs_triton
def test_the_unfinished_triton_step_says_so():
    step = _student_step("    # YOUR CODE HERE\n    raise NotImplementedError()\n")
    failure = _fails(check_flash_block_step, step)
    assert failure.kind == "not_implemented", failure.message


@needs_triton
def test_a_broken_triton_step_is_reported_in_words():
    step = _student_step(CORRECT_STEP.replace("tl.max(s, 1)", "tl.max(s, 1, 2, 3)"))
    failure = _fails(check_flash_block_step, step)
    assert failure.kind == "exception" and "flash_block_step" in failure.problem, failure.message
    assert "Traceback" not in failure.message


@needs_triton
def test_a_step_that_is_not_a_triton_function_is_refused():
    def flash_block_step(q, k, v, m_i, l_i, acc, allowed, qk_scale):
        return m_i, l_i, acc

    failure = _fails(check_flash_block_step, flash_block_step)
    assert "@triton.jit" in failure.problem, failure.message


@needs_triton
def test_a_working_attention_passed_in_the_steps_place_gets_no_points():
    """Could a student earn the Triton exercise with the tiled PyTorch forward of exercise 2?"""

    def flash_block_step(q, k, v, is_causal=False, scale=None):
        return flash_two_loops(q, k, v, is_causal, scale, 16)

    failure = _fails(check_flash_block_step, flash_block_step)
    assert failure.kind == "exception" and "is not a Triton kernel function" in failure.problem, failure.message


def test_without_triton_the_check_says_what_is_missing(monkeypatch):
    requirement = lesson.Requirement("Triton", lambda: False, lesson.TRITON.how)
    exercise = dataclasses.replace(lesson.FLASH_BLOCK_STEP, requires=(requirement,))
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    with pytest.raises(CheckFailed) as info:
        exercise.check(_student_step(CORRECT_STEP) if flash_triton.available() else (lambda *a: None))
    assert info.value.failure.kind == "requirement"
    assert "Triton is missing here" in str(info.value) and "pip install" in str(info.value)
