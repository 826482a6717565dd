"""A small encoder–decoder Transformer (Vaswani et al. 2017, arXiv:1706.03762, §3), built on the
course's ``MultiHeadAttention``, for the same corpus and length figure as the recurrent models.

Three attentions, one module (§3.2.3): the encoder's self-attention (every source token sees every
other, padding hidden), the decoder's *causal* self-attention (target token t sees tokens 0…t), and
the decoder's cross-attention (queries from the decoder, keys and values from the encoder's output).
Positions are the paper's sinusoids (§3.5), added to embeddings scaled by √d_model (§3.4).

**Pre-norm**, not the paper's post-norm: each sub-layer computes ``x + Sublayer(LayerNorm(x))`` and
the stacks end with a LayerNorm. The paper's ``LayerNorm(x + Sublayer(x))`` puts a normalisation on
the residual path, and at initialisation the gradients near the output are large — it needs a
learning-rate warm-up to train at all (Xiong et al. 2020, arXiv:2002.04745, §3). Pre-norm keeps an
identity path from the loss to every layer and trains without warm-up at the recurrent models'
learning rate, which is what "the same loop and the same budget" asks of it here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.attention.mha import MultiHeadAttention

__all__ = ["sinusoidal_positions", "Transformer", "EncoderLayer", "DecoderLayer"]


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """``(length, d_model)``: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same) (§3.5)."""
    if d_model % 2:
        raise ValueError(f"d_model must be even for sine/cosine pairs, got {d_model}")
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d/2,)
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)  # (length, d/2)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class FeedForward(nn.Sequential):
    """FFN(x) = max(0, x W1 + b1) W2 + b2, applied to each position alone (§3.3)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    """Self-attention then a feed-forward network, each as ``x + f(LayerNorm(x))``."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int):
        super().__init__()
        self.norm_attn, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, x: torch.Tensor, src_allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm_attn(x)
        attended, weights = self.self_attn(h, h, h, key_padding_mask=src_allowed)  # (B, S, d), (B, H, S, S)
        x = x + attended
        return x + self.ff(self.norm_ff(x)), weights


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder's output, a feed-forward network."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ff = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_allowed: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm_self(y)
        attended, self_weights = self.self_attn(h, h, h, is_causal=True)  # (B, T, d), (B, H, T, T)
        y = y + attended
        h = self.norm_cross(y)
        attended, cross_weights = self.cross_attn(h, memory, memory, key_padding_mask=src_allowed)  # (B, H, T, S)
        y = y + attended
        return y + self.ff(self.norm_ff(y)), self_weights, cross_weights


class Transformer(nn.Module):
    """An encoder–decoder Transformer over token ids (batch first; ``pad_id`` marks padding).

    ``forward(src (B, S), tgt_in (B, T)) -> logits (B, T, tgt_vocab)`` under teacher forcing;
    ``greedy_decode`` translates; ``attention_maps`` returns every layer's per-head weights.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 64, num_heads: int = 4,
                 num_layers: int = 2, d_ff: int = 256, pad_id: int = 0, max_len: int = 256):
        super().__init__()
        self.d_model, self.pad_id = d_model, pad_id
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=pad_id)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=pad_id)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, d_ff) for _ in range(num_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, num_heads, d_ff) for _ in range(num_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.generator = nn.Linear(d_model, tgt_vocab)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.positions.shape[0]:
            raise ValueError(f"sequences are at most max_len = {self.positions.shape[0]} tokens, got {ids.shape[1]}")
        return table(ids) * math.sqrt(self.d_model) + self.positions[: ids.shape[1]]  # (B, n, d)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``src (B, S)`` -> memory ``(B, S, d)``, the keys that may be attended ``(B, S)``, and each
        layer's self-attention weights ``(B, H, S, S)``."""
        if src.dim() != 2:
            raise ValueError(f"src must be token ids of shape (B, S), got {tuple(src.shape)}")
        src_allowed = src != self.pad_id  # (B, S): True = a real token, may be attended
        x, maps = self._embed(self.src_embed, src), []
        for layer in self.encoder:
            x, weights = layer(x, src_allowed)
            maps.append(weights)
        return self.encoder_norm(x), src_allowed, maps

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_allowed: torch.Tensor
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``tgt_in (B, T)`` -> logits ``(B, T, V)``, and each layer's self- and cross-attention weights."""
        y, self_maps, cross_maps = self._embed(self.tgt_embed, tgt_in), [], []
        for layer in self.decoder:
            y, self_weights, cross_weights = layer(y, memory, src_allowed)
            self_maps.append(self_weights)
            cross_maps.append(cross_weights)
        return self.generator(self.decoder_norm(y)), self_maps, cross_maps

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_allowed, _ = self.encode(src)
        return self.decode(tgt_in, memory, src_allowed)[0]  # (B, T, V)

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, sos_id: int, eos_id: int, max_len: int | None = None) -> list[list[int]]:
        """The most likely next token, one step at a time, until ``<eos>`` (which is not returned).

        The decoder reruns over the whole prefix at each step (no KV cache: lesson 07 adds one)."""
        memory, src_allowed, _ = self.encode(src)
        max_len = max_len or min(2 * src.shape[1] + 10, self.positions.shape[0] - 1)
        tokens = torch.full((src.shape[0], 1), sos_id, dtype=torch.long, device=src.device)  # (B, 1)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            logits = self.decode(tokens, memory, src_allowed)[0][:, -1]  # (B, V): the last position's
            next_token = logits.argmax(-1).masked_fill(finished, self.pad_id)  # (B,)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
            finished |= next_token == eos_id
            if finished.all():
                break
        out = []
        for row in tokens[:, 1:].tolist():
            out.append(row[: row.index(eos_id)] if eos_id in row else [t for t in row if t != self.pad_id])
        return out

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, tgt_in: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Per-head weights of every layer: ``{"encoder": [(B, H, S, S)], "decoder self": [(B, H, T, T)],
        "decoder cross": [(B, H, T, S)]}`` — lists indexed by layer."""
        memory, src_allowed, encoder_maps = self.encode(src)
        _, self_maps, cross_maps = self.decode(tgt_in, memory, src_allowed)
        return {"encoder": encoder_maps, "decoder self": self_maps, "decoder cross": cross_maps}
