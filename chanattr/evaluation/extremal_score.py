"""The extremal score at area a: a mask-quality measure that compares any two implementations.

Keep exactly round(a H W) pixels, those with the highest mask values (ties broken by
position), replace every other pixel by the input blurred with a Gaussian of sigma 20 px
(at 224 px; scaled with the input), and read the target logit: higher is better for
``preserve``. For ``delete`` the top pixels are blurred instead, and lower is better.

``feather`` (px) softens the kept region's edge with a Gaussian of that sigma before mixing:
a mask that relies on a hard sharp/blurred edge (an artefact the model reads, not the
content) loses under it. ``output="probability"`` reads the target's softmax probability
instead of its logit.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ChanattrError
from ..extremal import top_fraction
from ..hooks import frozen
from ..perturbations import gaussian_blur


OUTPUTS = ("logit", "probability")


@torch.no_grad()
def _scores(model, x, blurred, masks, targets, fractions, variant, batch_size, feather: float = 0.0,
            output: str = "logit") -> torch.Tensor:
    """x, blurred: N x C x H x W; masks: N x J x H x W; fractions: N x J -> N x J target logits
    (or probabilities)."""
    n, j = masks.shape[:2]
    out = torch.empty(n, j)
    flat_masks = masks.reshape(n * j, *masks.shape[2:])
    flat_fracs = fractions.reshape(n * j)
    idx = torch.arange(n, device=x.device).repeat_interleave(j)
    for start in range(0, n * j, batch_size):
        sl = slice(start, start + batch_size)
        keep = top_fraction(flat_masks[sl], flat_fracs[sl])[:, None]
        if feather > 0:
            keep = gaussian_blur(keep, feather)
        if variant == "delete":
            keep = 1 - keep
        xi = x[idx[sl]] * keep + blurred[idx[sl]] * (1 - keep)
        logits = model(xi)
        if output == "probability":
            logits = logits.float().softmax(1)
        out.view(-1)[sl] = logits.gather(1, targets[idx[sl]].view(-1, 1)).squeeze(1).float().cpu()
    return out


def _prepare(x, masks, target, sigma):
    if x.dim() == 3:
        x = x[None]
    if masks.dim() == 2:
        masks = masks[None, None]
    elif masks.dim() == 3:
        masks = masks[:, None]
    if masks.shape[0] != x.shape[0] or masks.shape[-2:] != x.shape[-2:]:
        raise ChanattrError(f"masks {tuple(masks.shape)} do not fit the input {tuple(x.shape)}: give N x K x H x W")
    targets = torch.as_tensor(target, dtype=torch.long, device=x.device).flatten()
    if targets.numel() == 1:
        targets = targets.expand(x.shape[0])
    sigma = 20.0 * min(x.shape[-2:]) / 224.0 if sigma is None else sigma
    return x, masks.to(x.device, x.dtype), targets, gaussian_blur(x, sigma)


def extremal_score(
    model: nn.Module,
    x: torch.Tensor,
    masks: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    areas: Sequence[float] | float,
    *,
    variant: str = "preserve",
    sigma: float | None = None,
    feather: float = 0.0,
    output: str = "logit",
    batch_size: int = 16,
) -> torch.Tensor:
    """Target logit with only the top ``area`` of each mask kept (``preserve``) or blurred
    (``delete``). ``x``: N x C x H x W; ``masks``: N x K x H x W (any values; only their
    order matters); ``areas``: K fractions, mask k scored at area k; ``feather``: sigma (px)
    of the Gaussian that softens the kept region's edge (0: a hard edge); ``output``:
    ``"logit"`` or ``"probability"`` (softmax). Returns N x K (CPU).
    """
    if variant not in ("preserve", "delete"):
        raise ChanattrError(f"extremal score variant must be preserve or delete, not {variant!r}")
    if output not in OUTPUTS:
        raise ChanattrError(f"extremal score output must be logit or probability, not {output!r}")
    if feather < 0:
        raise ChanattrError(f"feather is a Gaussian sigma in pixels, >= 0; got {feather}")
    x, masks, targets, blurred = _prepare(x, masks, target, sigma)
    fr = torch.as_tensor(areas, dtype=torch.float32, device=x.device).flatten()
    if fr.numel() == 1:
        fr = fr.expand(masks.shape[1])
    if fr.numel() != masks.shape[1]:
        raise ChanattrError(f"{fr.numel()} areas for {masks.shape[1]} masks per image")
    with frozen(model):
        return _scores(model, x, blurred, masks, targets, fr.expand(x.shape[0], -1), variant, batch_size, feather,
                       output)


def area_curve(
    model: nn.Module,
    x: torch.Tensor,
    masks: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    areas: Sequence[float],
    *,
    variant: str = "preserve",
    sigma: float | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """The best extremal score found at each of many areas (the paper's score-vs-area curve).

    Every one of the K masks of each image is scored at every area in ``areas`` (A of them);
    the best (highest for preserve, lowest for delete) is kept. Returns N x A (CPU).
    """
    x, masks, targets, blurred = _prepare(x, masks, target, sigma)
    fr = torch.as_tensor(areas, dtype=torch.float32, device=x.device).flatten()
    n, k, a = masks.shape[0], masks.shape[1], fr.numel()
    rep = masks[:, :, None].expand(n, k, a, *masks.shape[2:]).reshape(n, k * a, *masks.shape[2:])
    with frozen(model):
        s = _scores(model, x, blurred, rep, targets, fr.repeat(k).expand(n, -1), variant, batch_size)
    s = s.view(n, k, a)
    return s.max(1).values if variant == "preserve" else s.min(1).values
