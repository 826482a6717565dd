"""Lesson 04's checks, as a student meets them: correct scores written differently from the reference
pass (public and hidden cases, on every device here); the mistakes students make, written as they
write them, fail with the mistake's name; an exception, NaN or a wrong shape is said in words;
shortcuts are refused.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import recurrent
from course_lib.grading import check_concat_score, check_dot_score, check_general_score
from course_lib.grading import l04_luong_attention as lesson
from failing import check_fails as _fails, check_passes

HIDDEN_SEEDS = (1, 2, 3, 7, 11)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- correct implementations, written differently from the reference -------------------------------


def dot_score(query, keys):
    return torch.einsum("bh,bsh->bs", query, keys)


def dot_score_bmm(query, keys):
    return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)  # (B, S, H) @ (B, H, 1) -> (B, S)


def general_score(query, keys, W_a):
    return torch.einsum("bh,hk,bsk->bs", query, W_a, keys)


def general_score_query_side(query, keys, W_a):
    return (keys * (query @ W_a).unsqueeze(1)).sum(-1)  # (h_tᵀ W_a) h̄_s: W_a on the query, untransposed


def general_score_bilinear(query, keys, W_a):
    B, S, H = keys.shape
    return F.bilinear(query.unsqueeze(1).expand(B, S, H), keys, W_a.unsqueeze(0)).squeeze(-1)


def concat_score(query, keys, W_a, v_a):
    """As Luong et al. write it: the concatenation built for every source word."""
    B, S, H = keys.shape
    pairs = torch.cat([query.unsqueeze(1).expand(B, S, H), keys], dim=-1)  # (B, S, 2H): [h_t; h̄_s]
    return torch.tanh(pairs @ W_a.T) @ v_a


def concat_score_loop(query, keys, W_a, v_a):
    columns = [v_a @ torch.tanh(W_a @ torch.cat([query[b], keys[b, s]]))
               for b in range(keys.shape[0]) for s in range(keys.shape[1])]
    return torch.stack(columns).reshape(keys.shape[0], keys.shape[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", [
    (check_dot_score, dot_score), (check_dot_score, dot_score_bmm),
    (check_general_score, general_score), (check_general_score, general_score_query_side),
    (check_general_score, general_score_bilinear),
    (check_concat_score, concat_score), (check_concat_score, concat_score_loop),
    # each known mistake is the reference with one knob turned: untouched, it is right
    (check_dot_score, lesson.dot_variant), (check_general_score, lesson.general_variant),
    (check_concat_score, lesson.concat_variant),
])
def test_correct_implementations_pass(check, fn, device, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_DEVICE", device)
    check_passes(check, fn, capsys, HIDDEN_SEEDS)


# --- mistakes, as students write them ----------------------------------------------------------------



def test_dot_scores_broadcast_over_the_batch_are_named():
    failure = _fails(check_dot_score, lambda query, keys: query @ keys.transpose(1, 2), "(B, B, S)")
    assert failure.kind == "shape" and failure.mistake == lesson._BROADCAST


def test_dot_scaled_by_root_h_is_lesson_05s_score_not_luongs():
    def scaled(query, keys):
        return torch.einsum("bh,bsh->bs", query, keys) / math.sqrt(query.shape[-1])

    assert _fails(check_dot_score, scaled, "lesson 05").mistake == lesson._SCALED


def test_general_scaled_by_root_h_is_named():
    def scaled(query, keys, W_a):
        return general_score(query, keys, W_a) / query.shape[-1] ** 0.5

    assert _fails(check_general_score, scaled).mistake == lesson._SCALED


@pytest.mark.parametrize("check,fn", [
    (check_dot_score, lambda query, keys: torch.softmax(dot_score(query, keys), dim=-1)),
    (check_general_score, lambda query, keys, W_a: torch.softmax(general_score(query, keys, W_a), dim=1)),
    (check_concat_score, lambda query, keys, W_a, v_a: F.softmax(concat_score(query, keys, W_a, v_a), -1)),
])
def test_returning_the_weights_instead_of_the_scores_is_named(check, fn):
    assert _fails(check, fn, "before any softmax").mistake == lesson._WEIGHTS


@pytest.mark.parametrize("check,fn", [
    (check_dot_score, lambda query, keys: (keys @ query.unsqueeze(-1)).squeeze()),
    (check_general_score, lambda query, keys, W_a: (keys @ W_a.T @ query[:, :, None]).squeeze()),
    (check_concat_score, lambda query, keys, W_a, v_a: concat_score(query, keys, W_a, v_a).squeeze()),
])
def test_squeeze_without_a_dimension_is_named_on_a_batch_of_one(check, fn):
    failure = _fails(check, fn, ".squeeze(1)")
    assert failure.kind == "shape" and failure.mistake == lesson._SQUEEZE and "B = 1" in failure.case


def test_squeeze_is_also_caught_on_a_single_source_word():
    def squeezes(query, keys):
        scores = (keys @ query.unsqueeze(-1)).squeeze()  # (B, S, 1) -> (S,) if B = 1, (B,) if S = 1
        return scores.unsqueeze(0) if keys.shape[0] == 1 else scores  # patched for B = 1 only

    failure = _fails(check_dot_score, squeezes, ".squeeze(1)")
    assert failure.mistake == lesson._SQUEEZE and "S = 1" in failure.case


@pytest.mark.parametrize("fn", [
    lambda query, keys, W_a: ((query @ W_a.T).unsqueeze(1) * keys).sum(-1),  # nn.Linear applied to h_t
    lambda query, keys, W_a: torch.einsum("bh,bsk,kh->bs", query, keys, W_a),  # keys @ W_a
], ids=["W_a on the query", "keys @ W_a"])
def test_a_transposed_w_a_is_named_however_it_is_written(fn):
    failure = _fails(check_general_score, fn, "transposed", "keys @ W_a.T")
    assert failure.kind == "values" and "non-symmetric" in failure.case


def test_general_without_w_a_is_named():
    _fails(check_general_score, lambda query, keys, W_a: dot_score(query, keys), "W_a is left out")


def test_concat_with_the_halves_swapped_is_named():
    def swapped(query, keys, W_a, v_a):
        B, S, H = keys.shape
        pairs = torch.cat([keys, query.unsqueeze(1).expand(B, S, H)], dim=-1)  # [h̄_s; h_t]
        return torch.tanh(pairs @ W_a.T) @ v_a

    _fails(check_concat_score, swapped, "halves are swapped", "W_a[:, :H] @ h_t")


def test_concat_without_the_tanh_is_named_and_says_why_it_matters():
    def linear(query, keys, W_a, v_a):
        B, S, H = keys.shape
        return torch.cat([query.unsqueeze(1).expand(B, S, H), keys], dim=-1) @ W_a.T @ v_a

    _fails(check_concat_score, linear, "the tanh is missing", "the query no longer matters")


def test_concat_with_the_tanh_after_v_a_is_named():
    def late(query, keys, W_a, v_a):
        B, S, H = keys.shape
        return torch.tanh(torch.cat([query.unsqueeze(1).expand(B, S, H), keys], dim=-1) @ W_a.T @ v_a)

    _fails(check_concat_score, late, "after v_a")


def test_concat_without_v_a_is_named():
    def summed(query, keys, W_a, v_a):
        B, S, H = keys.shape
        return torch.tanh(torch.cat([query.unsqueeze(1).expand(B, S, H), keys], dim=-1) @ W_a.T).sum(-1)

    _fails(check_concat_score, summed, "v_a is left out")


# --- what goes wrong otherwise is said in words --------------------------------------------------------


def test_a_students_exception_is_reported_as_such():
    def broken(query, keys):
        return query @ keys  # (B, H) @ (B, S, H): the shapes do not fit

    failure = _fails(check_dot_score, broken, "your function raised RuntimeError")
    assert failure.kind == "exception" and failure.mistake is None


def test_nan_in_the_result_is_said_in_words():
    def with_nan(query, keys):
        return dot_score(query, keys).sqrt() ** 2  # NaN wherever a score is negative

    failure = _fails(check_dot_score, with_nan, "NaN")
    assert failure.kind == "nan"


def test_a_wrong_shape_is_said_in_words():
    failure = _fails(check_general_score, lambda query, keys, W_a: general_score(query, keys, W_a).T, "expected shape")
    assert failure.kind == "shape"


def test_an_unfinished_function_says_so():
    def concat_score(query, keys, W_a, v_a):  # noqa: F811 - the release's stub
        raise NotImplementedError()

    failure = _fails(check_concat_score, concat_score, "still raises NotImplementedError")
    assert failure.kind == "not_implemented"


def test_a_result_cut_off_from_autograd_is_said_in_words():
    failure = _fails(check_dot_score, lambda query, keys: dot_score(query, keys).detach(), "cut off from autograd")
    assert failure.kind == "gradient" and "float64" in failure.case


# --- shortcuts are refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("check,fn,word", [
    (check_dot_score, lambda query, keys: recurrent.dot_score(query, keys), "dot_score"),
    (check_general_score, lambda query, keys, W_a: recurrent.general_score(query, keys, W_a), "general_score"),
    (check_concat_score, lambda query, keys, W_a, v_a: recurrent.concat_score(query, keys, W_a, v_a), "concat_score"),
    (check_concat_score, lambda query, keys, W_a, v_a: recurrent.additive_score(
        query, keys, W_a[:, : query.shape[-1]], W_a[:, query.shape[-1]:], v_a), "additive_score"),
])
def test_course_references_are_refused(check, fn, word):
    failure = _fails(check, fn, "course's own reference")
    assert failure.kind == "shortcut" and word in failure.problem


def test_pytorchs_sdpa_is_refused():
    def through_sdpa(query, keys):  # softmax weights through SDPA with the identity as values, then their log
        B, S, _ = keys.shape
        eye = torch.eye(S, dtype=keys.dtype, device=keys.device).expand(B, S, S)
        weights = F.scaled_dot_product_attention(query.unsqueeze(1), keys, eye, scale=1.0).squeeze(1)
        return weights.log()

    failure = _fails(check_dot_score, through_sdpa, "write the computation yourself")
    assert failure.kind == "shortcut" and "scaled_dot_product_attention" in failure.problem
