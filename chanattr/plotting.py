"""Matplotlib figures: masks over photos, perturbed inputs, area and channel curves.

Every function returns a ``matplotlib.figure.Figure``; save it with
``fig.savefig(path, dpi=150)``. Importing this module leaves matplotlib's backend as the user
set it (a notebook keeps its inline figures); the command line uses Agg (``chanattr.cli``).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def to_image(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """3 x H x W (or H x W x 3) in [0, 1] -> H x W x 3 numpy array, clipped."""
    a = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:  # one-channel (greyscale) models: shown grey
        a = np.repeat(a, 3, axis=-1)
    return np.clip(a, 0, 1)


def overlay(rgb: np.ndarray, mask: np.ndarray, dim: float = 0.25) -> np.ndarray:
    """The photo where the mask is 1, darkened where it is 0."""
    m = np.clip(mask, 0, 1)[..., None]
    return rgb * (dim + (1 - dim) * m)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def plot_explain(
    rgb: torch.Tensor,
    masks: torch.Tensor,
    areas: Sequence[float],
    perturbed: torch.Tensor,
    *,
    title: str = "",
    rewards: Sequence[float] | None = None,
    curve: tuple[Sequence[float], Sequence[float]] | None = None,
    full_score: float | None = None,
    variant: str = "preserve",
    perturbation: str = "blur",
):
    """The photo; each mask over it (top row) and the input the model saw (bottom row);
    and the area curve (best score found against area) when given. ``rewards``: the score
    of each mask, shown in its title.

    ``rgb``: 3 x H x W in [0, 1]; ``masks``: K x H x W; ``perturbed``: K x 3 x H x W in [0, 1].
    """
    k = masks.shape[0]
    cols = k + 1 + (1 if curve is not None else 0)
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(2.0 * cols, 4.2), layout="constrained")
        grid = fig.add_gridspec(2, cols)
        img = to_image(rgb)
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(img)
        ax.set_title("input")
        _off(ax)
        fig.add_subplot(grid[1, 0]).axis("off")
        for i in range(k):
            m = masks[i].detach().cpu().numpy()
            ax = fig.add_subplot(grid[0, i + 1])
            ax.imshow(overlay(img, m))
            ax.contour(m, levels=[0.5], colors="#ffcc00", linewidths=0.8)
            label = f"area {areas[i]:.3g}"
            if rewards is not None:
                label += f"\nscore {rewards[i]:.2f}"
            ax.set_title(label)
            _off(ax)
            ax = fig.add_subplot(grid[1, i + 1])
            ax.imshow(to_image(perturbed[i]))
            removed = {"blur": "blurred", "fade": "faded"}.get(perturbation, "removed")
            ax.set_title(f"kept (rest {removed})" if variant != "delete" else f"region {removed}")
            _off(ax)
        if curve is not None:
            ax = fig.add_subplot(grid[:, -1])
            ax.plot(curve[0], curve[1], "-o", ms=2.5, lw=1.2, color="#1f4e79", label="best mask found")
            if full_score is not None:
                ax.axhline(full_score, color="0.5", ls="--", lw=0.8, label="whole image")
            ax.set_xlabel("area (fraction of the image)")
            ax.set_ylabel("target logit")
            ax.set_title("score against area")
            ax.legend(loc="lower right", frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def plot_channels(
    masks: torch.Tensor,
    areas: Sequence[float],
    curve: dict | None = None,
    *,
    title: str = "",
    top: int = 40,
    variant: str = "preserve",
    unit: str = "channels",
):
    """Unit (channel, hidden unit, head or token: ``unit``) mask values as sorted bars (one row per area, the ``top`` highest labelled by
    channel index), and the channel curve (score with the top-k channels kept / removed).
    ``variant``: the masks' variant -- with ``delete`` the channels found are the removed ones.

    ``masks``: K x C in [0, 1]; ``curve``: ``ChannelCurve.to_dict()``."""
    k, c = masks.shape
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(9, 1.6 * k + 1.6), layout="constrained")
        grid = fig.add_gridspec(k, 2, width_ratios=[2.2, 1])
        for i in range(k):
            values = masks[i].detach().cpu().numpy()
            order = np.argsort(-values, kind="stable")[: min(top, c)]
            ax = fig.add_subplot(grid[i, 0])
            kept = int(round(areas[i] * c))
            colors = ["#1f4e79" if j < kept else "#9db7d5" for j in range(len(order))]
            ax.bar(np.arange(len(order)), values[order], color=colors, width=0.8)
            ax.set_xticks(np.arange(len(order)))
            ax.set_xticklabels([str(j) for j in order], rotation=90, fontsize=6)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("mask")
            found = "removed" if variant == "delete" else "kept"
            ax.set_title(f"area {areas[i]:.3g}: top {len(order)} of {c} {unit} (dark: the {kept} {found})")
        if curve is not None:
            ax = fig.add_subplot(grid[:, 1])
            ax.plot(curve["k"], curve["kept"], "-", lw=1.4, color="#1f4e79", label="only top-k kept")
            ax.plot(curve["k"], curve["removed"], "-", lw=1.4, color="#b22222", label="top-k removed")
            ax.axhline(curve["full"], color="0.5", ls="--", lw=0.8, label=f"all {unit}")
            ax.set_xscale("log")
            ax.set_xlabel(f"{unit} k (of {c})")
            ax.set_ylabel("target logit")
            ax.set_title(f"{unit} curve" if unit != "channels" else "channel curve")
            ax.legend(frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def plot_saliency_maps(rgb: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str], *,
                       title: str | None = None) -> plt.Figure:
    """The photo, then each H x W map (heat map, scaled to its 99.5th percentile) beside it."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.5), constrained_layout=True)
        axes[0].imshow(to_image(rgb))
        axes[0].set_title("input")
        _off(axes[0])
        for ax, m, t in zip(axes[1:], maps, titles):
            m = np.asarray(m, dtype=np.float32)
            top = float(np.quantile(m, 0.995)) or 1.0
            ax.imshow(np.clip(m / top, 0, 1), cmap="inferno", vmin=0, vmax=1)
            ax.set_title(t)
            _off(ax)
        if title:
            fig.suptitle(title)
    return fig
