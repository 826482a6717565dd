"""Lesson 03 — Bahdanau (additive) attention: ``additive_score``, ``context_vector`` and the module
``BahdanauDecoderStep``.

References: ``course_lib.attention.recurrent`` and ``course_lib.seq2seq_attention.BahdanauDecoderStep``
(Bahdanau et al., arXiv:1409.0473, §3.1 and appendix A.1.2). Each known mistake is the reference
computation with one knob turned the wrong way (``additive_variant``, ``context_variant``,
``step_variant``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from course_lib import runtime
from course_lib.attention import recurrent
from course_lib.grading.forbidden import PYTORCH_MHA, PYTORCH_SDPA
from course_lib.grading.framework import Behaviour, Case, Exercise, Mistake, ModuleSpec, variant
from course_lib.seq2seq_attention import BahdanauDecoderStep
from course_lib.shortcuts import Forbidden

# Everything that would be the answer: PyTorch's attention and the course's own.
_FORBIDDEN = PYTORCH_SDPA | PYTORCH_MHA | Forbidden(references=(
    recurrent.additive_score, recurrent.concat_score, recurrent.context_vector, recurrent.masked_softmax,
    BahdanauDecoderStep.forward,
))


def _size(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return scale * runtime.randn(*shape, gen=gen, dtype=dtype)


# --- the additive score ---------------------------------------------------------------------------


def additive_variant(
    s_prev: torch.Tensor, annotations: torch.Tensor, W_a: torch.Tensor, U_a: torch.Tensor, v_a: torch.Tensor, *,
    keys: Literal["used", "ignored"] = "used",
    query: Literal["used", "ignored"] = "used",
    squash: Literal["tanh", "none"] = "tanh",
    reduce: Literal["v_a", "sum"] = "v_a",
    output: Literal["scores", "softmax"] = "scores",
) -> torch.Tensor:
    """``v_aᵀ tanh(W_a s + U_a h_j)`` for every j, with knobs; each knob's first value is Bahdanau's."""
    from_query = s_prev @ W_a.T if query == "used" else torch.zeros(s_prev.shape[0], W_a.shape[0], dtype=s_prev.dtype)
    from_keys = annotations @ U_a.T if keys == "used" else torch.zeros_like(annotations[..., :1])  # (B, S, A) or (B, S, 1)
    features = from_query.unsqueeze(1) + from_keys  # (B, 1, A) + (B, S, A) -> (B, S, A)
    if keys == "ignored":
        features = features.expand(-1, annotations.shape[1], -1)  # every source word alike: (B, S, A)
    if squash == "tanh":
        features = torch.tanh(features)
    scores = features @ v_a if reduce == "v_a" else features.sum(-1)  # (B, S)
    return torch.softmax(scores, dim=-1) if output == "softmax" else scores


def _score_cases(gen: torch.Generator) -> list[Case]:
    B, S, H, A = _size(gen, 2, 4), _size(gen, 3, 7), _size(gen, 3, 6), _size(gen, 3, 6)
    K = 2 * H  # an annotation is [→h_j; ←h_j]

    def case(name: str, batch: int = B, length: int = S, dtype: torch.dtype = torch.float32,
             gradients: bool = False) -> Case:
        args = (_randn(gen, batch, H, dtype=dtype), _randn(gen, batch, length, K, dtype=dtype),
                _randn(gen, A, H, dtype=dtype, scale=1 / math.sqrt(H)), _randn(gen, A, K, dtype=dtype, scale=1 / math.sqrt(K)),
                _randn(gen, A, dtype=dtype))
        return Case(name, args, check_gradients=gradients)

    return [
        case(f"{B} sentences of {S} words, s_prev (B, {H}), annotations (B, S, {K}), attention width {A}"),
        case("a batch of one", batch=1),
        case("a one-word source", length=1),
        case("float64, and the gradients of every input", dtype=torch.float64, gradients=True),
    ]


def _each_annotation_scores_itself(call, device: torch.device, gen: torch.Generator) -> str | None:  # noqa: ANN001
    """Changing annotation j changes score j, and no other score."""
    B, S, H, A = 2, 6, 4, 5
    s_prev, annotations = _randn(gen, B, H, dtype=torch.float64), _randn(gen, B, S, 2 * H, dtype=torch.float64)
    W_a, U_a, v_a = _randn(gen, A, H, dtype=torch.float64), _randn(gen, A, 2 * H, dtype=torch.float64), _randn(gen, A, dtype=torch.float64)
    on = lambda t: t.to(device)  # noqa: E731
    before = call(on(s_prev), on(annotations), on(W_a), on(U_a), on(v_a)).cpu()
    j = int(torch.randint(0, S, (1,), generator=gen))
    changed = annotations.clone()
    changed[:, j] += 2.0 * _randn(gen, B, 2 * H, dtype=torch.float64)
    after = call(on(s_prev), on(changed), on(W_a), on(U_a), on(v_a)).cpu()
    if tuple(after.shape) != (B, S):
        return f"the scores should have shape (B, S) = {(B, S)}, got {tuple(after.shape)}"
    moved = (after - before).abs() > 1e-9  # (B, S)
    if not bool(moved[:, j].all()):
        return (f"changing the annotation of source word {j} left its score unchanged: the scores must depend "
                "on the encoder states h_j (the U_a h_j term)")
    others = moved.clone()
    others[:, j] = False
    if bool(others.any()):
        return (f"changing the annotation of source word {j} changed the scores of other words too: score j "
                "compares s_prev with h_j alone (a softmax belongs after the score, not in it)")
    return None


ADDITIVE_SCORE = Exercise(
    name="additive_score",
    reference=recurrent.additive_score,
    make_cases=_score_cases,
    mistakes=(
        Mistake("the encoder states are ignored (no U_a h_j term): every source word gets the same score",
                "e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j): add annotations @ U_a.T, (B, S, A), to W_a s_{i-1}, "
                "(B, 1, A), before the tanh",
                variant(additive_variant, keys="ignored")),
        Mistake("the decoder state is ignored (no W_a s_{i-1} term): the weights would be the same at every step",
                "add s_prev @ W_a.T, unsqueezed to (B, 1, A), to the annotations' part",
                variant(additive_variant, query="ignored")),
        Mistake("the tanh is missing", "the alignment model is a one-hidden-layer network: v_aᵀ tanh(…)",
                variant(additive_variant, squash="none")),
        Mistake("the features are summed instead of weighted by v_a",
                "the last step is a dot product with v_a: tanh(…) @ v_a, (B, S, A) @ (A,) -> (B, S)",
                variant(additive_variant, reduce="sum")),
        Mistake("the scores went through a softmax (these are weights, not scores)",
                "additive_score returns the raw energies e_ij; the softmax over the source comes after, in the "
                "decoder step, where the padding is masked first",
                variant(additive_variant, output="softmax")),
    ),
    forbidden=_FORBIDDEN,
    behaviours=(Behaviour("each source word's score depends on its own annotation", _each_annotation_scores_itself),),
)


# --- the context vector ---------------------------------------------------------------------------


def context_variant(weights: torch.Tensor, annotations: torch.Tensor, *,
                    combine: Literal["weighted_sum", "unweighted_mean", "weighted_mean", "argmax"] = "weighted_sum"
                    ) -> torch.Tensor:
    """``Σ_j α_j h_j`` with a knob; the first value is Bahdanau's."""
    if combine == "unweighted_mean":
        return annotations.mean(dim=1)  # (B, A)
    if combine == "weighted_mean":
        return (weights.unsqueeze(-1) * annotations).mean(dim=1)  # Σ_j α_j h_j / S
    if combine == "argmax":
        chosen = weights.argmax(dim=1)  # (B,)
        return annotations[torch.arange(annotations.shape[0]), chosen]  # (B, A): hard attention
    return (weights.unsqueeze(-1) * annotations).sum(dim=1)  # (B, S, 1) * (B, S, A) -> (B, A)


