"""Lesson 07's checks, as a student meets them: correct implementations written differently from the
reference pass (public and hidden cases, on every device here); mistakes written as students write
them fail with the mistake's name; a dense banded attention is refused for its memory; shortcuts are
refused. (Every listed mistake is run by tests/framework/test_every_exercise.py.)"""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import check_rolling_buffer_update, check_sliding_window_attention, check_sliding_window_mask
from course_lib.grading.framework import CheckFailed

HIDDEN_SEEDS = (1, 2, 3, 4, 5)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- correct implementations, written differently from the reference -------------------------


def mask_by_distance(query_positions, key_positions, window):
    left, right = window
    behind = query_positions[:, None] - key_positions[None, :]  # (Lq, Lk): how far back the key is
    return (behind <= left) & (-behind <= right)


def mask_by_loops(query_positions, key_positions, window):
    rows = [[p - window[0] <= s <= p + window[1] for s in key_positions.tolist()] for p in query_positions.tolist()]
    return torch.tensor(rows, dtype=torch.bool, device=query_positions.device).reshape(len(query_positions), -1)


def banded_unfold(q, k, v, window, scale=None):
    """Pad, take each query's window of keys as a strided view, mask the padding."""
    left, right = window
    L, width = q.shape[-2], left + right + 1
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    k_pad = F.pad(k, (0, 0, left, right)).unfold(-2, width, 1)  # (..., L, E, width)
    v_pad = F.pad(v, (0, 0, left, right)).unfold(-2, width, 1)  # (..., L, Ev, width)
    scores = torch.einsum("...le,...lew->...lw", q, k_pad) * scale  # (..., L, width)
    key_position = torch.arange(L, device=q.device)[:, None] - left + torch.arange(width, device=q.device)
    scores = scores.masked_fill((key_position < 0) | (key_position >= L), float("-inf"))
    return torch.einsum("...lw,...lvw->...lv", torch.softmax(scores, dim=-1), v_pad)


def banded_per_query(q, k, v, window, scale=None):
    """One query at a time, in float64, against its slice of keys."""
    L = q.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    rows = []
    for i in range(L):
        lo, hi = max(0, i - window[0]), min(L, i + window[1] + 1)
        s = (q[..., i : i + 1, :].double() @ k[..., lo:hi, :].double().mT) * scale  # (..., 1, n)
        rows.append((s.softmax(-1) @ v[..., lo:hi, :].double()).to(q.dtype).expand(*batch, 1, v.shape[-1]))
    return torch.cat(rows, dim=-2)


def banded_blocks_of_w(q, k, v, window, scale=None):
    """Blocks of W = left + right + 1 queries, each against the keys from W before to W after."""
    left, right = window
    L = q.shape[-2]
    block = left + right + 1
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    outs = []
    for start in range(0, L, block):
        stop = min(L, start + block)
        lo, hi = max(0, start - left), min(L, stop + right)
        s = q[..., start:stop, :] @ k[..., lo:hi, :].transpose(-1, -2) * scale
        i = torch.arange(start, stop, device=q.device)[:, None]
        j = torch.arange(lo, hi, device=q.device)[None, :]
        s = s.masked_fill((j < i - left) | (j > i + right), -math.inf)
        outs.append(torch.softmax(s, -1) @ v[..., lo:hi, :])
    return torch.cat(outs, dim=-2)


def buffer_by_cat(cache, new, position):
    slot = position % cache.shape[-2]
    return torch.cat([cache[..., :slot, :], new.unsqueeze(-2), cache[..., slot + 1 :, :]], dim=-2)


def buffer_by_where(cache, new, position):
    W = cache.shape[-2]
    chosen = (torch.arange(W, device=cache.device) == position % W)[:, None]  # (W, 1)
    return torch.where(chosen, new.unsqueeze(-2), cache)


