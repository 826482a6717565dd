"""Sliding-window attention: each query sees only the keys near it (lesson 07).

Query i attends key j iff ``i - left <= j <= i + right`` (FlashAttention's ``window_size``
convention). Mistral 7B's causal window of W keys is ``(W - 1, 0)``; Longformer's window of w
tokens is ``(w // 2, w // 2)``. With the band written as a mask M_ij = 0 inside, -inf outside,

    SlidingWindow(Q, K, V) = softmax(Q Kᵀ · scale + M) V

— Beltagy et al. 2020, *Longformer*, arXiv:2004.05150, §3.1; Jiang et al. 2023, *Mistral 7B*,
arXiv:2310.06825, §2. The implementation never builds the L×L matrix: queries are taken in blocks,
each against only the keys its window can reach, so time and peak live memory are
O(L·(left+right+1)).

Also here: the dense boolean window mask (for tests and figures), and Mistral's rolling-buffer KV
cache with a causal sliding-window decoding step (§2, "Rolling Buffer Cache").
"""

from __future__ import annotations

import math

import torch

from course_lib.attention import flash
from course_lib.attention.inputs import check_query_key, check_scale, check_value, require_floating_tensor
from course_lib.shortcuts import reference

__all__ = [
    "sliding_window_attention",
    "sliding_window_mask",
    "dense_window_mask",
    "rolling_buffer_update",
    "RollingKVCache",
    "decode_step",
]

_UPCAST = (torch.float16, torch.bfloat16)
# Queries per block: half the window (on 2 CPU cores at W = 512 a quarter was 5% faster alone, and half
# suffers less when other work shares the cores: fewer, larger steps), and at least 128 — below that Python's
# overhead per block dominates.
_MIN_BLOCK = 128


