"""FlashAttention: exact attention in tiles, with memory linear in the sequence length.

Dao et al. 2022 (arXiv:2205.14135), Algorithm 1, in the loop order of FlashAttention-2 (Dao 2023,
arXiv:2307.08691, Algorithm 1): each block of queries Q_i runs over the blocks of keys and values
K_j, V_j and keeps, per query row, a running maximum m, a running sum l and an unnormalised output:

    S_ij = Q_i K_jᵀ · scale
    m_new = max(m, rowmax(S_ij))
    P_ij = exp(S_ij - m_new)
    l = exp(m - m_new) · l + rowsum(P_ij)
    O_i = exp(m - m_new) · O_i + P_ij V_j            (rescaled: the old terms used the old max)
    ... and after the last block:  O_i = O_i / l,   LSE_i = m + log(l)

No (L, S) matrix is ever held: one (block, block) tile at a time. The backward pass (a custom
``autograd.Function``) saves only q, k, v, the output and the log-sum-exp, and recomputes each tile's
probabilities as exp(S_ij - LSE_i) (FlashAttention-2, Algorithm 2).

On CUDA with Triton installed and a GPU of compute capability 8.0 or more, the forward and the
backward run the Triton kernels of ``flash_triton``; otherwise these tiles in PyTorch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from course_lib.attention.inputs import check_query_key, check_scale, check_value, require_floating_tensor
from course_lib.shortcuts import reference

__all__ = ["flash_attention", "online_softmax_stats", "DEFAULT_BLOCK_SIZE"]

DEFAULT_BLOCK_SIZE = 128
_UPCAST = (torch.float16, torch.bfloat16)  # tiles are computed in float32, as GPU kernels do


def _check_block_size(block_size: object) -> None:
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")


def _check_window(window: object) -> None:
    if window is None:
        return
    if (not isinstance(window, tuple) or len(window) != 2
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in window)):
        raise ValueError(f"window must be a tuple (left, right) of two non-negative ints, got {window!r}")


def check_flash_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: object, scale: object,
                       block_size: object = None, window: object = None) -> None:
    """Everything ``flash_attention`` refuses, refused before any work (DESIGN.md §4)."""
    check_query_key(q, k)
    check_value(k, v)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be True or False, got {is_causal!r}")
    check_scale(scale)
    _check_block_size(block_size)
    _check_window(window)


def _batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v expanded (views, no copy) to their common batch shape."""
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    return tuple(x.expand(*batch, *x.shape[-2:]) for x in (q, k, v))


def _visible(rows: torch.Tensor, cols: torch.Tensor, is_causal: bool,
             window: tuple[int, int] | None) -> torch.Tensor | None:
    """(rows, cols) True where query `row` may attend key `col`; None where every pair may."""
    allowed = None
    if is_causal:
        allowed = cols[None, :] <= rows[:, None]  # top-left aligned: key j <= query i
    if window is not None:
        left, right = window
        near = (cols[None, :] >= rows[:, None] - left) & (cols[None, :] <= rows[:, None] + right)
        allowed = near if allowed is None else allowed & near
    return allowed


def _key_range(i0: int, i1: int, S: int, is_causal: bool, window: tuple[int, int] | None) -> tuple[int, int]:
    """The keys [lo, hi) that some query of [i0, i1) may see: blocks outside are skipped."""
    lo, hi = 0, S
    if is_causal:
        hi = min(hi, i1)
    if window is not None:
        lo, hi = max(lo, i0 - window[0]), min(hi, i1 - 1 + window[1] + 1)
    return lo, max(lo, hi)