CORRECT = [
    (check_sliding_window_mask, mask_by_distance),
    (check_sliding_window_mask, mask_by_loops),
    (check_sliding_window_attention, banded_unfold),
    (check_sliding_window_attention, banded_per_query),
    (check_sliding_window_attention, banded_blocks_of_w),
    (check_rolling_buffer_update, buffer_by_cat),
    (check_rolling_buffer_update, buffer_by_where),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", CORRECT, ids=lambda x: getattr(x, "__name__", str(x)))
def test_correct_implementations_pass_public_and_hidden(check, fn, device, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    calls = [{}, *({"hidden": True, "seed": seed} for seed in HIDDEN_SEEDS)]
    verdicts = [check(fn, **call) for call in calls]  # None each: a check returns nothing
    printed = capsys.readouterr()
    assert verdicts == [None] * len(calls)
    assert (printed.err, printed.out.count("passed")) == ("", len(calls))


def test_a_check_runs_in_a_few_seconds():
    for check, fn in CORRECT:
        start = time.perf_counter()
        check(fn)
        assert time.perf_counter() - start < 8, fn.__name__  # a few seconds, on a 2-core machine other work shares


# --- mistakes as students write them --------------------------------------------------------------


def _failure(check, fn, **kwargs):
    with pytest.raises(CheckFailed) as info:
        check(fn, **kwargs)
    return info.value.failure


def test_a_strict_inequality_is_named_as_an_off_by_one_edge():
    def mask(query_positions, key_positions, window):
        d = key_positions[None, :] - query_positions[:, None]
        return (d > -window[0]) & (d <= window[1])  # `>` where `>=` belongs

    failure = _failure(check_sliding_window_mask, mask)
    assert failure.mistake == "the window's left edge is off by one (key i - left left out)"


def test_rows_and_columns_instead_of_positions_fail_on_the_rolling_buffer_case():
    def mask(query_positions, key_positions, window):
        i = torch.arange(len(query_positions), device=query_positions.device)[:, None]
        j = torch.arange(len(key_positions), device=key_positions.device)[None, :]
        return (j >= i - window[0]) & (j <= i + window[1])

    failure = _failure(check_sliding_window_mask, mask)
    assert failure.mistake == "the positions are ignored (indices 0..L-1 used instead)"
    assert "rolling buffer" in failure.case


def test_blocks_that_skip_the_tail_are_named():
    def banded(q, k, v, window, scale=None):
        left, right = window
        L, block = q.shape[-2], left + right + 1
        out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        for start in range(0, L - block + 1, block):  # the last partial block is never reached
            rows = banded_blocks_of_w(q, k, v, window, scale)[..., start : start + block, :]
            out[..., start : start + block, :] = rows
        return out

    failure = _failure(check_sliding_window_attention, banded)
    assert failure.mistake == "the last queries are left out when L is not a multiple of the block"


def test_zero_padding_that_is_attended_is_named():
    def banded(q, k, v, window, scale=None):
        left, right = window
        width = left + right + 1
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        k_win = F.pad(k, (0, 0, left, right)).unfold(-2, width, 1)  # zeros at both ends, not masked
        v_win = F.pad(v, (0, 0, left, right)).unfold(-2, width, 1)
        weights = torch.softmax(torch.einsum("...le,...lew->...lw", q, k_win) * scale, dim=-1)
        return torch.einsum("...lw,...lvw->...lv", weights, v_win)

    failure = _failure(check_sliding_window_attention, banded)
    assert failure.mistake == "keys beyond the sequence's ends are zero padding that is attended"


def test_a_dense_banded_attention_is_refused_for_its_memory():
    def dense(q, k, v, window, scale=None):
        L = q.shape[-2]
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        i, j = torch.arange(L, device=q.device)[:, None], torch.arange(L, device=q.device)[None, :]
        allowed = (j >= i - window[0]) & (j <= i + window[1])  # (L, L)
        scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, -math.inf)  # (..., L, L)
        return torch.softmax(scores, dim=-1) @ v

    failure = _failure(check_sliding_window_attention, dense)
    assert failure.kind == "behaviour" and "memory" in failure.behaviour
    assert "dense computation" in failure.problem and "MiB" in failure.problem


def test_a_function_that_is_cheap_and_wrong_only_at_the_measured_size_is_refused():
    """Right on the small cases; at the memory behaviour's size, a compact wrong answer."""
    def sliding_window_attention(q, k, v, window, scale=None):
        if q.shape[-2] >= 2048:
            return torch.zeros_like(q)
        return banded_unfold(q, k, v, window, scale)

    failure = _failure(check_sliding_window_attention, sliding_window_attention)
    assert failure.kind == "behaviour" and "memory" in failure.behaviour
    assert "for L = 2048" in failure.problem and "values differ" in failure.problem


def test_pytorch_sdpa_with_a_mask_is_refused():
    def sdpa(q, k, v, window, scale=None):
        L = q.shape[-2]
        i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=(j >= i - window[0]) & (j <= i + window[1]), scale=scale)

    failure = _failure(check_sliding_window_attention, sdpa)
    assert failure.kind == "shortcut"


def test_flex_attention_with_a_window_block_mask_is_refused_by_name():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding_window_attention(q, k, v, window, scale=None):
        L = q.shape[-2]

        def in_window(b, h, i, j):
            return (j >= i - window[0]) & (j <= i + window[1])

        q4, k4, v4 = (t.reshape(-1, 1, L, t.shape[-1]) for t in (q, k, v))  # (B, 1, L, E): 4-D, as flex wants
        block_mask = create_block_mask(in_window, None, None, L, L, device=q.device)
        out = flex_attention(q4, k4, v4, block_mask=block_mask, scale=scale)  # (B, 1, L, Ev)
        return out.reshape(*q.shape[:-1], v.shape[-1])

    failure = _failure(check_sliding_window_attention, sliding_window_attention)
    assert failure.kind == "shortcut" and "FlexAttention" in failure.problem


def test_a_broken_mask_is_blamed_when_the_attention_calls_it():
    def sliding_window_mask(query_positions, key_positions, window):
        d = key_positions[None, :] - query_positions[:, None]
        return (d >= -window[1]) & (d <= window[0])  # left and right swapped

    def banded(q, k, v, window, scale=None):
        L = q.shape[-2]
        out = []
        for start in range(0, L, 8):
            stop = min(L, start + 8)
            allowed = sliding_window_mask(torch.arange(start, stop), torch.arange(L), window)  # (8, L): O(L) rows
            s = (q[..., start:stop, :] @ k.mT / math.sqrt(q.shape[-1])).masked_fill(~allowed, -math.inf)
            out.append(torch.softmax(s, -1) @ v)
        return torch.cat(out, -2)

    failure = _failure(check_sliding_window_attention, banded)
    assert failure.kind == "dependency" and failure.blamed == "sliding_window_mask"
    assert failure.mistake == "left and right are swapped"


def test_a_buffer_that_shifts_is_named():
    def update(cache, new, position):
        W = cache.shape[-2]
        if position < W:
            out = cache.clone()
            out[..., position, :] = new
            return out
        return torch.cat([cache[..., 1:, :], new[..., None, :]], dim=-2)

    failure = _failure(check_rolling_buffer_update, update)
    assert failure.mistake == "the buffer shifts its entries instead of overwriting slot i mod W"


def test_a_buffer_updated_in_place_is_told_to_return_a_new_tensor():
    def update(cache, new, position):
        cache[..., position % cache.shape[-2], :] = new
        return cache

    failure = _failure(check_rolling_buffer_update, update)
    assert failure.kind == "in_place"
