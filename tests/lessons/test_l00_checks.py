"""Lesson 00's checks, as a student meets them: correct answers written differently from the
reference pass (public and hidden cases); the article's own mistakes, written as a student writes
them, fail with the mistake's name; bad input to the references is said in words.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import pytest
import torch
import torch.nn.functional as F

from course_lib.grading import check_pad_embeddings, check_weighted_sum
from course_lib.grading import l00_intuition as lesson
from course_lib.grading.framework import CheckFailed

HIDDEN_SEEDS = tuple(range(1, 21))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- correct answers, written differently from the reference -----------------------------------


def pad_with_f_pad(vectors, width):
    return torch.stack([F.pad(v, (0, width - v.shape[0])) for v in vectors])  # (N, width)


def pad_by_filling_a_zero_matrix(vectors, width):
    out = vectors[0].new_zeros(len(vectors), width)  # (N, width)
    for row, v in enumerate(vectors):
        out[row, : len(v)] = v
    return out


def weighted_sum_einsum(embeddings, scores):
    weights = torch.softmax(scores, dim=-1)  # (..., N)
    return torch.einsum("...n,...nd->...d", weights, embeddings)


def weighted_sum_matmul_logsumexp(embeddings, scores):
    weights = torch.exp(scores - torch.logsumexp(scores, dim=-1, keepdim=True))  # (..., N)
    return (weights.unsqueeze(-2) @ embeddings).squeeze(-2)  # (..., 1, N) @ (..., N, D) -> (..., D)


CORRECT = [
    (check_pad_embeddings, pad_with_f_pad),
    (check_pad_embeddings, pad_by_filling_a_zero_matrix),
    (check_weighted_sum, weighted_sum_einsum),
    (check_weighted_sum, weighted_sum_matmul_logsumexp),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", CORRECT, ids=lambda x: getattr(x, "__name__", str(x)))
def test_correct_answers_pass_public_and_hidden(check, fn, device, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    assert check(fn) is None
    for seed in HIDDEN_SEEDS:
        assert check(fn, hidden=True, seed=seed) is None
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("passed") == 1 + len(HIDDEN_SEEDS)


# --- the article's mistakes, as a student writes them ---------------------------------------------


def pad_with_zip(vectors, width):
    # The article's loop: zip stops at the shortest vector.
    rows = [list(column) for column in zip(*[v.tolist() for v in vectors])]  # (shortest, N)
    return torch.tensor(rows, dtype=vectors[0].dtype).T  # (N, shortest)


def pad_to_longest(vectors, width):
    return torch.nn.utils.rnn.pad_sequence(list(vectors), batch_first=True)  # (N, longest)


def weights_by_sum(embeddings, scores):
    return ((scores / scores.sum(-1, keepdim=True)).unsqueeze(-1) * embeddings).sum(-2)


def softmax_over_batch(embeddings, scores):
    return (torch.softmax(scores, dim=0).unsqueeze(-1) * embeddings).sum(-2)


def summed_over_features(embeddings, scores):
    return embeddings @ torch.ones(embeddings.shape[-1], dtype=embeddings.dtype) * torch.softmax(scores, -1)


def naive_exp(embeddings, scores):
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    return (weights.unsqueeze(-1) * embeddings).sum(-2)


@pytest.mark.parametrize("check,fn,mistake", [
    (check_pad_embeddings, pad_with_zip, "truncated to the shortest vector, as zip does"),
    (check_pad_embeddings, pad_to_longest, "padded to the longest vector, not to `width`"),
    (check_weighted_sum, weights_by_sum, "the scores are divided by their sum instead of going through a softmax"),
    (check_weighted_sum, softmax_over_batch, "the softmax normalises over the first axis, not over the words"),
    (check_weighted_sum, summed_over_features, "the weighted sum adds up the features of each word instead of the words"),
    (check_weighted_sum, naive_exp, "exp overflows: the softmax does not subtract the largest score first"),
])
def test_a_students_mistake_is_named(check, fn, mistake):
    with pytest.raises(CheckFailed) as info:
        check(fn)
    assert info.value.failure.mistake == mistake, info.value.failure.message


def test_an_unfinished_exercise_says_so():
    def stub(vectors, width):
        raise NotImplementedError()

    with pytest.raises(CheckFailed) as info:
        check_pad_embeddings(stub)
    assert info.value.failure.kind == "not_implemented"


# --- the references ---------------------------------------------------------------------------------


def test_the_article_toy_reproduces_its_printed_output_and_the_fix_keeps_every_dimension():
    """Do the course's character codes give the article's [10.100000000000001], and does the fix not?"""
    words = lesson.THE_ARTICLE_SENTENCE.split()
    codes = {w: lesson.character_codes(w) for w in words}
    total = sum(len(w) for w in words)
    weights = {w: len(w) / total for w in words}
    final = [0] * max(len(c) for c in codes.values())
    for w, c in codes.items():
        final = [sum(x) for x in zip(final, [weights[w] * v for v in c])]
    assert final == [10.100000000000001]
    assert sum(weights.values()) == pytest.approx(0.96)
    padded = lesson.pad_embeddings([torch.tensor(codes[w], dtype=torch.float64) for w in words], 10)  # (10, 10)
    fixed = lesson.weighted_sum(padded, torch.zeros(len(words), dtype=torch.float64))  # (10,)
    assert fixed.shape == (10,)
    assert torch.allclose(fixed, padded.mean(0))  # equal scores: the plain average, every column kept


def test_reference_weighted_sum_matches_pytorch_softmax_and_matmul():
    gen = torch.Generator().manual_seed(0)
    embeddings, scores = torch.randn(3, 7, 5, generator=gen), torch.randn(3, 7, generator=gen)
    expected = (torch.softmax(scores, -1).unsqueeze(1) @ embeddings).squeeze(1)  # (3, 5)
    torch.testing.assert_close(lesson.weighted_sum(embeddings, scores), expected)


@pytest.mark.parametrize("call,error,words", [
    (lambda: lesson.weighted_sum(torch.zeros(4, 3), torch.zeros(3)), ValueError, "(..., N, D) and scores (..., N)"),
    (lambda: lesson.weighted_sum([1.0], torch.zeros(3)), TypeError, "must be tensors"),
    (lambda: lesson.pad_embeddings([torch.zeros(5)], 4), ValueError, "does not fit in width 4"),
    (lambda: lesson.pad_embeddings([torch.zeros(2, 2)], 4), TypeError, "1-D tensors"),
])
def test_bad_input_is_said_in_words(call, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        call()
