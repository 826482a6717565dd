"""Lesson 01's checks, as a student meets them: a GRU cell, teacher forcing and greedy decoding,
written differently from the references, pass (public and hidden cases); the classic mistakes, as
students write them, fail with the mistake's name; PyTorch's GRU and the course's own cell are
refused.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import pytest
import torch
from torch import nn

from course_lib import rnn
from course_lib.grading import check_greedy_decode, check_GRUCell, check_teacher_forced_logits
from course_lib.grading import l01_encoder_decoder as lesson
from course_lib.grading.decoding import EOS, SOS, ToyDecoderStep
from course_lib.grading.framework import CheckFailed

HIDDEN_SEEDS = tuple(range(1, 21))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- a GRU cell as a student writes it: three gates, named per block --------------------------------


def gru_step_by_blocks(cell, x, h, reset_after=False):
    """Cho et al.'s GRU (or, ``reset_after``, nn.GRUCell's variant) with each row block named."""
    W_r, W_z, W_n = cell.weight_ih.chunk(3)  # each (H, I)
    U_r, U_z, U_n = cell.weight_hh.chunk(3)  # each (H, H)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    r = torch.sigmoid(x @ W_r.T + b_ir + h @ U_r.T + b_hr)
    z = torch.sigmoid(x @ W_z.T + b_iz + h @ U_z.T + b_hz)
    if reset_after:
        n = torch.tanh(x @ W_n.T + b_in + r * (h @ U_n.T + b_hn))
    else:
        n = torch.tanh(x @ W_n.T + b_in + (r * h) @ U_n.T + b_hn)
    return torch.lerp(n, h, z)  # n + z (h − n) = z h + (1 − z) n


class StudentGRUCell(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))

    def forward(self, x, h):
        return gru_step_by_blocks(self, x, h)


class StudentGRUCellFloat64Inside(StudentGRUCell):
    """Computes in float64 and returns the input's dtype."""

    def forward(self, x, h):
        H = self.hidden_size
        gi = x.double() @ self.weight_ih.double().T + self.bias_ih.double()  # (B, 3H)
        gh_rz = h.double() @ self.weight_hh[: 2 * H].double().T + self.bias_hh[: 2 * H].double()  # (B, 2H)
        r, z = torch.sigmoid(gi[:, : 2 * H] + gh_rz).split(H, dim=-1)
        n = torch.tanh(gi[:, 2 * H:] + (r * h.double()) @ self.weight_hh[2 * H:].double().T + self.bias_hh[2 * H:].double())
        return (z * h.double() + (1 - z) * n).to(x.dtype)


class PyTorchVariantGRUCell(StudentGRUCell):
    def forward(self, x, h):
        return gru_step_by_blocks(self, x, h, reset_after=True)


