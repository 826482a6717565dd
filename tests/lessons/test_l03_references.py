"""Lesson 03's references: the additive score and the context vector against plain float64 loops,
RNNsearch's teacher-forced forward against its own step loop and against each sentence alone (so
padding changes nothing), and the lesson's decoder step against the model's."""

import math

import matplotlib
import pytest
import torch

from course_lib.attention import recurrent
from course_lib.data import load_corpus, make_batch
from course_lib.evaluate import decode_with_attention
from course_lib.plots import alignment_heatmap
from course_lib.seq2seq import Seq2Seq, build_model
from course_lib.seq2seq_attention import BahdanauDecoderStep, RNNSearch, attention_decoder_step

matplotlib.use("Agg")


def test_additive_score_is_bahdanaus_alignment_model_word_by_word():
    g = torch.Generator().manual_seed(0)
    B, S, H, K, A = 2, 5, 3, 6, 4
    s, h = torch.randn(B, H, generator=g, dtype=torch.float64), torch.randn(B, S, K, generator=g, dtype=torch.float64)
    W, U, v = (torch.randn(A, H, generator=g, dtype=torch.float64), torch.randn(A, K, generator=g, dtype=torch.float64),
               torch.randn(A, generator=g, dtype=torch.float64))
    expected = torch.tensor([[sum(v[a] * math.tanh(sum(W[a, i] * s[b, i] for i in range(H)) + sum(U[a, k] * h[b, j, k] for k in range(K)))
                               for a in range(A)) for j in range(S)] for b in range(B)], dtype=torch.float64)
    torch.testing.assert_close(recurrent.additive_score(s, h, W, U, v), expected)
    # T queries at once give each query's scores
    many = torch.stack([s, s.flip(0)], dim=1)  # (B, 2, H)
    torch.testing.assert_close(recurrent.additive_score(many, h, W, U, v)[:, 0], expected)


def test_concat_is_the_additive_score_with_w_a_split():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 4, generator=g), torch.randn(3, 6, 5, generator=g)
    W, v = torch.randn(7, 9, generator=g), torch.randn(7, generator=g)
    torch.testing.assert_close(recurrent.concat_score(q, k, W, v), recurrent.additive_score(q, k, W[:, :4], W[:, 4:], v))
    explicit = torch.stack([torch.tanh(torch.cat([q, k[:, j]], -1) @ W.T) @ v for j in range(6)], dim=1)
    torch.testing.assert_close(recurrent.concat_score(q, k, W, v), explicit)


def test_context_vector_and_masked_softmax():
    g = torch.Generator().manual_seed(2)
    scores, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, 4, generator=g)
    mask = recurrent.source_mask(torch.tensor([5, 3, 1]), 5)
    weights = recurrent.masked_softmax(scores, mask)
    assert torch.equal(weights[~mask], torch.zeros(int((~mask).sum())))
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(recurrent.context_vector(weights, values), torch.einsum("bs,bsh->bh", weights, values))


@pytest.mark.parametrize("bad", [
    lambda: recurrent.additive_score(torch.randn(2, 3), torch.randn(2, 4, 6), torch.randn(5, 4), torch.randn(5, 6), torch.randn(5)),
    lambda: recurrent.additive_score(torch.randn(2, 3), torch.randn(3, 4, 6), torch.randn(5, 3), torch.randn(5, 6), torch.randn(5)),
    lambda: recurrent.context_vector(torch.randn(2, 4), torch.randn(2, 5, 3)),
    lambda: recurrent.additive_score(torch.ones(2, 3, dtype=torch.long), torch.randn(2, 4, 6), torch.randn(5, 3),
                                     torch.randn(5, 6), torch.randn(5)),
])
def test_bad_shapes_and_dtypes_are_refused_in_words(bad):
    with pytest.raises((ValueError, TypeError), match="must"):
        bad()


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def _mixed_batch(corpus, count=5):
    pairs = sorted(corpus.test, key=lambda p: len(p.src))
    picked = [pairs[i * (len(pairs) - 1) // (count - 1)] for i in range(count)]  # short to long
    return picked, make_batch(picked, corpus.src_vocab, corpus.tgt_vocab)


def test_rnnsearch_forward_is_its_step_loop_and_padding_changes_nothing(corpus):
    torch.manual_seed(0)
    model = build_model("rnnsearch", len(corpus.src_vocab), len(corpus.tgt_vocab)).double()
    pairs, batch = _mixed_batch(corpus)
    assert len({len(p.src) for p in pairs}) == len(pairs)
    logits = model(batch.src, batch.src_lengths, batch.tgt_in)
    torch.testing.assert_close(logits, Seq2Seq.forward(model, batch.src, batch.src_lengths, batch.tgt_in))
    for row, pair in enumerate(pairs):
        alone = make_batch([pair], corpus.src_vocab, corpus.tgt_vocab)
        own = model(alone.src, alone.src_lengths, alone.tgt_in)
        torch.testing.assert_close(logits[row, : own.shape[1]], own[0])
    _, _, weights = model.decode_step(batch.tgt_in[:, 0], model.encode(batch.src, batch.src_lengths))
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(pairs), dtype=torch.float64))
    for row, length in enumerate(batch.src_lengths.tolist()):
        assert float(weights.detach()[row, length:].abs().sum()) == 0.0


