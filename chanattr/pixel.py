"""Extremal perturbations over input pixels (Fong, Patrick and Vedaldi, ICCV 2019).

``extremal_perturbation(model, x, target, areas=[0.05, 0.1, 0.2])`` finds, for each image and
area a, the smooth mask covering a fraction a of the image that keeps the target output as
high as possible when the rest is blurred (``preserve``), or brings it as low as possible
when the region itself is blurred (``delete``), or both (``dual``).

Three presets (``preset=``):

- ``"paper"``: the method as the paper describes it (and TorchRay runs it): the model sees
  the soft smooth mask throughout (the paper's smooth max over every bump), parameters start
  at 1, SGD, 800 iterations, the growing area weight. Cite this one. One difference, on
  purpose: the area constraint counts the mask over the visible image, so that ``a`` is the
  fraction of the image kept; TorchRay counts it over the image plus a frame of sigma pixels,
  which makes its masks cover about 1.35 a of the image (``area_margin=sigma`` does the same).
- ``"fast"`` (default): our variant. The masks are binary level sets of a smooth field -- the
  top a of a windowed smooth mask, seen as such by the model from the first step
  (straight-through gradients) -- started from the best of a search over discs and their
  unions, stopped early. It optimises the exact-area binary score (``extremal_score``)
  directly: judge it also on scores it does not optimise (the feathered extremal score, the
  target probability, the pointing game).
- ``"feathered"``: the fast preset's binary level sets, but the model sees them with their
  edge feathered by a Gaussian of 4 px (at 224 px) -- mixed with the blurred photo as the
  feathered extremal score does -- from a smaller search (5 x 5 discs, unions of two), at most
  80 steps. It optimises the feathered extremal score (``extremal_score(feather=4)``) directly,
  so a mask cannot win by a hard sharp/blurred edge the model reads as detail.

Lengths default to the paper's at 224 px (parameter step 7 px, bump sigma 21 px, blur up to
sigma 20 px) and scale with the input's shorter side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .batch import as_targets, check_batch
from .errors import ChanattrError
from .model_output import OutputSpec, target_model
from .extremal import (ExtremalResult, Schedule, check_areas, check_choice, optimise, preset_schedule, result_fields,
                       with_iterations)
from .hooks import frozen
from .perturbations import gaussian_blur, make_perturbation
from .smooth_mask import SmoothMask

PERTURBATIONS = ("blur", "fade")

#: The smooth mask of each preset: the paper's formula (every bump, none past the border) or
#: the windowed one with replicated borders (``chanattr.smooth_mask``).
MASK_FORMS = {"paper": {"padding": "none", "reach": 2.5}, "fast": {"padding": "replicate", "reach": 2.5},
              "feathered": {"padding": "replicate", "reach": 2.5}}
#: The feather (px at 224 px, scaled with the input) of each preset's masks as the model sees them.
PRESET_FEATHER = {"paper": 0.0, "fast": 0.0, "feathered": 4.0}


class PixelSpace:
    """Smooth masks over the pixels of N images, applied as a blur (or fade) perturbation.

    ``mask_form``: ``"fast"`` or ``"paper"`` (``MASK_FORMS``); ``area_margin``: pixels of frame
    around the image that ``masks`` (what the area constraint counts) also covers (TorchRay: sigma);
    ``feather``: sigma (px) of a Gaussian that softens every keep mask before the model sees it
    (0: as given), and the blur then mixes the photo and its most blurred copy linearly (a
    2-level pyramid): the perturbation ``extremal_score(feather=)`` scores. (With the 8-level
    pyramid a feathered edge pixel kept at 0.9 is blurred by sigma 2 px, so the model would see a
    blurred rim inside every region instead of a soft transition.)"""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        *,
        perturbation: str = "blur",
        step: float | None = None,
        sigma: float | None = None,
        max_blur: float | None = None,
        levels: int = 8,
        mask_form: str = "fast",
        area_margin: float = 0.0,
        feather: float = 0.0,
    ) -> None:
        self.model = model
        self.images = images
        self.num_images, _, h, w = images.shape
        scale = min(h, w) / 224.0
        self.step = step if step is not None else 7.0 * scale
        self.sigma = sigma if sigma is not None else 21.0 * scale
        self.max_blur = max_blur if max_blur is not None else 20.0 * scale
        check_choice(perturbation, PERTURBATIONS, "perturbation")
        form = MASK_FORMS[check_choice(mask_form, tuple(MASK_FORMS), "mask form")]
        if area_margin < 0:
            raise ChanattrError(f"area_margin must be >= 0 pixels, got {area_margin}")
        if feather < 0:
            raise ChanattrError(f"feather is a Gaussian sigma in pixels, >= 0; got {feather}")
        self.feather = float(feather)
        self.perturbation = make_perturbation(perturbation, images, max_sigma=self.max_blur,
                                              levels=2 if feather > 0 else levels)
        self.smooth = SmoothMask((h, w), self.step, self.sigma, margin=int(round(area_margin)), device=images.device,
                                 **form)

    def init_params(self, num_items: int, value: float) -> torch.Tensor:
        return torch.full((num_items, self.smooth.num_params), float(value), device=self.images.device)

    def candidates(self, area: float, variant: str = "preserve", side: int = 0) -> torch.Tensor:
        """Parameters of round blobs covering ``area`` of the image, centred on a grid about
        one blob radius apart (at least 7 x 7; ``side`` x ``side`` when given): the starts that
        ``Schedule(start="search")`` scores. Blobs cut by the border are widened to keep their
        visible area."""
        cache = self.__dict__.setdefault("_candidates", {})
        if (area, side) not in cache:
            cache[(area, side)] = self._blobs(area, side)
        return cache[(area, side)]

    def _blobs(self, area: float, side: int = 0) -> torch.Tensor:
        h, w = self.images.shape[-2:]
        gh, gw = self.smooth.grid
        cy = (torch.arange(gh, dtype=torch.float32) + 0.5) * h / gh
        cx = (torch.arange(gw, dtype=torch.float32) + 0.5) * w / gw
        target_radius = (area * h * w / torch.pi) ** 0.5
        per_side = side or max(7, int(round(max(h, w) / max(target_radius, 1.0))))
        widen = self._widening()
        # pixel-level geometry: for each centre, the disc radius whose widened, visible
        # area is closest to the area asked for
        py = torch.arange(h, dtype=torch.float32) + 0.5
        px = torch.arange(w, dtype=torch.float32) + 0.5
        out = []
        for y0 in (torch.arange(per_side, dtype=torch.float32) + 0.5) * h / per_side:
            dy = (py - y0) ** 2
            for x0 in (torch.arange(per_side, dtype=torch.float32) + 0.5) * w / per_side:
                dist = (dy[:, None] + (px[None, :] - x0) ** 2).sqrt().flatten().sort().values
                # the widened disc covers the round(area * H * W) nearest pixels
                count = max(1, int(round(area * h * w)))
                r = max(0.0, float(dist[min(count, dist.numel()) - 1]) - widen)
                d = (cy[:, None] - y0) ** 2 + (cx[None, :] - x0) ** 2
                disc = (d <= r**2).float()
                if disc.sum() == 0:
                    disc.view(-1)[d.argmin()] = 1.0
                out.append(disc.flatten())
        return torch.stack(out).to(self.images.device)

    def _widening(self) -> float:
        """How far (px) the smooth mask of a disc of parameters reaches past the disc, at 0.5:
        measured once on a disc at the centre."""
        if not hasattr(self, "_widen"):
            h, w = self.images.shape[-2:]
            gh, gw = self.smooth.grid
            cy = (torch.arange(gh, dtype=torch.float32) + 0.5) * h / gh
            cx = (torch.arange(gw, dtype=torch.float32) + 0.5) * w / gw
            r = min(h, w) / 6
            disc = (((cy[:, None] - h / 2) ** 2 + (cx[None, :] - w / 2) ** 2) <= r**2).float().flatten()
            with torch.no_grad():
                covered = float((self.masks(disc[None].to(self.images.device)) > 0.5).float().sum())
            self._widen = (covered / torch.pi) ** 0.5 - r
        return self._widen

    def masks(self, params: torch.Tensor) -> torch.Tensor:
        """B x M: the smooth masks at the input's resolution, flattened (what the area counts:
        H*W entries, or (H + 2 margin) x (W + 2 margin) with an ``area_margin``)."""
        return self.smooth.upsample(self.smooth.work_mask(params)).flatten(1)

    def full_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """B x M (as from ``masks``) -> B x H x W: the masks over the image."""
        m = self.smooth.margin_px
        h, w = self.images.shape[-2:]
        return self.smooth.crop(masks.view(masks.shape[0], 1, h + 2 * m, w + 2 * m))[:, 0]

    def perturb(self, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """The images seen by the model for keep masks (B x M, as from ``masks``), their edges
        feathered by ``feather`` px."""
        return self.perturbation.apply(gaussian_blur(self.full_masks(keep)[:, None], self.feather), image_index)

    #: the optimiser's ``Schedule.jitter`` mirrors this space's input every other step
    mirrors = True

    def logits(self, keep: torch.Tensor, image_index: torch.Tensor, flip: bool = False) -> torch.Tensor:
        x = self.perturb(keep, image_index)
        return self.model(x.flip(-1) if flip else x)


@dataclass
class PixelResult(ExtremalResult):
    """``ExtremalResult`` with N x K x H x W masks at the input's resolution."""

    def saliency(self, sigma: float | None = None) -> torch.Tensor:
        """N x H x W: the sum over the areas of each image's binary masks (the top a of the mask
        at area a: what the model was shown), smoothed (``saliency_map``) -- the map for
        pointing-style evaluation. Its maximum lies where the masks of all areas overlap."""
        return saliency_map(self.binary_masks(), sigma)


