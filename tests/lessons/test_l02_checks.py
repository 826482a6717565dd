"""Lesson 02's checks, as a student meets them: an LSTM cell and a stacked encoder written
differently from the references pass (public and hidden cases); the classic mistakes, as students
write them, fail with the mistake's name; nn.LSTMCell, nn.LSTM and the course's own cell are refused.
The encoder's reference is held against nn.LSTM with copied weights, forward and backward.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import pytest
import torch
from torch import nn

from course_lib import rnn
from course_lib.grading import check_LSTMCell, check_StackedLSTMEncoder
from course_lib.grading import l02_lstm_seq2seq as lesson
from course_lib.grading.framework import CheckFailed

HIDDEN_SEEDS = tuple(range(1, 21))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class StudentLSTMCell(nn.Module):
    """The gates one by one, each from its own slice of the weights."""

    swap_return = False

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))

    def forward(self, x, state):
        h, c = state
        H = self.hidden_size

        def pre(k):  # the pre-activation of row block k: (B, H)
            rows = slice(k * H, (k + 1) * H)
            return x @ self.weight_ih[rows].T + self.bias_ih[rows] + h @ self.weight_hh[rows].T + self.bias_hh[rows]

        i, f, g, o = torch.sigmoid(pre(0)), torch.sigmoid(pre(1)), torch.tanh(pre(2)), torch.sigmoid(pre(3))
        c_new = torch.addcmul(f * c, i, g)
        h_new = o * torch.tanh(c_new)
        return (c_new, h_new) if self.swap_return else (h_new, c_new)


class SwappedReturnLSTMCell(StudentLSTMCell):
    swap_return = True


class WrapsNNLSTMCell(StudentLSTMCell):
    def forward(self, x, state):
        return torch.lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class InheritsTheCoursesCell(rnn.LSTMCell):
    pass


class StudentEncoder(nn.Module):
    """Time outside, layers inside: one step of every layer, then the next step."""

    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            [StudentLSTMCell(input_size, hidden_size)] + [StudentLSTMCell(hidden_size, hidden_size) for _ in range(num_layers - 1)]
        )

    def forward(self, x, state=None):
        B, T, _ = x.shape
        L, H = len(self.layers), self.hidden_size
        if state is None:
            state = (x.new_zeros(L, B, H), x.new_zeros(L, B, H))
        hs, cs = list(state[0].unbind(0)), list(state[1].unbind(0))  # L × (B, H)
        outputs = []
        for t in range(T):
            below = x[:, t]
            for k, cell in enumerate(self.layers):
                hs[k], cs[k] = cell(below, (hs[k], cs[k]))
                below = hs[k]
            outputs.append(below)
        return torch.stack(outputs, dim=1), (torch.stack(hs), torch.stack(cs))  # (B, T, H), (L, B, H) × 2


class EncoderOnNNLSTM(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        self.layers = nn.ModuleList(
            [StudentLSTMCell(input_size, hidden_size)] + [StudentLSTMCell(hidden_size, hidden_size) for _ in range(num_layers - 1)]
        )

    def forward(self, x, state=None):
        lstm = nn.LSTM(x.shape[-1], self.layers[0].hidden_size, len(self.layers), batch_first=True).to(x)
        return lstm(x, state)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,module", [(check_LSTMCell, StudentLSTMCell), (check_StackedLSTMEncoder, StudentEncoder)],
                         ids=["StudentLSTMCell", "StudentEncoder"])
def test_correct_modules_pass_public_and_hidden(check, module, device, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    assert check(module) is None
    for seed in HIDDEN_SEEDS:
        assert check(module, hidden=True, seed=seed) is None
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("passed") == 1 + len(HIDDEN_SEEDS)


def test_c_and_h_swapped_is_named():
    with pytest.raises(CheckFailed) as info:
        check_LSTMCell(SwappedReturnLSTMCell)
    assert info.value.failure.mistake == "c and h are swapped in the return"
    assert info.value.failure.leaf == "h"


@pytest.mark.parametrize("check,module,words", [
    (check_LSTMCell, WrapsNNLSTMCell, "torch.lstm_cell"),
    (check_LSTMCell, InheritsTheCoursesCell, "course_lib.rnn.LSTMCell"),
    (check_StackedLSTMEncoder, EncoderOnNNLSTM, "torch.lstm"),
])
def test_shortcuts_are_refused(check, module, words):
    with pytest.raises(CheckFailed) as info:
        check(module)
    assert info.value.failure.kind == "shortcut" and words in info.value.failure.problem, info.value.failure.message


def test_an_encoder_that_reads_x_in_every_layer_is_named():
    class EveryLayerReadsX(StudentEncoder):
        def forward(self, x, state=None):
            B, T, _ = x.shape
            h_n, c_n, outputs = [], [], None
            for cell in self.layers:
                h = c = x.new_zeros(B, self.hidden_size)
                steps = []
                for t in range(T):
                    h, c = cell(x[:, t], (h, c))
                    steps.append(h)
                outputs = torch.stack(steps, dim=1)
                h_n.append(h)
                c_n.append(c)
            return outputs, (torch.stack(h_n), torch.stack(c_n))

    with pytest.raises(CheckFailed) as info:
        check_StackedLSTMEncoder(EveryLayerReadsX)
    assert info.value.failure.mistake == lesson.ENCODER_MISTAKES[0].name, info.value.failure.message


@pytest.mark.parametrize("layers,with_state", [(1, False), (3, False), (4, True)])
def test_the_reference_encoder_equals_nn_lstm_with_copied_weights_forward_and_backward(layers, with_state):
    gen = torch.Generator().manual_seed(layers)
    ours = lesson.StackedLSTMEncoder(5, 6, layers).double()
    theirs = nn.LSTM(5, 6, layers, batch_first=True).double()
    with torch.no_grad():
        for k, cell in enumerate(ours.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(theirs, f"{name}_l{k}").copy_(getattr(cell, name))
    x = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(layers, 3, 6, generator=gen, dtype=torch.float64) for _ in range(2)) if with_state else None
    (out_a, (h_a, c_a)), (out_b, (h_b, c_b)) = ours(x, state), theirs(x, state)
    for a, b in ((out_a, out_b), (h_a, h_b), (c_a, c_b)):
        torch.testing.assert_close(a, b)
    weights = torch.linspace(-1, 1, out_a.numel(), dtype=torch.float64).reshape(out_a.shape)
    grad_a = torch.autograd.grad((out_a * weights).sum() + h_a.sum() + c_a.sum(), x)[0]
    grad_b = torch.autograd.grad((out_b * weights).sum() + h_b.sum() + c_b.sum(), x)[0]
    torch.testing.assert_close(grad_a, grad_b)


def test_the_reference_encoder_says_what_shape_it_wants():
    with pytest.raises(ValueError, match=r"\(B, T, input_size\)"):
        lesson.StackedLSTMEncoder(5, 6, 2)(torch.zeros(3, 5))
