"""Insertion and deletion curves (Petsiuk et al., RISE): the target's probability as pixels
are inserted into a blurred copy of the image (insertion, higher AUC is better), or replaced
by that blurred copy (deletion, lower is better), most salient first."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ChanattrError
from ..hooks import frozen
from ..perturbations import gaussian_blur


def saliency_order(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """N x (H W) pixel indices, most salient first; ties are broken by a fixed random
    permutation (not by position, which would favour the top of the image)."""
    flat = saliency.reshape(saliency.shape[0], -1).float()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(flat.shape[1], generator=g).to(flat.device)
    order = torch.argsort(flat[:, perm], dim=1, descending=True, stable=True)
    return perm[order]


@torch.no_grad()
def insertion_deletion(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    *,
    mode: str = "insertion",
    steps: int = 32,
    sigma: float | None = None,
    batch_size: int = 33,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Curves and AUCs for N images. ``x``: N x 3 x H x W (normalised input); ``saliency``:
    N x H x W (any real values; only the order matters); ``target``: class indices.
    Returns (auc: N, curve: N x (steps + 1)) of softmax probabilities of the target, the
    curve at fractions 0, 1/steps, ..., 1 of the pixels inserted (or deleted); the AUC is the
    trapezoid rule over the fraction, in [0, 1]. The blurred copy: Gaussian sigma 20 px at 224."""
    if mode not in ("insertion", "deletion"):
        raise ChanattrError(f"mode must be insertion or deletion, not {mode!r}")
    if x.dim() == 3:
        x = x[None]
    if saliency.dim() == 2:
        saliency = saliency[None]
    n, _, h, w = x.shape
    if saliency.shape != (n, h, w):
        raise ChanattrError(f"saliency {tuple(saliency.shape)} does not fit the input {tuple(x.shape)}: give N x H x W")
    targets = torch.as_tensor(target, dtype=torch.long, device=x.device).flatten().expand(n)
    sigma = 20.0 * min(h, w) / 224.0 if sigma is None else sigma
    blurred = gaussian_blur(x, sigma)
    start, end = (blurred, x) if mode == "insertion" else (x, blurred)
    order = saliency_order(saliency.to(x.device))
    counts = torch.linspace(0, h * w, steps + 1).round().long()
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    curve = torch.empty(n, steps + 1)
    with frozen(model):
        for i in range(n):
            for s in range(0, steps + 1, batch_size):
                c = counts[s : s + batch_size].to(x.device)
                changed = (rank[i][None] < c[:, None]).view(-1, 1, h, w).to(x.dtype)
                xi = start[i][None] * (1 - changed) + end[i][None] * changed
                probs = model(xi).softmax(1)[:, targets[i]]
                curve[i, s : s + len(c)] = probs.float().cpu()
    auc = torch.trapezoid(curve, dx=1.0 / steps, dim=1)
    return auc, curve