class WrapsNNGRUCell(StudentGRUCell):
    def forward(self, x, h):
        return torch.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class InheritsTheCoursesCell(rnn.GRUCell):
    pass


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", [StudentGRUCell, StudentGRUCellFloat64Inside])
def test_correct_gru_cells_pass_public_and_hidden(cell, device, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    assert check_GRUCell(cell) is None
    for seed in HIDDEN_SEEDS:
        assert check_GRUCell(cell, hidden=True, seed=seed) is None
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("passed") == 1 + len(HIDDEN_SEEDS)


def test_pytorchs_gru_variant_is_named_with_a_hint_that_the_lesson_uses_chos():
    with pytest.raises(CheckFailed) as info:
        check_GRUCell(PyTorchVariantGRUCell)
    failure = info.value.failure
    assert failure.mistake == "the reset gate is applied after the matrix product (PyTorch's nn.GRUCell variant)"
    assert "Cho et al." in failure.hint and "W_hn (r ⊙ h)" in failure.hint


def test_the_reference_differs_from_nn_grucell_exactly_where_the_reset_gate_acts():
    """Is the reference Cho's GRU — equal to nn.GRUCell when r cannot matter, different otherwise?"""
    gen = torch.Generator().manual_seed(3)
    ours, theirs = rnn.GRUCell(4, 5).double(), nn.GRUCell(4, 5).double()
    theirs.load_state_dict(ours.state_dict())
    x, h = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    assert not torch.allclose(ours(x, h), theirs(x, h))
    torch.testing.assert_close(ours(x, h), gru_step_by_blocks(ours, x, h))
    torch.testing.assert_close(theirs(x, h), gru_step_by_blocks(ours, x, h, reset_after=True))
    zeros = torch.zeros_like(h)  # at h = 0 (the first step) only b_hn is scaled by r in nn.GRUCell
    with torch.no_grad():
        ours.bias_hh.zero_(), theirs.bias_hh.zero_()
    torch.testing.assert_close(ours(x, zeros), theirs(x, zeros))


@pytest.mark.parametrize("cell,words", [
    (WrapsNNGRUCell, "torch.gru_cell"),
    (InheritsTheCoursesCell, "course_lib.rnn.GRUCell"),
])
def test_shortcuts_are_refused(cell, words):
    with pytest.raises(CheckFailed) as info:
        check_GRUCell(cell)
    assert info.value.failure.kind == "shortcut" and words in info.value.failure.problem


def test_a_cell_with_its_own_parameter_names_is_told_the_expected_ones():
    class Renamed(StudentGRUCell):
        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.W = self.weight_ih
            del self.weight_ih

    with pytest.raises(CheckFailed) as info:
        check_GRUCell(Renamed)
    assert info.value.failure.kind == "structure" and "`weight_ih`" in info.value.failure.problem


# --- decoding, written differently ----------------------------------------------------------------


def teacher_forced_by_concatenation(step, state, targets, sos_id):
    inputs = torch.cat([torch.full_like(targets[:, :1], sos_id), targets[:, :-1]], dim=1)  # (B, T)
    logits = []
    for token in inputs.unbind(dim=1):  # each (B,)
        scores, state = step(token, state)
        logits.append(scores)
    return torch.stack(logits, dim=1)  # (B, T, V)


def greedy_with_lists(step, state, sos_id, eos_id, max_len, pad_id=0):
    B = state.shape[0]
    rows = [[] for _ in range(B)]
    done = [False] * B
    token = torch.full((B,), sos_id, dtype=torch.long, device=state.device)
    for _ in range(max_len):
        logits, state = step(token, state)
        token = logits.argmax(-1)
        for b in range(B):
            if not done[b]:
                rows[b].append(int(token[b]))
                done[b] = int(token[b]) == eos_id
        if all(done):
            break
    return torch.tensor([r + [pad_id] * (max_len - len(r)) for r in rows], device=state.device)


def greedy_that_never_stops(step, state, sos_id, eos_id, max_len, pad_id=0):
    token = torch.full((state.shape[0],), sos_id, dtype=torch.long, device=state.device)
    out = []
    for _ in range(max_len):
        logits, state = step(token, state)
        token = logits.argmax(-1)
        out.append(token)
    return torch.stack(out, dim=1)  # (B, max_len)


def free_running(step, state, targets, sos_id):
    token = torch.full((targets.shape[0],), sos_id, dtype=torch.long, device=targets.device)
    logits = []
    for _ in range(targets.shape[1]):
        scores, state = step(token, state)
        logits.append(scores)
        token = scores.argmax(-1)
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", [
    (check_teacher_forced_logits, teacher_forced_by_concatenation),
    (check_greedy_decode, greedy_with_lists),
], ids=["teacher_forced_by_concatenation", "greedy_with_lists"])
def test_correct_decoding_passes_public_and_hidden(check, fn, device, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    assert check(fn) is None
    for seed in HIDDEN_SEEDS:
        assert check(fn, hidden=True, seed=seed) is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("check,fn,mistake", [
    (check_greedy_decode, greedy_that_never_stops, "decoding does not stop at <eos>: the tokens after it are kept"),
    (check_teacher_forced_logits, free_running, lesson.TEACHER_FORCING_MISTAKES[0].name),
])
def test_a_students_decoding_mistake_is_named(check, fn, mistake):
    with pytest.raises(CheckFailed) as info:
        check(fn)
    assert info.value.failure.mistake == mistake, info.value.failure.message


def test_the_toy_decoder_says_eos_at_each_sentences_own_step():
    gen = torch.Generator().manual_seed(0)
    decoder = ToyDecoderStep(10, 6, gen)
    tokens = lesson.greedy_decode(decoder, decoder.initial_state([2, 5, 3], gen), SOS, EOS, 8)  # (3, 8)
    assert [int((row == EOS).nonzero()[0]) + 1 for row in tokens] == [2, 5, 3]
    assert all((row[int((row == EOS).nonzero()[0]) + 1:] == 0).all() for row in tokens)
    assert not (tokens == SOS).any()  # <sos> is never predicted


@pytest.mark.parametrize("call,error,words", [
    (lambda: lesson.greedy_decode(None, torch.zeros(1, 8), SOS, EOS, 0), ValueError, "max_len must be a positive int"),
    (lambda: lesson.teacher_forced_logits(None, torch.zeros(1, 8), torch.zeros(3), SOS), ValueError, "shape (B, T)"),
    (lambda: ToyDecoderStep(10, 6, torch.Generator())(torch.zeros(2), torch.zeros(2, 8)), TypeError, "torch.long"),
])
def test_bad_input_is_said_in_words(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
