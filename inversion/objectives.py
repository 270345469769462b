"""Objectives for inversion and visualisation (small composable functions, as in
``lucent.optvis.objectives``).

Feature inversion (Mahendran and Vedaldi, CVPR 2015), restricted to a channel mask m:

    || m * (phi(x) - phi(x0)) ||^2 / || m * phi(x0) ||^2  +  regularisers

Regularisers on [0, 255]-scale pixels, normalised as in Mahendran and Vedaldi so that a
natural image scores about 1: the alpha-norm ``mean(|x - mean| / B)^alpha`` (alpha = 6,
B = 80) and total variation ``mean(((dx^2 + dy^2) / V^2)^(beta / 2))`` (beta = 2,
V = B / 6.5).
"""

from __future__ import annotations

import torch

B_RANGE = 80.0  # typical deviation of a [0, 255] pixel from the mean (Mahendran and Vedaldi)
V_RANGE = B_RANGE / 6.5  # typical difference of neighbouring pixels


def channel_weights(mask: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """A B x C channel mask shaped to broadcast over a B x C x ... activation."""
    return mask.view(*mask.shape, *([1] * (activation.dim() - 2))).to(activation.dtype)


def feature_loss(activation: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: || m (a - t) ||^2 / || m t ||^2 (B values). Channels with m = 0 do not count:
    neither the loss nor its gradient depends on them."""
    w = channel_weights(mask, activation)
    num = ((w * (activation - target)) ** 2).flatten(1).sum(1)
    den = ((w * target) ** 2).flatten(1).sum(1).clamp(min=1e-12)
    return num / den


def alpha_norm(images: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """Per image: mean over pixels of (|x - mean| / B)^alpha, x on the [0, 255] scale."""
    x = 255.0 * (images - images.mean(dim=(2, 3), keepdim=True))
    return ((x.abs() / B_RANGE) ** alpha).flatten(1).mean(1)


def total_variation(images: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per image: mean over pixels of ((dx^2 + dy^2) / V^2)^(beta / 2), x on the [0, 255] scale."""
    x = 255.0 * images
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (((dx**2 + dy**2) / V_RANGE**2) ** (beta / 2)).flatten(1).mean(1)


def channel_activation(activation: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """For activation maximisation: the mean activation of channel ``channels[b]`` in image b."""
    a = activation[torch.arange(activation.shape[0], device=activation.device), channels]
    return a.flatten(1).mean(1) if a.dim() > 1 else a
