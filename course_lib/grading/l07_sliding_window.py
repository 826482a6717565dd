"""Lesson 07 — sliding-window attention: ``sliding_window_mask``, ``sliding_window_attention`` (banded,
without the L×L matrix) and ``rolling_buffer_update`` (Mistral's rolling-buffer KV cache).

As in lesson 05, each known mistake is a reference computation with one typed knob turned
(``mask_variant``, ``banded_variant``, ``buffer_variant``), and the first mistake in a list whose
output matches the student's names it. The banded attention's mistakes are computed densely (they
are only compared on small cases); the check's memory behaviour is what refuses a dense answer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from course_lib import attention, runtime
from course_lib.grading import compare
from course_lib.grading.forbidden import PYTORCH_FLEX_ATTENTION, PYTORCH_SDPA
from course_lib.grading.framework import Behaviour, Case, Exercise, Mistake, variant
from course_lib.runtime import Tolerance
from course_lib.shortcuts import Forbidden

_EXACT = {torch.bool: Tolerance(rtol=0.0, atol=0.0)}


def _sizes(gen: torch.Generator):  # noqa: ANN202
    """size(low, high): an int drawn uniformly from low..high (both included) by ``gen``."""
    return lambda low, high: int(torch.randint(low, high + 1, (1,), generator=gen))

# --- the window mask -----------------------------------------------------------------------------


def mask_variant(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    window: tuple[int, int],
    *,
    left_edge: Literal["inclusive", "exclusive", "one_more"] = "inclusive",  # is key i - left in?
    right_edge: Literal["inclusive", "exclusive", "one_more"] = "inclusive",  # is key i + right in?
    sides: Literal["as_given", "swapped"] = "as_given",
    right_side: Literal["used", "ignored"] = "used",  # ignored: always causal (j <= i)
    positions: Literal["given", "indices"] = "given",  # indices: arange(L) instead of the positions
) -> torch.Tensor:
    """The window mask with knobs; each knob's first value is the right one."""
    left, right = window if sides == "as_given" else window[::-1]
    if right_side == "ignored":
        right = 0
    if positions == "indices":
        query_positions = torch.arange(len(query_positions), device=query_positions.device)
        key_positions = torch.arange(len(key_positions), device=key_positions.device)
    offset = key_positions.unsqueeze(0) - query_positions.unsqueeze(1)  # (Lq, Lk): j - i
    low = {"inclusive": offset >= -left, "exclusive": offset > -left, "one_more": offset >= -left - 1}[left_edge]
    high = {"inclusive": offset <= right, "exclusive": offset < right, "one_more": offset <= right + 1}[right_edge]
    return low & high


_EDGE_HINT = ("query i may attend keys i - left, ..., i + right, both ends included: "
              "(j - i >= -left) & (j - i <= right), where j - i is key position minus query position")

EDGE_MISTAKES = (
    Mistake("the window's left edge is off by one (key i - left left out)", _EDGE_HINT,
            variant(mask_variant, left_edge="exclusive")),
    Mistake("the window's left edge is off by one (one key too many on the left)", _EDGE_HINT,
            variant(mask_variant, left_edge="one_more")),
    Mistake("the window's right edge is off by one (key i + right left out)", _EDGE_HINT,
            variant(mask_variant, right_edge="exclusive")),
    Mistake("the window's right edge is off by one (one key too many on the right)", _EDGE_HINT,
            variant(mask_variant, right_edge="one_more")),
    Mistake("left and right are swapped",
            "window = (left, right): `left` counts keys *before* the query (j < i), `right` keys after it",
            variant(mask_variant, sides="swapped")),
    Mistake("`right` is ignored: the window is always causal",
            "a window (left, right) with right > 0 lets query i see keys up to i + right (Longformer's "
            "window is symmetric); only Mistral's (W - 1, 0) is causal",
            variant(mask_variant, right_side="ignored")),
)

MASK_MISTAKES = (
    *EDGE_MISTAKES,
    Mistake("the positions are ignored (indices 0..L-1 used instead)",
            "compare the *positions* you are given, key_positions[j] - query_positions[i], not the row and "
            "column numbers: in decoding, the one query is at position t, and a rolling buffer keeps its "
            "keys out of order",
            variant(mask_variant, positions="indices")),
)


