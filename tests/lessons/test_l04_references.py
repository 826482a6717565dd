"""course_lib's three Luong scores held against an independent float64 computation (explicit loops over
the batch and the source, written from Luong et al.'s Eq. (8)), for one query per sentence and for T
queries at once; concat against lesson 03's additive score with W_a split; gradients by gradcheck; bad
input said in words. And the lesson's checks list what the issue asks for."""

import math

import pytest
import torch

from course_lib import runtime
from course_lib.attention.recurrent import additive_score, concat_score, dot_score, general_score
from course_lib.grading import EXERCISES
from course_lib.grading import l04_luong_attention as lesson

B, S, H, A = 3, 7, 5, 6


def _inputs(seed=0, dtype=torch.float64, T=None):
    gen = runtime.generator(seed)
    query = runtime.randn(*((B, H) if T is None else (B, T, H)), gen=gen, dtype=dtype)
    keys = runtime.randn(B, S, H, gen=gen, dtype=dtype)
    W_general = runtime.randn(H, H, gen=gen, dtype=dtype)
    W_concat = runtime.randn(A, 2 * H, gen=gen, dtype=dtype) / math.sqrt(2 * H)
    v_a = runtime.randn(A, gen=gen, dtype=dtype)
    return query, keys, W_general, W_concat, v_a


def _by_loops(score, query, keys):
    """``score(h_t, h̄_s)`` for every sentence b and source word s, with plain vectors: ``(B, S)``."""
    return torch.tensor([[float(score(query[b], keys[b, s])) for s in range(keys.shape[1])]
                         for b in range(keys.shape[0])], dtype=torch.float64)


def _per_query(fn, query, keys, *weights):
    """T queries scored one at a time, stacked: ``(B, T, S)``."""
    return torch.stack([fn(query[:, t], keys, *weights) for t in range(query.shape[1])], dim=1)


def test_dot_is_the_inner_product_of_each_pair():
    query, keys, *_ = _inputs()
    expected = _by_loops(lambda h, k: sum(h[i] * k[i] for i in range(H)), query, keys)
    torch.testing.assert_close(dot_score(query, keys), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dot_score(query, keys), torch.einsum("bh,bsh->bs", query, keys))


def test_general_puts_w_a_on_the_encoder_state():
    query, keys, W, *_ = _inputs(1)
    assert not torch.allclose(W, W.T)  # a symmetric W_a would hide a transposed one

    def bilinear(h, k):  # h_tᵀ W_a h̄_s = Σ_ij h_i W_ij k_j
        return sum(h[i] * W[i, j] * k[j] for i in range(H) for j in range(H))

    expected = _by_loops(bilinear, query, keys)
    torch.testing.assert_close(general_score(query, keys, W), expected, rtol=1e-12, atol=1e-12)
    transposed = torch.einsum("bh,kh,bsk->bs", query, W, keys)  # h_tᵀ W_aᵀ h̄_s
    assert not torch.allclose(general_score(query, keys, W), transposed)


def test_general_with_the_identity_is_dot():
    query, keys, *_ = _inputs(2)
    torch.testing.assert_close(general_score(query, keys, torch.eye(H, dtype=torch.float64)), dot_score(query, keys))


def test_concat_is_v_a_on_the_tanh_of_w_a_on_the_concatenation():
    query, keys, _, W, v_a = _inputs(3)
    expected = _by_loops(lambda h, k: v_a @ torch.tanh(W @ torch.cat([h, k])), query, keys)
    torch.testing.assert_close(concat_score(query, keys, W, v_a), expected, rtol=1e-12, atol=1e-12)


def test_concat_is_the_additive_score_with_w_a_split():
    query, keys, _, W, v_a = _inputs(4)
    torch.testing.assert_close(concat_score(query, keys, W, v_a), additive_score(query, keys, W[:, :H], W[:, H:], v_a))
    swapped = additive_score(query, keys, W[:, H:], W[:, :H], v_a)  # the halves the other way round
    assert not torch.allclose(concat_score(query, keys, W, v_a), swapped)


@pytest.mark.parametrize("name", ["dot", "general", "concat"])
def test_t_queries_at_once_equal_one_at_a_time(name):
    query, keys, W_general, W_concat, v_a = _inputs(5, T=4)
    fn, weights = {"dot": (dot_score, ()), "general": (general_score, (W_general,)),
                   "concat": (concat_score, (W_concat, v_a))}[name]
    scores = fn(query, keys, *weights)
    assert scores.shape == (B, 4, S)
    torch.testing.assert_close(scores, _per_query(fn, query, keys, *weights))


@pytest.mark.parametrize("name", ["dot", "general", "concat"])
def test_float32_agrees_with_float64(name):
    query, keys, W_general, W_concat, v_a = _inputs(6)
    fn, weights = {"dot": (dot_score, ()), "general": (general_score, (W_general,)),
                   "concat": (concat_score, (W_concat, v_a))}[name]
    expected = fn(query, keys, *weights)
    single = fn(*(t.float() for t in (query, keys, *weights)))
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), expected, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    query, keys, W_general, W_concat, v_a = (t.requires_grad_() for t in _inputs(7))
    assert torch.autograd.gradcheck(dot_score, (query, keys))
    assert torch.autograd.gradcheck(general_score, (query, keys, W_general))
    assert torch.autograd.gradcheck(concat_score, (query, keys, W_concat, v_a))


@pytest.mark.parametrize("call,words", [
    (lambda: dot_score(torch.randn(3, 5), torch.randn(3, 7)), "(B, S, H)"),
    (lambda: dot_score(torch.randn(2, 5), torch.randn(3, 7, 5)), "B = 3"),
    (lambda: dot_score(torch.randn(3, 4), torch.randn(3, 7, 5)), "same width"),
    (lambda: general_score(torch.randn(3, 5), torch.randn(3, 7, 5), torch.randn(5, 4)), "(5, 5)"),
    (lambda: concat_score(torch.randn(3, 5), torch.randn(3, 7, 5), torch.randn(6, 5), torch.randn(6)), "(6, 10)"),
])
def test_bad_input_gets_a_clear_error(call, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_the_lessons_exercises_have_unique_names_and_the_mistakes_the_issue_lists():
    assert [e.name for e in lesson.EXERCISES] == ["dot_score", "general_score", "concat_score"]
    assert all(EXERCISES[e.name] is e for e in lesson.EXERCISES)
    names = {e.name: " | ".join(m.name for m in e.mistakes) for e in lesson.EXERCISES}
    assert "W_a is transposed" in names["general_score"]
    assert "halves are swapped" in names["concat_score"] and "tanh is missing" in names["concat_score"]
    for exercise in ("dot_score", "general_score"):
        assert "divided by √H" in names[exercise]
    for exercise in names:
        assert "softmax weights are returned" in names[exercise]
