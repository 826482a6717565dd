"""Lesson 06 — multi-head and self-attention: ``split_heads``, ``merge_heads``, the module
``MultiHeadAttention`` and the module ``CausalSelfAttention``.

Each known mistake is the reference computation with one knob turned the wrong way
(``split_variant``, ``merge_variant``, ``mha_variant``, ``causal_variant``). The inputs are random
numbers, never a copy task: a split without the transpose followed by a merge without it gives the
input back, so only a mix of tokens and features that differ everywhere shows it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from course_lib import attention, runtime
from course_lib.attention import mha
from course_lib.grading.forbidden import PYTORCH_MHA, PYTORCH_SDPA
from course_lib.grading.framework import Behaviour, Case, Exercise, Mistake, ModuleSpec, variant
from course_lib.shortcuts import Forbidden

# Everything that would be the answer: PyTorch's attention and multi-head attention, and the course's own.
_FORBIDDEN = PYTORCH_SDPA | PYTORCH_MHA | Forbidden(references=(
    mha.split_heads, mha.merge_heads, mha.MultiHeadAttention.forward, mha.CausalSelfAttention.forward,
    attention.attention_weights, attention.scaled_dot_product_attention,
))


def _size(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=gen))


# --- split and merge ----------------------------------------------------------------------------


def split_variant(
    x: torch.Tensor, num_heads: int, *, order: Literal["heads_first", "no_transpose", "interleaved"] = "heads_first"
) -> torch.Tensor:
    B, L, E = x.shape
    d = E // num_heads
    if order == "no_transpose":
        return x.reshape(B, num_heads, L, d)  # (B, H, L, d) in shape only: tokens and features mixed
    if order == "interleaved":
        return x.reshape(B, L, d, num_heads).permute(0, 3, 1, 2)  # (B, H, L, d): head h gets features h, h+H, …
    return x.reshape(B, L, num_heads, d).transpose(1, 2)  # (B, H, L, d)


def merge_variant(x: torch.Tensor, *, order: Literal["heads_first", "no_transpose", "interleaved"] = "heads_first"
                  ) -> torch.Tensor:
    B, H, L, d = x.shape
    if order == "no_transpose":
        return x.reshape(B, L, H * d)  # (B, L, E) in shape only
    if order == "interleaved":
        return x.permute(0, 2, 3, 1).reshape(B, L, H * d)  # (B, L, d, H) -> (B, L, E): features interleaved
    return x.transpose(1, 2).reshape(B, L, H * d)  # (B, L, H, d) -> (B, L, E)


_NO_TRANSPOSE = "the heads are split with a reshape alone, without the transpose"
_NO_TRANSPOSE_HINT = (
    "x.reshape(B, H, L, d) has the right shape but cuts the flat (L·E) memory in H pieces, so one "
    "'head' gets whole tokens instead of a slice of every token; reshape to (B, L, H, d) first, then "
    "x.transpose(1, 2) -> (B, H, L, d)"
)
_INTERLEAVED = "the features are cut into heads in the wrong order (head h gets features h, h+H, h+2H, …)"
_INTERLEAVED_HINT = (
    "reshape to (B, L, H, d), not (B, L, d, H): head h owns the contiguous slice of features "
    "h·d … (h+1)·d - 1, the slice that the h-th block of rows of W^Q projects to"
)
_MERGE_NO_TRANSPOSE = "the heads are merged with a reshape alone, without the transpose"
_MERGE_NO_TRANSPOSE_HINT = (
    "(B, H, L, d).reshape(B, L, E) puts pieces of different tokens side by side; bring each token's "
    "heads together first: x.transpose(1, 2) -> (B, L, H, d), then .reshape(B, L, H * d)"
)
_MERGE_INTERLEAVED_HINT = (
    "merge_heads must undo split_heads: transpose(1, 2) to (B, L, H, d) and reshape, so head h's "
    "features land in columns h·d … (h+1)·d - 1"
)


def _split_cases(gen: torch.Generator) -> list[Case]:
    B, L, H, d = _size(gen, 2, 3), _size(gen, 3, 6), _size(gen, 2, 4), _size(gen, 2, 5)

    def x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return runtime.randn(*shape, gen=gen, dtype=dtype)

    return [
        Case(f"(B, L, E) = {(B, L, H * d)}, {H} heads", (x(B, L, H * d), H)),
        Case("one token per sequence", (x(B, 1, H * d), H)),
        Case("one head (nothing to split)", (x(B, L, d), 1)),
        Case("as many heads as features (d = 1)", (x(B, L, H), H)),
        Case("float64, and its gradient", (x(B, L, H * d, dtype=torch.float64), H), check_gradients=True),
    ]


def _merge_cases(gen: torch.Generator) -> list[Case]:
    B, L, H, d = _size(gen, 2, 3), _size(gen, 3, 6), _size(gen, 2, 4), _size(gen, 2, 5)

    def x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return runtime.randn(*shape, gen=gen, dtype=dtype)

    return [
        Case(f"(B, H, L, d) = {(B, H, L, d)}", (x(B, H, L, d),)),
        Case("one head", (x(B, 1, L, d),)),
        Case("a non-contiguous input (the output of a matmul with transposed heads)", (x(B, L, H, d).transpose(1, 2),)),
        Case("float64, and its gradient", (x(B, H, L, d, dtype=torch.float64),), check_gradients=True),
    ]


SPLIT_HEADS = Exercise(
    name="split_heads",
    reference=mha.split_heads,
    make_cases=_split_cases,
    mistakes=(
        Mistake(_NO_TRANSPOSE, _NO_TRANSPOSE_HINT, variant(split_variant, order="no_transpose")),
        Mistake(_INTERLEAVED, _INTERLEAVED_HINT, variant(split_variant, order="interleaved")),
    ),
    forbidden=_FORBIDDEN,
)

MERGE_HEADS = Exercise(
    name="merge_heads",
    reference=mha.merge_heads,
    make_cases=_merge_cases,
    mistakes=(
        Mistake(_MERGE_NO_TRANSPOSE, _MERGE_NO_TRANSPOSE_HINT, variant(merge_variant, order="no_transpose")),
        Mistake("the heads are merged in the wrong order (features interleaved)", _MERGE_INTERLEAVED_HINT,
                variant(merge_variant, order="interleaved")),
    ),
    forbidden=_FORBIDDEN,
)


# --- the multi-head attention module -------------------------------------------------------------


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
                     additive: torch.Tensor | None, scale: float, empty_rows: str = "zero"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ·scale + masks) v per head; a query with nothing to attend to gets zeros (or NaN,
    as ``torch.softmax`` gives, with ``empty_rows="nan"``)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, L, S)
    if additive is not None:
        scores = scores + additive
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if empty_rows == "nan":
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))  # an all -inf row: exp(NaN)
        weights = weights / weights.sum(-1, keepdim=True)  # (B, H, L, S)
    else:
        weights = attention.softmax(scores, dim=-1)  # (B, H, L, S)
    return torch.matmul(weights, v), weights  # (B, H, L, d), (B, H, L, S)


class MultiHeadAttentionVariant(nn.Module):
    """The reference's parameters and forward, with knobs; each knob's first value is the right one."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, kdim: int | None = None,
                 vdim: int | None = None, *, knobs: dict | None = None):
        super().__init__()
        self.embed_dim, self.num_heads, self.knobs = embed_dim, num_heads, dict(knobs or {})
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _project(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.knobs.get("projection") == "weight_untransposed":
            out = torch.matmul(x, linear.weight)  # x Wᵀ written as x W: contracts W's output dimension
            return out + linear.bias if linear.bias is not None else out
        return linear(x)

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False):  # noqa: ANN001
        knob = self.knobs.get
        B, L, E = query.shape
        S, H = key.shape[1], self.num_heads
        split = lambda t: split_variant(t, H, order=knob("split", "heads_first"))  # noqa: E731
        q, k, v = (split(self._project(p, t)) for p, t in ((self.q_proj, query), (self.k_proj, key),
                                                             (self.v_proj, value)))  # each (B, H, ·, d)
        invert = knob("polarity") == "pytorch"  # True = blocked, as nn.MultiheadAttention
        allowed, additive = None, None

        def allow(mask: torch.Tensor) -> None:
            nonlocal allowed
            mask = ~mask if invert else mask
            allowed = mask if allowed is None else allowed & mask

        if key_padding_mask is not None:
            if knob("padding") == "queries":
                allow(key_padding_mask[:, None, :, None])  # (B, 1, L, 1): hides queries, not keys
            else:
                allow(key_padding_mask[:, None, None, :])  # (B, 1, 1, S)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                allow(attn_mask)
            else:
                additive = attn_mask
        if is_causal and knob("causal") != "ignore":
            ones = torch.ones(L, S, dtype=torch.bool, device=query.device)
            causal = ones.triu() if knob("causal") == "future" else ones.tril()  # (L, S)
            allowed = causal if allowed is None else allowed & causal  # the causal mask is never inverted
        width = {"head_dim": E // H, "embed_dim": E}[knob("scale", "head_dim")]
        heads, weights = _heads_attention(q, k, v, allowed, additive, 1.0 / math.sqrt(width),
                                          knob("empty_rows", "zero"))
        if knob("averaged"):
            weights = weights.mean(dim=1)  # (B, L, S): what nn.MultiheadAttention returns by default
        merged = merge_variant(heads, order=knob("merge", "heads_first"))  # (B, L, E)
        out = merged if knob("out_proj") == "missing" else self._project(self.out_proj, merged)
        return out, weights


def mha_variant(
    embed_dim: int, num_heads: int, bias: bool = True, kdim: int | None = None, vdim: int | None = None, *,
    split: Literal["heads_first", "no_transpose", "interleaved"] = "heads_first",
    merge: Literal["heads_first", "no_transpose"] = "heads_first",
    projection: Literal["right", "weight_untransposed"] = "right",
    scale: Literal["head_dim", "embed_dim"] = "head_dim",
    padding: Literal["keys", "queries"] = "keys",
    polarity: Literal["sdpa", "pytorch"] = "sdpa",
    causal: Literal["past", "future", "ignore"] = "past",
    averaged: bool = False,
    out_proj: Literal["applied", "missing"] = "applied",
    empty_rows: Literal["zero", "nan"] = "zero",  # a query with every key masked: zeros, or torch.softmax's NaN
) -> nn.Module:
    """A ``MultiHeadAttentionVariant`` with its knobs set (a mistake is ``variant(mha_variant, knob=…)``)."""
    knobs = dict(split=split, merge=merge, projection=projection, scale=scale, padding=padding,
                 polarity=polarity, causal=causal, averaged=averaged, out_proj=out_proj, empty_rows=empty_rows)
    return MultiHeadAttentionVariant(embed_dim, num_heads, bias, kdim, vdim, knobs=knobs)


_SCALE_MISTAKE = "the scores are scaled by 1/√embed_dim instead of 1/√head_dim"
_SCALE_HINT = ("each head is an attention of width d = embed_dim / num_heads: its dot products have variance d, "
               "so divide by √d (Vaswani et al. §3.2.1), not by √embed_dim")
_LEAK = "the causal mask leaks the future (query i sees keys j > i)"
_LEAK_HINT = "query i may attend keys 0..i: keep torch.ones(L, S, dtype=torch.bool).tril(), not triu()"

MHA_MISTAKES = (
    Mistake(_NO_TRANSPOSE, _NO_TRANSPOSE_HINT, variant(mha_variant, split="no_transpose")),
    Mistake(_INTERLEAVED, _INTERLEAVED_HINT, variant(mha_variant, split="interleaved")),
    Mistake(_MERGE_NO_TRANSPOSE, _MERGE_NO_TRANSPOSE_HINT, variant(mha_variant, merge="no_transpose")),
    Mistake(
        "the projection is applied to the wrong dimension of its weight (x @ W instead of x @ Wᵀ)",
        "an nn.Linear's weight has shape (out_features, in_features): call the layer, self.q_proj(x), or "
        "write x @ self.q_proj.weight.T + self.q_proj.bias — with kdim != embed_dim, x @ W does not even fit",
        variant(mha_variant, projection="weight_untransposed"),
    ),
    Mistake(_SCALE_MISTAKE, _SCALE_HINT, variant(mha_variant, scale="embed_dim")),
    Mistake(
        "the output projection W^O is left out",
        "after merging the heads, apply self.out_proj: MultiHead(Q, K, V) = Concat(head_1, …, head_h) W^O",
        variant(mha_variant, out_proj="missing"),
    ),
    Mistake(
        "the weights are averaged over the heads (B, L, S) where per-head weights (B, H, L, S) are asked",
        "return the weights of every head, shape (B, H, L, S); nn.MultiheadAttention averages them "
        "unless average_attn_weights=False, this module does not",
        variant(mha_variant, averaged=True),
    ),
    *(
        Mistake(
            "the key padding mask is applied to the queries instead of the keys",
            "key_padding_mask (B, S) says which *keys* may be attended: broadcast it as "
            "key_padding_mask[:, None, None, :] -> (B, 1, 1, S), so that it hides columns of the scores",
            variant(mha_variant, padding="queries", empty_rows=empty_rows),
        )
        for empty_rows in ("zero", "nan")
    ),
    Mistake(
        "the masks have nn.MultiheadAttention's polarity (True = ignore)",
        "here a boolean mask is True where attention is *allowed* (SDPA's convention): fill -inf where "
        "it is False, scores.masked_fill(~mask, float('-inf'))",
        variant(mha_variant, polarity="pytorch"),
    ),
    Mistake(_LEAK, _LEAK_HINT, variant(mha_variant, causal="future")),
    Mistake("`is_causal` is ignored", "with is_causal=True hide the keys after each query: "
            "torch.ones(L, S, dtype=torch.bool, device=query.device).tril()", variant(mha_variant, causal="ignore")),
)


def _linear_state(prefix: str, n_in: int, n_out: int, bias: bool, gen: torch.Generator, dtype: torch.dtype
                  ) -> dict[str, torch.Tensor]:
    state = {f"{prefix}.weight": runtime.randn(n_out, n_in, gen=gen, dtype=dtype) / math.sqrt(n_in)}
    if bias:
        state[f"{prefix}.bias"] = 0.5 * runtime.randn(n_out, gen=gen, dtype=dtype)
    return state


def mha_state(embed_dim: int, num_heads: int, bias: bool = True, kdim: int | None = None, vdim: int | None = None,
              *, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Weights for ``MultiHeadAttention(embed_dim, num_heads, bias, kdim, vdim)``, by its parameter names."""
    state = {}
    for name, width in (("q_proj", embed_dim), ("k_proj", kdim or embed_dim), ("v_proj", vdim or embed_dim),
                        ("out_proj", embed_dim)):
        state |= _linear_state(name, width, embed_dim, bias, gen, dtype)
    return state


def _padding(B: int, S: int, gen: torch.Generator) -> torch.Tensor:
    """(B, S), True = may attend: every sequence loses its last key, the last one its last two; key 0 is
    always kept."""
    allowed = torch.rand(B, S, generator=gen) > 0.3
    allowed[:, 0] = True
    allowed[:, -1] = False  # every sequence has padding: inverted, the mask still leaves each query a key
    allowed[-1, S - 2:] = False
    return allowed


def _mha_cases(gen: torch.Generator) -> list[Case]:
    B, H, d = 2, _size(gen, 2, 4), _size(gen, 2, 4)
    E, L, S = H * d, _size(gen, 4, 6), _size(gen, 7, 9)
    kdim, vdim = E + _size(gen, 1, 3), E + _size(gen, 4, 6)

    def case(name: str, L: int, S: int, *, kdim: int | None = None, vdim: int | None = None, bias: bool = True,
             self_attention: bool = False, dtype: torch.dtype = torch.float32, grads: bool = False,
             **kwargs: object) -> Case:
        init = {"embed_dim": E, "num_heads": H, "bias": bias, "kdim": kdim, "vdim": vdim}
        state = mha_state(**init, gen=gen, dtype=dtype)
        query = runtime.randn(B, L, E, gen=gen, dtype=dtype)
        if self_attention:
            key = value = query
        else:
            key = runtime.randn(B, S, kdim or E, gen=gen, dtype=dtype)
            value = runtime.randn(B, S, vdim or E, gen=gen, dtype=dtype)
        return Case(name, (query, key, value), dict(kwargs), check_gradients=grads, init=init, state=state)

    causal_padding = _padding(B, L, gen)
    allowed = torch.rand(L, S, generator=gen) > 0.4  # (L, S)
    allowed[:, 0] = True
    return [
        # The first cases are square (L = S, kdim = vdim = embed_dim): a mistake that only fits those
        # shapes (x @ W, a padding mask on the queries) is named before a rectangular case would crash it.
        case(f"self-attention, {H} heads of width {d}", L, L, self_attention=True),
        case("self-attention with key padding", L, L, self_attention=True, key_padding_mask=_padding(B, L, gen)),
        case("cross-attention, L != S, kdim and vdim != embed_dim", L, S, kdim=kdim, vdim=vdim),
        case("cross-attention with key padding", L, S, kdim=kdim, vdim=vdim, key_padding_mask=_padding(B, S, gen)),
        case("causal self-attention (is_causal=True)", L, L, self_attention=True, is_causal=True),
        case("causal self-attention with key padding", L, L, self_attention=True, is_causal=True,
             key_padding_mask=causal_padding),
        case("a boolean attn_mask (L, S)", L, S, attn_mask=allowed),
        case("a float attn_mask (L, S), no biases", L, S, bias=False,
             attn_mask=runtime.randn(L, S, gen=gen)),
        case("float64 with padding and is_causal, and its gradients", L, L, dtype=torch.float64, grads=True,
             is_causal=True, key_padding_mask=causal_padding),
        case("bfloat16", L, S, kdim=kdim, dtype=torch.bfloat16, key_padding_mask=_padding(B, S, gen)),
    ]


def _future_must_not_matter(make_state, E: int, H: int):  # noqa: ANN001, ANN202
    """Changing the tokens after position t leaves the outputs 0..t unchanged (causal self-attention)."""

    def test(call, device: torch.device, gen: torch.Generator, **call_options) -> str | None:  # noqa: ANN001
        L, t = 11, 4  # longer than any case: a mask that only works on the cases' lengths shows
        x = runtime.randn(1, L, E, gen=gen, device=device)
        changed = x.clone()
        changed[:, t + 1:] = 10.0 * runtime.randn(1, L - t - 1, E, gen=gen, device=device)
        init, state = make_state(gen)
        before, after = (call(*call_options["args"](y), init=init, state=state, **call_options.get("kwargs", {}))
                         for y in (x, changed))
        if before.shape != (1, L, E) or after.shape != (1, L, E):
            return f"expected outputs of shape {(1, L, E)}, got {tuple(before.shape)}"
        moved = (before[:, : t + 1] - after[:, : t + 1]).abs().max().item()
        if moved > 1e-5:
            return (f"changing only the tokens after position {t} changed the outputs at positions 0..{t} by up "
                    f"to {moved:.3g} — a causal layer must not let a token see the future")
        return None

    return test


def _mha_future(call, device: torch.device, gen: torch.Generator) -> str | None:  # noqa: ANN001
    E, H = 12, 3
    make = lambda g: ({"embed_dim": E, "num_heads": H}, mha_state(E, H, gen=g))  # noqa: E731
    return _future_must_not_matter(make, E, H)(call, device, gen, args=lambda y: (y, y, y), kwargs={"is_causal": True})


MULTI_HEAD_ATTENTION = Exercise(
    name="MultiHeadAttention",
    reference=mha.MultiHeadAttention,
    make_cases=_mha_cases,
    mistakes=MHA_MISTAKES,
    forbidden=_FORBIDDEN,
    behaviours=(Behaviour("the future does not matter with is_causal=True", _mha_future),),
    output_names=("output", "weights"),
    module=ModuleSpec(),
    depends_on=(SPLIT_HEADS, MERGE_HEADS),
)


# --- a causal self-attention layer ---------------------------------------------------------------


class CausalSelfAttentionVariant(nn.Module):
    """The reference layer with knobs; each knob's first value is the right one."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, *, knobs: dict | None = None):
        super().__init__()
        self.embed_dim, self.num_heads, self.knobs = embed_dim, num_heads, dict(knobs or {})
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        knob = self.knobs.get
        B, L, E = x.shape
        H = self.num_heads
        fused = self.qkv(x)  # (B, L, 3E)
        if knob("qkv") == "per_head":
            # (B, L, H, 3, d): reads the fused output as if it were laid out head by head
            q, k, v = fused.reshape(B, L, H, 3, E // H).unbind(dim=3)  # three (B, L, H, d)
            q, k, v = (t.reshape(B, L, E) for t in (q, k, v))  # (B, L, E)
        else:
            q, k, v = fused.chunk(3, dim=-1)  # three (B, L, E)
        q, k, v = (split_variant(t, H, order=knob("split", "heads_first")) for t in (q, k, v))  # (B, H, L, d)
        ones = torch.ones(L, L, dtype=torch.bool, device=x.device)
        causal = {"past": ones.tril(), "future": ones.triu(), "no_diagonal": ones.tril(-1),
                  "ignore": ones}[knob("causal", "past")]  # (L, L)
        width = {"head_dim": E // H, "embed_dim": E}[knob("scale", "head_dim")]
        heads, _ = _heads_attention(q, k, v, causal, None, 1.0 / math.sqrt(width))  # (B, H, L, d)
        return self.out_proj(merge_variant(heads))  # (B, L, E)


def causal_variant(
    embed_dim: int, num_heads: int, bias: bool = True, *,
    qkv: Literal["chunk", "per_head"] = "chunk",
    split: Literal["heads_first", "no_transpose"] = "heads_first",
    causal: Literal["past", "future", "no_diagonal", "ignore"] = "past",
    scale: Literal["head_dim", "embed_dim"] = "head_dim",
) -> nn.Module:
    """A ``CausalSelfAttentionVariant`` with its knobs set."""
    return CausalSelfAttentionVariant(embed_dim, num_heads, bias,
                                      knobs=dict(qkv=qkv, split=split, causal=causal, scale=scale))


def causal_state(embed_dim: int, num_heads: int, bias: bool = True, *, gen: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Weights for ``CausalSelfAttention(embed_dim, num_heads, bias)``, by its parameter names."""
    return (_linear_state("qkv", embed_dim, 3 * embed_dim, bias, gen, dtype)
            | _linear_state("out_proj", embed_dim, embed_dim, bias, gen, dtype))


def _causal_cases(gen: torch.Generator) -> list[Case]:
    B, H, d = 2, _size(gen, 2, 4), _size(gen, 2, 4)
    E, L = H * d, _size(gen, 5, 8)

    def case(name: str, L: int, *, heads: int = H, bias: bool = True, dtype: torch.dtype = torch.float32,
             grads: bool = False) -> Case:
        init = {"embed_dim": E, "num_heads": heads, "bias": bias}
        return Case(name, (runtime.randn(B, L, E, gen=gen, dtype=dtype),), check_gradients=grads, init=init,
                    state=causal_state(**init, gen=gen, dtype=dtype))

    return [
        case(f"{H} heads of width {d}, L = {L}", L),
        case("one head", L, heads=1),
        case("a single token", 1),
        case("no biases", L, bias=False),
        case("float64, and its gradients", L, dtype=torch.float64, grads=True),
    ]


def _causal_future(call, device: torch.device, gen: torch.Generator) -> str | None:  # noqa: ANN001
    E, H = 12, 3
    make = lambda g: ({"embed_dim": E, "num_heads": H}, causal_state(E, H, gen=g))  # noqa: E731
    return _future_must_not_matter(make, E, H)(call, device, gen, args=lambda y: (y,))


CAUSAL_SELF_ATTENTION = Exercise(
    name="CausalSelfAttention",
    reference=mha.CausalSelfAttention,
    make_cases=_causal_cases,
    mistakes=(
        Mistake(_LEAK, _LEAK_HINT, variant(causal_variant, causal="future")),
        Mistake(
            "the causal mask hides the diagonal (a token cannot see itself)",
            "query i may attend keys 0..i inclusive: torch.ones(L, L, dtype=torch.bool).tril()",
            variant(causal_variant, causal="no_diagonal"),
        ),
        Mistake("there is no causal mask", "hide the keys after each query: "
                "torch.ones(L, L, dtype=torch.bool, device=x.device).tril()", variant(causal_variant, causal="ignore")),
        Mistake(
            "the fused qkv output is cut per head instead of into Q, K and V first",
            "self.qkv(x) is [x W^Qᵀ | x W^Kᵀ | x W^Vᵀ] along the last axis: .chunk(3, dim=-1) gives Q, K, V "
            "(each (B, L, E)), and only then is each split into heads",
            variant(causal_variant, qkv="per_head"),
        ),
        Mistake(_NO_TRANSPOSE, _NO_TRANSPOSE_HINT, variant(causal_variant, split="no_transpose")),
        Mistake(_SCALE_MISTAKE, _SCALE_HINT, variant(causal_variant, scale="embed_dim")),
    ),
    forbidden=_FORBIDDEN,
    behaviours=(Behaviour("changing a future token does not change earlier outputs", _causal_future),),
    module=ModuleSpec(),
    depends_on=(SPLIT_HEADS, MERGE_HEADS),
)

EXERCISES = (SPLIT_HEADS, MERGE_HEADS, MULTI_HEAD_ATTENTION, CAUSAL_SELF_ATTENTION)
