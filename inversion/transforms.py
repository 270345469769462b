"""Random transforms applied to the image at each step (robustness, as in Lucent):
torch-lucent's jitter, scale and rotate, composed. ``same_size`` keeps the image's size
(needed when activations are compared with the original's, in inversion)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]


def _fit(size: tuple[int, int]) -> Transform:
    """Centre-crop or pad (reflecting) back to ``size``."""

    def inner(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = size
        if h < th or w < tw:
            ph, pw = max(0, th - h), max(0, tw - w)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="reflect")
            h, w = x.shape[-2:]
        top, left = (h - th) // 2, (w - tw) // 2
        return x[..., top : top + th, left : left + tw]

    return inner


def robustness(size: tuple[int, int] | None = None, jitter: int = 4, scale: float = 0.05,
               rotate: int = 5) -> Transform:
    """Lucent's jitter (up to ``jitter`` px), random scale (within 1 +- ``scale``) and random
    rotation (up to ``rotate`` degrees); with ``size``, the result is cropped or padded back
    to it. Call inside ``inversion.param.lucent_device`` so tensors land on the right device."""
    from lucent.optvis import transform as lt

    steps = [lt.jitter(jitter)] if jitter > 1 else []
    if scale > 0:
        steps.append(lt.random_scale([1 + scale * (i - 5) / 5 for i in range(11)]))
    if rotate > 0:
        steps.append(lt.random_rotate(list(range(-rotate, rotate + 1))))
    if size is not None:
        steps.append(_fit(size))
    return lt.compose(steps)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x
