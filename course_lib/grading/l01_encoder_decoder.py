"""Lesson 01 — the fixed-vector encoder–decoder (Cho et al. 2014): ``GRUCell`` (a module whose
weights the check sets), ``teacher_forced_logits`` and ``greedy_decode``.

The GRU is Cho et al.'s (arXiv:1406.1078, §2.3), with the reset gate applied to h *before* the
matrix product; ``course_lib.rnn.GRUCell`` is the reference, with ``nn.GRUCell``'s parameter names.
Each known mistake is ``gru_variant`` with one knob turned the wrong way, wrapped as a module.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F

from course_lib import rnn, runtime
from course_lib.grading import decoding
from course_lib.grading.decoding import EOS, PAD, SOS, ToyDecoderStep, greedy_variant, teacher_forcing_variant
from course_lib.grading.forbidden import PYTORCH_RNN
from course_lib.grading.framework import Case, Exercise, Mistake, ModuleSpec, variant
from course_lib.shortcuts import ShortcutUsed

EXACT = runtime.Tolerance(rtol=0.0, atol=0.0)  # token ids are equal or wrong

# --- the GRU cell -------------------------------------------------------------------------------


def gru_variant(
    cell: rnn.GRUCell,
    x: torch.Tensor,
    h: torch.Tensor | None = None,
    *,
    reset: Literal["before", "after", "ignored"] = "before",  # where r multiplies h in the candidate
    order: Literal["r_z_n", "z_r_n"] = "r_z_n",  # which row block of the weights is which gate
    activations: Literal["right", "swapped"] = "right",  # sigmoid for gates, tanh for the candidate
    previous: Literal["used", "left_out_of_gates", "not_carried"] = "used",
    interpolation: Literal["z_keeps_h", "z_takes_candidate"] = "z_keeps_h",
) -> torch.Tensor:
    """One GRU step of ``cell``'s weights with knobs; each knob's first value is Cho et al.'s."""
    H = cell.hidden_size
    if h is None:
        h = x.new_zeros(x.shape[0], H)
    gate, squash = (torch.sigmoid, torch.tanh) if activations == "right" else (torch.tanh, torch.sigmoid)
    seen = torch.zeros_like(h) if previous == "left_out_of_gates" else h  # the h the products see
    from_x = F.linear(x, cell.weight_ih, cell.bias_ih)  # (B, 3H): blocks r, z, n
    w_hn, b_hn = cell.weight_hh[2 * H:], cell.bias_hh[2 * H:]  # (H, H), (H,)
    gates = gate(from_x[:, : 2 * H] + F.linear(seen, cell.weight_hh[: 2 * H], cell.bias_hh[: 2 * H]))  # (B, 2H)
    first, second = gates[:, :H], gates[:, H:]
    r, z = (first, second) if order == "r_z_n" else (second, first)
    if reset == "before":
        from_h = F.linear(r * seen, w_hn, b_hn)  # W_hn (r ⊙ h) + b_hn — Cho et al.
    elif reset == "after":
        from_h = r * F.linear(seen, w_hn, b_hn)  # r ⊙ (W_hn h + b_hn) — nn.GRUCell
    else:
        from_h = F.linear(seen, w_hn, b_hn)
    candidate = squash(from_x[:, 2 * H:] + from_h)  # (B, H)
    kept = torch.zeros_like(h) if previous == "not_carried" else h
    if interpolation == "z_keeps_h":
        return z * kept + (1 - z) * candidate
    return (1 - z) * kept + z * candidate


def _gru_mistake(**knobs: Any) -> type[rnn.GRUCell]:
    """The reference cell with ``gru_variant``'s knobs set: a module, as the student writes one."""
    step = variant(gru_variant, **knobs)

    class MistakenGRUCell(rnn.GRUCell):
        def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
            return step(self, x, h)

    MistakenGRUCell.__qualname__ = MistakenGRUCell.__name__ = "GRUCell_" + "_".join(f"{k}_{v}" for k, v in knobs.items())
    return MistakenGRUCell


