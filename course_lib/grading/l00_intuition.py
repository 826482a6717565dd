"""Lesson 00 — the intuition: ``pad_embeddings`` and ``weighted_sum``, the article's toy corrected.

The article's toy sums word "embeddings" of different lengths with ``zip``, which stops at the
shortest one, and weighs them by word length. The corrected version has two pieces: embeddings of
one fixed width, and a weighted sum whose weights are a softmax of scores, taken over the words and
keeping every dimension of the embeddings — the shape of every attention in the course.

The references are written here, with knobs (``padding_variant``, ``weighting_variant``): each
known mistake is the reference with one knob turned the wrong way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from course_lib import runtime
from course_lib.grading.framework import Case, Exercise, Mistake, variant

THE_ARTICLE_SENTENCE = "Awareness is power in a world where knowledge is everywhere"


def character_codes(word: str) -> list[int]:
    """The article's "embedding" of a word: a=1, b=2, …, z=26, one number per letter."""
    return [ord(char) - 96 for char in word.lower()]


# --- fixed-width embeddings ----------------------------------------------------------------------


def padding_variant(
    vectors: Sequence[torch.Tensor],
    width: int,
    *,
    to: Literal["width", "shortest", "longest"] = "width",  # the width of the result
    side: Literal["right", "left"] = "right",  # where the zeros go
) -> torch.Tensor:
    """Stack 1-D ``vectors`` of different lengths into ``(N, width)``, zeros after each one."""
    lengths = [len(v) for v in vectors]
    columns = {"width": width, "shortest": min(lengths), "longest": max(lengths)}[to]
    rows = []
    for v in vectors:
        kept = v[:columns]  # (≤ columns,)
        zeros = kept.new_zeros(columns - len(kept))
        rows.append(torch.cat([kept, zeros] if side == "right" else [zeros, kept]))  # (columns,)
    return torch.stack(rows)  # (N, columns)


