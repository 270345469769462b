"""Image parameterisations: what the optimiser changes to make an image.

- ``pixel_image``: the pixels themselves, kept in [0, 1] (with Mahendran and Vedaldi's
  regularisers in ``inversion.objectives``).
- ``fourier_image``: Lucent's decorrelated Fourier parameterisation (torch-lucent's
  ``fft_image`` and colour decorrelation), squashed into [0, 1] by a sigmoid.

Both return an ``ImageParam``: ``params`` to optimise and ``image()`` giving N x C x H x W
images in [0, 1] (C = 3, RGB, or 1 for greyscale models) on the requested device. Lucent's own module-level ``cuda:0`` device is
replaced by that device (``lucent_device``), so it never leaks into this API.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@contextmanager
def lucent_device(device: torch.device | str) -> Iterator[None]:
    """Make torch-lucent create its tensors on ``device`` while inside."""
    import lucent.optvis.param.spatial as spatial
    import lucent.optvis.transform as transform

    old = spatial.device, transform.device
    spatial.device = transform.device = torch.device(device)
    try:
        yield
    finally:
        spatial.device, transform.device = old


@dataclass
class ImageParam:
    """Parameters and the function that turns them into N x 3 x H x W images in [0, 1]."""

    params: list[torch.Tensor]
    image: Callable[[], torch.Tensor]
    kind: str
    clamp: bool = False  # pixel images are clamped to [0, 1] after each step

    def after_step(self) -> None:
        if self.clamp:
            with torch.no_grad():
                for p in self.params:
                    p.clamp_(0, 1)


def pixel_image(shape: tuple[int, int, int, int], device, init: torch.Tensor | None = None,
                sd: float = 0.05) -> ImageParam:
    """Plain pixels in [0, 1], starting from grey plus noise of ``sd`` (or from ``init``)."""
    if init is None:
        init = (0.5 + sd * torch.randn(shape)).clamp(0, 1)
    x = init.detach().clone().to(device).requires_grad_(True)
    return ImageParam([x], lambda: x, "pixel", clamp=True)


def fourier_image(shape: tuple[int, int, int, int], device, sd: float = 0.01, decorrelate: bool = True) -> ImageParam:
    """Lucent's Fourier-space image with decorrelated colours (Olah et al., Distill 2017)."""
    from lucent.optvis.param.color import color_correlation_normalized
    from lucent.optvis.param.spatial import fft_image

    with lucent_device(device):
        params, spectrum_image = fft_image(shape, sd=sd)
    colors = torch.tensor(color_correlation_normalized.T, device=device)
    decorrelate = decorrelate and shape[1] == 3  # colour decorrelation is for RGB; one channel: plain

    def image() -> torch.Tensor:
        t = spectrum_image()
        if decorrelate:
            t = torch.einsum("nchw,cd->ndhw", t, colors)
        return torch.sigmoid(t)

    return ImageParam(list(params), image, "fourier")


PARAMETERISATIONS = {"pixel": pixel_image, "fourier": fourier_image}


def make_image(kind: str, shape: tuple[int, int, int, int], device) -> ImageParam:
    """``"pixel"`` or ``"fourier"``."""
    from chanattr.errors import ChanattrError

    if kind not in PARAMETERISATIONS:
        raise ChanattrError(f"unknown parameterisation {kind!r}: use pixel or fourier")
    return PARAMETERISATIONS[kind](shape, device)
