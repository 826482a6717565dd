"""Sequence to sequence with attention: Bahdanau et al.'s RNNsearch (lesson 03) and Luong et al.'s
global attention with its three scores (lesson 04), behind ``course_lib.seq2seq``'s interface.

- ``RNNSearch``: Bahdanau et al., arXiv:1409.0473, §3 and appendix A.1. A bidirectional GRU reads the
  source; the annotation of word j is ``h_j = [→h_j; ←h_j]``. The decoder starts from
  ``s_0 = tanh(W_s ←h_1)``; at step i it scores every annotation with its previous state,
  ``e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j)``, reads ``c_i = Σ_j α_ij h_j``, updates
  ``s_i = GRU([E y_{i-1}; c_i], s_{i-1})`` and predicts ``y_i`` from a maxout of
  ``[s_i; E y_{i-1}; c_i]`` (Eq. (4) of §3.1, ``p(y_i) = g(y_{i-1}, s_i, c_i)``; the appendix writes
  ``s_{i-1}`` in the read-out, the main text ``s_i``: we follow the main text). Both GRUs are
  Cho's (``course_lib.rnn.GRUCell``).
- ``LuongAttention``: Luong et al., arXiv:1508.04025, §3.1 (global attention). A stacked LSTM reads
  the source, a stacked LSTM started from its final state writes the target; with the decoder's top
  state ``h_t`` it scores every encoder top state (``dot``, ``general`` or ``concat``,
  ``course_lib.attention.recurrent``), reads ``c_t`` and predicts from
  ``h̃_t = tanh(W_c [c_t; h_t])``. Luong's input feeding (§3.3, ``h̃_{t-1}`` fed to the next step)
  is left out, so that a teacher-forced decoder runs as one LSTM call and attends to every step at
  once; their Table 1 puts its gain at about 1 BLEU.

Sizes follow ``ModelConfig``, the same as lessons 01-02's models: embedding E, hidden H per direction
and per layer (Bahdanau et al. use 1000 units per direction and in the decoder; we use H for each),
and an attention width of H.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.attention.recurrent import (
    concat_score,
    context_vector,
    dot_score,
    general_score,
    masked_softmax,
    source_mask,
)
from course_lib.rnn import GRUCell
from course_lib.seq2seq import ModelConfig, Seq2Seq, check_batch, reverse_within_lengths, run_gru
from course_lib.shortcuts import reference

__all__ = ["RNNSearch", "BahdanauDecoderStep", "attention_decoder_step", "LuongAttention", "SCORES"]


def _maxout(x: torch.Tensor, width: int) -> torch.Tensor:
    """The maximum of each pair of features: ``(..., 2·width) -> (..., width)``."""
    return x.unflatten(-1, (width, 2)).amax(dim=-1)  # (..., width, 2) -> (..., width)


class RNNSearch(Seq2Seq):
    """Bahdanau et al.'s RNNsearch (see the module's docstring); ``decode_step`` returns the weights."""

    name = "rnnsearch"
    has_attention = True

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig = ModelConfig()) -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, config)
        E, H = config.embed_size, config.hidden_size
        self.src_embedding = nn.Embedding(src_vocab_size, E, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, E, padding_idx=0)
        self.forward_encoder = GRUCell(E, H)
        self.backward_encoder = GRUCell(E, H)
        self.to_initial = nn.Linear(H, H)  # W_s, on ←h_1
        self.W_a = nn.Linear(H, H, bias=False)  # on s_{i-1}
        self.U_a = nn.Linear(2 * H, H, bias=False)  # on h_j
        self.v_a = nn.Parameter(torch.empty(H).uniform_(-1 / math.sqrt(H), 1 / math.sqrt(H)))
        self.decoder = GRUCell(E + 2 * H, H)
        self.readout = nn.Linear(H + E + 2 * H, 2 * H)  # on [s_i; E y_{i-1}; c_i], then maxout
        self.generator = nn.Linear(H, tgt_vocab_size)

    def annotations(self, src: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        """``h_j = [→h_j; ←h_j]`` for every source word: ``(B, S, 2H)`` (padding positions are junk,
        and masked wherever they are read)."""
        check_batch(src, src_lengths)
        embedded = self.src_embedding(src)  # (B, S, E)
        h0 = embedded.new_zeros(src.shape[0], self.config.hidden_size)
        forward_states, _ = run_gru(self.forward_encoder, embedded, h0, src_lengths)  # (B, S, H)
        # The backward GRU reads each sentence from its last word: reverse within the length, run, reverse back.
        backward_states, _ = run_gru(self.backward_encoder, reverse_within_lengths(embedded, src_lengths), h0, src_lengths)
        backward_states = reverse_within_lengths(backward_states, src_lengths)  # (B, S, H), ←h_j at j
        return torch.cat([forward_states, backward_states], dim=-1)  # (B, S, 2H)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """The state ``(s, annotations, U_a h, mask)``: ``U_a h_j`` is computed once per sentence."""
        annotations = self.annotations(src, src_lengths)
        H = self.config.hidden_size
        s = torch.tanh(self.to_initial(annotations[:, 0, H:]))  # s_0 = tanh(W_s ←h_1): (B, H)
        return s, annotations, self.U_a(annotations), source_mask(src_lengths.to(src.device), src.shape[1])

    def decode_step(self, y_prev: torch.Tensor, state):
        s, annotations, keys, mask = state
        logits, s, weights = attention_decoder_step(self, self.tgt_embedding(y_prev), s, annotations, keys, mask)
        return logits, (s, annotations, keys, mask), weights


def attention_decoder_step(parts: nn.Module, y_embedded: torch.Tensor, s_prev: torch.Tensor,
                           annotations: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Bahdanau's decoder with the layers of ``parts`` (``W_a``, ``v_a``, ``decoder``,
    ``readout``, ``generator``), given ``keys = U_a h_j`` computed once per sentence.

    Returns ``(logits (B, V), s_i (B, H), α_i (B, S))``: the weights come from ``s_{i-1}``, the
    read-out from ``s_i`` (see the module's docstring).
    """
    scores = torch.matmul(torch.tanh(parts.W_a(s_prev).unsqueeze(1) + keys), parts.v_a)  # additive_score: (B, S)
    weights = masked_softmax(scores, mask)  # (B, S)
    context = context_vector(weights, annotations)  # (B, A)
    s = parts.decoder(torch.cat([y_embedded, context], dim=-1), s_prev)  # s_i: (B, H)
    features = _maxout(parts.readout(torch.cat([s, y_embedded, context], dim=-1)), s.shape[-1])  # (B, H)
    return parts.generator(features), s, weights