def _mask_cases(gen: torch.Generator) -> list[Case]:
    size = _sizes(gen)
    L, W = size(9, 14), size(3, 5)
    left, right = size(1, 2), size(3, 4)  # asymmetric: left < right
    t = size(2 * W + 1, 3 * W - 1)  # a decoding step well past the window (t mod W != 0)
    ring = torch.arange(t - W + 1, t + 1)  # the W positions a rolling buffer holds at step t ...
    ring = ring.roll(int(t % W) + 1)  # ... in slot order: position p sits in slot p mod W
    shuffled = torch.randperm(L, generator=gen)
    arange = torch.arange(L)
    return [
        Case(f"causal window of {W} keys, (W - 1, 0)", (arange, arange, (W - 1, 0))),
        Case("symmetric window (2, 2)", (arange, arange, (2, 2))),
        Case(f"asymmetric window ({left}, {right})", (arange, arange, (left, right))),
        Case("a window of one key (0, 0)", (arange, arange, (0, 0))),
        Case("a window wider than the sequence", (arange, arange, (L + 3, L + 1))),
        Case(f"one query at position {t} against a rolling buffer's keys", (torch.tensor([t]), ring, (W - 1, 0))),
        Case("queries 5.. against keys 0..: a chunk of a longer sequence",
             (torch.arange(5, 5 + W), torch.arange(L + 2), (W - 1, 0))),
        Case("shuffled key positions", (arange, shuffled, (left, right))),
    ]


_LESSON_REFERENCES = Forbidden(references=(
    attention.sliding_window_mask, attention.sliding_window_attention, attention.rolling_buffer_update,
    attention.scaled_dot_product_attention, attention.attention_weights,
))

SLIDING_WINDOW_MASK = Exercise(
    name="sliding_window_mask",
    reference=attention.sliding_window_mask,
    make_cases=_mask_cases,
    mistakes=MASK_MISTAKES,
    forbidden=_LESSON_REFERENCES,
    tolerances=_EXACT,
)


# --- banded attention ----------------------------------------------------------------------------


def banded_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: tuple[int, int],
    scale: float | None = None,
    *,
    left_edge: Literal["inclusive", "exclusive", "one_more"] = "inclusive",
    right_edge: Literal["inclusive", "exclusive", "one_more"] = "inclusive",
    sides: Literal["as_given", "swapped"] = "as_given",
    right_side: Literal["used", "ignored"] = "used",
    scaling: Literal["sqrt", "none", "ignore_argument"] = "sqrt",
    outside: Literal["minus_inf", "zero", "after_softmax"] = "minus_inf",  # what out-of-window scores get
    edges: Literal["masked", "zero_padding"] = "masked",  # keys beyond the sequence's ends
    tail: Literal["kept", "dropped"] = "kept",  # the last L mod W queries
) -> torch.Tensor:
    """Sliding-window attention with knobs, computed densely (for small cases only)."""
    L = q.shape[-2]
    default = 1.0 / math.sqrt(q.shape[-1])
    scale = default if scale is None or scaling == "ignore_argument" else scale
    if scaling == "none":
        scale = 1.0
    left, right = window
    if edges == "zero_padding":  # F.pad with zeros, every query then sees left + right + 1 "keys"
        pad = (0, 0, left, right)
        k, v = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)  # (..., L + left + right, ·)
        key_positions = torch.arange(-left, L + right, device=q.device)
    else:
        key_positions = torch.arange(L, device=q.device)
    allowed = mask_variant(torch.arange(L, device=q.device), key_positions, window, left_edge=left_edge,
                           right_edge=right_edge, sides=sides, right_side=right_side)  # (L, S)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., L, S)
    if outside == "minus_inf":
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif outside == "zero":
        scores = scores.masked_fill(~allowed, 0.0)
    weights = torch.softmax(scores, dim=-1)
    if outside == "after_softmax":
        weights = weights.masked_fill(~allowed, 0.0)
    out = torch.matmul(weights, v)  # (..., L, Ev)
    if tail == "dropped":
        width = left + right + 1
        out = out.clone()
        out[..., L - L % width:, :] = 0.0
    return out


def _banded_of(mask_mistake: Mistake) -> Mistake:
    knobs = mask_mistake.function.keywords
    return Mistake(mask_mistake.name, mask_mistake.hint, variant(banded_variant, **knobs))


