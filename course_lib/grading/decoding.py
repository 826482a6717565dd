"""A small decoder step with a known behaviour, for the decoding exercises (lessons 01 and 02).

``ToyDecoderStep(tokens, state) -> (logits, state)`` is what a recurrent decoder does in one step —
embed the fed token, update the hidden state, score the vocabulary — with one twist that makes the
checks sharp: the state carries a clock and, per sentence, the step at which the decoder says
``<eos>``. A decoding loop that forgets the state, feeds the wrong token or does not stop at
``<eos>`` then gives tokens that differ from the right loop's, in a way the check can name.

The references of the decoding loops are here too, written with knobs: each known mistake is the
reference with one knob turned the wrong way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from course_lib import runtime
from course_lib.grading import toy_decoder
from course_lib.grading.toy_decoder import EOS, PAD, SOS

__all__ = ["PAD", "SOS", "EOS", "Step", "ToyDecoderStep", "teacher_forcing_variant", "greedy_variant"]
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ToyDecoderStep(toy_decoder.ToyDecoderStep):
    """``toy_decoder.ToyDecoderStep`` with weights drawn from ``gen`` (see that module)."""

    def __init__(self, vocabulary: int, hidden: int, gen: torch.Generator):
        super().__init__(1.5 * runtime.randn(vocabulary, hidden, gen=gen, dtype=torch.float64),  # (V, H)
                         runtime.randn(hidden, hidden, gen=gen, dtype=torch.float64) / hidden**0.5,  # (H, H)
                         runtime.randn(hidden, vocabulary, gen=gen, dtype=torch.float64))  # (H, V)

    def initial_state(self, stops: list[int], gen: torch.Generator) -> torch.Tensor:
        """A batch whose sentence b says ``<eos>`` at step ``stops[b]`` (1 = the first step)."""
        hidden = runtime.randn(len(stops), self.hidden, gen=gen, dtype=torch.float64)  # (B, H)
        clock = torch.zeros(len(stops), 1, dtype=torch.float64)  # (B, 1)
        stop = torch.tensor(stops, dtype=torch.float64).unsqueeze(-1)  # (B, 1)
        return torch.cat([clock, stop, hidden], dim=-1)  # (B, 2 + H)


# --- the loops, with knobs ------------------------------------------------------------------------


def teacher_forcing_variant(
    step: Step,
    state: torch.Tensor,
    targets: torch.Tensor,
    sos_id: int,
    *,
    fed: Literal["targets_shifted", "own_predictions", "targets_unshifted"] = "targets_shifted",
    carry: Literal["state", "initial"] = "state",
    stacked: Literal["time_second", "time_first"] = "time_second",
) -> torch.Tensor:
    """Logits ``(B, T, V)`` for ``targets (B, T)``: at step t the decoder is fed target t − 1
    (``<sos>`` at t = 0) — teacher forcing."""
    B, T = targets.shape
    token = torch.full((B,), sos_id, dtype=torch.long, device=targets.device)  # (B,)
    current, logits = state, []
    for t in range(T):
        if fed == "targets_unshifted":
            token = targets[:, t]
        scores, new_state = step(token, current if carry == "state" else state)
        current = new_state
        logits.append(scores)  # (B, V)
        if fed == "targets_shifted":
            token = targets[:, t]
        elif fed == "own_predictions":
            token = scores.argmax(dim=-1)
    return torch.stack(logits, dim=1 if stacked == "time_second" else 0)  # (B, T, V)


def greedy_variant(
    step: Step,
    state: torch.Tensor,
    sos_id: int,
    eos_id: int,
    max_len: int,
    pad_id: int = PAD,
    *,
    stops: Literal["each_row", "never", "first_row_to_end"] = "each_row",
    eos_kept: Literal["yes", "no"] = "yes",
    sos_kept: Literal["no", "yes"] = "no",
    fed: Literal["prediction", "sos"] = "prediction",
    carry: Literal["state", "initial"] = "state",
) -> torch.Tensor:
    """Greedy decoding: ``(B, max_len)`` token ids, each row ending with its first ``<eos>`` and
    ``pad_id`` after it; the loop stops once every row has ended."""
    B = state.shape[0]
    token = torch.full((B,), sos_id, dtype=torch.long, device=state.device)  # (B,)
    out = torch.full((B, max_len), pad_id, dtype=torch.long, device=state.device)  # (B, max_len)
    ended = torch.zeros(B, dtype=torch.bool, device=state.device)  # (B,)
    current = state
    for t in range(max_len):
        scores, new_state = step(token if fed == "prediction" else torch.full_like(token, sos_id),
                                 current if carry == "state" else state)
        current = new_state
        token = scores.argmax(dim=-1)  # (B,)
        is_eos = token == eos_id
        written = token if eos_kept == "yes" else torch.where(is_eos, pad_id, token)
        out[:, t] = written if stops == "never" else torch.where(ended, pad_id, written)
        ended = ended | is_eos
        if stops == "each_row" and bool(ended.all()) or stops == "first_row_to_end" and bool(ended.any()):
            break
    if sos_kept == "yes":
        return torch.cat([torch.full((B, 1), sos_id, dtype=torch.long, device=state.device), out], dim=1)
    return out
