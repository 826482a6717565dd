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

from course_lib.attention.inputs import check_mask, check_query_key, check_scale, check_value, require_floating_tensor
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
    require_floating_tensor("x", x)
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
    """The attention matrix softmax(Q Kᵀ · scale + mask), shape ``(..., L, S)``; rows sum to 1.

    As PyTorch's math path: q and k are each multiplied by √scale before the product, and float16 /
    bfloat16 inputs are computed in float32 and the weights cast back — so float16 inputs whose raw
    q·k would pass 65504 stay finite.
    """
    check_query_key(q, k)
    check_mask(attn_mask, is_causal, q, k)
    check_scale(scale)
    L, S = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    work = torch.float32 if q.dtype in _UPCAST else q.dtype
    root = math.sqrt(abs(scale))
    q_scaled = q.to(work) * (root if scale >= 0 else -root)
    scores = torch.matmul(q_scaled, (k.to(work) * root).transpose(-2, -1))  # (..., L, S), scaled
    if is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()  # (L, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask.to(work)
    return softmax(scores, dim=-1).to(q.dtype)


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
    check_query_key(q, k)
    check_value(k, v)
    weights = attention_weights(q, k, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    return torch.matmul(weights, v)  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)