BANDED_MISTAKES = (
    Mistake("the last queries are left out when L is not a multiple of the block",
            "loop `for start in range(0, L, block)` and let the last block be shorter "
            "(min(start + block, L)); range(0, L - block + 1, block) skips the tail",
            variant(banded_variant, tail="dropped")),
    Mistake("keys beyond the sequence's ends are zero padding that is attended",
            "padding k and v with zeros (F.pad) gives the padded keys a score of 0, not -inf: queries near "
            "either end then average in zero vectors. Mask the padding, or slice only keys 0..L-1",
            variant(banded_variant, edges="zero_padding")),
    *(_banded_of(m) for m in EDGE_MISTAKES),
    Mistake("scores outside the window are set to 0 instead of -inf",
            "a score of 0 still gets weight exp(0); keys outside the window must get none: -inf",
            variant(banded_variant, outside="zero")),
    Mistake("weights outside the window are zeroed after the softmax (not renormalised)",
            "mask the scores with -inf *before* the softmax, so that each query's weights inside its window sum to 1",
            variant(banded_variant, outside="after_softmax")),
    Mistake("the `scale` argument is ignored",
            "use `scale` when it is given, and 1/sqrt(E) only when it is None",
            variant(banded_variant, scaling="ignore_argument")),
    Mistake("missing scale (no division by sqrt(d_k))",
            "multiply the scores by scale = 1/sqrt(E), where E = q.shape[-1]",
            variant(banded_variant, scaling="none")),
)


def _banded_cases(gen: torch.Generator) -> list[Case]:
    size = _sizes(gen)
    def qkv(batch: tuple[int, ...], L: int, dtype=torch.float32) -> tuple:
        E, Ev = 4 * size(2, 4), size(3, 6)
        return tuple(runtime.randn(*batch, L, n, gen=gen, dtype=dtype) for n in (E, E, Ev))

    W = size(4, 6)
    L = W * size(3, 4) + size(1, W - 1)  # not a multiple of the window
    left, right = size(1, 2), size(3, 4)
    return [
        Case(f"causal window of {W} keys, (W - 1, 0), L = {L}", (*qkv((2,), L), (W - 1, 0))),
        Case("symmetric window (2, 2), batch and heads", (*qkv((2, 3), L), (2, 2))),
        Case(f"asymmetric window ({left}, {right})", (*qkv((), L), (left, right))),
        Case("a window of one key (0, 0)", (*qkv((2,), L), (0, 0))),
        Case("a window as wide as L: causal attention", (*qkv((2,), L), (L - 1, 0))),
        Case("a window wider than the sequence", (*qkv((), 7), (10, 12))),
        Case("scale=0.3", (*qkv((2,), L), (left, right)), {"scale": 0.3}),
        Case("float64, and its gradients", (*qkv((2,), L, torch.float64), (W - 1, 1)), check_gradients=True),
    ]


# Large enough that a dense L×L float32 matrix (16 MiB, and its mask and weights beside it) is far above the
# bound (6 MiB), small enough for a per-query Python loop to finish in time on a busy machine.
_MEMORY_L, _MEMORY_WINDOW, _MEMORY_E = 2048, (31, 0), 8
_MEMORY_FACTOR = 16


def _memory_stays_linear(call, device: torch.device, gen: torch.Generator) -> str | None:
    """The right answer, using memory within a small multiple of L·(left+right+1+E+Ev)·itemsize,
    under no_grad."""
    L, (left, right), E = _MEMORY_L, _MEMORY_WINDOW, _MEMORY_E
    q, k, v = (runtime.randn(1, L, E, gen=gen, device=device) for _ in range(3))  # (1, L, E)
    out, used_bytes = call.measured(q, k, v, (left, right))
    # The answer is checked at this size too: a function that computes something cheaper only here
    # (a compact, wrong result when L is large) would pass the bound without being banded.
    wrong = compare.compare_leaf(out, attention.sliding_window_attention(q, k, v, (left, right)), device)
    if wrong is not None:
        return f"for L = {L}, window ({left}, {right}) and E = Ev = {E} in float32: {wrong.problem}"
    unit = L * (left + right + 1 + 2 * E) * 4
    if used_bytes > _MEMORY_FACTOR * unit:
        dense = L * L * 4
        return (
            f"for L = {L}, window ({left}, {right}) and E = Ev = {E} in float32, your function used "
            f"{used_bytes / 2**20:.1f} MiB of memory; a banded computation needs about "
            f"{unit / 2**20:.2f} MiB (allowed: {_MEMORY_FACTOR}× that, {_MEMORY_FACTOR * unit / 2**20:.1f} MiB), "
            f"while one L×L float32 matrix is {dense / 2**20:.0f} MiB. This looks like a dense computation "
            "(a full mask or score matrix, or tiles that add up to one) — take the queries in blocks and "
            "compute each block's scores against only the keys its window can reach"
        )
    return None