def _weights(gen: torch.Generator, B: int, S: int, dtype: torch.dtype, lengths: list[int] | None = None) -> torch.Tensor:
    scores = _randn(gen, B, S, dtype=dtype, scale=1.5)
    if lengths is not None:
        scores = scores.masked_fill(recurrent.source_mask(torch.tensor(lengths), S).logical_not(), float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, S), rows sum to 1


def _context_cases(gen: torch.Generator) -> list[Case]:
    B, S, A = _size(gen, 2, 4), _size(gen, 4, 7), _size(gen, 3, 8)

    def case(name: str, batch: int = B, length: int = S, dtype: torch.dtype = torch.float32,
             lengths: list[int] | None = None, gradients: bool = False) -> Case:
        return Case(name, (_weights(gen, batch, length, dtype, lengths), _randn(gen, batch, length, A, dtype=dtype)),
                    check_gradients=gradients)

    return [
        case(f"{B} sentences of {S} words, annotations of width {A}"),
        case("padded sentences: zero weight on the padding", batch=3, lengths=[S, S - 2, 1]),
        case("a batch of one, a one-word source", batch=1, length=1),
        case("float64, and the gradients of both inputs", dtype=torch.float64, gradients=True),
    ]


CONTEXT_VECTOR = Exercise(
    name="context_vector",
    reference=recurrent.context_vector,
    make_cases=_context_cases,
    mistakes=(
        Mistake("the weights are not used: the annotations are simply averaged",
                "c_i = Σ_j α_ij h_j — multiply each annotation by its weight before summing",
                variant(context_variant, combine="unweighted_mean")),
        Mistake("the weighted annotations are averaged (divided by S) instead of summed",
                "the weights already sum to 1 over the source: take .sum(dim=1), not .mean(dim=1)",
                variant(context_variant, combine="weighted_mean")),
        Mistake("only the most attended annotation is kept (hard attention)",
                "Bahdanau's context is the expectation over all annotations, Σ_j α_ij h_j: every word contributes "
                "in proportion to its weight (and gradients reach every weight)",
                variant(context_variant, combine="argmax")),
    ),
    forbidden=_FORBIDDEN,
)