def _forward_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float,
                   block_size: int, window: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled forward on batched q (..., L, E), k (..., S, E), v (..., S, Ev): (out, lse).

    ``lse`` (..., L) is float32 (float64 for float64 inputs); a query that sees no key gets a zero
    output and an LSE of -inf.
    """
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    work = torch.float32 if q.dtype in _UPCAST else q.dtype
    out = torch.empty(*q.shape[:-1], Ev, dtype=q.dtype, device=q.device)  # (..., L, Ev)
    lse = torch.empty(q.shape[:-1], dtype=work, device=q.device)  # (..., L)
    for i0 in range(0, L, block_size):
        i1 = min(i0 + block_size, L)  # the last block may be shorter (ragged)
        q_block = q[..., i0:i1, :].to(work) * scale  # (..., Bq, E)
        m = torch.full(q_block.shape[:-1], -math.inf, dtype=work, device=q.device)  # (..., Bq)
        l = torch.zeros_like(m)  # (..., Bq)
        acc = torch.zeros(*q_block.shape[:-1], Ev, dtype=work, device=q.device)  # (..., Bq, Ev)
        rows = torch.arange(i0, i1, device=q.device)
        lo, hi = _key_range(i0, i1, S, is_causal, window)
        for j0 in range(lo - lo % block_size, hi, block_size):
            j1 = min(j0 + block_size, S)
            scores = q_block @ k[..., j0:j1, :].to(work).transpose(-2, -1)  # (..., Bq, Bk)
            allowed = _visible(rows, torch.arange(j0, j1, device=q.device), is_causal, window)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, -math.inf)
            m_new = torch.maximum(m, scores.amax(dim=-1))  # (..., Bq)
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # rows seeing nothing yet
            p = torch.exp(scores - m_safe[..., None])  # (..., Bq, Bk)
            alpha = torch.exp(m - m_safe)  # (..., Bq): rescales what used the old max
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v[..., j0:j1, :].to(work)  # (..., Bq, Ev)
            m = m_new
            del scores, p, allowed
        seen = l > 0
        out[..., i0:i1, :] = (acc / torch.where(seen, l, torch.ones_like(l))[..., None]).to(q.dtype)
        lse[..., i0:i1] = torch.where(seen, m + torch.log(torch.where(seen, l, torch.ones_like(l))),
                                      torch.full_like(l, -math.inf))
    return out, lse


def _backward_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                    grad_out: torch.Tensor, is_causal: bool, scale: float, block_size: int,
                    window: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """FlashAttention-2's backward (Algorithm 2): per key block, recompute P from the LSE."""
    L, S = q.shape[-2], k.shape[-2]
    work = lse.dtype
    dq = torch.zeros(q.shape, dtype=work, device=q.device)  # (..., L, E)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # (..., S, E)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)  # (..., S, Ev)
    delta = (grad_out.to(work) * out.to(work)).sum(dim=-1)  # (..., L): rowsum(dO ∘ O)
    lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    for j0 in range(0, S, block_size):
        j1 = min(j0 + block_size, S)
        k_block, v_block = k[..., j0:j1, :].to(work), v[..., j0:j1, :].to(work)  # (..., Bk, E), (..., Bk, Ev)
        dk_block = torch.zeros_like(k_block)
        dv_block = torch.zeros_like(v_block)
        cols = torch.arange(j0, j1, device=q.device)
        for i0 in range(0, L, block_size):
            i1 = min(i0 + block_size, L)
            lo, hi = _key_range(i0, i1, S, is_causal, window)
            if j1 <= lo or j0 >= hi:
                continue  # a tile the forward skipped: its probabilities are all zero
            q_block, g_block = q[..., i0:i1, :].to(work), grad_out[..., i0:i1, :].to(work)
            scores = (q_block @ k_block.transpose(-2, -1)) * scale  # (..., Bq, Bk)
            p = torch.exp(scores - lse_safe[..., i0:i1, None])  # (..., Bq, Bk), the forward's weights
            allowed = _visible(torch.arange(i0, i1, device=q.device), cols, is_causal, window)
            if allowed is not None:
                p = p.masked_fill(~allowed, 0.0)
            p = p.masked_fill(~torch.isfinite(lse[..., i0:i1, None]), 0.0)
            dv_block += p.transpose(-2, -1) @ g_block  # (..., Bk, Ev)
            dp = g_block @ v_block.transpose(-2, -1)  # (..., Bq, Bk)
            ds = p * (dp - delta[..., i0:i1, None]) * scale  # (..., Bq, Bk): softmax's backward
            dq[..., i0:i1, :] += ds @ k_block
            dk_block += ds.transpose(-2, -1) @ q_block
            del scores, p, dp, ds
        dk[..., j0:j1, :] = dk_block.to(k.dtype)
        dv[..., j0:j1, :] = dv_block.to(v.dtype)
    return dq.to(q.dtype), dk, dv


TRITON_FAILURES: list[str] = []  # why the Triton kernels failed on this machine, if they have


