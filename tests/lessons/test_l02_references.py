"""Lesson 02's references: course_lib.rnn.LSTMCell against nn.LSTMCell with copied weights (forward and
backward), the fused nn.LSTM the seq2seq model uses against a loop of LSTMCell, and Sutskever et al.'s
model with and without the reversed source."""

import pytest
import torch
from torch import nn

from course_lib.data import load_corpus, make_batch
from course_lib.rnn import LSTMCell
from course_lib.seq2seq import LSTMSeq2Seq, ModelConfig, Seq2Seq, build_model, reverse_within_lengths


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch, inputs, hidden", [(1, 1, 1), (3, 5, 7), (4, 16, 8)])
def test_lstm_cell_matches_nn_lstm_cell_forward_and_backward(batch, inputs, hidden, bias):
    torch.manual_seed(0)
    ours, theirs = LSTMCell(inputs, hidden, bias=bias), nn.LSTMCell(inputs, hidden, bias=bias)
    ours.load_state_dict(theirs.state_dict())  # same names and shapes
    x, h, c = torch.randn(batch, inputs), torch.randn(batch, hidden), torch.randn(batch, hidden)
    grads = []
    for cell in (ours, theirs):
        leaves = [t.clone().requires_grad_() for t in (x, h, c)]
        h_new, c_new = cell(leaves[0], (leaves[1], leaves[2]))
        (h_new.sin().sum() + (c_new * 0.5).cos().sum()).backward()
        grads.append([h_new, c_new] + [t.grad for t in leaves] + [p.grad for p in cell.parameters()])
        cell.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lstm_cell_returns_h_then_c_and_defaults_to_a_zero_state():
    torch.manual_seed(1)
    ours, theirs = LSTMCell(3, 4), nn.LSTMCell(3, 4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3)
    h, c = ours(x)
    expected_h, expected_c = theirs(x)
    torch.testing.assert_close(h, expected_h)
    torch.testing.assert_close(c, expected_c)
    assert not torch.allclose(h, c)


def test_lstm_cell_refuses_bad_shapes_with_the_expected_ones():
    cell = LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        cell(torch.randn(3))
    with pytest.raises(ValueError, match=r"c must have shape"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
    with pytest.raises(TypeError, match=r"pair \(h, c\)"):
        cell(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMCell(3, 0)


def test_the_fused_lstm_of_the_seq2seq_model_is_a_loop_of_our_cell():
    """The decision written in LSTMSeq2Seq: nn.LSTM computes LSTMCell's equations, layer on layer."""
    torch.manual_seed(2)
    fused = nn.LSTM(5, 6, num_layers=2, batch_first=True)
    cells = [LSTMCell(5, 6), LSTMCell(6, 6)]
    for layer, cell in enumerate(cells):
        cell.load_state_dict({name: getattr(fused, f"{name}_l{layer}") for name in
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    x = torch.randn(3, 7, 5)
    expected, (h_n, c_n) = fused(x)
    layer_input = x
    for layer, cell in enumerate(cells):
        h = c = torch.zeros(3, 6)
        outputs = []
        for t in range(x.shape[1]):
            h, c = cell(layer_input[:, t], (h, c))
            outputs.append(h)
        layer_input = torch.stack(outputs, dim=1)
        torch.testing.assert_close(h, h_n[layer], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, c_n[layer], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer_input, expected, rtol=1e-5, atol=1e-6)


def test_reverse_within_lengths_keeps_padding_at_the_end():
    src = torch.tensor([[4, 5, 6, 0, 0], [7, 8, 9, 10, 11]])
    reversed_src = reverse_within_lengths(src, torch.tensor([3, 5]))
    assert reversed_src.tolist() == [[6, 5, 4, 0, 0], [11, 10, 9, 8, 7]]


@pytest.fixture(scope="module")
def batch():
    corpus = load_corpus("tiny")
    pairs = [corpus.test[0], corpus.test[20], corpus.test[-1]]  # lengths 5, 8 and 50: padded
    return make_batch(pairs, corpus.src_vocab, corpus.tgt_vocab)


def test_the_reversed_model_reads_the_source_backwards(batch):
    torch.manual_seed(3)
    config = ModelConfig(embed_size=8, hidden_size=12, num_layers=2)
    forwards, backwards = build_model("lstm", 300, 383, config), build_model("lstm-reversed", 300, 383, config)
    backwards.load_state_dict(forwards.state_dict())
    assert backwards.reverse_source and not forwards.reverse_source
    flipped = reverse_within_lengths(batch.src, batch.src_lengths)
    for ours, theirs in zip(backwards.encode(batch.src, batch.src_lengths), forwards.encode(flipped, batch.src_lengths)):
        torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(forwards.encode(batch.src, batch.src_lengths)[0], backwards.encode(batch.src, batch.src_lengths)[0])


@pytest.mark.parametrize("name", ["lstm", "lstm-reversed"])
def test_teacher_forced_forward_equals_decoding_step_by_step(name, batch):
    torch.manual_seed(4)
    model = build_model(name, 300, 383, ModelConfig(embed_size=8, hidden_size=12, num_layers=2))
    fast = model(batch.src, batch.src_lengths, batch.tgt_in)
    slow = Seq2Seq.forward(model, batch.src, batch.src_lengths, batch.tgt_in)
    assert fast.shape == (3, batch.tgt_in.shape[1], 383)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "lstm-reversed"])
def test_a_sentence_translates_the_same_alone_or_in_a_padded_batch(name, batch):
    torch.manual_seed(5)
    model = build_model(name, 300, 383, ModelConfig(embed_size=8, hidden_size=12, num_layers=2))
    together = model(batch.src, batch.src_lengths, batch.tgt_in)
    for row in range(3):
        S, T = int(batch.src_lengths[row]), int(batch.tgt_lengths[row])
        alone = model(batch.src[row : row + 1, :S], batch.src_lengths[row : row + 1], batch.tgt_in[row : row + 1, :T])
        torch.testing.assert_close(alone[0], together[row, :T], rtol=1e-5, atol=1e-6)


def test_the_stacked_lstm_hands_every_layer_state_to_the_decoder(batch):
    model = build_model("lstm", 300, 383, ModelConfig(embed_size=8, hidden_size=12, num_layers=3))
    h, c = model.encode(batch.src, batch.src_lengths)
    assert h.shape == c.shape == (3, 3, 12)  # (num_layers, B, H)