GRU_MISTAKES = (
    Mistake(
        "the reset gate is applied after the matrix product (PyTorch's nn.GRUCell variant)",
        "that is r ⊙ (W_hn h + b_hn), as nn.GRUCell and cuDNN compute it; this lesson uses Cho et al.'s "
        "GRU (arXiv:1406.1078, §2.3), where the reset gate acts on h first: W_hn (r ⊙ h) + b_hn",
        _gru_mistake(reset="after"),
    ),
    Mistake(
        "the reset gate is never used",
        "the candidate is tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn): multiply h by r before the product",
        _gru_mistake(reset="ignored"),
    ),
    Mistake(
        "the reset and update gates are swapped (gates in the wrong order)",
        "the row blocks of weight_ih and weight_hh are, in order, r (reset), z (update), n (candidate), "
        "as in nn.GRUCell: r = rows [0:H], z = rows [H:2H]",
        _gru_mistake(order="z_r_n"),
    ),
    Mistake(
        "tanh and sigmoid are swapped",
        "the gates r and z are sigmoids (between 0 and 1, they are proportions); the candidate h̃ is a tanh",
        _gru_mistake(activations="swapped"),
    ),
    Mistake(
        "the previous hidden state is forgotten in the gates and the candidate (no W_hh h terms)",
        "r, z and h̃ all depend on h as well as on x: add F.linear(h, W_h·, b_h·) (or r ⊙ h for h̃) to each",
        _gru_mistake(previous="left_out_of_gates"),
    ),
    Mistake(
        "the previous hidden state is not carried over: h' = (1 − z) ⊙ h̃, without z ⊙ h",
        "the update gate decides how much of h to keep: h' = z ⊙ h + (1 − z) ⊙ h̃",
        _gru_mistake(previous="not_carried"),
    ),
    Mistake(
        "z and 1 − z are swapped in the update (h' = (1 − z) ⊙ h + z ⊙ h̃)",
        "in Cho et al.'s GRU (§2.3), and in nn.GRUCell, z keeps the old state: h' = z ⊙ h + (1 − z) ⊙ h̃ "
        "(some texts write it the other way round: with these weights, this is the convention)",
        _gru_mistake(interpolation="z_takes_candidate"),
    ),
)


def cell_state(gates: int, input_size: int, hidden_size: int, gen: torch.Generator, dtype: torch.dtype) -> dict:
    """Parameters of a cell with ``gates`` row blocks, by nn.GRUCell's / nn.LSTMCell's names."""
    rows, scale = gates * hidden_size, 0.6
    return {
        "weight_ih": scale * runtime.randn(rows, input_size, gen=gen, dtype=dtype),
        "weight_hh": scale * runtime.randn(rows, hidden_size, gen=gen, dtype=dtype),
        "bias_ih": scale * runtime.randn(rows, gen=gen, dtype=dtype),
        "bias_hh": scale * runtime.randn(rows, gen=gen, dtype=dtype),
    }


def _sizes(gen: torch.Generator) -> tuple[int, int, int]:
    B, I, H = (int(torch.randint(low, high + 1, (1,), generator=gen)) for low, high in ((2, 5), (3, 6), (4, 8)))
    return B, I, H


def _gru_cases(gen: torch.Generator) -> list[Case]:
    B, I, H = _sizes(gen)
    init = {"input_size": I, "hidden_size": H}

    def case(name: str, dtype: torch.dtype, batch: int = B, gradients: bool = False) -> Case:
        state = cell_state(3, I, H, gen, dtype)
        x, h = runtime.randn(batch, I, gen=gen, dtype=dtype), runtime.randn(batch, H, gen=gen, dtype=dtype)
        return Case(name, (x, h), init=init, state=state, check_gradients=gradients)

    return [
        case(f"one step, batch {B}, float32", torch.float32),
        case("a batch of one", torch.float32, batch=1),
        case("float64, and the gradients of x, h and every weight", torch.float64, gradients=True),
    ]


def refuse_course_cells(*allowed: type) -> Any:
    """An ``adapt`` that refuses a class built on course_lib's own cells (the reference answer), except
    the exercise's own known mistakes (``allowed``)."""

    def adapt(fn: Any) -> Any:
        if inspect.isclass(fn) and issubclass(fn, (rnn.GRUCell, rnn.LSTMCell)) and fn not in allowed:
            def refused(*args: Any, **kwargs: Any) -> None:
                raise ShortcutUsed(f"your class is built on course_lib.rnn.{fn.__mro__[1].__name__}, the course's "
                                   "own reference answer — inherit from nn.Module and write the step yourself")
            return refused
        return fn

    return adapt


GRU_CELL = Exercise(
    name="GRUCell",
    reference=rnn.GRUCell,
    make_cases=_gru_cases,
    mistakes=GRU_MISTAKES,
    forbidden=PYTORCH_RNN,
    module=ModuleSpec(),
    adapt=refuse_course_cells(*(m.function for m in GRU_MISTAKES)),
    adapt_only_refuses=True,
)


# --- decoding ----------------------------------------------------------------------------------------