def test_the_annotations_read_both_ways(corpus):
    torch.manual_seed(0)
    model = RNNSearch(len(corpus.src_vocab), len(corpus.tgt_vocab)).double()
    pairs, batch = _mixed_batch(corpus, 3)
    annotations = model.annotations(batch.src, batch.src_lengths)  # (B, S, 2H)
    H = model.config.hidden_size
    src = batch.src[:1, : len(pairs[0].src)]
    # changing the last word changes the backward half of the first annotation, not its forward half
    changed = src.clone()
    changed[0, -1] = (changed[0, -1] + 7) % len(corpus.src_vocab) or 4
    first = model.annotations(src, torch.tensor([src.shape[1]]))
    second = model.annotations(changed, torch.tensor([src.shape[1]]))
    torch.testing.assert_close(first[0, 0, :H], second[0, 0, :H])
    assert not torch.allclose(first[0, 0, H:], second[0, 0, H:])
    torch.testing.assert_close(annotations[0, : src.shape[1]], first[0])


def test_the_lessons_step_is_the_models_step(corpus):
    torch.manual_seed(0)
    E, H, V = 8, 6, 11
    step = BahdanauDecoderStep(E, H, 2 * H, V).double()
    y, s, h = torch.randn(3, E, dtype=torch.float64), torch.randn(3, H, dtype=torch.float64), torch.randn(3, 5, 2 * H, dtype=torch.float64)
    mask = recurrent.source_mask(torch.tensor([5, 2, 4]), 5)
    logits, s_new, weights = step(y, s, h, mask)
    assert logits.shape == (3, V) and s_new.shape == (3, H) and weights.shape == (3, 5)
    torch.testing.assert_close(attention_decoder_step(step, y, s, h, step.U_a(h), mask)[0], logits)
    # the weights come from s_{i-1}: the additive score of s, masked and normalised
    expected = recurrent.masked_softmax(recurrent.additive_score(s, h, step.W_a.weight, step.U_a.weight, step.v_a), mask)
    torch.testing.assert_close(weights, expected)
    with pytest.raises(ValueError, match="boolean mask"):
        step(y, s, h, mask.float())


def test_decode_with_attention_gives_one_row_per_word_and_the_heatmap_draws(corpus):
    torch.manual_seed(0)
    model = build_model("rnnsearch", len(corpus.src_vocab), len(corpus.tgt_vocab))
    pair = corpus.test[0]
    words, weights = decode_with_attention(model, pair, corpus, max_len=6)
    assert weights.shape == (len(words), len(pair.src)) and len(words) <= 6
    ax = alignment_heatmap(pair.alignment_matrix(), pair.src, pair.tgt, pair.alignment, title="truth")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(pair.src)
    assert len(ax.collections[0].get_offsets()) == len(pair.alignment)
    _, none = decode_with_attention(build_model("gru-encdec", len(corpus.src_vocab), len(corpus.tgt_vocab)), pair, corpus, 3)
    assert none is None
