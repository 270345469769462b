"""Unit rankings users would otherwise reach for, to compare with the unit extremal
perturbation: activation norm, gradient x activation (first-order Taylor), single-unit
ablation, and random. Each returns N x U unit indices (channels, hidden units, heads or tokens),
most important first, for the images and layer of a ``UnitSpace`` (whose activations are
computed once)."""

from __future__ import annotations

import torch

from .units.space import ChannelSpace
from .batch import as_targets


def rank_by_activation(space: ChannelSpace) -> torch.Tensor:
    """Units by the L2 norm of their activation (over the positions, and dimensions, each covers)."""
    return space.kind.pool(space.activation.float() ** 2).sqrt().argsort(dim=1, descending=True, stable=True)


def rank_by_taylor(space: ChannelSpace, target) -> torch.Tensor:
    """Channels by the first-order estimate of the target's drop when the channel is set to
    the baseline: sum over positions of (a - b) * dy/da."""
    n = space.num_images
    targets = as_targets(target, n, space.activation.device)
    keep = torch.ones(n, space.num_channels, device=space.activation.device, requires_grad=True)
    with torch.enable_grad():
        logits = space.logits(keep, torch.arange(n, device=keep.device))
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), keep)
    # d y / d keep_c = sum over positions of (a - b) dy/da': the Taylor estimate itself
    return grad.argsort(dim=1, descending=True, stable=True)


@torch.no_grad()
def rank_by_ablation(space: ChannelSpace, target, batch_size: int = 128) -> torch.Tensor:
    """Channels by how much the target falls when that channel alone is set to the baseline
    (C forward passes of the network after the layer, per image)."""
    n, c = space.num_images, space.num_channels
    device = space.activation.device
    targets = as_targets(target, n, device)
    keep = 1 - torch.eye(c, device=device)  # row j removes channel j
    drops = torch.empty(n, c)
    for i in range(n):
        idx = torch.full((c,), i, device=device)
        scores = space.target_scores(keep, idx, targets, batch_size=batch_size)
        full = space.target_scores(torch.ones(1, c, device=device), idx[:1], targets)
        drops[i] = full - scores
    return drops.argsort(dim=1, descending=True, stable=True).to(device)


def rank_random(space: ChannelSpace, seed: int = 0) -> torch.Tensor:
    """A random order per image (seeded)."""
    g = torch.Generator().manual_seed(seed)
    n, c = space.num_images, space.num_channels
    return torch.stack([torch.randperm(c, generator=g) for _ in range(n)]).to(space.activation.device)