def teacher_forced_logits(step: decoding.Step, state: torch.Tensor, targets: torch.Tensor,
                          sos_id: int) -> torch.Tensor:
    """The decoder's logits ``(B, T, V)`` when it is fed ``<sos>`` then the targets ``(B, T)``
    shifted right by one — teacher forcing, as in training."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or targets.dtype != torch.long:
        raise ValueError(f"teacher_forced_logits: targets must be token ids of shape (B, T), got "
                         f"{tuple(getattr(targets, 'shape', ()))} {getattr(targets, 'dtype', '')}")
    return teacher_forcing_variant(step, state, targets, sos_id)


def greedy_decode(step: decoding.Step, state: torch.Tensor, sos_id: int, eos_id: int, max_len: int,
                  pad_id: int = PAD) -> torch.Tensor:
    """Greedy decoding from ``state``: token ids ``(B, max_len)``, each row ending with its first
    ``<eos>`` (kept) and ``pad_id`` after it; the loop stops once every row has said ``<eos>``."""
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"greedy_decode: max_len must be a positive int, got {max_len!r}")
    return greedy_variant(step, state, sos_id, eos_id, max_len, pad_id)


TEACHER_FORCING_MISTAKES = (
    Mistake(
        "the decoder is fed its own predictions, not the targets (that is free-running decoding, "
        "not teacher forcing)",
        "in teacher forcing the input at step t is the *true* previous word, targets[:, t - 1] (and <sos> "
        "at t = 0), whatever the decoder predicted",
        variant(teacher_forcing_variant, fed="own_predictions"),
    ),
    Mistake(
        "the inputs are not shifted: at step t the decoder is fed targets[:, t], the word it must predict",
        "feed <sos> first, then targets[:, :-1]: the decoder predicts word t from the words before it",
        variant(teacher_forcing_variant, fed="targets_unshifted"),
    ),
    Mistake(
        "the state is not carried from step to step (every step starts from the encoder's state)",
        "keep the state the step returns and pass it to the next step: logits, state = step(token, state)",
        variant(teacher_forcing_variant, carry="initial"),
    ),
    Mistake(
        "the logits are stacked with time first, (T, B, V), instead of (B, T, V)",
        "stack the per-step logits (B, V) along dim=1: torch.stack(logits, dim=1)",
        variant(teacher_forcing_variant, stacked="time_first"),
    ),
)

GREEDY_MISTAKES = (
    Mistake(
        "decoding does not stop at <eos>: the tokens after it are kept",
        "once a row has produced <eos>, every later position of that row is pad_id; stop the loop when "
        "every row has ended",
        variant(greedy_variant, stops="never"),
    ),
    Mistake(
        "every sentence stops when the first one says <eos>",
        "sentences of a batch end at different steps: track which rows have ended (a boolean (B,) tensor) "
        "and stop only when all have",
        variant(greedy_variant, stops="first_row_to_end"),
    ),
    Mistake(
        "the <eos> token is left out of the output",
        "keep the <eos> a row ends with, and put pad_id only after it",
        variant(greedy_variant, eos_kept="no"),
    ),
    Mistake(
        "<sos> is kept as the first token of the output",
        "<sos> is the first *input*; the output starts with the first predicted token, shape (B, max_len)",
        variant(greedy_variant, sos_kept="yes"),
    ),
    Mistake(
        "the decoder is fed <sos> at every step instead of its previous prediction",
        "greedy decoding feeds back the token it just chose: token = logits.argmax(dim=-1)",
        variant(greedy_variant, fed="sos"),
    ),
    Mistake(
        "the state is not carried from step to step (every step starts from the encoder's state)",
        "keep the state the step returns and pass it to the next step: logits, state = step(token, state)",
        variant(greedy_variant, carry="initial"),
    ),
)


def _decoder(gen: torch.Generator) -> ToyDecoderStep:
    vocabulary = int(torch.randint(8, 13, (1,), generator=gen))
    return ToyDecoderStep(vocabulary, hidden=6, gen=gen)


def _teacher_forcing_cases(gen: torch.Generator) -> list[Case]:
    def case(name: str, batch: int, length: int, dtype: torch.dtype) -> Case:
        decoder = _decoder(gen)
        state = decoder.initial_state([length + 5] * batch, gen).to(dtype)  # no <eos> while forced
        targets = torch.randint(3, decoder.vocabulary, (batch, length), generator=gen)  # (B, T)
        return Case(name, (decoder, state, targets, SOS))

    return [case("3 sentences of 6 words", 3, 6, torch.float64), case("one sentence of 9 words", 1, 9, torch.float32),
            case("5 sentences of 4 words", 5, 4, torch.float32)]


def _greedy_cases(gen: torch.Generator) -> list[Case]:
    def case(name: str, stops: list[int], max_len: int) -> Case:
        decoder = _decoder(gen)
        return Case(name, (decoder, decoder.initial_state(stops, gen).float(), SOS, EOS, max_len))

    shuffled = torch.randperm(4, generator=gen).tolist()
    return [
        case("4 sentences ending at different steps", [3 + 2 * i for i in shuffled], 12),
        case("a sentence that does not end within max_len", [4, 20, 2], 8),
        case("one sentence", [int(torch.randint(3, 7, (1,), generator=gen))], 10),
    ]


TEACHER_FORCED_LOGITS = Exercise(
    name="teacher_forced_logits",
    reference=teacher_forced_logits,
    make_cases=_teacher_forcing_cases,
    mistakes=TEACHER_FORCING_MISTAKES,
)

GREEDY_DECODE = Exercise(
    name="greedy_decode",
    reference=greedy_decode,
    make_cases=_greedy_cases,
    mistakes=GREEDY_MISTAKES,
    tolerances={torch.int64: EXACT},
)

EXERCISES = (GRU_CELL, TEACHER_FORCED_LOGITS, GREEDY_DECODE)
