"""Lesson 04 — Luong attention: the three scores of Luong et al. 2015 (arXiv:1508.04025, §3.1, Eq. (8)),
``dot_score``, ``general_score`` and ``concat_score``.

The decoder's current state ``h_t`` (the query, ``(B, H)``) is scored against every encoder state
``h̄_s`` (the keys, ``(B, S, H)``); each function returns the raw scores ``(B, S)``, before any softmax.
``course_lib.attention.recurrent`` holds the references.

Each known mistake is the reference computation with one knob turned the wrong way (``dot_variant``,
``general_variant``, ``concat_variant``). The inputs are random, so ``W_a`` is never symmetric: a
transposed ``W_a`` gives other numbers. ``W_a`` of ``general`` is square ``(H, H)`` (Luong's states all
have width H), so applying it to the query side, ``(W_a h_t)ᵀ h̄_s``, *is* the transposed score and
cannot be told apart from it: one mistake, with one name.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from course_lib import attention, runtime
from course_lib.attention import recurrent
from course_lib.grading.forbidden import PYTORCH_SDPA
from course_lib.grading.framework import Case, Exercise, Mistake, variant
from course_lib.shortcuts import Forbidden

# Everything that would be the answer: the course's own scores (concat *is* the additive score of
# lesson 03) and attention functions, and PyTorch's SDPA.
_FORBIDDEN = PYTORCH_SDPA | Forbidden(references=(
    recurrent.dot_score, recurrent.general_score, recurrent.concat_score, recurrent.additive_score,
    attention.attention_weights, attention.scaled_dot_product_attention,
))

Scale = Literal["none", "sqrt_H"]
Output = Literal["scores", "weights"]
Squeeze = Literal["dim", "all"]


def _size(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _finish(scores: torch.Tensor, width: int, scale: Scale, output: Output, squeeze: Squeeze) -> torch.Tensor:
    """``scores (B, 1, S)`` -> ``(B, S)``, with the knobs shared by the three scores."""
    if scale == "sqrt_H":
        scores = scores / math.sqrt(width)  # lesson 05's scaled dot product, not Luong's score
    if output == "weights":
        scores = torch.softmax(scores, dim=-1)  # a_t(s): one step too far
    return scores.squeeze() if squeeze == "all" else scores.squeeze(1)  # (B, S); squeeze() drops B = 1 or S = 1 too


# --- dot: h_tᵀ h̄_s ---------------------------------------------------------------------------------


def dot_variant(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    batch: Literal["per_sentence", "broadcast"] = "per_sentence",
    scale: Scale = "none",
    output: Output = "scores",
    squeeze: Squeeze = "dim",
) -> torch.Tensor:
    """Luong's dot score with knobs; each knob's first value is right."""
    if batch == "broadcast":
        return torch.matmul(query, keys.transpose(1, 2))  # (B, H) @ (B, H, S) broadcasts: (B, B, S)
    scores = torch.matmul(query.unsqueeze(1), keys.transpose(1, 2))  # (B, 1, H) @ (B, H, S) -> (B, 1, S)
    return _finish(scores, query.shape[-1], scale, output, squeeze)


_SCALED = "the scores are divided by √H (that is lesson 05's scaled dot product, not Luong's score)"
_SCALED_HINT = ("Luong et al.'s scores (Eq. 8) have no 1/√H: return h_tᵀ h̄_s as it is; the scale comes two "
                "years later, with Vaswani et al.'s scaled dot-product attention")
_WEIGHTS = "the softmax weights are returned instead of the raw scores"
_WEIGHTS_HINT = ("this function returns score(h_t, h̄_s), shape (B, S), before any softmax; the softmax over the "
                 "source (Eq. 7, a_t(s)) is a separate step, with the padding masked first")
_SQUEEZE = "`.squeeze()` without a dimension drops the batch axis when B = 1 (or the source axis when S = 1)"
_SQUEEZE_HINT = "name the axis you remove: .squeeze(1) turns (B, 1, S) into (B, S) whatever B and S are"
_BROADCAST = "each query is scored against every sentence's keys: (B, H) @ (B, H, S) broadcasts to (B, B, S)"
_BROADCAST_HINT = ("torch.matmul treats a 2-D query as one matrix shared by the whole batch; give each sentence its "
                   "own query: query.unsqueeze(1) @ keys.transpose(1, 2) -> (B, 1, S), then .squeeze(1) "
                   "(or torch.einsum('bh,bsh->bs', query, keys))")


def _common_mistakes(variant_fn, width_scaled: bool = True) -> tuple[Mistake, ...]:  # noqa: ANN001
    mistakes = [
        Mistake(_WEIGHTS, _WEIGHTS_HINT, variant(variant_fn, output="weights")),
        Mistake(_SQUEEZE, _SQUEEZE_HINT, variant(variant_fn, squeeze="all")),
    ]
    if width_scaled:
        mistakes.insert(0, Mistake(_SCALED, _SCALED_HINT, variant(variant_fn, scale="sqrt_H")))
    return tuple(mistakes)


def _random(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return runtime.randn(*shape, gen=gen, dtype=dtype)


def _shapes(gen: torch.Generator) -> tuple[int, int, int]:
    return _size(gen, 2, 4), _size(gen, 3, 9), _size(gen, 2, 6)  # B, S, H


def _dot_cases(gen: torch.Generator) -> list[Case]:
    B, S, H = _shapes(gen)

    def case(name: str, B: int, S: int, dtype: torch.dtype = torch.float32, grads: bool = False) -> Case:
        return Case(name, (_random(gen, B, H, dtype=dtype), _random(gen, B, S, H, dtype=dtype)), check_gradients=grads)

    return [
        case(f"query (B, H) = {(B, H)}, keys (B, S, H) = {(B, S, H)}", B, S),
        case("a batch of one sentence (B = 1)", 1, S),
        case("a source of a single word (S = 1)", B, 1),
        case("float64, and its gradients", B, S, torch.float64, grads=True),
    ]


DOT_SCORE = Exercise(
    name="dot_score",
    reference=recurrent.dot_score,
    make_cases=_dot_cases,
    mistakes=(Mistake(_BROADCAST, _BROADCAST_HINT, variant(dot_variant, batch="broadcast")),
              *_common_mistakes(dot_variant)),
    forbidden=_FORBIDDEN,
)


# --- general: h_tᵀ W_a h̄_s --------------------------------------------------------------------------


def general_variant(
    query: torch.Tensor,
    keys: torch.Tensor,
    W_a: torch.Tensor,
    *,
    weight: Literal["on_keys", "transposed", "ignored"] = "on_keys",
    scale: Scale = "none",
    output: Output = "scores",
    squeeze: Squeeze = "dim",
) -> torch.Tensor:
    """Luong's general score with knobs; each knob's first value is right."""
    if weight == "on_keys":
        projected = torch.matmul(keys, W_a.T)  # W_a h̄_s for every s: (B, S, H)
    elif weight == "transposed":
        projected = torch.matmul(keys, W_a)  # W_aᵀ h̄_s: the score becomes h_tᵀ W_aᵀ h̄_s = (W_a h_t)ᵀ h̄_s
    else:
        projected = keys  # no W_a: the dot score
    scores = torch.matmul(query.unsqueeze(1), projected.transpose(1, 2))  # (B, 1, H) @ (B, H, S) -> (B, 1, S)
    return _finish(scores, query.shape[-1], scale, output, squeeze)


def _weight(gen: torch.Generator, H: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _random(gen, H, H, dtype=dtype) / math.sqrt(H)  # (H, H); never symmetric


def _general_cases(gen: torch.Generator) -> list[Case]:
    B, S, H = _shapes(gen)

    def case(name: str, B: int, S: int, dtype: torch.dtype = torch.float32, grads: bool = False) -> Case:
        args = (_random(gen, B, H, dtype=dtype), _random(gen, B, S, H, dtype=dtype), _weight(gen, H, dtype))
        return Case(name, args, check_gradients=grads)

    return [
        case(f"query {(B, H)}, keys {(B, S, H)}, a non-symmetric W_a {(H, H)}", B, S),
        case("a batch of one sentence (B = 1)", 1, S),
        case("a source of a single word (S = 1)", B, 1),
        case("float64, and its gradients (W_a's too)", B, S, torch.float64, grads=True),
    ]


GENERAL_SCORE = Exercise(
    name="general_score",
    reference=recurrent.general_score,
    make_cases=_general_cases,
    mistakes=(
        Mistake(
            "W_a is transposed: this is h_tᵀ W_aᵀ h̄_s = (W_a h_t)ᵀ h̄_s",
            "W_a acts like nn.Linear's weight on the *encoder* state: project the keys, keys @ W_a.T (that is "
            "W_a h̄_s for every s), then take the dot product with h_t. Applying W_a to the query, query @ W_a.T, "
            "or writing keys @ W_a, gives the transposed score",
            variant(general_variant, weight="transposed"),
        ),
        Mistake(
            "W_a is left out (this is the dot score)",
            "general puts a learned matrix between the two states: h_tᵀ (W_a h̄_s), with keys @ W_a.T",
            variant(general_variant, weight="ignored"),
        ),
        *_common_mistakes(general_variant),
    ),
    forbidden=_FORBIDDEN,
)


# --- concat: v_aᵀ tanh(W_a [h_t; h̄_s]) ------------------------------------------------------------


def concat_variant(
    query: torch.Tensor,
    keys: torch.Tensor,
    W_a: torch.Tensor,
    v_a: torch.Tensor,
    *,
    halves: Literal["query_first", "keys_first"] = "query_first",
    squash: Literal["tanh", "none", "after_v"] = "tanh",
    reduce: Literal["v_a", "sum"] = "v_a",
    output: Output = "scores",
    squeeze: Squeeze = "dim",
) -> torch.Tensor:
    """Luong's concat score with knobs; each knob's first value is right."""
    H = query.shape[-1]
    on_query, on_keys = (W_a[:, :H], W_a[:, H:]) if halves == "query_first" else (W_a[:, H:], W_a[:, :H])
    features = (torch.matmul(query, on_query.T).unsqueeze(1)  # (B, A) -> (B, 1, A)
                + torch.matmul(keys, on_keys.T))  # (B, S, A): W_a [h_t; h̄_s] for every s
    if squash == "tanh":
        features = torch.tanh(features)
    scores = features.sum(-1) if reduce == "sum" else torch.matmul(features, v_a)  # (B, S)
    if squash == "after_v":
        scores = torch.tanh(scores)
    return _finish(scores.unsqueeze(1), H, "none", output, squeeze)  # (B, 1, S) -> (B, S)


def _concat_cases(gen: torch.Generator) -> list[Case]:
    B, S, H = _shapes(gen)
    A = H + _size(gen, 1, 3)  # the attention width differs from H: W_a is (A, 2H), v_a (A,)

    def case(name: str, B: int, S: int, dtype: torch.dtype = torch.float32, grads: bool = False) -> Case:
        args = (_random(gen, B, H, dtype=dtype), _random(gen, B, S, H, dtype=dtype),
                _random(gen, A, 2 * H, dtype=dtype) / math.sqrt(2 * H), _random(gen, A, dtype=dtype))
        return Case(name, args, check_gradients=grads)

    return [
        case(f"query {(B, H)}, keys {(B, S, H)}, W_a {(A, 2 * H)}, v_a {(A,)}", B, S),
        case("a batch of one sentence (B = 1)", 1, S),
        case("a source of a single word (S = 1)", B, 1),
        case("float64, and its gradients (W_a's and v_a's too)", B, S, torch.float64, grads=True),
    ]


CONCAT_SCORE = Exercise(
    name="concat_score",
    reference=recurrent.concat_score,
    make_cases=_concat_cases,
    mistakes=(
        Mistake(
            "the halves are swapped: W_a [h̄_s; h_t] instead of W_a [h_t; h̄_s]",
            "the first H columns of W_a meet the decoder state h_t, the last H the encoder state h̄_s: "
            "W_a[:, :H] @ h_t + W_a[:, H:] @ h̄_s (or torch.cat([query, key], -1) in that order)",
            variant(concat_variant, halves="keys_first"),
        ),
        Mistake(
            "the tanh is missing",
            "without it the score is linear, v_aᵀ W_a [h_t; h̄_s], and the h_t part adds the same number to every "
            "source word, so softmax ignores it: the query no longer matters. Apply tanh to W_a [h_t; h̄_s], "
            "before v_a",
            variant(concat_variant, squash="none"),
        ),
        Mistake(
            "the tanh is applied after v_a (tanh(v_aᵀ W_a [h_t; h̄_s]))",
            "the tanh acts on each of the A features of W_a [h_t; h̄_s]; v_a then weighs the squashed features: "
            "v_aᵀ tanh(W_a [h_t; h̄_s])",
            variant(concat_variant, squash="after_v"),
        ),
        Mistake(
            "v_a is left out (the features are summed)",
            "the A features tanh(W_a [h_t; h̄_s]) are combined with the learned vector v_a: "
            "tanh(...) @ v_a, not tanh(...).sum(-1)",
            variant(concat_variant, reduce="sum"),
        ),
        *_common_mistakes(concat_variant, width_scaled=False),
    ),
    forbidden=_FORBIDDEN,
)

EXERCISES = (DOT_SCORE, GENERAL_SCORE, CONCAT_SCORE)