def check_window(window: object) -> tuple[int, int]:
    """``window`` as ``(left, right)``: two non-negative ints (a tuple or a list)."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"window must be a tuple (left, right) of two non-negative ints, got {window!r}")
    if any(isinstance(w, bool) or not isinstance(w, int) for w in window):
        raise TypeError(f"window must be a tuple (left, right) of two non-negative ints, got {window!r}")
    left, right = window
    if left < 0 or right < 0:
        raise ValueError(f"window (left, right) must be non-negative, got {tuple(window)}")
    return int(left), int(right)


# --- the mask ----------------------------------------------------------------------------------


@reference
def sliding_window_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, window: tuple[int, int]
) -> torch.Tensor:
    """True where query position p may attend key position s: ``p - left <= s <= p + right``.

    query_positions (Lq,) and key_positions (Lk,) are integer tensors (token positions in the
    sequence, not indices: a cache's keys may be stored in any order); the result is (Lq, Lk) bool.
    """
    left, right = check_window(window)
    for name, positions in (("query_positions", query_positions), ("key_positions", key_positions)):
        if not isinstance(positions, torch.Tensor) or positions.dim() != 1 or positions.is_floating_point():
            raise TypeError(f"{name} must be a 1-D integer tensor of positions, got "
                            f"{getattr(positions, 'shape', type(positions).__name__)}")
    offset = key_positions.unsqueeze(0) - query_positions.unsqueeze(1)  # (Lq, Lk): s - p
    return (offset >= -left) & (offset <= right)


def dense_window_mask(length: int, window: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """The (L, L) boolean mask of ``window`` — what the dense computation needs, O(L²) memory."""
    positions = torch.arange(length, device=device)
    return sliding_window_mask(positions, positions, window)


# --- banded attention ----------------------------------------------------------------------------


def _fast_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int], scale: float
) -> torch.Tensor | None:
    """The one place a faster kernel plugs in: its output, or None for the PyTorch path below.

    On a CUDA GPU that runs Triton (compute capability 8.0 or more), lesson 08's flash kernel with
    FlashAttention's ``window_size`` skips the key blocks outside the window; its backward is the
    recomputing tiled one. Everywhere else the banded PyTorch path serves.
    """
    if not flash.triton_usable(q):
        return None
    return flash.windowed_flash_attention(q, k, v, window, scale)


@reference
def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: tuple[int, int],
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + M) V where query i sees keys ``i - left .. i + right``: (..., L, Ev).

    q (..., L, E), k (..., L, E), v (..., L, Ev) with batch dimensions that broadcast. Time and peak
    live extra memory are O(L·(left+right+1)): no L×L tensor, and no list of tiles adding up to one.
    """
    check_query_key(q, k)
    check_value(k, v)
    left, right = check_window(window)
    check_scale(scale)
    L, S = q.shape[-2], k.shape[-2]
    if L != S:
        raise ValueError(f"sliding_window_attention needs as many keys as queries: q (..., L, E) and "
                         f"k (..., L, E), got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    left, right = min(left, L - 1), min(right, L - 1)  # a window wider than the sequence sees all of it
    fast = _fast_backend(q, k, v, (left, right), scale) if L > 0 else None
    if fast is not None:
        return fast
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    work = torch.float32 if q.dtype in _UPCAST else q.dtype
    out = torch.empty(*batch, L, v.shape[-1], dtype=q.dtype, device=q.device)  # (..., L, Ev)
    if L == 0:
        return out
    block = min(L, max(_MIN_BLOCK, (left + right + 1) // 2))  # queries per block
    positions = torch.arange(L, device=q.device)
    q_scaled = q.to(work) * scale  # (..., L, E), scaled once
    interior_bias = None  # blocks away from both ends share one pattern: computed once, (Bq, Bq + left + right)
    for start in range(0, L, block):
        stop = min(start + block, L)
        first, last = max(0, start - left), min(L, stop + right)  # the keys this block can reach
        interior = first == start - left and last == stop + right and stop - start == block
        bias = interior_bias if interior else None
        if bias is None:
            offset = positions[first:last].unsqueeze(0) - positions[start:stop].unsqueeze(1)  # (Bq, Bk): j - i
            outside = (offset < -left) | (offset > right)
            bias = torch.zeros(outside.shape, dtype=work, device=q.device).masked_fill_(outside, float("-inf"))
            if interior:
                interior_bias = bias
        scores = torch.matmul(q_scaled[..., start:stop, :], k[..., first:last, :].to(work).transpose(-2, -1))
        scores = scores.add_(bias)  # (..., Bq, Bk); every row keeps its own key: no empty row
        weights = torch.softmax(scores, dim=-1)                            # (..., Bq, Bk)
        out[..., start:stop, :] = torch.matmul(weights, v[..., first:last, :].to(work))  # (..., Bq, Ev)
    return out


# --- Mistral's rolling buffer --------------------------------------------------------------------


@reference
def rolling_buffer_update(cache: torch.Tensor, new: torch.Tensor, position: int) -> torch.Tensor:
    """The cache (..., W, E) with the entry of token ``position`` (..., E) written into slot
    ``position mod W``, overwriting the token W positions back. Returns a new tensor."""
    require_floating_tensor("cache", cache)
    require_floating_tensor("new", new)
    if cache.dim() < 2 or new.shape != cache.shape[:-2] + cache.shape[-1:]:
        raise ValueError(f"cache must have shape (..., W, E) and new (..., E), got cache {tuple(cache.shape)} "
                         f"and new {tuple(new.shape)}")
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise TypeError(f"position must be a non-negative int, got {position!r}")
    updated = cache.clone()
    updated[..., position % cache.shape[-2], :] = new
    return updated


class RollingKVCache:
    """Keys and values of the last W tokens in a fixed buffer of W slots, token i in slot i mod W.

    Mistral 7B decodes with a window of W keys: once W tokens are cached, the next one overwrites
    the oldest, so the cache never grows past W entries whatever the sequence's length (§2 of the
    paper). The slots are not in position order after the first wrap-around; attention does not
    care, because it sums over the keys it sees, whatever their order.
    """

    def __init__(self, window: int, keys: torch.Tensor, values: torch.Tensor):
        """``keys`` (..., W, E) and ``values`` (..., W, Ev): empty buffers (their contents are ignored)."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (the number of keys), got {window!r}")
        if keys.shape[-2] != window or values.shape[-2] != window:
            raise ValueError(f"keys (..., W, E) and values (..., W, Ev) need W = {window} slots, got "
                             f"{tuple(keys.shape)} and {tuple(values.shape)}")
        self.window, self.keys, self.values = window, keys, values
        self.length = 0  # tokens seen so far; the next one is at this position

    @classmethod
    def empty(cls, window: int, batch: tuple[int, ...], key_dim: int, value_dim: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "RollingKVCache":
        keys = torch.zeros(*batch, window, key_dim, dtype=dtype, device=device)      # (..., W, E)
        values = torch.zeros(*batch, window, value_dim, dtype=dtype, device=device)  # (..., W, Ev)
        return cls(window, keys, values)

    def append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store token ``self.length``'s key (..., E) and value (..., Ev) in slot length mod W."""
        slot = self.length % self.window
        self.keys[..., slot, :] = key
        self.values[..., slot, :] = value
        self.length += 1

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values held now: all W slots once full, else the first ``length``."""
        used = min(self.length, self.window)
        return self.keys[..., :used, :], self.values[..., :used, :]  # (..., min(t, W), E), (..., ·, Ev)

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


def decode_step(
    cache: RollingKVCache, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """One causal sliding-window decoding step: the new token's key and value go into the cache,
    then its query (..., E) attends the (at most W) cached keys — itself and the W - 1 before it.
    Returns (..., Ev); equals row t of ``sliding_window_attention(..., window=(W - 1, 0))``."""
    cache.append(k, v)
    keys, values = cache.filled()
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1) * scale  # (..., W', E) @ (..., E, 1) -> (..., W')
    weights = torch.softmax(scores.float(), dim=-1).to(values.dtype)  # (..., W')
    return torch.matmul(weights.unsqueeze(-2), values).squeeze(-2)    # (..., 1, W') @ (..., W', Ev) -> (..., Ev)