SLIDING_WINDOW_ATTENTION = Exercise(
    name="sliding_window_attention",
    reference=attention.sliding_window_attention,
    make_cases=_banded_cases,
    mistakes=BANDED_MISTAKES,
    forbidden=PYTORCH_SDPA | PYTORCH_FLEX_ATTENTION | _LESSON_REFERENCES,
    behaviours=(Behaviour("peak memory stays linear in L (no L×L matrix)", _memory_stays_linear),),
    depends_on=(SLIDING_WINDOW_MASK,),
)


# --- the rolling-buffer cache update -------------------------------------------------------------


def buffer_variant(
    cache: torch.Tensor,
    new: torch.Tensor,
    position: int,
    *,
    slot: Literal["mod", "plus_one", "minus_one", "clamped", "reversed", "shift"] = "mod",
) -> torch.Tensor:
    """Writes token ``position`` into a buffer of W slots, with knobs; "mod" is right."""
    W = cache.shape[-2]
    updated = cache.clone()
    if slot == "shift":  # a FIFO: once full, every entry moves down one slot and the new one goes last
        if position < W:
            updated[..., position, :] = new
        else:
            updated = torch.cat([cache[..., 1:, :], new.unsqueeze(-2)], dim=-2)  # (..., W, E)
        return updated
    index = {
        "mod": position % W,
        "plus_one": (position + 1) % W,
        "minus_one": (position - 1) % W,
        "clamped": min(position, W - 1),
        "reversed": W - 1 - position % W,
    }[slot]
    updated[..., index, :] = new
    return updated


BUFFER_MISTAKES = (
    Mistake("the buffer stops wrapping around: every position past W - 1 goes into the last slot",
            "token i goes into slot i % W: after slot W - 1 comes slot 0 again, overwriting the oldest entry",
            variant(buffer_variant, slot="clamped")),
    Mistake("the buffer shifts its entries instead of overwriting slot i mod W",
            "Mistral's rolling buffer never moves what it holds: writing into slot i % W costs one entry, "
            "while shifting copies all W of them at every step",
            variant(buffer_variant, slot="shift")),
    Mistake("the slot is off by one (slot (i + 1) mod W)",
            "token i goes into slot i % W (token 0 into slot 0)",
            variant(buffer_variant, slot="plus_one")),
    Mistake("the slot is off by one (slot (i - 1) mod W, positions counted from 1)",
            "positions count from 0: token 0 goes into slot 0, token i into slot i % W",
            variant(buffer_variant, slot="minus_one")),
    Mistake("the buffer is filled from its end (slot W - 1 - i mod W)",
            "token i goes into slot i % W, counted from the start of the buffer",
            variant(buffer_variant, slot="reversed")),
)


def _buffer_cases(gen: torch.Generator) -> list[Case]:
    size = _sizes(gen)
    def cache_and_new(batch: tuple[int, ...], W: int, E: int, dtype=torch.float32) -> tuple:
        return runtime.randn(*batch, W, E, gen=gen, dtype=dtype), runtime.randn(*batch, E, gen=gen, dtype=dtype)

    W, E = size(5, 7), size(2, 5)  # W >= 5: each wrong slot at position 1 is a different one
    laps = size(2, 4)
    return [
        Case("position 1: the second token", (*cache_and_new((), W, E), 1)),
        Case("position 0: the first token", (*cache_and_new((), W, E), 0)),
        Case(f"position {W - 2}, before the buffer is full", (*cache_and_new((2,), W, E), W - 2)),
        Case(f"position {W - 1}, the last free slot", (*cache_and_new((2,), W, E), W - 1)),
        Case(f"position {W}: the first wrap-around", (*cache_and_new((2, 3), W, E), W)),
        Case(f"position {laps * W + 1}, after {laps} laps", (*cache_and_new((2, 3), W, E), laps * W + 1)),
        Case("float64, and its gradients", (*cache_and_new((2,), W, E, torch.float64), W + 2), check_gradients=True),
    ]


ROLLING_BUFFER_UPDATE = Exercise(
    name="rolling_buffer_update",
    reference=attention.rolling_buffer_update,
    make_cases=_buffer_cases,
    mistakes=BUFFER_MISTAKES,
    forbidden=_LESSON_REFERENCES,
)

EXERCISES = (SLIDING_WINDOW_MASK, SLIDING_WINDOW_ATTENTION, ROLLING_BUFFER_UPDATE)
