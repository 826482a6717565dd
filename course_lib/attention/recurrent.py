"""The attention of the recurrent era: Bahdanau's additive score and Luong's three scores (lessons 03-04).

A decoder state (the *query*) is compared with every encoder state (the *keys*, which are also the
values here: Bahdanau et al. call them annotations); a softmax over the source turns the scores
into weights, and the context vector is the weighted sum of the encoder states.

- Bahdanau et al. 2014 (arXiv:1409.0473), §3.1 and appendix A.1.2: the alignment model
  ``e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j)``, ``α_ij = softmax_j(e_ij)``, ``c_i = Σ_j α_ij h_j``.
  It scores with the decoder's *previous* state ``s_{i-1}``: the weights decide what the decoder
  reads before it writes word i.
- Luong et al. 2015 (arXiv:1508.04025), §3.1, Eq. (8): with the decoder's *current* top state
  ``h_t`` and an encoder state ``h̄_s``: ``dot = h_tᵀ h̄_s``, ``general = h_tᵀ W_a h̄_s`` and
  ``concat = v_aᵀ tanh(W_a [h_t; h̄_s])``. Splitting ``W_a`` into the columns that meet ``h_t`` and
  those that meet ``h̄_s`` shows that concat *is* the additive score, ``v_aᵀ tanh(W_1 h_t + W_2 h̄_s)``.

Shapes: ``query (B, Hq)`` or ``(B, T, Hq)`` (T queries at once, as a teacher-forced Luong decoder
has), ``keys (B, S, Hk)``; scores and weights ``(B, S)`` or ``(B, T, S)``. Weight matrices act as
``nn.Linear``'s do: ``W_a (A, Hq)`` maps a query to ``A`` features, ``W_a @ q``.
"""

from __future__ import annotations

import torch

from course_lib.attention.inputs import require_floating_tensor
from course_lib.shortcuts import reference

__all__ = [
    "additive_score", "dot_score", "general_score", "concat_score",
    "source_mask", "masked_softmax", "context_vector",
]


def _check(name: str, query: torch.Tensor, keys: torch.Tensor) -> None:
    require_floating_tensor("query", query)
    require_floating_tensor("keys", keys)
    if keys.dim() != 3:
        raise ValueError(f"{name}: keys must have shape (B, S, H), got {tuple(keys.shape)}")
    if query.dim() not in (2, 3) or query.shape[0] != keys.shape[0]:
        raise ValueError(f"{name}: query must have shape (B, H) or (B, T, H) with the keys' B = {keys.shape[0]}, "
                         f"got {tuple(query.shape)}")


def _weight(name: str, what: str, matrix: torch.Tensor, shape: tuple[int, ...]) -> None:
    require_floating_tensor(what, matrix)
    if tuple(matrix.shape) != shape:
        raise ValueError(f"{name}: {what} must have shape {shape}, got {tuple(matrix.shape)}")


