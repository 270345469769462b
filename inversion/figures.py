"""Figures: the inversion panel (original | all channels | salient subset | the rest) and a
grid of channel visualisations. Each returns a matplotlib ``Figure``."""

from __future__ import annotations

from typing import Sequence

import torch

from chanattr.plotting import STYLE, _off, plt, to_image


def plot_inversions(original: torch.Tensor, inversions: dict[str, torch.Tensor], counts: dict[str, int],
                    total: int, *, title: str = ""):
    """``original``: 3 x H x W in [0, 1]; ``inversions``: name ("all", "subset", "rest") ->
    3 x H x W in [0, 1]; ``counts``: channels used by each, of ``total``."""
    names = {"all": "all channels", "subset": "salient channels", "rest": "the other channels"}
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
