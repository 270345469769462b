"""ROAR (Hooker et al., 2019): remove the top-k % of pixels by attribution from every training
and test image, retrain, and measure test accuracy. A better attribution removes more of what
the model needs, so accuracy falls faster than for a random ranking."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import ChanattrError
from .insertion_deletion import saliency_order


def remove_top(x: torch.Tensor, saliency: torch.Tensor, fraction: float, fill: torch.Tensor | float = 0.0,
               seed: int = 0) -> torch.Tensor:
    """Copy of ``x`` (N x C x H x W) with the top ``fraction`` of pixels of each image by
    ``saliency`` (N x H x W) set to ``fill`` (a value, or C values: e.g. the dataset mean)."""
    if not 0.0 <= fraction <= 1.0:
        raise ChanattrError(f"fraction must be in [0, 1], not {fraction}")
    n, c, h, w = x.shape
    if saliency.shape != (n, h, w):
        raise ChanattrError(f"saliency {tuple(saliency.shape)} does not fit {tuple(x.shape)}")
    k = round(fraction * h * w)
    order = saliency_order(saliency, seed)[:, :k]
    drop = torch.zeros(n, h * w, dtype=torch.bool, device=x.device)
    drop.scatter_(1, order.to(x.device), True)
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1).expand(1, c, 1, 1)
    drop = drop.view(n, 1, h, w)
    return torch.where(drop, fill_t, x)


def roar(
    train_and_test: Callable[[torch.Tensor, torch.Tensor], float],
    x_train: torch.Tensor,
    s_train: torch.Tensor,
    x_test: torch.Tensor,
    s_test: torch.Tensor,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    fill: torch.Tensor | float = 0.0,
) -> dict[float, float]:
    """Test accuracy after retraining on images with the top ``fraction`` removed, per
    fraction. ``train_and_test(x_train_removed, x_test_removed)`` trains a fresh model (labels
    are the caller's) and returns its test accuracy in [0, 1]."""
    return {f: float(train_and_test(remove_top(x_train, s_train, f, fill), remove_top(x_test, s_test, f, fill)))
            for f in fractions}