def triton_usable(q: torch.Tensor) -> bool:
    """The Triton kernels serve CUDA tensors on GPUs of compute capability 8.0 or more (unless they
    have failed here before: see ``TRITON_FAILURES``)."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) < (8, 0) or TRITON_FAILURES:
        return False
    from course_lib.attention import flash_triton

    return flash_triton.available() and flash_triton.supports(q)


def _by_triton(kernel: Callable[[], Any], tiles: Callable[[], Any]) -> Any:
    """``kernel()``; where Triton cannot compile or launch it on this machine (a Triton that does not
    match the GPU or the driver), a warning, then ``tiles()`` now and the PyTorch tiles from then on."""
    try:
        return kernel()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - Triton raises many kinds; each is said once, in words
        lines = str(error).strip().splitlines()
        TRITON_FAILURES.append(f"{type(error).__name__}: {lines[-1][:200] if lines else ''}")
        warnings.warn(f"course_lib's Triton kernel failed on this machine ({TRITON_FAILURES[-1]}); "
                      "flash_attention uses its PyTorch tiles from now on", RuntimeWarning, stacklevel=3)
        return tiles()


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
             scale: float | None = None, block_size: int | None = None,
             window: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass on batched inputs: ``(out, lse)``, by Triton on a capable GPU."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

    def tiles() -> tuple[torch.Tensor, torch.Tensor]:
        return _forward_torch(q, k, v, is_causal, scale, block_size or DEFAULT_BLOCK_SIZE, window)

    if triton_usable(q):
        from course_lib.attention import flash_triton

        return _by_triton(lambda: flash_triton.flash_forward(q, k, v, is_causal=is_causal, scale=scale,
                                                             window=window), tiles)
    return tiles()


class _FlashAttention(torch.autograd.Function):
    """Saves q, k, v, the output and the LSE — O(L + S) memory — and recomputes tiles backwards."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_size, window):  # noqa: ANN001, ANN205
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        out, lse = _forward(q, k, v, is_causal, scale, block_size, window)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (is_causal, scale, block_size or DEFAULT_BLOCK_SIZE, window)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        q, k, v, out, lse = ctx.saved_tensors
        is_causal, scale, block_size, window = ctx.options

        def tiles() -> tuple[torch.Tensor, ...]:
            return _backward_torch(q, k, v, out, lse, grad_out, is_causal, scale, block_size, window)

        if triton_usable(q):
            from course_lib.attention import flash_triton

            dq, dk, dv = _by_triton(lambda: flash_triton.flash_backward(q, k, v, out, lse, grad_out, is_causal,
                                                                        scale, window), tiles)
        else:
            dq, dk, dv = tiles()
        return dq, dk, dv, None, None, None, None


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None,
           block_size: int | None, window: tuple[int, int] | None) -> torch.Tensor:
    q, k, v = _batched(q, k, v)  # autograd sums the gradients of broadcast batch entries back
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        return _FlashAttention.apply(q, k, v, is_causal, scale, block_size, window)
    return _forward(q, k, v, is_causal, scale, block_size, window)[0]


@reference
def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) V, shape ``(..., L, Ev)``, computed in (block, block) tiles.

    The same result as ``scaled_dot_product_attention`` (without a mask), with peak extra memory
    O((L + S)·(E + Ev + block)) instead of O(L·S); ``block_size`` (default 128) is the tile's
    side in the PyTorch path. Trains: the backward pass recomputes the tiles.
    """
    check_flash_inputs(q, k, v, is_causal, scale, block_size)
    return _flash(q, k, v, is_causal, scale, block_size, None)


def windowed_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int],
                             scale: float | None = None, block_size: int | None = None) -> torch.Tensor:
    """Query i attends key j iff ``i - left <= j <= i + right`` (FlashAttention's ``window_size``);
    key blocks outside the window are skipped, so time is O(L·(left + right + 1))."""
    check_flash_inputs(q, k, v, False, scale, block_size, window)
    return _flash(q, k, v, False, scale, block_size, window)


@reference
def online_softmax_stats(x: torch.Tensor, block_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the last axis of ``x`` in blocks: ``(m, l)``, each of shape ``x.shape[:-1]``,
    with m = max x and l = Σ exp(x - m) (Milakov & Gimelshein 2018; FlashAttention's m and ℓ).

    Each block updates m and rescales the sum gathered so far by exp(m_old - m_new). A row that is
    all -inf gives m = -inf and l = 0.
    """
    require_floating_tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension, got shape {tuple(x.shape)}")
    _check_block_size(block_size)
    work = torch.float32 if x.dtype in _UPCAST else x.dtype
    m = torch.full(x.shape[:-1], -math.inf, dtype=work, device=x.device)
    l = torch.zeros(x.shape[:-1], dtype=work, device=x.device)
    for j0 in range(0, x.shape[-1], block_size):
        block = x[..., j0:j0 + block_size].to(work)
        m_new = torch.maximum(m, block.amax(dim=-1))
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        l = torch.exp(m - m_safe) * l + torch.exp(block - m_safe[..., None]).sum(dim=-1)
        m = m_new
    return m.to(x.dtype), l.to(x.dtype)
