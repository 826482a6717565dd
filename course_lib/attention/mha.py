"""Multi-head attention: several scaled dot-product attentions side by side, each in its own subspace.

Vaswani et al. 2017 (arXiv:1706.03762), §3.2.2:

    MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O,   head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)

with d_k = d_v = d_model / h. The h projections of one input are one ``nn.Linear`` of width d_model
whose output is cut into h slices (``split_heads``); the heads' outputs are put side by side again
(``merge_heads``) before W^O. Each head's softmax is scaled by 1/√d_k — the head's width, not d_model.

Batch first, as the rest of the course: query ``(B, L, E)``, key ``(B, S, kdim)``, value ``(B, S, vdim)``.
Masks use SDPA's polarity — **True = may attend** — which is the *opposite* of
``nn.MultiheadAttention``, where True in ``key_padding_mask`` or a boolean ``attn_mask`` means
"ignore this key". Translate with ``~mask``. A float mask is added to the scores in both.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.attention.sdpa import attention_weights
from course_lib.shortcuts import reference

__all__ = ["split_heads", "merge_heads", "MultiHeadAttention", "CausalSelfAttention"]


@reference
def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, E)`` -> ``(B, H, L, E // H)``: head h gets features ``h·d … (h+1)·d - 1`` of each token."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must have shape (B, L, E), got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(num_heads, int) or num_heads < 1 or x.shape[-1] % num_heads:
        raise ValueError(f"num_heads must be a positive int dividing E = {x.shape[-1]}, got {num_heads!r}")
    B, L, E = x.shape
    x = x.reshape(B, L, num_heads, E // num_heads)  # (B, L, H, d): cut each token's E features into H slices
    return x.transpose(1, 2)  # (B, H, L, d): each head sees every token of its own slice


@reference
def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, d)`` -> ``(B, L, H·d)``: the inverse of ``split_heads`` (Concat in Eq. §3.2.2)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must have shape (B, H, L, d), got {getattr(x, 'shape', type(x).__name__)}")
    B, H, L, d = x.shape
    x = x.transpose(1, 2)  # (B, L, H, d): the heads of one token next to each other
    return x.reshape(B, L, H * d)  # (B, L, E): concatenated per token (reshape copies: x is not contiguous)


def _combined_mask(
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    B: int, H: int, L: int, S: int,
    like: torch.Tensor,
) -> torch.Tensor | None:
    """One mask that broadcasts to ``(B, H, L, S)``: boolean (True = may attend) when every part is
    boolean, else additive (a boolean part becomes 0 / -inf)."""
    parts = []
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, S):
            raise ValueError(f"key_padding_mask must have shape (B, S) = {(B, S)}, got {tuple(key_padding_mask.shape)}")
        parts.append(key_padding_mask[:, None, None, :])  # (B, 1, 1, S): the same keys hidden from every query
    if attn_mask is not None:
        if attn_mask.dim() == 3 and attn_mask.shape == (B * H, L, S):  # nn.MultiheadAttention's layout
            attn_mask = attn_mask.reshape(B, H, L, S)  # (B, H, L, S)
        if attn_mask.shape not in ((L, S), (B, H, L, S)):
            raise ValueError(
                f"attn_mask must have shape (L, S) = {(L, S)}, (B·H, L, S) or (B, H, L, S), got {tuple(attn_mask.shape)}"
            )
        parts.append(attn_mask)
    if is_causal:
        parts.append(torch.ones(L, S, dtype=torch.bool, device=like.device).tril())  # (L, S), top-left aligned
    for part in parts:
        if part.device != like.device:
            raise ValueError(f"masks must be on the inputs' device {like.device}, got {part.device}")
        if part.dtype != torch.bool and part.dtype not in (torch.float32, like.dtype):
            raise TypeError(f"a mask must be boolean (True = may attend) or float (added), got {part.dtype}")
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        mask = parts[0]
        for part in parts[1:]:
            mask = mask & part  # may attend only where every mask allows it
        return mask
    work = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    additive = torch.zeros((), dtype=work, device=like.device)
    for part in parts:
        if part.dtype == torch.bool:
            part = torch.zeros(part.shape, dtype=work, device=like.device).masked_fill(~part, float("-inf"))
        additive = additive + part.to(work)
    return additive


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q, K, V projections (``q_proj``, ``k_proj``, ``v_proj``) and
    the output projection ``out_proj`` — the layout of ``nn.MultiheadAttention`` with ``kdim``/``vdim``.

    ``forward`` returns ``(output, weights)``: output ``(B, L, E)`` and the **per-head** weights
    ``(B, H, L, S)`` (``nn.MultiheadAttention`` averages them over heads unless
    ``average_attn_weights=False``). Masks: True = may attend (SDPA's polarity, the opposite of
    ``nn.MultiheadAttention``'s); a query with every key masked gives zeros (PyTorch's gives NaN).
    No dropout: ``from_torch`` matches a module in ``eval()`` mode.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, kdim: int | None = None,
                 vdim: int | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W^Q of all heads, side by side
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W^O

    @reference
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query ``(B, L, E)``, key ``(B, S, kdim)``, value ``(B, S, vdim)``; ``key_padding_mask``
        ``(B, S)``; ``attn_mask`` ``(L, S)`` or ``(B, H, L, S)``; ``is_causal``: query i sees keys j ≤ i.
        Boolean masks: True = may attend. Returns ``(output (B, L, E), weights (B, H, L, S))``."""
        self._check_inputs(query, key, value)
        B, L, _ = query.shape
        S = key.shape[1]
        q = split_heads(self.q_proj(query), self.num_heads)  # (B, H, L, d)
        k = split_heads(self.k_proj(key), self.num_heads)  # (B, H, S, d)
        v = split_heads(self.v_proj(value), self.num_heads)  # (B, H, S, d)
        mask = _combined_mask(key_padding_mask, attn_mask, is_causal, B, self.num_heads, L, S, query)
        weights = attention_weights(q, k, attn_mask=mask)  # (B, H, L, S), scaled by 1/√d
        heads = torch.matmul(weights, v)  # (B, H, L, S) @ (B, H, S, d) -> (B, H, L, d)
        return self.out_proj(merge_heads(heads)), weights  # (B, L, E), (B, H, L, S)

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        for name, x, width, letters in (("query", query, self.embed_dim, "(B, L, E)"),
                                        ("key", key, self.kdim, "(B, S, kdim)"),
                                        ("value", value, self.vdim, "(B, S, vdim)")):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 3 or x.shape[-1] != width:
                raise ValueError(f"{name} must have shape {letters} with last size {width} (batch first), "
                                 f"got {tuple(x.shape)}")
        if not query.shape[0] == key.shape[0] == value.shape[0] or key.shape[1] != value.shape[1]:
            raise ValueError(f"query (B, L, E), key (B, S, kdim) and value (B, S, vdim) must share B, and key "
                             f"and value S; got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A copy of ``nn.MultiheadAttention(..., batch_first=True)`` (as in ``eval()``: no dropout).

        Give it the same inputs and the masks inverted (``~mask`` for boolean ones) and it returns the
        same output, and the weights per head where ``module`` averages them.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
        if not module.batch_first:
            raise ValueError("from_torch needs nn.MultiheadAttention(..., batch_first=True)")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn have no counterpart here")
        bias = module.in_proj_bias is not None
        copy = cls(module.embed_dim, module.num_heads, bias=bias, kdim=module.kdim, vdim=module.vdim)
        E = module.embed_dim
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.split(E)  # three (E, E): W^Q, W^K, W^V stacked
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = module.in_proj_bias.split(E) if bias else (None, None, None)
        copy.to(device=module.out_proj.weight.device, dtype=module.out_proj.weight.dtype)
        with torch.no_grad():
            for linear, weight, b in zip((copy.q_proj, copy.k_proj, copy.v_proj), weights, biases):
                linear.weight.copy_(weight)
                if b is not None:
                    linear.bias.copy_(b)
            copy.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                copy.out_proj.bias.copy_(module.out_proj.bias)
        return copy


class CausalSelfAttention(nn.Module):
    """Masked self-attention of a decoder (GPT's block): Q, K and V all come from ``x``, through one
    fused projection ``qkv`` (``(3E, E)``: W^Q, W^K, W^V stacked), and query i attends keys 0…i only
    (Vaswani et al. §3.2.3: "preventing leftward information flow"). ``forward(x)`` -> ``(B, L, E)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @reference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must have shape (B, L, E) with E = {self.embed_dim}, "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # three (B, L, E)
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))  # each (B, H, L, d)
        weights = attention_weights(q, k, is_causal=True)  # (B, H, L, L), 1/√d, lower triangle
        return self.out_proj(merge_heads(torch.matmul(weights, v)))  # (B, H, L, d) -> (B, L, E)

