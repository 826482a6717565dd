"""Controls for the lessons' interactive figures (``ipywidgets``).

A lesson pairs them with ``ipywidgets.interactive(draw, name=control, ...)``, which calls ``draw``
once straight away and again whenever a control changes. Executed without a browser (nbclient,
``nbgrader autograde``) nobody moves a slider, so the figure is drawn once with the initial values:
widget cells can stay in the graded run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import ipywidgets as widgets

if TYPE_CHECKING:
    from course_lib.data import Corpus, Pair
    from course_lib.seq2seq import Seq2Seq

__all__ = ["power_of_two_slider", "alignment_explorer"]


def power_of_two_slider(
    description: str, smallest: int, largest: int, value: int | None = None
) -> widgets.SelectionSlider:
    """A slider over 2^a, 2^(a+1), ..., 2^b: sizes such as d_k, a window or a block length.

    Sizes that matter in attention span orders of magnitude; a linear slider from 4 to 1024 would
    spend almost all its travel above 100. ``value`` defaults to the middle step.
    """
    if smallest < 1 or largest < smallest:
        raise ValueError(f"need 1 <= smallest <= largest, got {smallest} and {largest}")
    options = []
    size = 1
    while size <= largest:
        if size >= smallest:
            options.append(size)
        size *= 2
    if not options:
        raise ValueError(f"no power of two lies between {smallest} and {largest}")
    if value is None:
        value = options[len(options) // 2]
    if value not in options:
        raise ValueError(f"value {value} is not one of the slider's steps {options}")
    return widgets.SelectionSlider(
        options=options, value=value, description=description, continuous_update=False,
        style={"description_width": "initial"},
    )



def alignment_explorer(models: Mapping[str, Seq2Seq], pairs: Sequence[Pair], corpus: Corpus,
                       sentence: int = 0) -> widgets.interactive:
    """Pick a sentence and a model: see the model's greedy translation beside the reference, and the
    attention it used to write each word, with the corpus's true links in red.

    ``models`` maps a label to a model with attention; ``pairs`` are the sentences to choose from.
    """
    import matplotlib.pyplot as plt

    from course_lib.evaluate import decode_with_attention
    from course_lib.plots import alignment_heatmap

    if not models or not pairs:
        raise ValueError("alignment_explorer needs at least one model and one sentence")
    without = [label for label, model in models.items() if not model.has_attention]
    if without:
        raise ValueError(f"models without attention have no alignment to show: {without}")

    def draw(sentence: int, model: str) -> None:
        pair = pairs[sentence]
        translation, weights = decode_with_attention(models[model], pair, corpus)
        print("source:     ", " ".join(pair.src))
        print("reference:  ", " ".join(pair.tgt))
        print("translation:", " ".join(translation), "(exact)" if tuple(translation) == pair.tgt else "")
        # the true links are the reference's: they apply to the translation only where it is the reference
        links = pair.alignment if tuple(translation) == pair.tgt else None
        _, ax = plt.subplots(figsize=(min(12, 2 + 0.35 * len(pair.src)), min(10, 1.5 + 0.3 * max(1, len(translation)))),
                             layout="constrained")
        alignment_heatmap(weights, pair.src, translation, links, ax=ax, title=f"{model}: where it looks to write each word")
        plt.show()

    return widgets.interactive(
        draw,
        sentence=widgets.IntSlider(value=sentence, min=0, max=len(pairs) - 1, description="sentence",
                                   continuous_update=False),
        model=widgets.Dropdown(options=list(models), description="model"),
    )
