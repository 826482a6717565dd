"""Recurrent cells written from their papers' equations: Cho et al.'s GRU and the LSTM.

``GRUCell`` follows Cho et al., "Learning Phrase Representations using RNN Encoder–Decoder for
Statistical Machine Translation" (arXiv:1406.1078, §2.3), where the reset gate multiplies the previous
hidden state *before* the matrix product::

    r  = σ(W_ir x + b_ir + W_hr h + b_hr)                 reset gate
    z  = σ(W_iz x + b_iz + W_hz h + b_hz)                 update gate
    h̃  = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)        candidate
    h' = z ⊙ h + (1 − z) ⊙ h̃

PyTorch's ``nn.GRUCell`` uses the variant of cuDNN, where r multiplies the product instead:
``h̃ = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``. The two agree when r = 1 (or h = 0, as at the
first step, when there is no bias b_hn) and differ otherwise; the course uses Cho's.

``LSTMCell`` is the LSTM with a forget gate as ``nn.LSTMCell`` computes it (Hochreiter & Schmidhuber
1997, with Gers et al.'s forget gate; the form Sutskever et al., arXiv:1409.3215, cite from Graves,
arXiv:1308.0850, without peepholes)::

    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g                        h' = o ⊙ tanh(c')

Both cells take one time step of a batch, ``x`` of shape ``(B, input_size)``, and keep their
parameters under ``nn.GRUCell``'s and ``nn.LSTMCell``'s names and shapes, so weights copy across with
``load_state_dict``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GRUCell", "LSTMCell"]


def _check_input(name: str, x: torch.Tensor, input_size: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor of shape (B, {input_size}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != input_size:
        raise ValueError(
            f"{name}: x must have shape (B, input_size) = (B, {input_size}), got {tuple(x.shape)}"
        )


def _check_state(name: str, what: str, state: torch.Tensor, batch: int, hidden_size: int) -> None:
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor of shape ({batch}, {hidden_size}), got {type(state).__name__}")
    if tuple(state.shape) != (batch, hidden_size):
        raise ValueError(
            f"{name}: {what} must have shape (B, hidden_size) = ({batch}, {hidden_size}) to match x, "
            f"got {tuple(state.shape)}"
        )


class _Cell(nn.Module):
    """Parameters ``weight_ih (G·H, I)``, ``weight_hh (G·H, H)``, ``bias_ih``, ``bias_hh (G·H,)``."""

    gates: int

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        for label, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {label} must be a positive int, got {value!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        rows = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/√H, as PyTorch's recurrent cells."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight_ih.T + bias_ih``: (..., I) -> (..., G·H), for one step or a whole sequence."""
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class GRUCell(_Cell):
    """One step of Cho et al.'s GRU (arXiv:1406.1078, §2.3): the reset gate acts *before* ``W_hn``.

    Parameters, named and shaped as ``nn.GRUCell``'s so that ``load_state_dict`` copies them across:

    - ``weight_ih (3H, I)``: rows ``[0:H]`` = W_ir (reset), ``[H:2H]`` = W_iz (update),
      ``[2H:3H]`` = W_in (candidate); in the paper's notation W_r, W_z and W.
    - ``weight_hh (3H, H)``: the same row blocks, W_hr, W_hz, W_hn; the paper's U_r, U_z and U.
    - ``bias_ih``, ``bias_hh (3H,)``: the matching biases (the paper omits biases).

    With the same weights, this cell and ``nn.GRUCell`` compute the same r and z; only the candidate
    differs, ``tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)`` here against
    ``tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`` there (even at h = 0 they differ by
    ``b_hn`` against ``r ⊙ b_hn``).

    ``forward(x, h)`` takes ``x (B, I)`` and ``h (B, H)`` (zeros when ``None``) and returns the new
    ``h (B, H)``.
    """

    gates = 3

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        _check_input("GRUCell", x, self.input_size)
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        _check_state("GRUCell", "h", h, x.shape[0], self.hidden_size)
        return self.step(self.input_part(x), h)

    def step(self, from_x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The update from ``from_x = x @ weight_ih.T + bias_ih`` (B, 3H), computed beforehand.

        A sequence model computes the input part of every time step in one matrix product and loops
        over this; shapes are not checked here.
        """
        H = self.hidden_size
        w_hr_hz, w_hn = self.weight_hh[: 2 * H], self.weight_hh[2 * H :]
        b_hr_hz = None if self.bias_hh is None else self.bias_hh[: 2 * H]
        b_hn = None if self.bias_hh is None else self.bias_hh[2 * H :]
        gates = torch.sigmoid(from_x[:, : 2 * H] + nn.functional.linear(h, w_hr_hz, b_hr_hz))  # (B, 2H)
        r, z = gates[:, :H], gates[:, H:]
        candidate = torch.tanh(from_x[:, 2 * H :] + nn.functional.linear(r * h, w_hn, b_hn))  # (B, H)
        return z * h + (1.0 - z) * candidate


class LSTMCell(_Cell):
    """One step of the LSTM, with ``nn.LSTMCell``'s parameter names, shapes and gate order.

    ``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``bias_ih``, ``bias_hh (4H,)``; the row blocks are
    the gates i (input), f (forget), g (cell candidate, tanh), o (output), in that order.

    ``forward(x, (h, c))`` takes ``x (B, I)`` and ``h``, ``c`` of shape ``(B, H)`` (zeros when the
    state is ``None``) and returns ``(h, c)``, new hidden state first, as ``nn.LSTMCell``.
    """

    gates = 4

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_input("LSTMCell", x, self.input_size)
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("LSTMCell: the state must be a pair (h, c), each of shape (B, hidden_size)")
        h, c = state
        _check_state("LSTMCell", "h", h, x.shape[0], self.hidden_size)
        _check_state("LSTMCell", "c", c, x.shape[0], self.hidden_size)
        H = self.hidden_size
        pre = self.input_part(x) + nn.functional.linear(h, self.weight_hh, self.bias_hh)  # (B, 4H)
        i = torch.sigmoid(pre[:, :H])
        f = torch.sigmoid(pre[:, H : 2 * H])
        g = torch.tanh(pre[:, 2 * H : 3 * H])
        o = torch.sigmoid(pre[:, 3 * H :])
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        return h_new, c_new
