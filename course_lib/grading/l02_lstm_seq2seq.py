"""Lesson 02 — LSTM sequence to sequence (Sutskever et al. 2014): ``LSTMCell`` (returning ``(h, c)``)
and ``StackedLSTMEncoder`` (a stack of cells read over time), both modules whose weights the check sets.

``course_lib.rnn.LSTMCell`` is the cell's reference (``nn.LSTMCell``'s names and gate order i, f, g, o);
``StackedLSTMEncoder`` below is the encoder's, held against ``nn.LSTM(batch_first=True)`` in the tests.
Each known mistake is ``lstm_variant`` or ``encoder_variant`` with one knob turned the wrong way.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from course_lib import rnn, runtime
from course_lib.grading.forbidden import PYTORCH_RNN
from course_lib.grading.framework import Case, Exercise, Mistake, ModuleSpec, variant
from course_lib.grading.l01_encoder_decoder import cell_state, refuse_course_cells

State = tuple[torch.Tensor, torch.Tensor]

# --- the LSTM cell ------------------------------------------------------------------------------------

_BLOCKS = {"i_f_g_o": (0, 1, 2, 3), "i_f_o_g": (0, 1, 3, 2), "f_i_g_o": (1, 0, 2, 3)}  # rows of i, f, g, o


def lstm_variant(
    cell: rnn.LSTMCell,
    x: torch.Tensor,
    state: State | None = None,
    *,
    order: Literal["i_f_g_o", "i_f_o_g", "f_i_g_o"] = "i_f_g_o",  # how the row blocks are read
    activations: Literal["right", "swapped"] = "right",  # sigmoid for i, f, o; tanh for g
    output: Literal["tanh_c", "c"] = "tanh_c",  # h' = o ⊙ tanh(c') or o ⊙ c'
    memory: Literal["f_c", "forgotten", "no_forget_gate"] = "f_c",  # the f ⊙ c term
    previous_h: Literal["used", "forgotten"] = "used",  # the W_hh h term
    returns: Literal["h_c", "c_h"] = "h_c",
) -> State:
    """One LSTM step of ``cell``'s weights with knobs; each knob's first value is nn.LSTMCell's."""
    H = cell.hidden_size
    if state is None:
        zeros = x.new_zeros(x.shape[0], H)
        state = (zeros, zeros)
    h, c = state
    seen = torch.zeros_like(h) if previous_h == "forgotten" else h
    pre = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(seen, cell.weight_hh, cell.bias_hh)  # (B, 4H)
    blocks = pre.split(H, dim=-1)  # 4 × (B, H)
    gate, squash = (torch.sigmoid, torch.tanh) if activations == "right" else (torch.tanh, torch.sigmoid)
    i, f, g, o = (blocks[k] for k in _BLOCKS[order])
    i, f, g, o = gate(i), gate(f), squash(g), gate(o)
    kept = {"f_c": f * c, "forgotten": torch.zeros_like(c), "no_forget_gate": c}[memory]
    c_new = kept + i * g
    h_new = o * (torch.tanh(c_new) if output == "tanh_c" else c_new)
    return (h_new, c_new) if returns == "h_c" else (c_new, h_new)


def _lstm_mistake(**knobs: Any) -> type[rnn.LSTMCell]:
    step = variant(lstm_variant, **knobs)

    class MistakenLSTMCell(rnn.LSTMCell):
        def forward(self, x: torch.Tensor, state: State | None = None) -> State:
            return step(self, x, state)

    MistakenLSTMCell.__qualname__ = MistakenLSTMCell.__name__ = "LSTMCell_" + "_".join(f"{k}_{v}" for k, v in knobs.items())
    return MistakenLSTMCell


_ORDER_HINT = ("the row blocks of weight_ih and weight_hh are, in order, i (input), f (forget), g (candidate, "
               "tanh) and o (output), as in nn.LSTMCell: i = rows [0:H], f = [H:2H], g = [2H:3H], o = [3H:4H]")

