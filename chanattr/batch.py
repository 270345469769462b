"""What every method checks of its input batch and targets."""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import ChanattrError


def as_targets(target: int | Sequence[int] | torch.Tensor, n: int, device=None) -> torch.Tensor:
    """One class index per image: an int (for all), a sequence or a tensor of length n."""
    t = torch.as_tensor(target, dtype=torch.long, device=device).flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ChanattrError(f"got {t.numel()} targets for {n} images: give one, or one per image")
    return t


def check_batch(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        raise ChanattrError("the input must be a 3 x H x W or N x 3 x H x W tensor")
    return x[None] if x.dim() == 3 else x
