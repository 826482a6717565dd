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
learning rate, which is what "the same loop and the same budget" asks of it here
(``python -m course_lib.train transformer``: the recurrent models' recipe, Adam 2e-3, no schedule).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.attention.mha import MultiHeadAttention
from course_lib.seq2seq import ModelConfig, Seq2Seq

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


def _decoder_step(layer: DecoderLayer, prefix: torch.Tensor, memory: torch.Tensor, src_allowed: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer`` for the newest position only: ``prefix (B, t, d)`` holds the layer's inputs at positions
    0..t-1 (the newest last), which the newest position's causal self-attention may all see.
    Returns its output ``(B, 1, d)`` and its cross-attention weights ``(B, H, 1, S)``."""
    h = layer.norm_self(prefix)  # (B, t, d)
    y = prefix[:, -1:] + layer.self_attn(h[:, -1:], h, h)[0]  # (B, 1, d): the newest query, every key
    attended, cross_weights = layer.cross_attn(layer.norm_cross(y), memory, memory, key_padding_mask=src_allowed)
    y = y + attended
    return y + layer.ff(layer.norm_ff(y)), cross_weights


class Transformer(Seq2Seq):
    """An encoder–decoder Transformer behind the course's ``Seq2Seq`` interface (``course_lib.seq2seq``),
    so that the same training loop, greedy decoding and evaluation serve it and the recurrent models.

    Sizes from the ``ModelConfig`` the recurrent models share: ``d_model = hidden_size``, ``num_layers``
    encoder and decoder layers, a feed-forward width of ``2 · d_model`` (``embed_size`` is not used:
    the embeddings are ``d_model`` wide, as the residual stream). ``forward(src, src_lengths, tgt_in)``
    gives the logits ``(B, T, V)`` under teacher forcing in one pass; ``decode_step`` runs the newest
    position only, keeping each decoder layer's earlier inputs, and returns, as its attention weights,
    the last layer's cross-attention averaged over the heads; ``attention_maps`` returns every layer's heads.
    """

    name = "transformer"
    has_attention = True

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig | None = None,
                 num_heads: int = 4, max_len: int = 256, pad_id: int = 0):
        config = config or ModelConfig()
        super().__init__(src_vocab_size, tgt_vocab_size, config)
        d_model, d_ff = config.hidden_size, 2 * config.hidden_size
        self.d_model, self.pad_id = d_model, pad_id
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=pad_id)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model, padding_idx=pad_id)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, d_ff) for _ in range(config.num_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, num_heads, d_ff) for _ in range(config.num_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.generator = nn.Linear(d_model, tgt_vocab_size)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.positions.shape[0]:
            raise ValueError(f"sequences are at most max_len = {self.positions.shape[0]} tokens, got {ids.shape[1]}")
        return table(ids) * math.sqrt(self.d_model) + self.positions[: ids.shape[1]]  # (B, n, d)

    def _encode(self, src: torch.Tensor, src_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """memory ``(B, S, d)``, the keys that may be attended ``(B, S)``, each layer's ``(B, H, S, S)``."""
        if src.dim() != 2 or src_lengths.shape != (src.shape[0],):
            raise ValueError(f"src must be (B, S) token ids and src_lengths (B,), got {tuple(src.shape)} "
                             f"and {tuple(src_lengths.shape)}")
        src_allowed = torch.arange(src.shape[1], device=src.device) < src_lengths[:, None]  # (B, S): real tokens
        x, maps = self._embed(self.src_embed, src), []
        for layer in self.encoder:
            x, weights = layer(x, src_allowed)
            maps.append(weights)
        return self.encoder_norm(x), src_allowed, maps

    def _decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_allowed: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """logits ``(B, T, V)``, and each layer's self- ``(B, H, T, T)`` and cross-attention ``(B, H, T, S)``."""
        y, self_maps, cross_maps = self._embed(self.tgt_embed, tgt_in), [], []
        for layer in self.decoder:
            y, self_weights, cross_weights = layer(y, memory, src_allowed)
            self_maps.append(self_weights)
            cross_maps.append(cross_weights)
        return self.generator(self.decoder_norm(y)), self_maps, cross_maps

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_allowed, _ = self._encode(src, src_lengths)
        return self._decode(tgt_in, memory, src_allowed)[0]  # (B, T, V): every position at once

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple:
        memory, src_allowed, _ = self._encode(src, src_lengths)
        return memory, src_allowed, [None] * len(self.decoder)  # each layer's inputs so far: none yet

    def decode_step(self, y_prev: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        """One new position: every layer keeps its inputs at the earlier positions (a cache of layer
        inputs, not of keys and values), so only the newest position goes through the layer."""
        memory, src_allowed, inputs = state
        t = 0 if inputs[0] is None else inputs[0].shape[1]
        if t >= self.positions.shape[0]:
            raise ValueError(f"sequences are at most max_len = {self.positions.shape[0]} tokens")
        y = self.tgt_embed(y_prev[:, None]) * math.sqrt(self.d_model) + self.positions[t]  # (B, 1, d) at position t
        new_inputs = []
        for layer, earlier in zip(self.decoder, inputs):
            prefix = y if earlier is None else torch.cat([earlier, y], dim=1)  # (B, t + 1, d)
            new_inputs.append(prefix)
            y, cross_weights = _decoder_step(layer, prefix, memory, src_allowed)
        logits = self.generator(self.decoder_norm(y))[:, 0]  # (B, V)
        weights = cross_weights[:, :, 0].mean(dim=1)  # the last layer's (B, H, S), averaged -> (B, S)
        return logits, (memory, src_allowed, new_inputs), weights

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
                       ) -> dict[str, list[torch.Tensor]]:
        """Per-head weights of every layer: ``{"encoder": [(B, H, S, S)], "decoder self": [(B, H, T, T)],
        "decoder cross": [(B, H, T, S)]}`` — lists indexed by layer."""
        memory, src_allowed, encoder_maps = self._encode(src, src_lengths)
        _, self_maps, cross_maps = self._decode(tgt_in, memory, src_allowed)
        return {"encoder": encoder_maps, "decoder self": self_maps, "decoder cross": cross_maps}