LSTM_MISTAKES = (
    Mistake("c and h are swapped in the return", "return (h, c): the new hidden state first, as nn.LSTMCell does",
            _lstm_mistake(returns="c_h")),
    *(Mistake("the gates are read in the wrong order", _ORDER_HINT, _lstm_mistake(order=order))
      for order in ("i_f_o_g", "f_i_g_o")),
    Mistake(
        "tanh and sigmoid are swapped",
        "the gates i, f and o are sigmoids (proportions between 0 and 1); the candidate g is a tanh",
        _lstm_mistake(activations="swapped"),
    ),
    Mistake("the tanh of the cell state is left out: h' = o ⊙ c'", "h' = o ⊙ tanh(c')", _lstm_mistake(output="c")),
    Mistake(
        "the previous cell state is forgotten: c' = i ⊙ g",
        "the cell state is the LSTM's memory: c' = f ⊙ c + i ⊙ g",
        _lstm_mistake(memory="forgotten"),
    ),
    Mistake(
        "the forget gate is not applied: c' = c + i ⊙ g",
        "the forget gate scales the old cell state: c' = f ⊙ c + i ⊙ g",
        _lstm_mistake(memory="no_forget_gate"),
    ),
    Mistake(
        "the previous hidden state is forgotten in the gates (no W_hh h term)",
        "every gate depends on h as well as on x: pre-activations = W_ih x + b_ih + W_hh h + b_hh",
        _lstm_mistake(previous_h="forgotten"),
    ),
)


def _lstm_cases(gen: torch.Generator) -> list[Case]:
    B, I, H = (int(torch.randint(low, high + 1, (1,), generator=gen)) for low, high in ((2, 5), (3, 6), (4, 8)))
    init = {"input_size": I, "hidden_size": H}

    def case(name: str, dtype: torch.dtype, batch: int = B, gradients: bool = False) -> Case:
        state = cell_state(4, I, H, gen, dtype)
        x = runtime.randn(batch, I, gen=gen, dtype=dtype)
        h, c = runtime.randn(batch, H, gen=gen, dtype=dtype), runtime.randn(batch, H, gen=gen, dtype=dtype)
        return Case(name, (x, (h, c)), init=init, state=state, check_gradients=gradients)

    return [
        case(f"one step, batch {B}, float32", torch.float32),
        case("a batch of one", torch.float32, batch=1),
        case("float64, and the gradients of x and every weight", torch.float64, gradients=True),
    ]


LSTM_CELL = Exercise(
    name="LSTMCell",
    reference=rnn.LSTMCell,
    make_cases=_lstm_cases,
    mistakes=LSTM_MISTAKES,
    forbidden=PYTORCH_RNN,
    output_names=("h", "c"),
    module=ModuleSpec(),
    adapt=refuse_course_cells(*(m.function for m in LSTM_MISTAKES)),
    adapt_only_refuses=True,
)


# --- the stacked encoder ----------------------------------------------------------------------------------


class StackedLSTMEncoder(nn.Module):
    """Sutskever et al.'s encoder (arXiv:1409.3215, §3.4: four layers): ``num_layers`` LSTM cells, each
    reading the hidden states of the one below, over a source ``x (B, T, input_size)``.

    Returns ``(outputs, (h_n, c_n))`` as ``nn.LSTM(batch_first=True)`` does: the top layer's hidden
    state at every step ``(B, T, H)``, and every layer's final state ``(num_layers, B, H)`` each — the
    fixed vector the decoder starts from.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            rnn.LSTMCell(input_size if k == 0 else hidden_size, hidden_size) for k in range(num_layers)
        )

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"StackedLSTMEncoder: x must have shape (B, T, input_size), got "
                             f"{tuple(getattr(x, 'shape', ()))}")
        return encoder_variant(self, x, state)


def encoder_variant(
    encoder: nn.Module,
    x: torch.Tensor,
    state: State | None = None,
    *,
    layer_input: Literal["below_h", "x", "below_c"] = "below_h",  # what layer k > 0 reads
    carry: Literal["state", "reset_each_step"] = "state",  # whether a layer's state crosses time steps
    final: Literal["every_layer", "top_only", "bottom_only_outputs"] = "every_layer",
    returns: Literal["h_c", "c_h"] = "h_c",
) -> tuple[torch.Tensor, State]:
    """The stacked encoder's forward with knobs; each knob's first value is nn.LSTM's behaviour."""
    B, T, _ = x.shape
    layers = encoder.layers
    H = layers[0].weight_hh.shape[1]
    if state is None:
        zeros = x.new_zeros(len(layers), B, H)  # (L, B, H)
        state = (zeros, zeros)
    sequence, h_n, c_n, bottom = x, [], [], None  # sequence: (B, T, features) read by the next layer
    for k, cell in enumerate(layers):
        start = (state[0][k], state[1][k])  # (B, H) each
        h, c = start
        hs, cs = [], []
        for t in range(T):
            if carry == "reset_each_step":
                h, c = start
            h, c = cell(sequence[:, t], (h, c))
            hs.append(h)
            cs.append(c)
        h_n.append(h)
        c_n.append(c)
        below = torch.stack(cs if layer_input == "below_c" else hs, dim=1)  # (B, T, H)
        bottom = torch.stack(hs, dim=1) if k == 0 else bottom
        sequence = x if layer_input == "x" else below
    outputs = torch.stack(hs, dim=1)  # (B, T, H): the top layer
    if final == "bottom_only_outputs":
        outputs = bottom
    h_n, c_n = torch.stack(h_n), torch.stack(c_n)  # (L, B, H) each
    if final == "top_only":
        h_n, c_n = h_n[-1:], c_n[-1:]
    return outputs, ((h_n, c_n) if returns == "h_c" else (c_n, h_n))


