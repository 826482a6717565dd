import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib.plots import attention_grid, attention_heatmap, mask_heatmap  # noqa: E402


def test_heatmap_takes_tensors_arrays_and_lists_and_labels_the_axes():
    weights = torch.softmax(torch.randn(3, 4, requires_grad=True), dim=-1)
    ax = attention_heatmap(weights, xlabels=list("abcd"), ylabels=list("xyz"), title="w")
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert ax.get_title() == "w"
    image = ax.get_images()[0]
    assert np.allclose(image.get_array(), weights.detach().numpy())
    assert image.get_clim() == (0, 1)
    attention_heatmap(np.eye(2))
    attention_heatmap([[0.5, 0.5]])


def test_heatmap_rejects_what_is_not_one_matrix():
    with pytest.raises(ValueError, match="one \\(L, S\\) matrix"):
        attention_heatmap(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="xlabels"):
        attention_heatmap(torch.zeros(2, 3), xlabels=["a"])


def test_mask_heatmap_uses_sdpa_polarity():
    ax = mask_heatmap(torch.ones(3, 3, dtype=torch.bool).tril())
    assert np.array_equal(ax.get_images()[0].get_array(), np.tril(np.ones((3, 3))))
    ax = mask_heatmap(torch.zeros(2, 2).masked_fill(torch.eye(2, dtype=torch.bool), float("-inf")))
    assert np.array_equal(ax.get_images()[0].get_array(), 1 - np.eye(2))


def test_grid_draws_one_map_per_head():
    fig, axes = attention_grid([torch.rand(4, 4) for _ in range(5)], [f"head {i}" for i in range(5)], ncols=3)
    titled = [ax for ax in np.ravel(axes) if ax.get_title()]
    assert [ax.get_title() for ax in titled] == [f"head {i}" for i in range(5)]


def test_power_of_two_slider():
    pytest.importorskip("ipywidgets")  # not on every GPU image
    from course_lib.widgets import power_of_two_slider

    slider = power_of_two_slider("d_k", 3, 100)
    assert list(slider.options) == [4, 8, 16, 32, 64]
    assert slider.value == 16
    with pytest.raises(ValueError, match="not one of"):
        power_of_two_slider("d_k", 4, 64, value=5)
    with pytest.raises(ValueError, match="no power of two"):
        power_of_two_slider("d_k", 5, 7)


def test_the_alignment_explorer_translates_the_chosen_sentence_and_draws_its_map(capsys):
    from course_lib.data import load_corpus
    from course_lib.seq2seq import build_model
    from course_lib.widgets import alignment_explorer

    corpus = load_corpus("tiny")
    torch.manual_seed(0)
    model = build_model("luong-dot", len(corpus.src_vocab), len(corpus.tgt_vocab))
    pairs = list(corpus.test[:3])
    explorer = alignment_explorer({"luong-dot": model}, pairs, corpus, sentence=1)
    slider, dropdown = explorer.children[:2]
    assert (slider.max, slider.value, list(dropdown.options)) == (2, 1, ["luong-dot"])
    explorer.update()  # what moving a control does: draw again
    out = capsys.readouterr().out
    assert "source:      " + " ".join(pairs[1].src) in out and "reference:" in out and "translation:" in out
    plain = build_model("gru-encdec", len(corpus.src_vocab), len(corpus.tgt_vocab))
    with pytest.raises(ValueError, match="without attention"):
        alignment_explorer({"gru-encdec": plain}, pairs, corpus)
    with pytest.raises(ValueError, match="at least one"):
        alignment_explorer({"luong-dot": model}, [], corpus)
