"""Controls for the lessons' interactive figures (``ipywidgets``).

A lesson pairs them with ``ipywidgets.interactive(draw, name=control, ...)``, which calls ``draw``
once straight away and again whenever a control changes. Executed without a browser (nbclient,
``nbgrader autograde``) nobody moves a slider, so the figure is drawn once with the initial values:
widget cells can stay in the graded run.
"""

from __future__ import annotations

import ipywidgets as widgets

__all__ = ["power_of_two_slider"]


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