# --- one decoder step -----------------------------------------------------------------------------


class StepVariant(BahdanauDecoderStep):
    """The reference step with knobs (each knob's first value is the right one)."""

    def __init__(self, embed_size: int, hidden_size: int, annotation_size: int, vocab_size: int, *,
                 knobs: dict | None = None) -> None:
        super().__init__(embed_size, hidden_size, annotation_size, vocab_size)
        self.knobs = dict(knobs or {})

    def forward(self, y_embedded, s_prev, annotations, mask):  # noqa: ANN001
        knob = self.knobs.get
        keys = self.U_a(annotations)  # (B, S, A)

        def attend(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scores = torch.tanh(self.W_a(s).unsqueeze(1) + keys) @ self.v_a  # (B, S)
            if knob("mask") != "ignored":
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=0 if knob("softmax") == "over_batch" else -1)
            return (weights.unsqueeze(-1) * annotations).sum(1), weights  # (B, A), (B, S)

        context, weights = attend(s_prev)
        s = self.decoder(torch.cat([y_embedded, context], dim=-1), s_prev)  # s_i
        if knob("scored_with") == "s_i":
            context, weights = attend(s)  # the weights and the read-out's context from s_i
        read = s_prev if knob("readout") == "s_prev" else s
        features = self.readout(torch.cat([read, y_embedded, context], dim=-1))
        logits = self.generator(features.unflatten(-1, (s.shape[-1], 2)).amax(-1))  # maxout: (B, H, 2) -> (B, H)
        return logits, (s_prev if knob("state") == "not_updated" else s), weights


def step_variant(
    embed_size: int, hidden_size: int, annotation_size: int, vocab_size: int, *,
    scored_with: Literal["s_prev", "s_i"] = "s_prev",
    mask: Literal["applied", "ignored"] = "applied",
    softmax: Literal["over_source", "over_batch"] = "over_source",
    readout: Literal["s_i", "s_prev"] = "s_i",
    state: Literal["updated", "not_updated"] = "updated",
) -> nn.Module:
    """A ``StepVariant`` with its knobs set (a mistake is ``variant(step_variant, knob=…)``)."""
    knobs = dict(scored_with=scored_with, mask=mask, softmax=softmax, readout=readout, state=state)
    return StepVariant(embed_size, hidden_size, annotation_size, vocab_size, knobs=knobs)


