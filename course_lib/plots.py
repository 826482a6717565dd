"""Plotting helpers shared by the lessons: attention maps, masks and grids of maps (one per head).

Every helper takes a 2-D matrix laid out as attention is, queries down the rows and keys along the
columns, as a ``torch.Tensor`` (on any device, with or without grad), a NumPy array or nested lists,
and draws on the ``Axes`` it is given or on a new one, so that a lesson can put several maps side by
side. Attention weights are drawn on a fixed 0–1 colour scale by default: with an automatic scale a
nearly uniform map and a one-hot map would look equally contrasted, and comparing them is the point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch

__all__ = ["as_matrix", "attention_heatmap", "alignment_heatmap", "mask_heatmap", "attention_grid"]

MatrixLike = Union[torch.Tensor, np.ndarray, Sequence[Sequence[float]]]

# Maps up to this many rows and columns get their values written in the cells by default;
# beyond it the numbers no longer fit.
_ANNOTATE_UP_TO = 10
_MASK_COLOURS = ListedColormap(["#d9d9d9", "#2b8cbe"])  # masked, may attend


def as_matrix(matrix: MatrixLike) -> np.ndarray:
    """A 2-D float NumPy copy of ``matrix``, whatever it came as (a tensor on a GPU, with grad...)."""
    if isinstance(matrix, torch.Tensor):
        array = matrix.detach().to("cpu", torch.float64).numpy()
    else:
        array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"expected one (L, S) matrix, got shape {array.shape}; pick one batch element or head "
            "first, or use attention_grid for several maps"
        )
    return array


def _new_axes_if_needed(ax: Axes | None, shape: tuple[int, int]) -> Axes:
    if ax is not None:
        return ax
    rows, columns = shape
    width = min(8.0, 1.5 + 0.45 * columns)
    height = min(7.0, 1.0 + 0.45 * rows)
    _, ax = plt.subplots(figsize=(max(width, 3.5), max(height, 2.5)), layout="constrained")
    return ax


def _label_axes(
    ax: Axes,
    shape: tuple[int, int],
    xlabels: Sequence[str] | None,
    ylabels: Sequence[str] | None,
    xlabel: str,
    ylabel: str,
    title: str | None,
) -> None:
    rows, columns = shape
    for labels, count, axis in ((xlabels, columns, "x"), (ylabels, rows, "y")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{len(labels)} {axis}labels for a matrix with {count} {axis} entries")
    ax.set_xticks(range(columns))
    ax.set_yticks(range(rows))
    if xlabels is not None:
        ax.set_xticklabels(list(xlabels), rotation=45, ha="right", rotation_mode="anchor")
    if ylabels is not None:
        ax.set_yticklabels(list(ylabels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)


def _annotate(ax: Axes, image: AxesImage, values: np.ndarray, fmt: str) -> None:
    """Write each value in its cell, white on dark cells and black on light ones."""
    low, high = image.get_clim()
    middle = (low + high) / 2
    for row in range(values.shape[0]):
        for column in range(values.shape[1]):
            value = values[row, column]
            colour = "white" if value < middle else "black"
            ax.text(column, row, format(value, fmt), ha="center", va="center", fontsize=7,
                    color=colour)


def attention_heatmap(
    weights: MatrixLike,
    ax: Axes | None = None,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str | None = None,
    *,
    annotate: bool | None = None,
    fmt: str = ".2f",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    colorbar: bool = True,
    xlabel: str = "key",
    ylabel: str = "query",
) -> Axes:
    """Draw an (L, S) attention matrix: row i is how query i spreads its attention over the keys.

    ``vmin``/``vmax`` default to 0 and 1 so that maps drawn side by side share one meaning of each
    colour; pass ``vmin=None, vmax=None`` to scale to the data (raw scores, for instance).
    ``annotate`` writes the values in the cells; by default it does so for maps small enough to
    read (at most 10 × 10). Returns the ``Axes`` so a caller can add to it.
    """
    values = as_matrix(weights)
    ax = _new_axes_if_needed(ax, values.shape)
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal",
                      interpolation="nearest")
    if annotate is None:
        annotate = max(values.shape) <= _ANNOTATE_UP_TO
    if annotate:
        _annotate(ax, image, values, fmt)
    _label_axes(ax, values.shape, xlabels, ylabels, xlabel, ylabel, title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def alignment_heatmap(
    weights: MatrixLike,
    source: Sequence[str],
    output: Sequence[str],
    true_links: Sequence[tuple[int, int]] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    **heatmap_options: Any,
) -> Axes:
    """A translation's attention: ``weights (len(output), len(source))``, output words down the rows,
    source words along the columns, as Bahdanau et al.'s Figure 3 draws them (transposed: theirs puts
    the source on top).

    ``true_links`` are the corpus's ``(source index, output index)`` links (``Pair.alignment``), drawn
    as red squares, so the eye sees at once where the model looks and where it should. Further keywords
    go to :func:`attention_heatmap`.
    """
    values = as_matrix(weights)
    heatmap_options.setdefault("annotate", False)
    ax = attention_heatmap(values, ax=ax, xlabels=list(source), ylabels=list(output), title=title,
                           xlabel="source", ylabel="output", **heatmap_options)
    if true_links:
        links = [(i, j) for i, j in true_links if i < values.shape[1] and j < values.shape[0]]
        ax.scatter([i for i, _ in links], [j for _, j in links], marker="s", s=60, facecolors="none",
                   edgecolors="red", linewidths=1.2)
        ax.set_xlabel("source  (red squares: the true alignment)")
    return ax


def mask_heatmap(
    mask: MatrixLike,
    ax: Axes | None = None,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str | None = None,
    *,
    legend: bool = True,
    xlabel: str = "key",
    ylabel: str = "query",
) -> Axes:
    """Draw an (L, S) attention mask in two colours: which key each query may attend to.

    The polarity is that of ``torch.nn.functional.scaled_dot_product_attention``: a boolean mask is
    True where attention is allowed; a float mask is added to the scores, so its finite entries
    allow attention and its ``-inf`` entries forbid it. (``nn.MultiheadAttention`` uses the
    opposite boolean polarity; convert with ``~mask`` before drawing one of its masks.)
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().to("cpu")
        array = mask.numpy() if mask.dtype == torch.bool else mask.to(torch.float64).numpy()
    else:
        array = np.asarray(mask)
    allowed = as_matrix(array if array.dtype == np.bool_ else np.isfinite(array.astype(np.float64)))
    ax = _new_axes_if_needed(ax, allowed.shape)
    ax.imshow(allowed, cmap=_MASK_COLOURS, vmin=0, vmax=1, aspect="equal", interpolation="nearest")
    # Thin white lines between cells make individual entries countable.
    ax.set_xticks(np.arange(-0.5, allowed.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, allowed.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    _label_axes(ax, allowed.shape, xlabels, ylabels, xlabel, ylabel, title)
    if legend:
        handles = [Patch(color=_MASK_COLOURS(1), label="may attend"),
                   Patch(color=_MASK_COLOURS(0), label="masked")]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return ax


def attention_grid(
    maps: torch.Tensor | np.ndarray | Sequence[MatrixLike],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    *,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    suptitle: str | None = None,
    panel_size: float = 2.4,
    **heatmap_options: Any,
) -> tuple[Figure, np.ndarray]:
    """Draw several (L, S) maps in a grid with one shared colour bar, e.g. the heads of one layer.

    ``maps`` is an (N, L, S) tensor or array, or a list of N matrices (they may differ in shape).
    Further keywords go to :func:`attention_heatmap` (``vmin``, ``vmax``, ``annotate``, ...);
    values are not written in the cells unless ``annotate=True``; ``vmin=None``/``vmax=None``
    take the smallest/largest value over all maps, so the one colour bar holds for every panel.
    Returns the figure and the (rows, ncols) array of axes; unused panels are hidden.
    """
    matrices = [as_matrix(single) for single in maps]
    if not matrices:
        raise ValueError("attention_grid needs at least one map")
    if titles is not None and len(titles) != len(matrices):
        raise ValueError(f"{len(titles)} titles for {len(matrices)} maps")
    ncols = max(1, min(ncols, len(matrices)))
    nrows = -(-len(matrices) // ncols)
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols + 1.0, panel_size * nrows + 0.4),
        squeeze=False, layout="constrained",
    )
    heatmap_options.setdefault("annotate", False)
    # One colour bar serves every panel only if every panel uses the same scale.
    if heatmap_options.get("vmin", 0.0) is None:
        heatmap_options["vmin"] = min(float(matrix.min()) for matrix in matrices)
    if heatmap_options.get("vmax", 1.0) is None:
        heatmap_options["vmax"] = max(float(matrix.max()) for matrix in matrices)
    for index, ax in enumerate(axes.flat):
        if index >= len(matrices):
            ax.set_visible(False)
            continue
        attention_heatmap(
            matrices[index], ax=ax, xlabels=xlabels, ylabels=ylabels,
            title=titles[index] if titles is not None else None, colorbar=False, **heatmap_options,
        )
        if index % ncols:  # the query label once per row of panels is enough
            ax.set_ylabel("")
    figure.colorbar(axes.flat[0].images[0], ax=axes, shrink=0.8)
    if suptitle is not None:
        figure.suptitle(suptitle)
    return figure, axes