class BahdanauDecoderStep(nn.Module):
    """Lesson 03's exercise: RNNsearch's decoder step as a module of its own.

    ``forward(y_embedded (B, E), s_prev (B, H), annotations (B, S, A), mask (B, S))`` returns
    ``(logits (B, V), s (B, H), weights (B, S))``; ``mask`` is True at real source words. The state
    update is PyTorch's ``nn.GRUCell`` (the shipped ``RNNSearch`` uses Cho's, ``course_lib.rnn``),
    so that a notebook's answer needs nothing from course_lib.
    """

    def __init__(self, embed_size: int, hidden_size: int, annotation_size: int, vocab_size: int) -> None:
        super().__init__()
        self.W_a = nn.Linear(hidden_size, hidden_size, bias=False)
        self.U_a = nn.Linear(annotation_size, hidden_size, bias=False)
        self.v_a = nn.Parameter(torch.empty(hidden_size).uniform_(-1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size)))
        self.decoder = nn.GRUCell(embed_size + annotation_size, hidden_size)
        self.readout = nn.Linear(hidden_size + embed_size + annotation_size, 2 * hidden_size)
        self.generator = nn.Linear(hidden_size, vocab_size)

    @reference
    def forward(self, y_embedded: torch.Tensor, s_prev: torch.Tensor, annotations: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if annotations.dim() != 3 or tuple(mask.shape) != tuple(annotations.shape[:2]) or mask.dtype != torch.bool:
            raise ValueError(f"BahdanauDecoderStep: annotations (B, S, A) and a boolean mask (B, S) expected, got "
                             f"{tuple(annotations.shape)} and {tuple(getattr(mask, 'shape', ()))} {getattr(mask, 'dtype', '')}")
        return attention_decoder_step(self, y_embedded, s_prev, annotations, self.U_a(annotations), mask)


SCORES = ("dot", "general", "concat")


class LuongAttention(Seq2Seq):
    """Luong et al.'s global attention with score ``"dot"``, ``"general"`` or ``"concat"`` (see the
    module's docstring)."""

    has_attention = True

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig = ModelConfig(),
                 score: str = "dot") -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, config)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        E, H, layers = config.embed_size, config.hidden_size, config.num_layers
        self.score, self.name = score, f"luong-{score}"
        self.src_embedding = nn.Embedding(src_vocab_size, E, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, E, padding_idx=0)
        self.encoder = nn.LSTM(E, H, num_layers=layers, batch_first=True)
        self.decoder = nn.LSTM(E, H, num_layers=layers, batch_first=True)
        if score == "general":
            self.W_a = nn.Linear(H, H, bias=False)
        elif score == "concat":
            self.W_a = nn.Linear(2 * H, H, bias=False)
            self.v_a = nn.Parameter(torch.empty(H).uniform_(-1 / math.sqrt(H), 1 / math.sqrt(H)))
        self.combine = nn.Linear(2 * H, H, bias=False)  # W_c on [c_t; h_t]
        self.generator = nn.Linear(H, tgt_vocab_size)  # W_s

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """The state ``(lstm_state, encoder top states (B, S, H), mask (B, S))``."""
        check_batch(src, src_lengths)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.src_embedding(src), src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, lstm_state = self.encoder(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])  # (B, S, H)
        return lstm_state, outputs, source_mask(src_lengths.to(src.device), src.shape[1])

    def scores(self, h_t: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The chosen score of ``h_t (B, [T,] H)`` against every encoder state: ``(B, [T,] S)``."""
        if self.score == "dot":
            return dot_score(h_t, keys)
        if self.score == "general":
            return general_score(h_t, keys, self.W_a.weight)
        return concat_score(h_t, keys, self.W_a.weight, self.v_a)

    def _predict(self, h_t: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = masked_softmax(self.scores(h_t, keys), mask)  # (B, [T,] S)
        attentional = torch.tanh(self.combine(torch.cat([context_vector(weights, keys), h_t], dim=-1)))  # h̃_t
        return self.generator(attentional), weights

    def decode_step(self, y_prev: torch.Tensor, state):
        lstm_state, keys, mask = state
        output, lstm_state = self.decoder(self.tgt_embedding(y_prev).unsqueeze(1), lstm_state)  # (B, 1, H)
        logits, weights = self._predict(output.squeeze(1), keys, mask)
        return logits, (lstm_state, keys, mask), weights

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        lstm_state, keys, mask = self.encode(src, src_lengths)
        outputs, _ = self.decoder(self.tgt_embedding(tgt_in), lstm_state)  # every h_t at once: (B, T, H)
        logits, _ = self._predict(outputs, keys, mask)
        return logits
