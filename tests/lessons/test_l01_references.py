"""Lesson 01's references: course_lib.rnn.GRUCell against Cho et al.'s equations written out in float64
(arXiv:1406.1078, §2.3), where it differs from nn.GRUCell, and Cho's encoder–decoder built on it."""

import pytest
import torch
from torch import nn

from course_lib.data import load_corpus, make_batch
from course_lib.rnn import GRUCell
from course_lib.seq2seq import GRUEncoderDecoder, ModelConfig, Seq2Seq, build_model, run_gru


def _gru64(x, h, w_ih, w_hh, b_ih, b_hh, reset_before_product):
    """A GRU step in float64, gate by gate: r and z, then the candidate, with the reset gate applied to h
    before the product (Cho et al.) or to (U h + b_hn) after it (nn.GRUCell)."""
    x, h = x.double(), h.double()
    W_r, W_z, W = w_ih.double().chunk(3)
    U_r, U_z, U = w_hh.double().chunk(3)
    b_ir, b_iz, b_in = b_ih.double().chunk(3)
    b_hr, b_hz, b_hn = b_hh.double().chunk(3)
    r = torch.sigmoid(x @ W_r.T + b_ir + h @ U_r.T + b_hr)
    z = torch.sigmoid(x @ W_z.T + b_iz + h @ U_z.T + b_hz)
    recurrent = (r * h) @ U.T + b_hn if reset_before_product else r * (h @ U.T + b_hn)
    candidate = torch.tanh(x @ W.T + b_in + recurrent)
    return z * h + (1 - z) * candidate


def cho_gru(x, h, w_ih, w_hh, b_ih, b_hh):
    """Cho et al.'s GRU in float64: the candidate from r ⊙ h."""
    return _gru64(x, h, w_ih, w_hh, b_ih, b_hh, reset_before_product=True)


def pytorch_variant(x, h, w_ih, w_hh, b_ih, b_hh):
    """nn.GRUCell's equations in float64: the reset gate multiplies (U h + b_hn), after the product."""
    return _gru64(x, h, w_ih, w_hh, b_ih, b_hh, reset_before_product=False)


def _parameters(cell):
    return cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh


@pytest.mark.parametrize("batch, inputs, hidden", [(1, 1, 1), (3, 5, 7), (8, 16, 32)])
def test_gru_cell_follows_chos_equations(batch, inputs, hidden):
    torch.manual_seed(0)
    cell = GRUCell(inputs, hidden)
    x, h = torch.randn(batch, inputs), torch.randn(batch, hidden)
    torch.testing.assert_close(cell(x, h).double(), cho_gru(x, h, *_parameters(cell)), rtol=1e-5, atol=1e-6)


def test_gru_cell_gradients_are_those_of_chos_equations():
    torch.manual_seed(1)
    cell = GRUCell(4, 6).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: cell(x, h), (x, h))
    ours = torch.autograd.grad(cell(x, h).sin().sum(), (x, h, *cell.parameters()))
    expected = torch.autograd.grad(cho_gru(x, h, *_parameters(cell)).sin().sum(), (x, h, *cell.parameters()))
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)


def test_gru_cell_has_nn_gru_cells_names_and_shapes_but_not_its_equations():
    """Where the two differ: only in the candidate, because r multiplies h before U here, after it there."""
    torch.manual_seed(2)
    theirs, ours = nn.GRUCell(5, 7), GRUCell(5, 7)
    ours.load_state_dict(theirs.state_dict())
    x, h = torch.randn(4, 5), torch.randn(4, 7)
    # nn.GRUCell is the variant with r after the product...
    torch.testing.assert_close(theirs(x, h).double(), pytorch_variant(x, h, *_parameters(theirs)), rtol=1e-5, atol=1e-6)
    # ...so with the same weights the two cells disagree clearly,
    assert (ours(x, h) - theirs(x, h)).abs().max() > 1e-2
    # and they agree once the reset gate is fully open (r = 1): make b_hr huge.
    with torch.no_grad():
        for cell in (ours, theirs):
            cell.bias_hh[:7] = 1e4
    torch.testing.assert_close(ours(x, h), theirs(x, h), rtol=1e-5, atol=1e-6)


def test_at_a_zero_state_the_two_differ_only_through_the_bias_b_hn():
    torch.manual_seed(3)
    theirs, ours = nn.GRUCell(5, 7), GRUCell(5, 7)
    ours.load_state_dict(theirs.state_dict())
    x, h = torch.randn(4, 5), torch.zeros(4, 7)
    assert (ours(x, h) - theirs(x, h)).abs().max() > 1e-3
    with torch.no_grad():
        for cell in (ours, theirs):
            cell.bias_hh[14:] = 0.0
    torch.testing.assert_close(ours(x, h), theirs(x, h))


