"""Objectives for inversion and visualisation (small composable functions, as in
``lucent.optvis.objectives``).

Feature inversion (Mahendran and Vedaldi, CVPR 2015), restricted to a channel mask m:

    || m * (phi(x) - phi(x0)) ||^2 / || m * phi(x0) ||^2  +  regularisers

Regularisers as Mahendran and Vedaldi weigh them (their CVPR 2015 code, deep-goggle): on
[0, 255]-scale pixels with the data mean subtracted (the mean the model's normalisation
subtracts), the alpha-norm sum |x|^alpha (alpha = 6, weight lambda_alpha = 8e-10) and the
total variation sum (dx^2 + dy^2)^(beta / 2) (beta = 2, weight lambda_tv = 1 for early, 10
for middle, 100 for late layers), each halved and divided by ||x0||^2, the squared norm of
a (mean-subtracted) natural image: theirs is a constant measured on a dataset, ours the
original image's own, as the feature term is divided by ||m phi(x0)||^2.
"""

from __future__ import annotations

import torch

#: Mahendran and Vedaldi's weights (CVPR 2015 code): the alpha-norm's, and the TV's for early,
#: middle and late layers.
LAMBDA_ALPHA = 8e-10
LAMBDA_TV = {"early": 1.0, "middle": 10.0, "late": 100.0}


def channel_weights(mask: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """A B x C channel mask shaped to broadcast over a B x C x ... activation (a mask already
    of the activation's rank, e.g. a unit kind's ``expand``, is returned as it is)."""
    if mask.dim() == activation.dim():
        return mask.to(activation.dtype)
    return mask.view(*mask.shape, *([1] * (activation.dim() - 2))).to(activation.dtype)


def feature_loss(activation: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: || m (a - t) ||^2 / || m t ||^2 (B values). ``mask``: B x C channels of a
    channels-first activation, or weights broadcastable to the activation (any unit kind:
    ``UnitKind.expand``). Units with m = 0 do not count: neither the loss nor its gradient
    depends on them."""
    w = channel_weights(mask, activation)
    num = ((w * (activation - target)) ** 2).flatten(1).sum(1)
    den = ((w * target) ** 2).flatten(1).sum(1).clamp(min=1e-12)
    return num / den


def _centred(images: torch.Tensor, mean) -> torch.Tensor:
    """B x C x H x W in [0, 1] -> [0, 255] scale with the data ``mean`` (C values in [0, 1]) removed."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return 255.0 * (images - m)


def alpha_norm(images: torch.Tensor, mean, alpha: float = 6.0) -> torch.Tensor:
    """Per image: sum over pixels and colours of |x - mean|^alpha, on the [0, 255] scale
    (``mean``: the data mean, C values in [0, 1])."""
    return (_centred(images, mean).abs() ** alpha).flatten(1).sum(1)


def total_variation(images: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per image: sum over pixels and colours of (dx^2 + dy^2)^(beta / 2), on the [0, 255] scale
    (forward differences; none past the last row and column)."""
    x = 255.0 * images
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return ((dx**2 + dy**2).clamp(min=1e-12) ** (beta / 2)).flatten(1).sum(1)


def natural_prior(images: torch.Tensor, original: torch.Tensor, mean, *, lambda_alpha: float = LAMBDA_ALPHA,
                  alpha: float = 6.0, lambda_tv: float = LAMBDA_TV["middle"], beta: float = 2.0) -> torch.Tensor:
    """Mahendran and Vedaldi's regulariser, per image: (lambda_alpha / 2 alpha_norm + lambda_tv / 2
    total_variation) / ||original - mean||^2 (images and original: B x C x H x W in [0, 1])."""
    energy = (_centred(original, mean) ** 2).flatten(1).sum(1).clamp(min=1e-12)
    out = torch.zeros(images.shape[0], device=images.device, dtype=images.dtype)
    if lambda_alpha:
        out = out + lambda_alpha / 2 * alpha_norm(images, mean, alpha)
    if lambda_tv:
        out = out + lambda_tv / 2 * total_variation(images, beta)
    return out / energy


def channel_activation(activation: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """For activation maximisation: the mean activation of channel ``channels[b]`` in image b."""
    a = activation[torch.arange(activation.shape[0], device=activation.device), channels]
    return a.flatten(1).mean(1) if a.dim() > 1 else a