def pad_embeddings(vectors: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """Vectors of lengths ≤ ``width`` as one ``(N, width)`` tensor, each followed by zeros."""
    if not vectors or any(not isinstance(v, torch.Tensor) or v.dim() != 1 for v in vectors):
        raise TypeError("pad_embeddings: vectors must be a non-empty sequence of 1-D tensors")
    longest = max(len(v) for v in vectors)
    if longest > width:
        raise ValueError(f"pad_embeddings: a vector of length {longest} does not fit in width {width}")
    return padding_variant(vectors, width)


PADDING_MISTAKES = (
    Mistake(
        "truncated to the shortest vector, as zip does",
        "zip(a, b) stops at the shorter of a and b — that is how the article's final vector lost all "
        "but one component. Give every vector the same length, `width`, by adding zeros after it",
        variant(padding_variant, to="shortest"),
    ),
    Mistake(
        "padded to the longest vector, not to `width`",
        "the result must have `width` columns even when every vector is shorter: pad each vector with "
        "width - len(vector) zeros",
        variant(padding_variant, to="longest"),
    ),
    Mistake(
        "the zeros are put before the vector instead of after it",
        "keep each vector's first value in column 0: torch.cat([vector, zeros])",
        variant(padding_variant, side="left"),
    ),
)


def _ragged(gen: torch.Generator, count: int, shortest: int, longest: int, dtype: torch.dtype) -> tuple:
    lengths = torch.randint(shortest, longest + 1, (count,), generator=gen).tolist()
    lengths[int(torch.randint(0, count, (1,), generator=gen))] = shortest  # one vector as short as allowed
    return tuple(runtime.randn(n, gen=gen, dtype=dtype) for n in lengths)


def _padding_cases(gen: torch.Generator) -> list[Case]:
    article = tuple(torch.tensor(character_codes(w), dtype=torch.float32) for w in THE_ARTICLE_SENTENCE.split())
    width = int(torch.randint(12, 17, (1,), generator=gen))
    return [
        Case("the article's ten words, width 10", (article, 10)),
        Case(f"the article's ten words, width {width}", (article, width)),
        Case("five vectors of lengths 2 to 6, width 8", (_ragged(gen, 5, 2, 6, torch.float32), 8)),
        Case("one vector exactly `width` long", (_ragged(gen, 4, 1, 7, torch.float64) + (torch.ones(7, dtype=torch.float64),), 7)),
        Case("a single vector", (_ragged(gen, 1, 3, 3, torch.float32), 5)),
    ]


PAD_EMBEDDINGS = Exercise(
    name="pad_embeddings",
    reference=pad_embeddings,
    make_cases=_padding_cases,
    mistakes=PADDING_MISTAKES,
)


# --- the weighted sum -----------------------------------------------------------------------------


def weighting_variant(
    embeddings: torch.Tensor,
    scores: torch.Tensor,
    *,
    weights: Literal["softmax", "raw", "divided_by_sum", "uniform", "softmax_unshifted"] = "softmax",
    over: Literal["words", "first"] = "words",  # the axis the softmax normalises
    summed: Literal["words", "features", "nothing"] = "words",  # the axis the weighted sum adds up
) -> torch.Tensor:
    """softmax(scores) over the words, then Σ_words weight · embedding: ``(..., N, D), (..., N) -> (..., D)``."""
    axis = -1 if over == "words" else 0
    if weights == "softmax":
        shifted = scores - scores.amax(dim=axis, keepdim=True)  # no overflow for large scores
        w = shifted.exp() / shifted.exp().sum(dim=axis, keepdim=True)
    elif weights == "softmax_unshifted":
        w = scores.exp() / scores.exp().sum(dim=axis, keepdim=True)
    elif weights == "divided_by_sum":
        w = scores / scores.sum(dim=axis, keepdim=True)
    elif weights == "uniform":
        w = torch.full_like(scores, 1.0 / scores.shape[-1])
    else:
        w = scores
    weighted = w.unsqueeze(-1) * embeddings  # (..., N, 1) * (..., N, D) -> (..., N, D)
    if summed == "nothing":
        return weighted
    return weighted.sum(dim=-2 if summed == "words" else -1)  # (..., D), or (..., N) summed over features


def weighted_sum(embeddings: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Σ_i softmax(scores)_i · embeddings_i: ``embeddings (..., N, D)``, ``scores (..., N)`` → ``(..., D)``."""
    if not isinstance(embeddings, torch.Tensor) or not isinstance(scores, torch.Tensor):
        raise TypeError("weighted_sum: embeddings (..., N, D) and scores (..., N) must be tensors")
    if embeddings.dim() < 2 or embeddings.shape[:-1] != scores.shape:
        raise ValueError(f"weighted_sum: expected embeddings (..., N, D) and scores (..., N), got "
                         f"{tuple(embeddings.shape)} and {tuple(scores.shape)}")
    return weighting_variant(embeddings, scores)


WEIGHTING_MISTAKES = (
    Mistake(
        "the scores are used as weights without a softmax (weights not normalised)",
        "weights must be positive and add up to 1 over the words: weights = softmax(scores) along the "
        "last axis of `scores`",
        variant(weighting_variant, weights="raw"),
    ),
    Mistake(
        "the scores are divided by their sum instead of going through a softmax",
        "dividing by the sum makes weights add up to 1 only when every score is positive, and a score "
        "of 0 gets no weight; softmax(scores) = exp(scores) / Σ exp(scores) works for any scores",
        variant(weighting_variant, weights="divided_by_sum"),
    ),
    Mistake(
        "the scores are ignored: every word gets the same weight (a plain average)",
        "the weight of word i is softmax(scores)_i, not 1/N",
        variant(weighting_variant, weights="uniform"),
    ),
    Mistake(
        "the softmax normalises over the first axis, not over the words",
        "with a batch, scores has shape (B, N): each row's weights must add up to 1, so normalise "
        "along the last axis (dim=-1)",
        variant(weighting_variant, over="first"),
    ),
    Mistake(
        "the weighted sum adds up the features of each word instead of the words",
        "the result keeps every dimension of the embeddings, shape (..., D): sum the weighted "
        "embeddings over the words, axis -2",
        variant(weighting_variant, summed="features"),
    ),
    Mistake(
        "the weighted embeddings are returned without being summed",
        "weights.unsqueeze(-1) * embeddings has shape (..., N, D); add it up over the words (axis -2) "
        "to get one vector of shape (..., D)",
        variant(weighting_variant, summed="nothing"),
    ),
    Mistake(
        "exp overflows: the softmax does not subtract the largest score first",
        "in float32 exp(x) is inf above x = 88.7, and inf/inf is NaN; subtract scores.amax(dim=-1, "
        "keepdim=True) before exp — it cancels in the ratio",
        variant(weighting_variant, weights="softmax_unshifted"),
    ),
)


def _weighting_cases(gen: torch.Generator) -> list[Case]:
    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return runtime.randn(*shape, gen=gen, dtype=dtype)

    words = int(torch.randint(5, 11, (1,), generator=gen))
    width, batch = int(torch.randint(4, 9, (1,), generator=gen)), int(torch.randint(2, 5, (1,), generator=gen))
    return [
        Case(f"{words} words of width {width}", (rand(words, width), rand(words))),
        Case(f"a batch of {batch} sentences", (rand(batch, words, width), rand(batch, words))),
        Case("scores of both signs, float64", (rand(words, width, dtype=torch.float64),
                                               3.0 * rand(words, dtype=torch.float64))),
        Case("large scores (about 200)", (rand(batch, words, width), 200.0 + 5.0 * rand(batch, words))),
        Case("float64, and its gradients", (rand(batch, words, width, dtype=torch.float64),
                                            rand(batch, words, dtype=torch.float64)), check_gradients=True),
    ]


WEIGHTED_SUM = Exercise(
    name="weighted_sum",
    reference=weighted_sum,
    make_cases=_weighting_cases,
    mistakes=WEIGHTING_MISTAKES,
)

EXERCISES = (PAD_EMBEDDINGS, WEIGHTED_SUM)
