"""The small Transformer: its positions are the paper's sinusoids, its decoder cannot see the future,
source padding changes nothing, its step-by-step decoding equals its one-pass forward, it is the
registry's "transformer", and it learns a small task in a few hundred steps."""

import math

import pytest
import torch

from course_lib.evaluate import greedy_decode
from course_lib.seq2seq import ModelConfig, build_model
from course_lib.transformer import Transformer, sinusoidal_positions

PAD, SOS, EOS = 0, 1, 2
SMALL = ModelConfig(embed_size=32, hidden_size=32, num_layers=2)


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return Transformer(20, 22, SMALL, **kwargs).eval()


def _lengths(ids):
    return torch.full((ids.shape[0],), ids.shape[1])


def test_sinusoids_follow_section_3_5():
    table = sinusoidal_positions(50, 16)
    pos, i = 17, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positions(4, 7)


def test_it_is_the_registrys_transformer_with_the_shared_sizes():
    model = build_model("transformer", 20, 22, ModelConfig(hidden_size=48, num_layers=3))
    assert isinstance(model, Transformer) and model.name == "transformer" and model.has_attention
    assert model.d_model == 48 and len(model.encoder) == len(model.decoder) == 3


def test_the_decoder_cannot_see_future_target_tokens():
    model = _model()
    src = torch.randint(3, 20, (2, 7))
    tgt = torch.randint(3, 22, (2, 9))
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(3, 22, (2, 4))
    before, after = model(src, _lengths(src), tgt), model(src, _lengths(src), changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_source_padding_changes_nothing():
    model = _model()
    src = torch.randint(3, 20, (1, 6))
    tgt = torch.randint(3, 22, (1, 5))
    padded = torch.cat([src, torch.full((1, 4), PAD)], dim=1)  # (1, 10): four pads after the sentence
    torch.testing.assert_close(model(src, _lengths(src), tgt), model(padded, torch.tensor([6]), tgt),
                               rtol=1e-5, atol=1e-5)
    maps = model.attention_maps(padded, torch.tensor([6]), tgt)
    assert (maps["decoder cross"][0][..., 6:] == 0).all() and (maps["encoder"][1][..., 6:] == 0).all()
    assert [tuple(m.shape) for m in maps["decoder cross"]] == [(1, 4, 5, 10)] * 2


def test_decoding_step_by_step_equals_the_one_pass_forward():
    model = _model()
    src, tgt_in = torch.randint(3, 20, (3, 8)), torch.randint(3, 22, (3, 6))
    lengths = torch.tensor([8, 5, 3])
    state = model.encode(src, lengths)
    steps = []
    for t in range(tgt_in.shape[1]):
        logits, state, weights = model.decode_step(tgt_in[:, t], state)
        steps.append(logits)
        assert weights.shape == (3, 8) and torch.allclose(weights.sum(-1), torch.ones(3))
        assert (weights[1, 5:] == 0).all()
    torch.testing.assert_close(torch.stack(steps, dim=1), model(src, lengths, tgt_in), rtol=1e-5, atol=1e-5)


@pytest.fixture
def one_thread():
    """Tiny matrices: two threads contending on a busy 2-core machine made a step 60× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_it_learns_to_reverse_short_sequences(one_thread):
    """Reversal needs the cross-attention to find the mirrored position: a Transformer learns it."""
    torch.manual_seed(1)
    model = Transformer(12, 12, ModelConfig(hidden_size=32, num_layers=1), num_heads=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        src = torch.randint(3, 12, (64, 6))
        tgt = src.flip(1)
        tgt_in = torch.cat([torch.full((64, 1), SOS), tgt], dim=1)  # (B, 7)
        tgt_out = torch.cat([tgt, torch.full((64, 1), EOS)], dim=1)  # (B, 7)
        loss = torch.nn.functional.cross_entropy(model(src, _lengths(src), tgt_in).flatten(0, 1), tgt_out.flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    src = torch.randint(3, 12, (32, 6), generator=torch.Generator().manual_seed(2))
    decoded = greedy_decode(model, src, _lengths(src), SOS, EOS)  # (B, T), <eos> kept
    expected = torch.cat([src.flip(1), torch.full((32, 1), EOS)], dim=1)  # (B, 7)
    correct = (decoded[:, :7] == expected).all(dim=1).sum().item()
    assert correct >= 28, f"{correct}/32 reversed exactly"


def test_too_long_a_sequence_is_refused():
    with pytest.raises(ValueError, match="max_len"):
        _model(max_len=8)(torch.randint(3, 20, (1, 9)), torch.tensor([9]), torch.randint(3, 22, (1, 3)))