def _per_query(query: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``query`` as ``(B, T, H)``, and whether it came as ``(B, H)`` (one query per sentence)."""
    return (query.unsqueeze(1), True) if query.dim() == 2 else (query, False)  # (B, H) -> (B, 1, H)


@reference
def additive_score(query: torch.Tensor, keys: torch.Tensor, W_a: torch.Tensor, U_a: torch.Tensor,
                   v_a: torch.Tensor) -> torch.Tensor:
    """Bahdanau's alignment model ``e_j = v_aᵀ tanh(W_a q + U_a k_j)`` for every key j.

    ``query (B, Hq)`` is the decoder's previous state ``s_{i-1}``, ``keys (B, S, Hk)`` the
    annotations ``h_j``; ``W_a (A, Hq)``, ``U_a (A, Hk)``, ``v_a (A,)``. Returns ``(B, S)`` (or
    ``(B, T, S)`` for ``T`` queries).
    """
    _check("additive_score", query, keys)
    A = v_a.shape[0] if isinstance(v_a, torch.Tensor) and v_a.dim() == 1 else -1
    _weight("additive_score", "v_a", v_a, (A,))
    _weight("additive_score", "W_a", W_a, (A, query.shape[-1]))
    _weight("additive_score", "U_a", U_a, (A, keys.shape[-1]))
    queries, single = _per_query(query)
    from_query = torch.matmul(queries, W_a.T).unsqueeze(2)  # (B, T, A) -> (B, T, 1, A)
    from_keys = torch.matmul(keys, U_a.T).unsqueeze(1)  # (B, S, A) -> (B, 1, S, A)
    scores = torch.matmul(torch.tanh(from_query + from_keys), v_a)  # (B, T, S, A) @ (A,) -> (B, T, S)
    return scores.squeeze(1) if single else scores


@reference
def dot_score(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Luong's ``dot``: ``h_tᵀ h̄_s`` for every source position s, ``(B, S)`` or ``(B, T, S)``."""
    _check("dot_score", query, keys)
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(f"dot_score: query and keys need the same width, got {query.shape[-1]} and {keys.shape[-1]}")
    queries, single = _per_query(query)
    scores = torch.matmul(queries, keys.transpose(1, 2))  # (B, T, H) @ (B, H, S) -> (B, T, S)
    return scores.squeeze(1) if single else scores


@reference
def general_score(query: torch.Tensor, keys: torch.Tensor, W_a: torch.Tensor) -> torch.Tensor:
    """Luong's ``general``: ``h_tᵀ W_a h̄_s``, with ``W_a (Hq, Hk)``; ``(B, S)`` or ``(B, T, S)``."""
    _check("general_score", query, keys)
    _weight("general_score", "W_a", W_a, (query.shape[-1], keys.shape[-1]))
    queries, single = _per_query(query)
    projected = torch.matmul(keys, W_a.T)  # W_a h̄_s for every s: (B, S, Hq)
    scores = torch.matmul(queries, projected.transpose(1, 2))  # (B, T, Hq) @ (B, Hq, S) -> (B, T, S)
    return scores.squeeze(1) if single else scores


@reference
def concat_score(query: torch.Tensor, keys: torch.Tensor, W_a: torch.Tensor, v_a: torch.Tensor) -> torch.Tensor:
    """Luong's ``concat``: ``v_aᵀ tanh(W_a [h_t; h̄_s])``, with ``W_a (A, Hq + Hk)`` and ``v_a (A,)``.

    The concatenation is never built: ``W_a [h_t; h̄_s] = W_a[:, :Hq] h_t + W_a[:, Hq:] h̄_s``, which
    is Bahdanau's additive score with ``W = W_a[:, :Hq]`` and ``U = W_a[:, Hq:]``.
    """
    _check("concat_score", query, keys)
    Hq = query.shape[-1]
    A = v_a.shape[0] if isinstance(v_a, torch.Tensor) and v_a.dim() == 1 else -1
    _weight("concat_score", "W_a", W_a, (A, Hq + keys.shape[-1]))
    return additive_score(query, keys, W_a[:, :Hq], W_a[:, Hq:], v_a)


def source_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(B, S)`` booleans, True at the real words of each source and False at its padding."""
    positions = torch.arange(max_length, device=lengths.device)  # (S,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (1, S) < (B, 1) -> (B, S)


@reference
def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weights over the source: a softmax of ``scores (B, [T,] S)`` over its last axis in which the
    padding (``mask`` False, ``(B, S)``) gets exactly 0."""
    if mask is not None:
        allowed = mask if scores.dim() == mask.dim() else mask.unsqueeze(1)  # (B, S) -> (B, 1, S)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


@reference
def context_vector(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``c = Σ_j α_j h_j``: ``weights (B, S)`` (or ``(B, T, S)``) times ``values (B, S, H)`` → ``(B, H)``
    (or ``(B, T, H)``)."""
    require_floating_tensor("weights", weights)
    require_floating_tensor("values", values)
    if values.dim() != 3 or weights.shape[0] != values.shape[0] or weights.shape[-1] != values.shape[1]:
        raise ValueError(f"context_vector: weights (B, S) or (B, T, S) and values (B, S, H) must share B and S, "
                         f"got {tuple(weights.shape)} and {tuple(values.shape)}")
    rows, single = _per_query(weights)
    context = torch.matmul(rows, values)  # (B, T, S) @ (B, S, H) -> (B, T, H)
    return context.squeeze(1) if single else context
