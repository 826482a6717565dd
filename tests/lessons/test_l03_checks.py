"""Lesson 03's checks, as a student meets them: correct implementations written differently from the
reference pass (public and hidden cases); mistakes written as students write them fail with the
mistake's name; the course's own answers are refused; the behaviour catches a score that mixes
source words.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import pytest
import torch
from torch import nn

from course_lib.attention import recurrent
from course_lib.grading import check_additive_score, check_BahdanauDecoderStep, check_context_vector
from course_lib.grading import l03_bahdanau_attention as lesson
from failing import check_fails as _fails, check_passes

HIDDEN_SEEDS = (1, 2, 3, 7, 11)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- correct implementations, written differently from the reference -------------------------------


def additive_score(s_prev, annotations, W_a, U_a, v_a):
    hidden = torch.tanh(torch.einsum("ah,bh->ba", W_a, s_prev)[:, None, :]
                        + torch.einsum("ak,bsk->bsa", U_a, annotations))  # (B, S, A)
    return torch.einsum("bsa,a->bs", hidden, v_a)


def context_vector(weights, annotations):
    return torch.bmm(weights.unsqueeze(1), annotations).squeeze(1)  # (B, 1, S) @ (B, S, A) -> (B, A)


class StudentStep(nn.Module):
    """The notebook's given __init__, and a forward that calls the student's own functions."""

    def __init__(self, embed_size, hidden_size, annotation_size, vocab_size):
        super().__init__()
        self.W_a = nn.Linear(hidden_size, hidden_size, bias=False)
        self.U_a = nn.Linear(annotation_size, hidden_size, bias=False)
        self.v_a = nn.Parameter(torch.randn(hidden_size))
        self.decoder = nn.GRUCell(embed_size + annotation_size, hidden_size)
        self.readout = nn.Linear(hidden_size + embed_size + annotation_size, 2 * hidden_size)
        self.generator = nn.Linear(hidden_size, vocab_size)

    def forward(self, y_embedded, s_prev, annotations, mask):
        scores = additive_score(s_prev, annotations, self.W_a.weight, self.U_a.weight, self.v_a)
        weights = torch.softmax(scores.masked_fill(mask.logical_not(), -torch.inf), dim=1)
        context = context_vector(weights, annotations)
        s = self.decoder(torch.cat([y_embedded, context], 1), s_prev)
        t = self.readout(torch.cat([s, y_embedded, context], 1)).view(s.shape[0], -1, 2).max(dim=2).values
        return self.generator(t), s, weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", [
    (check_additive_score, additive_score), (check_context_vector, context_vector),
    (check_BahdanauDecoderStep, StudentStep),
    # each known mistake is the reference with one knob turned: untouched, it is right
    (check_additive_score, lesson.additive_variant), (check_context_vector, lesson.context_variant),
    (check_BahdanauDecoderStep, lesson.step_variant),
])
def test_correct_implementations_pass(check, fn, device, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_DEVICE", device)
    check_passes(check, fn, capsys, HIDDEN_SEEDS)


# --- mistakes, as students write them ----------------------------------------------------------------



def _step(forward):
    return type("Step", (StudentStep,), {"forward": forward})


def test_a_bahdanau_that_ignores_the_encoder_states_is_named():
    def no_keys(s_prev, annotations, W_a, U_a, v_a):
        return (torch.tanh(s_prev @ W_a.T) @ v_a).unsqueeze(1).expand(-1, annotations.shape[1])

    failure = _fails(check_additive_score, no_keys, "encoder states are ignored")
    assert failure.mistake.startswith("the encoder states are ignored")


def test_a_score_that_normalises_across_words_fails_the_behaviour_when_values_are_faked():
    # Right on the cases' values would need the reference; a score that leaks between words is
    # caught by the behaviour even when its values are compared no further.
    def leaky(s_prev, annotations, W_a, U_a, v_a):
        scores = additive_score(s_prev, annotations, W_a, U_a, v_a)
        return scores - scores.mean(dim=1, keepdim=True)  # the same softmax, but mixes the words

    failure = _fails(check_additive_score, leaky)
    assert failure.kind in {"values", "behaviour"}
    problem = lesson._each_annotation_scores_itself(lambda *a: leaky(*a), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert "other words too" in problem


def test_weights_that_are_not_used_are_named():
    _fails(check_context_vector, lambda weights, annotations: annotations.mean(1), "simply averaged")


def test_weights_from_the_new_state_are_named():
    def scored_with_s_i(self, y_embedded, s_prev, annotations, mask):
        context = context_vector(torch.softmax(additive_score(s_prev, annotations, self.W_a.weight, self.U_a.weight,
                                                              self.v_a).masked_fill(~mask, -torch.inf), 1), annotations)
        s = self.decoder(torch.cat([y_embedded, context], 1), s_prev)
        weights = torch.softmax(additive_score(s, annotations, self.W_a.weight, self.U_a.weight, self.v_a)
                                .masked_fill(~mask, -torch.inf), 1)  # attends again, with s_i
        context = context_vector(weights, annotations)
        t = self.readout(torch.cat([s, y_embedded, context], 1)).view(s.shape[0], -1, 2).max(dim=2).values
        return self.generator(t), s, weights

    _fails(check_BahdanauDecoderStep, _step(scored_with_s_i), "s_i instead of s_{i-1}")


def test_padding_that_receives_weight_is_named():
    def no_mask(self, y_embedded, s_prev, annotations, mask):
        return StudentStep.forward(self, y_embedded, s_prev, annotations, torch.ones_like(mask))

    failure = _fails(check_BahdanauDecoderStep, _step(no_mask), "padding receives weight", "masked_fill")
    assert "padded" in failure.case


def test_weights_that_do_not_sum_to_one_over_the_source_are_named():
    def over_batch(self, y_embedded, s_prev, annotations, mask):
        scores = additive_score(s_prev, annotations, self.W_a.weight, self.U_a.weight, self.v_a)
        weights = torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=0)
        context = context_vector(weights, annotations)
        s = self.decoder(torch.cat([y_embedded, context], 1), s_prev)
        t = self.readout(torch.cat([s, y_embedded, context], 1)).view(s.shape[0], -1, 2).max(dim=2).values
        return self.generator(t), s, weights

    _fails(check_BahdanauDecoderStep, _step(over_batch), "do not sum to 1 over the source")


def test_a_broken_score_is_blamed_on_the_score_not_the_step(monkeypatch):
    # The step calls the module-level additive_score of this file; break it there.
    monkeypatch.setitem(globals(), "additive_score", lambda s, h, W, U, v: torch.tanh(s @ W.T)[:, None, :].expand(-1, h.shape[1], -1) @ v)
    failure = _fails(check_BahdanauDecoderStep, StudentStep)
    assert "additive_score" in failure.message


# --- refused, and wrong in other ways ----------------------------------------------------------------


def test_the_course_reference_is_refused():
    _fails(check_additive_score, lambda *args: recurrent.additive_score(*args), "course's own reference")

    def uses_reference(self, y_embedded, s_prev, annotations, mask):
        weights = recurrent.masked_softmax(additive_score(s_prev, annotations, self.W_a.weight, self.U_a.weight,
                                                          self.v_a), mask)
        return StudentStep.forward(self, y_embedded, s_prev, annotations, mask)[:2] + (weights,)

    _fails(check_BahdanauDecoderStep, _step(uses_reference), "course's own reference")


def test_a_student_exception_nan_and_wrong_shape_are_reported_in_words():
    def raises(weights, annotations):
        raise IndexError("oops")

    assert _fails(check_context_vector, raises, "IndexError", "oops").kind == "exception"
    assert _fails(check_context_vector, lambda w, h: torch.full_like(h[:, 0], float("nan")), "NaN").kind == "nan"
    assert _fails(check_context_vector, lambda w, h: (w.unsqueeze(-1) * h), "shape").kind == "shape"


def test_a_module_with_other_parameter_names_is_told_which():
    class Renamed(StudentStep):
        def __init__(self, **sizes):
            super().__init__(**sizes)
            self.attention_v = self.v_a
            del self.v_a

    _fails(check_BahdanauDecoderStep, Renamed, "v_a")
