"""Sequence-to-sequence models of the recurrent era, behind one interface, and the registry of names.

- ``GRUEncoderDecoder``: Cho et al., arXiv:1406.1078 (§2, appendix A.1). The encoder's last hidden
  state becomes one vector ``c = tanh(V h_N)``; the decoder starts from ``h'_0 = tanh(V' c)`` and sees
  ``c`` again at every step, in its GRU's input and in its maxout read-out — and sees nothing else of
  the source. Both recurrences are ``course_lib.rnn.GRUCell`` (Cho's reset gate, not ``nn.GRU``'s).
- ``LSTMSeq2Seq``: Sutskever et al., arXiv:1409.3215 (§2, §3.3). A stacked LSTM reads the source
  (reversed with ``reverse_source=True``), and a second stacked LSTM, started from the encoder's final
  ``(h, c)`` of every layer, writes the target.

Every model has ``forward(src, src_lengths, tgt_in) -> logits (B, T, V)`` (teacher forcing),
``encode(src, src_lengths) -> state`` and ``decode_step(y_prev (B,), state) -> (logits (B, V), state,
weights)``, where ``weights (B, S)`` are attention weights over the source or ``None`` for a model
without attention; ``course_lib.evaluate.greedy_decode`` runs any of them. Lessons 03–06 register
their models in ``MODELS`` under the names the course uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from course_lib.rnn import GRUCell

__all__ = [
    "ModelConfig", "Seq2Seq", "check_batch", "GRUEncoderDecoder", "LSTMSeq2Seq", "MODELS", "MODEL_NAMES",
    "build_model", "run_gru", "reverse_within_lengths",
]

# Every model of lessons 01-06, in the order the lessons introduce them.
MODEL_NAMES = (
    "gru-encdec", "lstm", "lstm-reversed",
    "rnnsearch", "luong-dot", "luong-general", "luong-concat", "transformer",
)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes shared by the models a figure compares: the same embedding and hidden widths."""

    embed_size: int = 64
    hidden_size: int = 128
    num_layers: int = 2  # the stacked LSTM's depth; Cho's encoder-decoder has one layer

    def to_dict(self) -> dict:
        return asdict(self)


def check_batch(src: torch.Tensor, src_lengths: torch.Tensor) -> None:
    if not isinstance(src, torch.Tensor) or src.dim() != 2 or src.dtype != torch.long:
        raise ValueError(f"src must be a (B, S) tensor of token ids (torch.long), got {getattr(src, 'shape', src)!r}")
    if not isinstance(src_lengths, torch.Tensor) or tuple(src_lengths.shape) != (src.shape[0],):
        raise ValueError(f"src_lengths must have shape (B,) = ({src.shape[0]},), got {getattr(src_lengths, 'shape', src_lengths)!r}")
    if int(src_lengths.min()) < 1 or int(src_lengths.max()) > src.shape[1]:
        raise ValueError(f"src_lengths must lie in 1..S = 1..{src.shape[1]}, got {src_lengths.tolist()}")


