"""Figures: the inversion panel (original | all channels | salient subset | the rest) and a
grid of channel visualisations. Each returns a matplotlib ``Figure``."""

from __future__ import annotations

from typing import Sequence

import torch

from chanattr.plotting import STYLE, _off, plt, to_image


def plot_inversions(original: torch.Tensor, inversions: dict[str, torch.Tensor], counts: dict[str, int],
                    total: int, *, title: str = "", unit: str = "channels"):
    """``original``: 3 x H x W in [0, 1]; ``inversions``: name ("all", "subset", "rest") ->
    3 x H x W in [0, 1]; ``counts``: units (``unit``: channels, hidden, heads, tokens) used by
    each, of ``total``."""
    word = {"hidden": "hidden units"}.get(unit, unit)
    names = {"all": f"all {word}", "subset": f"salient {word}", "rest": f"the other {word}"}
    panels = [("original", original, "")] + [
        (names.get(k, k), v, f"{counts[k]} of {total}") for k, v in inversions.items()
    ]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.7), layout="constrained")
        for ax, (name, img, sub) in zip(axes, panels):
            ax.imshow(to_image(img))
            ax.set_title(name + (f"\n({sub})" if sub else "\n "))
            _off(ax)
        if title:
            fig.suptitle(title)
    return fig


def plot_channel_grid(images: torch.Tensor, labels: Sequence[str], *, title: str = "", cols: int = 6):
    """One panel per channel visualisation (n x 3 x H x W in [0, 1]), each with its label."""
    n = images.shape[0]
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows + 0.3), layout="constrained",
                                 squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < n:
                ax.imshow(to_image(images[i]))
                ax.set_title(labels[i], fontsize=8)
            _off(ax)
        if title:
            fig.suptitle(title)
    return fig


def plot_inversion_grid(rows: Sequence[dict], *, title: str = ""):
    """One row per (image, layer): ``{"label", "original", "inversions": {name: 3 x H x W},
    "counts": {name: int}, "total": int}`` -> original | all | salient subset | the rest."""
    names = {"all": "all channels", "subset": "salient channels", "rest": "the other channels"}
    cols = 1 + max(len(r["inversions"]) for r in rows)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols, 2.0 * len(rows) + 0.2), layout="constrained",
                                 squeeze=False)
        for r, row_axes in zip(rows, axes):
            row_axes[0].imshow(to_image(r["original"]))
            row_axes[0].set_ylabel(r["label"], fontsize=8)
            row_axes[0].set_title("original" if r is rows[0] else "")
            for ax, (k, img) in zip(row_axes[1:], r["inversions"].items()):
                ax.imshow(to_image(img))
                ax.set_title(f"{names.get(k, k)}\n{r['counts'][k]} of {r['total']}", fontsize=7)
            for ax in row_axes:
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
        if title:
            fig.suptitle(title)
    return fig
