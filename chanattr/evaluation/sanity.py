"""The model-randomisation sanity check (Adebayo et al., 2018), cascading: re-initialise the
weights stage by stage from the classifier down, recompute the map after each stage, and
compare it with the map of the trained model (SSIM and Spearman rank correlation of the
absolute maps). A method whose map stays similar does not depend on what the model learned."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from ..errors import ChanattrError


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.abs(np.nan_to_num(m.astype(np.float64)))
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def map_similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(SSIM, Spearman) between two H x W maps, compared as absolute values scaled to [0, 1].
    Identical maps give (1, 1); a constant map has Spearman 0 against anything."""
    ua, ub = _unit(torch.as_tensor(a).detach().cpu().numpy()), _unit(torch.as_tensor(b).detach().cpu().numpy())
    if ua.shape != ub.shape or ua.ndim != 2:
        raise ChanattrError(f"maps must both be H x W, not {ua.shape} and {ub.shape}")
    ssim = float(structural_similarity(ua, ub, data_range=1.0))
    if ua.std() == 0 or ub.std() == 0:
        rho = 1.0 if np.array_equal(ua, ub) else 0.0
    else:
        rho = float(spearmanr(ua.ravel(), ub.ravel()).statistic)
    return ssim, rho


def default_stages(model: nn.Module) -> list[str]:
    """Parameterised stages from the output down: top-level children, with sequences
    (``blocks``, ``layer3``, ``features``) split into their items. Names as ``named_modules``."""
    stages = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            stages += [f"{name}.{k}" for k, c in child.named_children() if any(True for _ in c.parameters())]
        elif any(True for _ in child.parameters()):
            stages.append(name)
    return stages[::-1]


INITS = ("scaled", "reset")


@torch.no_grad()
def randomise_(module: nn.Module, generator: torch.Generator, init: str = "scaled") -> None:
    """Re-initialise every parameter of ``module`` in place. ``"scaled"`` (default): weights ~
    N(0, std of the trained weight, or 0.05), biases and norm shifts 0, norm scales 1, running
    statistics reset -- each layer keeps its trained scale, so a deep network's activations
    neither vanish nor explode. ``"reset"``: each module's own ``reset_parameters()`` (PyTorch's
    default initialisation, as Quantus's MPRT does), seeded from ``generator``; in a deep network
    with normalisation layers reset, activations can shrink towards zero layer by layer."""
    if init == "reset":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            for sub in module.modules():
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        return
    if init != "scaled":
        raise ChanattrError(f"unknown init {init!r}: use {' or '.join(INITS)}")
    for sub in module.modules():
        if hasattr(sub, "reset_running_stats"):
            sub.reset_running_stats()
        for pname, p in sub.named_parameters(recurse=False):
            if p.dim() <= 1:
                p.fill_(1.0 if pname == "weight" else 0.0)
            else:
                std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.05
                p.copy_(torch.randn(p.shape, generator=generator) * std)


@dataclass
class SanityStage:
    stage: str  # the last stage randomised (cumulative from the output down)
    ssim: float
    spearman: float
    saliency: torch.Tensor  # H x W map after randomisation


def cascading_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    attribute: Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
    *,
    stages: Sequence[str] | None = None,
    seed: int = 0,
    init: str = "scaled",
) -> tuple[torch.Tensor, list[SanityStage]]:
    """Cascading model randomisation for one image (``x``: 1 x 3 x H x W). ``attribute(model,
    x, target)`` returns a 1 x H x W (or H x W) map. Works on a copy: the model is untouched.
    ``init``: how a stage is re-initialised (``randomise_``). Returns (the trained model's map,
    one ``SanityStage`` per stage, output side first)."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ChanattrError("the sanity check takes one image: x must be 1 x 3 x H x W")
    stages = list(stages) if stages is not None else default_stages(model)
    names = dict(model.named_modules())
    unknown = [s for s in stages if s not in names]
    if unknown:
        raise ChanattrError(f"unknown stage(s) {unknown}: use module names from model.named_modules()")
    work = copy.deepcopy(model).eval()
    work_names = dict(work.named_modules())
    g = torch.Generator().manual_seed(seed)

    def run() -> torch.Tensor:
        with torch.enable_grad():
            return attribute(work, x, target).detach().reshape(x.shape[-2:]).float().cpu()

    original = run()
    out = []
    for s in stages:
        randomise_(work_names[s], g, init)
        m = run()
        out.append(SanityStage(s, *map_similarity(original, m), m))
    del work
    return original, out
