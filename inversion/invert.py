"""Feature inversion of a unit subset: an image whose activations at a layer match the
original's on the selected units only -- channels, or a transformer's hidden units, heads or
tokens (``unit=``, as in ``chanattr.units``) -- the other units unconstrained."""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from chanattr.errors import ChanattrError
from chanattr.extremal import show_progress
from chanattr.hooks import frozen
from chanattr.models import Preprocessing
from chanattr.split import layer_function

from .objectives import LAMBDA_ALPHA, LAMBDA_TV, feature_loss, natural_prior
from .param import lucent_device, make_image
from .transforms import identity, robustness


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch, numpy and random (Lucent's transforms draw from numpy) and restore their
    states afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def channel_mask(channels, num_channels: int, device=None, *, kind: str = "auto") -> torch.Tensor:
    """A float mask of length C (``num_channels``) in [0, 1].

    ``channels``: channel indices (a list or integer tensor), or a mask of length C (a boolean
    or float tensor or list). ``kind``: ``"indices"``, ``"mask"``, or ``"auto"`` (booleans and
    floats are a mask, integers are indices). A list of 0s and 1s of length C could be either:
    ``auto`` refuses it -- say which with ``kind``."""
    if isinstance(channels, str):
        raise ChanattrError("give channels as a mask or a list of indices")
    if kind not in ("auto", "indices", "mask"):
        raise ChanattrError(f"unknown kind {kind!r}: use auto, indices or mask")
    t = torch.as_tensor(channels)
    if kind == "auto":
        if t.numel() == 0:  # an empty list: no indices
            kind = "indices"
        elif t.dtype == torch.bool or t.dtype.is_floating_point:
            kind = "mask"
        elif t.dim() == 1 and t.numel() == num_channels and num_channels > 2 and bool(((t == 0) | (t == 1)).all()):
            raise ChanattrError(f"{num_channels} zeros and ones could be a mask or channel indices: "
                                f"pass kind='mask' or kind='indices' (or a boolean tensor for a mask)")
        else:
            kind = "indices"
    if kind == "mask":
        if t.dim() != 1 or t.numel() != num_channels:
            raise ChanattrError(f"a channel mask needs {num_channels} entries, got {t.numel()}")
        m = t.float()
        if m.min() < 0 or m.max() > 1:
            raise ChanattrError("a channel mask holds values in [0, 1]")
        return m.to(device)
    if t.dtype.is_floating_point and not bool((t == t.round()).all()):
        raise ChanattrError("channel indices must be whole numbers")
    idx = t.long().flatten()
    if idx.numel() and (idx.min() < 0 or idx.max() >= num_channels):
        raise ChanattrError(f"channel indices must be within 0..{num_channels - 1}")
    m = torch.zeros(num_channels)
    m[idx] = 1
    return m.to(device)


@dataclass
class InversionSettings:
    """``param``: ``"fourier"`` (Lucent's decorrelated Fourier image) or ``"pixel"``.
    ``transforms``: Lucent's jitter / scale / rotate at each step, drawn once and applied to
    the candidate and the original alike (``align_transforms``; off: the original's features
    are read untransformed, which compares misaligned maps). ``lambda_alpha`` / ``lambda_tv``:
    Mahendran and Vedaldi's regulariser weights (``inversion.objectives.natural_prior``; their
    TV weight is 1, 10 or 100 for early, middle or late layers: 10 here), 0 turns one off."""

    param: str = "fourier"
    iterations: int = 300
    lr: float = 0.05
    transforms: bool = True
    align_transforms: bool = True
    jitter: int = 4
    scale: float = 0.05
    rotate: int = 5
    lambda_alpha: float = LAMBDA_ALPHA
    lambda_tv: float = LAMBDA_TV["middle"]


@dataclass
class InversionResult:
    """``images``: B x 3 x H x W in [0, 1]. ``relative_error``: B values of
    ||m (phi(x) - phi(x0))|| / ||m phi(x0)|| for the final images (no transforms)."""

    images: torch.Tensor
    relative_error: torch.Tensor
    loss_history: torch.Tensor
    seconds: float
    info: dict = field(default_factory=dict)


def invert(
    model: nn.Module,
    x0: torch.Tensor,
    layer: str,
    channels: torch.Tensor | Sequence,
    preprocessing: Preprocessing,
    *,
    settings: InversionSettings | None = None,
    iterations: int | None = None,
    param: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    unit: str = "channels",
    layout: str | None = None,
    **unit_options,
) -> InversionResult:
    """Invert ``layer``'s activations of ``x0`` (B x 3 x H x W, the model's normalised input)
    on the units selected by ``channels``: one mask for all (U, boolean or float, or a list of
    indices) or one per image (B x U). ``unit``: ``"channels"`` (default), ``"hidden"``,
    ``"heads"`` or ``"tokens"`` (``chanattr.units``; ``layout`` where it cannot be detected).
    Returns B images in [0, 1]. The model runs in eval mode and is left as found."""
    from chanattr.hooks import get_layer
    from chanattr.units import detect_layout, unit_kind

    settings = settings or InversionSettings()
    if iterations is not None:
        settings = InversionSettings(**{**settings.__dict__, "iterations": iterations})
    if param is not None:
        settings = InversionSettings(**{**settings.__dict__, "param": param})
    if settings.iterations < 1:
        raise ChanattrError("iterations must be at least 1")
    x0 = x0[None] if x0.dim() == 3 else x0
    device = x0.device
    start = time.perf_counter()
    with frozen(model), seeded(seed, device), lucent_device(device):
        kind = unit_kind(unit)(model, layer, **unit_options)
        phi, path = layer_function(model, kind.site.name, x0[:1], port=kind.site.port)
        with torch.no_grad():
            target = phi(x0)
        kind.bind(target, detect_layout(model, get_layer(model, kind.site.name), target, layout, kind.site.name))
        c = kind.count()
        ch = torch.as_tensor(channels) if not isinstance(channels, torch.Tensor) else channels
        if ch.dim() == 2:
            if ch.shape != (x0.shape[0], c):
                raise ChanattrError(f"per-image {unit} masks must be {x0.shape[0]} x {c}")
            mask = ch.float().to(device)
        else:
            mask = channel_mask(ch, c, device).expand(x0.shape[0], -1)
        if (mask.sum(1) == 0).any():
            raise ChanattrError(f"no {unit} selected: give at least one")
        counts = mask.sum(1).long().tolist()
        # B x U -> weights broadcastable to the activation; what is no unit (a class token) is left free
        mask = kind.expand(mask) - kind.expand(torch.zeros_like(mask))
        image = make_image(settings.param, tuple(x0.shape), device)
        optimiser = torch.optim.Adam(image.params, lr=settings.lr)
        size = tuple(x0.shape[-2:])
        jitter = (robustness(size, settings.jitter, settings.scale, settings.rotate)
                  if settings.transforms else identity)
        history = []
        bar = tqdm(total=settings.iterations, desc=f"inverting {layer}", disable=not show_progress(progress),
                   leave=False)
        original = preprocessing.denormalize(x0).clamp(0, 1)
        aligned = settings.transforms and settings.align_transforms
        n = x0.shape[0]
        for _ in range(settings.iterations):
            rgb = image.image()
            if aligned:  # one draw of the transforms for the candidate and the original alike
                both = jitter(torch.cat([rgb, original]))
                seen = both[:n]
                with torch.no_grad():
                    goal = phi(preprocessing.normalize(both[n:]))
            else:
                seen, goal = jitter(rgb), target
            loss = feature_loss(phi(preprocessing.normalize(seen)), goal, mask)
            if settings.lambda_alpha or settings.lambda_tv:
                loss = loss + natural_prior(rgb, original, preprocessing.mean, lambda_alpha=settings.lambda_alpha,
                                            lambda_tv=settings.lambda_tv)
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimiser.step()
            image.after_step()
            history.append(loss.detach().cpu())
            bar.update(1)
        bar.close()
        with torch.no_grad():
            final = image.image().clamp(0, 1)
            err = feature_loss(phi(preprocessing.normalize(final)), target, mask).sqrt().cpu()
    return InversionResult(
        images=final.detach(),
        relative_error=err,
        loss_history=torch.stack(history),
        seconds=time.perf_counter() - start,
        info={"layer": layer, "path": path, "param": settings.param, "iterations": settings.iterations,
              "channels": counts, "unit": unit, **kind.info()},
    )
