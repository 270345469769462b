"""Pixel perturbations: Gaussian blur, the blur pyramid and fade.

A *keep* mask value of 1 leaves a pixel as it is; 0 removes it (most blurred, or faded to
the model's zero input, i.e. the normalisation mean). Sizes are in pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """A normalised 1-D Gaussian of standard deviation ``sigma`` pixels (radius 3 sigma)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, border: str = "reflect") -> torch.Tensor:
    """Blur N x C x H x W images with a Gaussian of ``sigma`` pixels (separable).

    ``border``: ``"reflect"`` (images) or ``"zero"`` (maps that are 0 outside the image: a
    reflected border would make a blob touching the edge peak at the edge).
    ``sigma <= 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, x.device, x.dtype)
    r = k.numel() // 2
    n, c, h, w = x.shape
    if border == "zero":
        y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r))
    else:
        mode = "reflect" if r < min(h, w) else "replicate"
        y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.view(n, c, h, w)


class BlurPyramid:
    """``levels`` blurred copies of each image, sigma from ``max_sigma`` down to 0 in equal steps.

    ``apply(keep)`` picks, for each pixel, the position ``keep * (levels - 1)`` in the pyramid
    and interpolates linearly between the two nearest levels: keep 1 is the original, keep 0
    the most blurred.
    """

    def __init__(self, images: torch.Tensor, levels: int = 8, max_sigma: float = 20.0) -> None:
        if levels < 2:
            raise ValueError("a blur pyramid needs at least 2 levels")
        sigmas = torch.linspace(max_sigma, 0.0, levels).tolist()
        with torch.no_grad():
            # N x L x C x H x W, from most blurred (level 0) to the original (level L-1)
            self.levels = torch.stack([gaussian_blur(images, s) for s in sigmas], dim=1)
        self.sigmas = sigmas

    def apply(self, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """``keep``: B x 1 x H x W in [0, 1]; ``image_index``: B indices into the images.

        Returns B x C x H x W perturbed images."""
        n, n_levels, c, h, w = self.levels.shape
        pos = keep * (n_levels - 1)  # keep in [0, 1]; no clamp, which would stop gradients at 0 and 1
        low = pos.detach().floor().clamp(max=n_levels - 2)
        frac = pos - low  # carries the gradient
        flat = self.levels.view(n * n_levels, c, h, w)
        index = (image_index.view(-1, 1, 1, 1) * n_levels + low.long()).expand(-1, c, -1, -1)
        below = flat.gather(0, index)
        above = flat.gather(0, index + 1)
        return below + frac * (above - below)


class Fade:
    """``apply(keep)`` scales each image by the mask: 0 fades to the model's zero input."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def apply(self, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        return self.images[image_index] * keep


def make_perturbation(kind: str, images: torch.Tensor, *, max_sigma: float = 20.0, levels: int = 8):
    """``"blur"`` (a ``BlurPyramid``) or ``"fade"`` (a ``Fade``) for N x C x H x W ``images``."""
    if kind == "blur":
        return BlurPyramid(images, levels=levels, max_sigma=max_sigma)
    if kind == "fade":
        return Fade(images)
    from .errors import ChanattrError

    raise ChanattrError(f"unknown perturbation {kind!r}: use blur or fade")
