"""Reference attention, written out step by step.

Vaswani et al. 2017 (arXiv:1706.03762), §3.2.1, Eq. (1):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V

The semantics are those of ``torch.nn.functional.scaled_dot_product_attention`` without dropout:
q ``(..., L, E)``, k ``(..., S, E)``, v ``(..., S, Ev)``; a boolean mask is True where attention is
allowed and a float mask is added to the scores; ``is_causal`` keeps ``tril(ones(L, S))`` (top-left
aligned); ``scale`` defaults to ``1/√E``; a query row with nothing to attend to gives zeros.
The batch dimensions ``...`` may have any rank and broadcast against each other.
"""

from __future__ import annotations

import math

import torch

from course_lib.shortcuts import reference

__all__ = ["softmax", "attention_weights", "scaled_dot_product_attention"]

# Low-precision inputs are reduced in float32 and cast back, as PyTorch's own softmax does.
_UPCAST = (torch.float16, torch.bfloat16)


@reference
def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax(x)_i = exp(x_i - max x) / Σ_j exp(x_j - max x), along ``dim``.

    Subtracting the maximum changes nothing mathematically and keeps ``exp`` from overflowing.
    A slice that is entirely ``-inf`` (a query with every key masked) gives zeros, not NaN.
    """
    _require_floating_tensor("x", x)
    if not -x.dim() <= dim < max(x.dim(), 1):
        raise ValueError(f"dim={dim} is out of range for x of shape {tuple(x.shape)}")
    work = x.float() if x.dtype in _UPCAST else x
    row_max = work.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exps = torch.exp(work - row_max)
    total = exps.sum(dim=dim, keepdim=True)
    probabilities = exps / torch.where(total > 0, total, torch.ones_like(total))
    return probabilities.to(x.dtype)


@reference
def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """The attention matrix softmax(Q Kᵀ · scale + mask), shape ``(..., L, S)``; rows sum to 1."""
    _check_query_key(q, k)
    L, S = q.shape[-2], k.shape[-2]
    _check_mask(attn_mask, is_causal, q, L, S)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()  # (L, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return softmax(scores, dim=-1)


@reference
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + mask) V, shape ``(..., L, Ev)``."""
    _check_query_key(q, k)
    _check_value(k, v)
    weights = attention_weights(q, k, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return torch.matmul(weights, v)  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)


# --- input validation: every message names the shapes it expected --------------------------------


def _require_floating_tensor(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_query_key(q: torch.Tensor, k: torch.Tensor) -> None:
    _require_floating_tensor("q", q)
    _require_floating_tensor("k", k)
    for name, x, letters in (("q", q, "(..., L, E)"), ("k", k, "(..., S, E)")):
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape {letters}, got {tuple(x.shape)}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must have the same dtype, got {q.dtype} and {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on the same device, got {q.device} and {k.device}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q (..., L, E) and k (..., S, E) must share E, got q {tuple(q.shape)} "
            f"and k {tuple(k.shape)}"
        )
    _check_batch_broadcasts(q, k)


def _check_value(k: torch.Tensor, v: torch.Tensor) -> None:
    _require_floating_tensor("v", v)
    if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"v must have shape (..., S, Ev) with the same S as k (..., S, E), got "
            f"k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if v.dtype != k.dtype:
        raise TypeError(f"v must have the dtype of q and k ({k.dtype}), got {v.dtype}")
    if v.device != k.device:
        raise ValueError(f"v must be on the device of q and k ({k.device}), got {v.device}")
    _check_batch_broadcasts(k, v)


def _check_batch_broadcasts(a: torch.Tensor, b: torch.Tensor) -> None:
    try:
        torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions (...) must broadcast, got {tuple(a.shape)} and {tuple(b.shape)}"
        ) from None


def _check_mask(
    attn_mask: torch.Tensor | None, is_causal: bool, q: torch.Tensor, L: int, S: int
) -> None:
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be True or False, got {is_causal!r}")
    if attn_mask is None:
        return
    if is_causal:
        raise ValueError("give either attn_mask or is_causal=True, not both (as PyTorch's SDPA)")
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
        raise TypeError(
            f"attn_mask must be boolean (True = may attend) or of q's dtype {q.dtype} "
            f"(added to the scores), got {attn_mask.dtype}"
        )
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask must be on q's device ({q.device}), got {attn_mask.device}")
    try:
        torch.broadcast_shapes(attn_mask.shape, (*q.shape[:-2], L, S))
    except RuntimeError:
        raise ValueError(
            f"attn_mask must broadcast to (..., L, S) = {(*q.shape[:-2], L, S)}, "
            f"got {tuple(attn_mask.shape)}"
        ) from None