def step_state(E: int, H: int, A: int, V: int, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Weights for ``BahdanauDecoderStep(E, H, A, V)``, by its parameter names."""
    shapes = {
        "W_a.weight": (H, H), "U_a.weight": (H, A), "v_a": (H,),
        "decoder.weight_ih": (3 * H, E + A), "decoder.weight_hh": (3 * H, H), "decoder.bias_ih": (3 * H,),
        "decoder.bias_hh": (3 * H,), "readout.weight": (2 * H, H + E + A), "readout.bias": (2 * H,),
        "generator.weight": (V, H), "generator.bias": (V,),
    }
    return {name: _randn(gen, *shape, dtype=dtype, scale=(1 / math.sqrt(shape[-1]) if len(shape) == 2 else 0.5))
            for name, shape in shapes.items()}


def _step_cases(gen: torch.Generator) -> list[Case]:
    E, H, V = _size(gen, 3, 5), _size(gen, 3, 6), _size(gen, 6, 10)
    A = 2 * H
    B, S = _size(gen, 3, 4), _size(gen, 5, 8)
    init = {"embed_size": E, "hidden_size": H, "annotation_size": A, "vocab_size": V}

    def case(name: str, lengths: list[int], dtype: torch.dtype = torch.float32, gradients: bool = False) -> Case:
        batch, length = len(lengths), max(lengths)
        mask = recurrent.source_mask(torch.tensor(lengths), length)  # (B, S)
        annotations = _randn(gen, batch, length, A, dtype=dtype)  # the padding holds junk, as a real batch's does
        args = (_randn(gen, batch, E, dtype=dtype), _randn(gen, batch, H, dtype=dtype, scale=0.8), annotations, mask)
        return Case(name, args, init=init, state=step_state(E, H, A, V, gen, dtype), check_gradients=gradients)

    padded = [S] + [int(torch.randint(1, S, (1,), generator=gen)) for _ in range(B - 1)]
    return [
        case(f"{B} sentences of {S} words, no padding", [S] * B),
        case(f"padded sentences of lengths {padded}", padded),
        case("one sentence of one word", [1]),
        case("float64, padded, and the gradients of every input and weight", padded, torch.float64, gradients=True),
    ]


BAHDANAU_DECODER_STEP = Exercise(
    name="BahdanauDecoderStep",
    reference=BahdanauDecoderStep,
    make_cases=_step_cases,
    mistakes=(
        Mistake("the weights are computed from the new state s_i instead of s_{i-1}",
                "Bahdanau et al. score with the state *before* the step, e_ij = a(s_{i-1}, h_j) (§3.1): attend "
                "first with s_prev, then update the GRU with [y; c_i]",
                variant(step_variant, scored_with="s_i")),
        Mistake("the padding receives weight (the mask is not applied)",
                "before the softmax, set the scores of padded positions to -inf: "
                "scores.masked_fill(~mask, float('-inf')); mask is True at real words",
                variant(step_variant, mask="ignored")),
        Mistake("the softmax runs over the batch, so the weights do not sum to 1 over the source",
                "the weights of one sentence are a distribution over its source words: softmax over dim=-1 (S)",
                variant(step_variant, softmax="over_batch")),
        Mistake("the read-out uses s_{i-1} instead of s_i",
                "this lesson follows Eq. (4) of Bahdanau et al.'s §3.1, p(y_i | …) = g(y_{i-1}, s_i, c_i): feed "
                "the new state to the read-out (their appendix A.2.2 writes s_{i-1})",
                variant(step_variant, readout="s_prev")),
        Mistake("the state returned is s_{i-1}, not the updated s_i",
                "return the GRU's new state: the next step must start from it",
                variant(step_variant, state="not_updated")),
    ),
    forbidden=_FORBIDDEN,
    output_names=("logits", "state", "weights"),
    module=ModuleSpec(),
    depends_on=(ADDITIVE_SCORE, CONTEXT_VECTOR),
)

EXERCISES = (ADDITIVE_SCORE, CONTEXT_VECTOR, BAHDANAU_DECODER_STEP)