def _encoder_mistake(**knobs: Any) -> type[StackedLSTMEncoder]:
    forward = variant(encoder_variant, **knobs)

    class MistakenEncoder(StackedLSTMEncoder):
        def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
            return forward(self, x, state)

    MistakenEncoder.__qualname__ = MistakenEncoder.__name__ = "Encoder_" + "_".join(f"{k}_{v}" for k, v in knobs.items())
    return MistakenEncoder


ENCODER_MISTAKES = (
    Mistake(
        "every layer reads the source x instead of the hidden states of the layer below",
        "layer k > 0 reads the sequence of hidden states that layer k − 1 produced, (B, T, H): run layer 0 "
        "over x, then layer 1 over its outputs, and so on",
        _encoder_mistake(layer_input="x"),
    ),
    Mistake(
        "the layer above reads the cell states c of the layer below instead of its hidden states h",
        "what a layer passes up (and what the top layer outputs) is h; c stays inside the layer",
        _encoder_mistake(layer_input="below_c"),
    ),
    Mistake(
        "the previous hidden state is forgotten: every time step starts from the initial state",
        "carry (h, c) from step t to step t + 1: h, c = cell(x[:, t], (h, c))",
        _encoder_mistake(carry="reset_each_step"),
    ),
    Mistake(
        "only the top layer's final state is returned",
        "return every layer's final (h, c), stacked to (num_layers, B, H) each: Sutskever et al.'s decoder "
        "starts each of its layers from the matching encoder layer",
        _encoder_mistake(final="top_only"),
    ),
    Mistake(
        "the outputs are the bottom layer's hidden states, not the top layer's",
        "outputs (B, T, H) are the hidden states of the *last* layer at every step",
        _encoder_mistake(final="bottom_only_outputs"),
    ),
    Mistake(
        "h_n and c_n are swapped in the returned state",
        "return (outputs, (h_n, c_n)): hidden states first, as nn.LSTM does",
        _encoder_mistake(returns="c_h"),
    ),
)


def encoder_state(input_size: int, hidden_size: int, layers: int, gen: torch.Generator, dtype: torch.dtype) -> dict:
    """An encoder's parameters by ``StackedLSTMEncoder``'s names (``layers.k.weight_ih``, ...)."""
    state = {}
    for k in range(layers):
        cell = cell_state(4, input_size if k == 0 else hidden_size, hidden_size, gen, dtype)
        state.update({f"layers.{k}.{name}": value for name, value in cell.items()})
    return state


def _encoder_cases(gen: torch.Generator) -> list[Case]:
    B, T, H = (int(torch.randint(low, high + 1, (1,), generator=gen)) for low, high in ((2, 4), (4, 7), (4, 6)))

    def case(name: str, I: int, layers: int, dtype: torch.dtype, gradients: bool = False, with_state: bool = False) -> Case:
        init = {"input_size": I, "hidden_size": H, "num_layers": layers}
        x = runtime.randn(B, T, I, gen=gen, dtype=dtype)
        args = (x,)
        if with_state:
            args = (x, (runtime.randn(layers, B, H, gen=gen, dtype=dtype), runtime.randn(layers, B, H, gen=gen, dtype=dtype)))
        return Case(name, args, init=init, state=encoder_state(I, H, layers, gen, dtype), check_gradients=gradients)

    return [
        case(f"3 layers, input size = hidden size = {H}", H, 3, torch.float32),
        case(f"2 layers, input size {H + 3}", H + 3, 2, torch.float32),
        case("4 layers (as Sutskever et al.), from a given (h_0, c_0)", H, 4, torch.float64, with_state=True),
        case("one layer", H + 1, 1, torch.float32),
        case("2 layers, float64, and the gradients of x and every weight", H + 2, 2, torch.float64, gradients=True),
    ]


STACKED_LSTM_ENCODER = Exercise(
    name="StackedLSTMEncoder",
    reference=StackedLSTMEncoder,
    make_cases=_encoder_cases,
    mistakes=ENCODER_MISTAKES,
    forbidden=PYTORCH_RNN,
    output_names=("outputs", "state"),
    module=ModuleSpec(),
    depends_on=(LSTM_CELL,),
    timeout_s=20.0,
)

EXERCISES = (LSTM_CELL, STACKED_LSTM_ENCODER)
