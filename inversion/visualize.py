"""Feature visualisation: activation maximisation of single channels (Olah et al., Distill
2017) with our own loop on Lucent's decorrelated Fourier parameterisation and transforms."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from chanattr.errors import ChanattrError
from chanattr.extremal import show_progress
from chanattr.hooks import frozen
from chanattr.models import Preprocessing
from chanattr.split import layer_function

from .invert import seeded
from .objectives import channel_activation
from .param import lucent_device, make_image
from .transforms import robustness


@dataclass
class Visualisation:
    """``images``: one 3 x H x W image in [0, 1] per channel; ``activation``: the mean
    activation each reached (no transforms)."""

    channels: list[int]
    images: torch.Tensor
    activation: torch.Tensor
    seconds: float
    info: dict = field(default_factory=dict)


def visualize_channels(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    preprocessing: Preprocessing,
    *,
    iterations: int = 256,
    lr: float = 0.05,
    param: str = "fourier",
    size: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    batch_size: int = 8,
    unit: str = "channels",
    layout: str | None = None,
) -> Visualisation:
    """One image per unit that maximises that unit's mean activation at ``layer`` (all units
    optimised together, ``batch_size`` at a time). ``unit``: ``"channels"`` (default), or a
    transformer's ``"hidden"`` units, ``"heads"`` or ``"tokens"`` (``chanattr.units``): the
    mean over what the unit covers (a hidden unit over every token, a head over its slice and
    every token). The model runs in eval mode and is left as found."""
    from chanattr.hooks import get_layer
    from chanattr.units import detect_layout, unit_kind

    channels = [int(c) for c in channels]
    if not channels:
        raise ChanattrError("give at least one channel to visualise")
    if iterations < 1:
        raise ChanattrError("iterations must be at least 1")
    if device is None:
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    device = torch.device(device)
    size = size or preprocessing.input_size
    start = time.perf_counter()
    images, reached = [], []
    with frozen(model), seeded(seed, device), lucent_device(device):
        example = torch.zeros(1, preprocessing.channels, size, size, device=device)
        kind = unit_kind(unit)(model, layer)
        phi, path = layer_function(model, kind.site.name, example, port=kind.site.port)
        with torch.no_grad():
            a0 = phi(example)
        kind.bind(a0, detect_layout(model, get_layer(model, kind.site.name), a0, layout, kind.site.name))
        c = kind.count()
        bad = [ch for ch in channels if not 0 <= ch < c]
        if bad:
            raise ChanattrError(f"layer {layer!r} has {unit} 0..{c - 1}; got {bad[0]}")
        covered = kind.pool(torch.ones_like(a0[:1]))[0]  # how many values each unit averages
        try:  # the transforms change the image's size; a model built for one size (a ViT) gets it back
            with torch.no_grad():
                phi(torch.zeros(1, preprocessing.channels, size + 6, size + 6, device=device))
            fixed = False
        except Exception:
            fixed = True

        def sized(images: torch.Tensor) -> torch.Tensor:
            if fixed and images.shape[-2:] != (size, size):
                return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            return images

        def unit_activation(a: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
            if unit == "channels":
                return channel_activation(a, chunk)
            pooled = kind.pool(a) / covered
            return pooled[torch.arange(a.shape[0], device=a.device), chunk]
        transform = robustness(None, jitter=8, scale=0.1, rotate=10)
        total = iterations * ((len(channels) + batch_size - 1) // batch_size)
        bar = tqdm(total=total, desc=f"visualising {layer}", disable=not show_progress(progress), leave=False)
        for s in range(0, len(channels), batch_size):
            chunk = torch.tensor(channels[s : s + batch_size], device=device)
            image = make_image(param, (len(chunk), preprocessing.channels, size, size), device)
            optimiser = torch.optim.Adam(image.params, lr=lr)
            for _ in range(iterations):
                seen = transform(image.image())
                value = unit_activation(phi(preprocessing.normalize(sized(seen))), chunk)
                optimiser.zero_grad(set_to_none=True)
                (-value.sum()).backward()
                optimiser.step()
                image.after_step()
                bar.update(1)
            with torch.no_grad():
                final = image.image().clamp(0, 1)
                reached.append(unit_activation(phi(preprocessing.normalize(final)), chunk).cpu())
            images.append(final.cpu())
        bar.close()
    return Visualisation(channels, torch.cat(images), torch.cat(reached), time.perf_counter() - start,
                         {"layer": layer, "path": path, "param": param, "iterations": iterations, "unit": unit})