def saliency_map(binary: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """N x K x H x W binary masks -> N x H x W: their sum over K, smoothed by a Gaussian of
    ``sigma`` px (default 20 px at 224 px, scaled with the shorter side; zero outside the image,
    so a blob at the border peaks inside the blob)."""
    s = binary.sum(1, keepdim=True)
    sigma = 20.0 * min(binary.shape[-2:]) / 224.0 if sigma is None else sigma
    return gaussian_blur(s, sigma, border="zero")[:, 0] if sigma > 0 else s[:, 0]


def extremal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    areas: Sequence[float] | float = (0.05, 0.1, 0.2),
    *,
    preset: str = "fast",
    variant: str = "preserve",
    perturbation: str = "blur",
    reward: str = "simple",
    schedule: Schedule | None = None,
    iterations: int | None = None,
    step: float | None = None,
    sigma: float | None = None,
    max_blur: float | None = None,
    area_margin: float = 0.0,
    feather: float | None = None,
    output: OutputSpec = None,
    seed: int = 0,
    progress: bool | None = None,
) -> PixelResult:
    """Extremal perturbations of N images (``x``: N x C x H x W, the model's normalised input).

    ``target``: one class index, one per image, or a function of the model's output giving one
    score per image (``fn(out) -> N``: a segmentation class over a region, a detector's box
    score, a regression output). ``areas``: fractions of the image in (0, 1).
    ``preset``: ``"fast"`` (default), ``"feathered"`` or ``"paper"`` (module docs); it picks the
    schedule, the smooth mask's form and the feather. ``schedule`` replaces the preset's schedule; ``iterations``
    overrides its iteration count (the most iterations; ``fast`` stops earlier once the masks
    settle). ``area_margin``: pixels of frame around the image that the area constraint also
    counts (0: the visible image; TorchRay: sigma, 21 px at 224 px). ``feather``: sigma (px) of a
    Gaussian that softens the edge of every mask the model sees during the optimisation (the
    search's candidates too; 0: hard edges), mixed with the blurred photo as the extremal score
    does, so that the optimisation maximises the feathered extremal score
    (``extremal_score(feather=)``); default: the preset's (4 px at 224 px for ``feathered``, scaled
    with the input's shorter side; 0 for the others). ``output``: which of the
    model's outputs holds the logits (``chanattr.model_output.select_output``: an index, a key,
    a callable; default the tensor itself, or ``logits``). The model runs in eval mode and is
    left as found. Returns a ``PixelResult`` with masks N x K x H x W in [0, 1] on
    ``x``'s device.
    """
    x = check_batch(x)
    areas = check_areas(areas)
    model, target = target_model(model, target, output)
    targets = as_targets(target, x.shape[0], x.device)
    schedule = schedule or preset_schedule(preset)
    if iterations is not None:
        schedule = with_iterations(schedule, iterations, allow_zero=schedule.start == "search")
    if feather is None:
        feather = PRESET_FEATHER[check_choice(preset, tuple(PRESET_FEATHER), "preset")] * min(x.shape[-2:]) / 224.0
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), frozen(model):
        torch.manual_seed(seed)
        space = PixelSpace(model, x.detach(), perturbation=perturbation, step=step, sigma=sigma, max_blur=max_blur,
                           mask_form=preset, area_margin=area_margin, feather=feather)
        params, out = optimise(
            space, targets, areas, variant=variant, reward_kind=reward, schedule=schedule,
            progress=progress, description=f"extremal ({variant})",
        )
        with torch.no_grad():
            masks = space.full_masks(space.masks(params))
    n, k = x.shape[0], len(areas)
    return PixelResult(
        masks=masks.view(n, k, *masks.shape[-2:]),
        **result_fields(out, targets, variant, reward),
        info={"space": "pixel", "preset": preset, "perturbation": perturbation, "step": space.step,
              "sigma": space.sigma, "max_blur": space.max_blur, "area_margin": area_margin,
              "feather": feather},
    )
