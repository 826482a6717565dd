"""Checking attention's inputs before any work; every message names the shapes it expected.

Shared by the attention family (SDPA today; multi-head, sliding window and flash build on it), so
that each accepts and rejects what PyTorch's ``scaled_dot_product_attention`` does.
"""

from __future__ import annotations

import torch

__all__ = ["require_floating_tensor", "check_query_key", "check_value", "check_mask", "check_scale"]


def require_floating_tensor(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_query_key(q: torch.Tensor, k: torch.Tensor) -> None:
    require_floating_tensor("q", q)
    require_floating_tensor("k", k)
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


def check_value(k: torch.Tensor, v: torch.Tensor) -> None:
    require_floating_tensor("v", v)
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


def check_mask(
    attn_mask: torch.Tensor | None, is_causal: bool, q: torch.Tensor, k: torch.Tensor
) -> None:
    """As PyTorch's SDPA: a boolean mask, or a float mask of q's dtype or float32, that broadcasts
    *to* the scores' shape (..., L, S) — without adding dimensions to it."""
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be True or False, got {is_causal!r}")
    if attn_mask is None:
        return
    if is_causal:
        raise ValueError("give either attn_mask or is_causal=True, not both (as PyTorch's SDPA)")
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype not in (torch.bool, torch.float32, q.dtype):
        raise TypeError(
            f"attn_mask must be boolean (True = may attend), or float32 or q's dtype {q.dtype} "
            f"(added to the scores), got {attn_mask.dtype}"
        )
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask must be on q's device ({q.device}), got {attn_mask.device}")
    scores = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, scores) == scores
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"attn_mask must broadcast to the scores' shape (..., L, S) = {scores}, "
                         f"got {tuple(attn_mask.shape)}")


def check_scale(scale: object) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")