def test_gru_cell_defaults_to_a_zero_state_and_supports_no_bias():
    torch.manual_seed(4)
    cell = GRUCell(3, 4, bias=False)
    assert cell.bias_ih is None and cell.bias_hh is None
    x = torch.randn(2, 3)
    zeros = torch.zeros(3 * 4)
    torch.testing.assert_close(cell(x).double(), cho_gru(x, torch.zeros(2, 4), cell.weight_ih, cell.weight_hh, zeros, zeros))


def test_gru_cell_refuses_bad_shapes_with_the_expected_ones():
    cell = GRUCell(3, 4)
    with pytest.raises(ValueError, match=r"\(B, input_size\) = \(B, 3\)"):
        cell(torch.randn(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        cell(torch.randn(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"h must have shape .* \(2, 4\)"):
        cell(torch.randn(2, 3), torch.zeros(3, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cell([[1.0, 2.0, 3.0]], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="input_size"):
        GRUCell(0, 4)


def test_run_gru_stops_each_sentence_at_its_length():
    torch.manual_seed(5)
    cell = GRUCell(3, 4)
    inputs, lengths = torch.randn(2, 6, 3), torch.tensor([6, 2])
    outputs, last = run_gru(cell, inputs, torch.zeros(2, 4), lengths)
    h = torch.zeros(1, 4)
    for t in range(2):
        h = cell(inputs[1:2, t], h)
    torch.testing.assert_close(last[1:2], h)
    torch.testing.assert_close(outputs[1, 2:], h.expand(4, 4))
    h = torch.zeros(1, 4)
    for t in range(6):
        h = cell(inputs[0:1, t], h)
        torch.testing.assert_close(outputs[0:1, t], h)


@pytest.fixture(scope="module")
def batch():
    corpus = load_corpus("tiny")
    pairs = [corpus.test[0], corpus.test[20], corpus.test[-1]]  # lengths 5, 8 and 50: padded
    return make_batch(pairs, corpus.src_vocab, corpus.tgt_vocab)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(6)
    return build_model("gru-encdec", 300, 383, ModelConfig(embed_size=8, hidden_size=12))


def test_the_encoder_decoder_uses_chos_gru(model):
    assert isinstance(model, GRUEncoderDecoder)
    assert isinstance(model.encoder, GRUCell) and isinstance(model.decoder, GRUCell)
    assert not any(isinstance(m, (nn.GRU, nn.GRUCell, nn.LSTM)) for m in model.modules())


def test_the_decoder_sees_one_fixed_vector_whatever_the_source_length(model, batch):
    h, c = model.encode(batch.src, batch.src_lengths)
    assert h.shape == c.shape == (3, 12)  # (B, H): nothing grows with the source
    # Two sources with the same context vector c get the same translation: the decoder sees nothing else.
    logits_a, _, weights = model.decode_step(batch.tgt_in[:, 0], (h, c))
    assert weights is None
    logits_b, _, _ = model.decode_step(batch.tgt_in[:, 0], (h.clone(), c.clone()))
    torch.testing.assert_close(logits_a, logits_b)
    # and c reaches every step: changing it changes a later step's logits even with h fixed
    state = (h, c + 1.0)
    logits_c, _, _ = model.decode_step(batch.tgt_in[:, 0], state)
    assert not torch.allclose(logits_a, logits_c)


def test_teacher_forced_forward_equals_decoding_step_by_step(model, batch):
    fast = model(batch.src, batch.src_lengths, batch.tgt_in)
    slow = Seq2Seq.forward(model, batch.src, batch.src_lengths, batch.tgt_in)
    assert fast.shape == (3, batch.tgt_in.shape[1], 383)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_a_sentence_translates_the_same_alone_or_in_a_padded_batch(model, batch):
    together = model(batch.src, batch.src_lengths, batch.tgt_in)
    for row in range(3):
        S, T = int(batch.src_lengths[row]), int(batch.tgt_lengths[row])
        alone = model(batch.src[row : row + 1, :S], batch.src_lengths[row : row + 1], batch.tgt_in[row : row + 1, :T])
        torch.testing.assert_close(alone[0], together[row, :T], rtol=1e-5, atol=1e-6)


def test_models_refuse_bad_batches_and_unknown_names(model, batch):
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        model.encode(batch.src.float(), batch.src_lengths)
    with pytest.raises(ValueError, match=r"src_lengths must have shape \(B,\) = \(3,\)"):
        model.encode(batch.src, batch.src_lengths[:2])
    with pytest.raises(ValueError, match="gru-encdec"):
        build_model("gru", 300, 383)