def run_gru(cell: GRUCell, inputs: torch.Tensor, h: torch.Tensor, lengths: torch.Tensor | None = None):
    """Run ``cell`` over ``inputs (B, T, I)`` from ``h (B, H)``; returns ``(outputs (B, T, H), h_last)``.

    The input part of every step is one matrix product before the loop. With ``lengths``, a sentence's
    state stops changing after its last token, so ``h_last`` is each sentence's own final state.
    """
    # unbind, not from_x[:, t]: the backward of indexing would build a (B, T, 3H) gradient per step
    from_x = cell.input_part(inputs).unbind(1)  # (B, T, 3H) -> T × (B, 3H)
    padded = lengths is not None and int(lengths.min()) < inputs.shape[1]
    outputs = []
    for t in range(inputs.shape[1]):
        h_new = cell.step(from_x[t], h)
        h = torch.where((t < lengths).unsqueeze(1), h_new, h) if padded else h_new
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first ``length`` steps in reverse order, padding left at the end: ``x`` is (B, S) or
    (B, S, F). Applied twice it gives ``x`` back."""
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, S)
    lengths = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (B, S)
    if x.dim() == 3:
        index = index.unsqueeze(2).expand_as(x)  # (B, S) -> (B, S, F)
    return x.gather(1, index)


class Seq2Seq(nn.Module):
    """The interface every model of lessons 01-06 implements (see the module's docstring)."""

    name: str = ""
    has_attention: bool = False

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.src_vocab_size, self.tgt_vocab_size, self.config = src_vocab_size, tgt_vocab_size, config

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        raise NotImplementedError

    def decode_step(self, y_prev: torch.Tensor, state):
        raise NotImplementedError

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the logits ``(B, T, V)`` for each position of ``tgt_in (B, T)``.

        The default runs ``decode_step`` position by position; models override it with a faster
        equivalent (tests hold the two together).
        """
        state = self.encode(src, src_lengths)
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = self.decode_step(tgt_in[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)


class GRUEncoderDecoder(Seq2Seq):
    """Cho et al.'s RNN encoder–decoder (arXiv:1406.1078, appendix A.1) with Cho's GRU.

    Encoder: ``h_t = GRU(e(x_t), h_{t-1})``, ``c = tanh(V h_N)``. Decoder: ``h'_0 = tanh(V' c)``,
    ``h'_t = GRU([e(y_{t-1}); c], h'_{t-1})`` (the paper's ``W e(y) + C c``, one matrix over the
    concatenation), read-out ``s' = O_h h'_t + O_y e(y_{t-1}) + O_c c``, a maxout of pairs of ``s'``,
    and the softmax over ``G s``.
    """

    name = "gru-encdec"

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig = ModelConfig()) -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, config)
        E, H = config.embed_size, config.hidden_size
        self.src_embedding = nn.Embedding(src_vocab_size, E, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, E, padding_idx=0)
        self.encoder = GRUCell(E, H)
        self.to_context = nn.Linear(H, H)  # V
        self.to_initial = nn.Linear(H, H)  # V'
        self.decoder = GRUCell(E + H, H)
        self.readout = nn.Linear(H + E + H, 2 * H)  # [O_h O_y O_c] on [h'; e(y); c], then maxout
        self.generator = nn.Linear(H, tgt_vocab_size)  # G

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state ``(h', c)``: the decoder's initial hidden state and the fixed context vector."""
        check_batch(src, src_lengths)
        h0 = src.new_zeros(src.shape[0], self.config.hidden_size, dtype=self.src_embedding.weight.dtype)
        _, h_last = run_gru(self.encoder, self.src_embedding(src), h0, src_lengths)
        c = torch.tanh(self.to_context(h_last))  # (B, H)
        return torch.tanh(self.to_initial(c)), c

    def _logits(self, h: torch.Tensor, y_embedded: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s = self.readout(torch.cat([h, y_embedded, c], dim=-1))  # (..., 2H)
        s = s.unflatten(-1, (self.config.hidden_size, 2)).amax(dim=-1)  # maxout: (..., H, 2) -> (..., H)
        return self.generator(s)

    def decode_step(self, y_prev: torch.Tensor, state):
        h, c = state
        y_embedded = self.tgt_embedding(y_prev)  # (B, E)
        h = self.decoder(torch.cat([y_embedded, c], dim=-1), h)
        return self._logits(h, y_embedded, c), (h, c), None

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        h, c = self.encode(src, src_lengths)
        y_embedded = self.tgt_embedding(tgt_in)  # (B, T, E)
        c_every_step = c.unsqueeze(1).expand(-1, tgt_in.shape[1], -1)  # (B, H) -> (B, T, H)
        states, _ = run_gru(self.decoder, torch.cat([y_embedded, c_every_step], dim=-1), h)
        return self._logits(states, y_embedded, c_every_step)


class LSTMSeq2Seq(Seq2Seq):
    """Sutskever et al.'s stacked-LSTM sequence to sequence (arXiv:1409.3215), ``num_layers`` deep.

    The encoder LSTM reads the source, reversed within each sentence's length when
    ``reverse_source`` (§3.3: "we reversed the order of the words of the source sentence but not the
    target sentence"); the decoder LSTM starts from the encoder's final ``(h, c)`` of every layer and
    a linear layer gives the logits from its top layer.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig = ModelConfig(),
                 reverse_source: bool = False) -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, config)
        E, H, layers = config.embed_size, config.hidden_size, config.num_layers
        self.reverse_source = reverse_source
        self.name = "lstm-reversed" if reverse_source else "lstm"
        self.src_embedding = nn.Embedding(src_vocab_size, E, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, E, padding_idx=0)
        # nn.LSTM computes exactly course_lib.rnn.LSTMCell's equations, layer on layer (a test holds it
        # against a loop of LSTMCell with copied weights), so the model uses the fused kernel for speed.
        self.encoder = nn.LSTM(E, H, num_layers=layers, batch_first=True)
        self.decoder = nn.LSTM(E, H, num_layers=layers, batch_first=True)
        self.generator = nn.Linear(H, tgt_vocab_size)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's initial state ``(h, c)``, each ``(num_layers, B, H)``."""
        check_batch(src, src_lengths)
        if self.reverse_source:
            src = reverse_within_lengths(src, src_lengths)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.src_embedding(src), src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, state = self.encoder(packed)
        return state

    def decode_step(self, y_prev: torch.Tensor, state):
        output, state = self.decoder(self.tgt_embedding(y_prev).unsqueeze(1), state)  # (B, 1, H)
        return self.generator(output.squeeze(1)), state, None

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        output, _ = self.decoder(self.tgt_embedding(tgt_in), self.encode(src, src_lengths))  # (B, T, H)
        return self.generator(output)


_Builder = Callable[[int, int, ModelConfig], Seq2Seq]
MODELS: dict[str, _Builder] = {
    "gru-encdec": lambda s, t, config: GRUEncoderDecoder(s, t, config),
    "lstm": lambda s, t, config: LSTMSeq2Seq(s, t, config, reverse_source=False),
    "lstm-reversed": lambda s, t, config: LSTMSeq2Seq(s, t, config, reverse_source=True),
    "rnnsearch": lambda s, t, config: _attention_models().RNNSearch(s, t, config),
    **{f"luong-{score}": (lambda s, t, config, score=score: _attention_models().LuongAttention(s, t, config, score))
       for score in ("dot", "general", "concat")},
    "transformer": lambda s, t, config: _transformer(s, t, config),
}


# Lessons 03-06's models are imported when built: their modules build on this one.
def _attention_models():
    from course_lib import seq2seq_attention

    return seq2seq_attention


def _transformer(src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig) -> Seq2Seq:
    from course_lib.transformer import Transformer

    return Transformer(src_vocab_size, tgt_vocab_size, config)



def build_model(name: str, src_vocab_size: int, tgt_vocab_size: int, config: ModelConfig | None = None) -> Seq2Seq:
    """A freshly initialised model by its course name (see ``MODEL_NAMES``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the course's models are {list(MODEL_NAMES)}")
    return MODELS[name](src_vocab_size, tgt_vocab_size, config or ModelConfig())
