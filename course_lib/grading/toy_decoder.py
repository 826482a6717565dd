"""The decoding exercises' decoder step, with nothing but torch: the outside verdict's replay worker,
where course_lib cannot be imported, loads this file from beside it (``course_lib.grading.decoding``
draws the step's weights and states).

``ToyDecoderStep(tokens, state) -> (logits, state)`` is what a recurrent decoder does in one step —
embed the fed token, update the hidden state, score the vocabulary — with one twist that makes the
checks sharp: the state carries a clock and, per sentence, the step at which the decoder says
``<eos>``.
"""

from __future__ import annotations

import torch

PAD, SOS, EOS = 0, 1, 2  # the corpus's special tokens come first: <pad> <sos> <eos> <unk>


class ToyDecoderStep:
    """One decoder step: ``tokens (B,)``, ``state (B, 2 + H)`` → ``logits (B, V)``, ``state (B, 2 + H)``.

    ``state[:, 0]`` counts the steps taken, ``state[:, 1]`` is the step at which the sentence ends
    (``<eos>`` becomes by far the likeliest token there), ``state[:, 2:]`` is a GRU-like hidden state
    that the fed token moves. ``<pad>`` and ``<sos>`` are never predicted. Its weights are
    ``embedding (V, H)``, ``recurrent (H, H)`` and ``output (H, V)``.
    """

    def __init__(self, embedding: torch.Tensor, recurrent: torch.Tensor, output: torch.Tensor):
        self.embedding, self.recurrent, self.output = embedding, recurrent, output
        self.vocabulary, self.hidden = embedding.shape

    def replay_form(self) -> tuple[str, dict[str, torch.Tensor]]:
        """How the replay worker rebuilds this step: its kind and its weights."""
        return "toy_decoder", {"embedding": self.embedding, "recurrent": self.recurrent, "output": self.output}

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.dtype != torch.long:
            raise TypeError(f"the decoder step takes tokens of shape (B,) and dtype torch.long, got "
                            f"{getattr(tokens, 'shape', type(tokens).__name__)} {getattr(tokens, 'dtype', '')}")
        if not isinstance(state, torch.Tensor) or state.shape != (tokens.shape[0], 2 + self.hidden):
            raise ValueError(f"the decoder step takes a state of shape (B, {2 + self.hidden}) = "
                             f"({tokens.shape[0]}, {2 + self.hidden}), got {tuple(getattr(state, 'shape', ()))}")
        device, dtype = state.device, state.dtype
        clock, stop, hidden = state[:, :1] + 1, state[:, 1:2], state[:, 2:]  # (B, 1), (B, 1), (B, H)
        fed = self.embedding.to(device, dtype)[tokens]  # (B, H)
        hidden = torch.tanh(fed + hidden @ self.recurrent.to(device, dtype))  # (B, H)
        logits = hidden @ self.output.to(device, dtype)  # (B, V)
        logits[:, PAD] = logits[:, SOS] = -50.0
        logits[:, EOS] = 20.0 * (clock - stop + 0.5).squeeze(-1)  # +10 from the stop step on, -10 before
        return logits, torch.cat([clock, stop, hidden], dim=-1)

    def __repr__(self) -> str:
        return f"a decoder step (vocabulary {self.vocabulary}, <pad>={PAD} <sos>={SOS} <eos>={EOS})"
