"""Extremal perturbations over the channels of a named layer.

A mask m in [0, 1]^C acts on the output A of layer L: A' = m A + (1 - m) B, with B the
baseline (zero, the per-channel spatial mean of this image's A, or a given tensor such as a
dataset mean). The same optimiser as in pixel space (``chanattr.extremal``) finds, for each
image and area a, the fraction a of channels that keeps the target output (``preserve``) or
whose removal destroys it (``delete``).

Nothing before L depends on the mask, so L's output is computed once; where the model can be
split at L (``chanattr.split``) each iteration runs only the rest of the network (path
``"split"``), otherwise a full forward pass with a hook (path ``"full"``).

Supported outputs: channels-first tensors, N x C (vectors) or N x C x ... (maps). Layers
that return tuples or other non-tensors are refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .errors import ChanattrError
from .extremal import ExtremalResult, Schedule, check_areas, optimise
from .hooks import LayerHooks, edit, frozen, get_layer
from .pixel import _with_iterations, as_targets, check_batch
from .split import split_at

BASELINES = ("zero", "mean")

#: Channel space's schedule: from the whole activation (keep = 1), Adam, and an area penalty
#: that starts weak, so that the ranking of channels is re-decided as the mask shrinks
#: (with a strong start the first gradient -- the Taylor ranking -- would be frozen in).
CHANNEL_SCHEDULE = Schedule(
    iterations=300, optimiser="adam", lr=0.02, area_weight=3.0, area_weight_final=5000.0, start="input",
    jitter=False, harden=1.0, min_iterations=100,
)


class ChannelSpace:
    """Channel masks at ``layer`` for N images, with the layer's output computed once.

    ``baseline``: ``"zero"``, ``"mean"`` (per image and channel, over the spatial
    positions) or a tensor broadcastable to the layer's output without its batch dimension
    (e.g. C, or C x H x W: a dataset mean). ``split``: ``"auto"`` (split where possible) or
    ``"full"`` (always full forward passes with a hook).
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        layer: str,
        *,
        baseline: str | torch.Tensor = "zero",
        split: str = "auto",
    ) -> None:
        get_layer(model, layer)
        if split not in ("auto", "full"):
            raise ChanattrError(f"unknown split mode {split!r}: use auto or full")
        self.model, self.images, self.layer = model, images, layer
        self.num_images = images.shape[0]
        self.split, self.reason = (None, "full forward passes asked for")
        if split == "auto":
            self.split, self.reason = split_at(model, layer, images)
        with torch.no_grad():
            if self.split is not None:
                self.activation, self.others = self.split.prefix(images)
            else:
                with LayerHooks(model, layer, detach=True) as hooks:
                    model(images)
                self.activation, self.others = hooks[layer], ()
        if self.activation.dim() < 2:
            raise ChanattrError(f"layer {layer!r} returns a {self.activation.dim()}-D tensor: pick one with channels")
        self.num_channels = int(self.activation.shape[1])
        self.baseline = self._baseline(baseline)

    @property
    def path(self) -> str:
        """``"split"`` (only the network after the layer runs per iteration) or ``"full"``."""
        return "split" if self.split is not None else "full"

    def _baseline(self, baseline: str | torch.Tensor) -> torch.Tensor:
        a = self.activation
        if isinstance(baseline, torch.Tensor):
            b = baseline.to(a.device, a.dtype)
            try:
                return torch.broadcast_to(b, a.shape[1:]).unsqueeze(0)
            except RuntimeError:
                raise ChanattrError(
                    f"baseline of shape {tuple(b.shape)} does not fit the layer's output {tuple(a.shape[1:])}"
                ) from None
        if baseline == "zero":
            return torch.zeros((1, *a.shape[1:]), device=a.device, dtype=a.dtype)
        if baseline == "mean":
            if a.dim() == 2:
                raise ChanattrError("baseline 'mean' needs a spatial (N x C x H x W) output: use zero or a tensor")
            return a.mean(dim=tuple(range(2, a.dim())), keepdim=True)
        raise ChanattrError(f"unknown baseline {baseline!r}: use {', '.join(BASELINES)}, or give a tensor")

    def _mix(self, activation: torch.Tensor, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        k = keep.view(*keep.shape, *([1] * (activation.dim() - 2)))
        b = self.baseline[image_index] if self.baseline.shape[0] > 1 else self.baseline
        return k * activation + (1 - k) * b

    def init_params(self, num_items: int, value: float) -> torch.Tensor:
        return torch.full((num_items, self.num_channels), float(value), device=self.activation.device)

    def masks(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def logits(self, keep: torch.Tensor, image_index: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Model outputs with the layer's channels mixed by ``keep`` (B x C); ``flip`` is ignored."""
        if self.split is not None:
            a = self._mix(self.activation[image_index], keep, image_index)
            return self.split.suffix(a, tuple(o[image_index] for o in self.others))
        with edit(self.model, {self.layer: lambda out: self._mix(out, keep, image_index)}):
            return self.model(self.images[image_index])

    @torch.no_grad()
    def target_scores(self, keep: torch.Tensor, image_index: torch.Tensor, targets: torch.Tensor,
                      batch_size: int = 64) -> torch.Tensor:
        """The target logit for many keep masks (B x C), in batches; B values on the CPU."""
        out = []
        for s in range(0, keep.shape[0], batch_size):
            logits = self.logits(keep[s : s + batch_size], image_index[s : s + batch_size])
            out.append(logits.gather(1, targets[image_index[s : s + batch_size]].view(-1, 1))[:, 0].float().cpu())
        return torch.cat(out) if out else torch.empty(0)


@dataclass
class ChannelCurve:
    """The target score with only the top-k channels of a ranking kept (``kept``), and with
    them removed (``removed``), for each k in ``ks``: N x len(ks) logits."""

    ks: list[int]
    kept: torch.Tensor
    removed: torch.Tensor
    full: torch.Tensor  # N: the unperturbed score
    baseline: torch.Tensor  # N: every channel at the baseline

    def to_dict(self, image: int = 0) -> dict:
        return {"k": self.ks, "kept": self.kept[image].tolist(), "removed": self.removed[image].tolist(),
                "full": float(self.full[image]), "all_removed": float(self.baseline[image])}


def default_ks(num_channels: int, points: int = 40) -> list[int]:
    """About ``points`` channel counts from 1 to C, denser at small k (every count when C is small)."""
    if num_channels <= points:
        return list(range(1, num_channels + 1))
    grid = torch.logspace(0, torch.log10(torch.tensor(float(num_channels))), points).round().long().tolist()
    return sorted(set(grid) | {num_channels})


def channel_curve(
    space: ChannelSpace,
    ranking: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    ks: Sequence[int] | None = None,
) -> ChannelCurve:
    """Channel curves of rankings (N x C channel indices, best first, or C for every image)."""
    n, c = space.num_images, space.num_channels
    device = space.activation.device
    ranking = torch.as_tensor(ranking, device=device).long()
    if ranking.dim() == 1:
        ranking = ranking.expand(n, -1)
    if ranking.shape != (n, c):
        raise ChanattrError(f"a ranking must list all {c} channels of each of the {n} images")
    targets = as_targets(target, n, device)
    ks = list(ks) if ks is not None else default_ks(c)
    if any(not 0 <= k <= c for k in ks):
        raise ChanattrError(f"channel counts must be within 0..{c}")
    # ranks[i, ch] = position of channel ch in image i's ranking
    ranks = torch.empty_like(ranking)
    ranks.scatter_(1, ranking, torch.arange(c, device=device).expand(n, -1))
    kt = torch.tensor(ks, device=device)
    top = (ranks[:, None, :] < kt[None, :, None]).float()  # N x len(ks) x C
    image_index = torch.arange(n, device=device).repeat_interleave(len(ks))
    kept = space.target_scores(top.reshape(-1, c), image_index, targets).view(n, len(ks))
    removed = space.target_scores(1 - top.reshape(-1, c), image_index, targets).view(n, len(ks))
    ends = torch.cat([torch.ones(n, c, device=device), torch.zeros(n, c, device=device)])
    both = space.target_scores(ends, torch.arange(n, device=device).repeat(2), targets)
    return ChannelCurve(ks, kept, removed, both[:n], both[n:])


@dataclass
class ChannelResult(ExtremalResult):
    """``ExtremalResult`` with N x K x C channel masks (1 = the channels found)."""

    def kept_channels(self, image: int = 0, area: int = 0) -> list[int]:
        """The round(a C) channels with the highest mask values, best first."""
        c = self.masks.shape[-1]
        count = int(round(float(self.areas[area]) * c))
        values = self.masks[image, area]
        return values.argsort(descending=True, stable=True)[: max(1, count)].tolist()

    def ranking(self) -> torch.Tensor:
        """N x C: channels ordered by their mean mask value over the areas, best first."""
        return self.masks.mean(1).argsort(dim=1, descending=True, stable=True)


def channel_extremal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    layer: str,
    areas: Sequence[float] | float = (0.05, 0.1, 0.2),
    *,
    variant: str = "preserve",
    reward: str = "simple",
    baseline: str | torch.Tensor = "zero",
    split: str = "auto",
    schedule: Schedule | None = None,
    iterations: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    space: ChannelSpace | None = None,
) -> ChannelResult:
    """Channel extremal perturbations at ``layer`` for N images (``x``: N x 3 x H x W).

    ``areas``: fractions of the layer's channels. Returns a ``ChannelResult`` with masks
    N x K x C in [0, 1]; ``info["path"]`` says whether the split or the full path ran.
    A ``space`` from an earlier call on the same images and layer can be passed to reuse
    its activations. The model runs in eval mode and is left as found.
    """
    x = check_batch(x)
    areas = check_areas(areas)
    targets = as_targets(target, x.shape[0], x.device)
    schedule = schedule or CHANNEL_SCHEDULE
    if iterations is not None:
        schedule = _with_iterations(schedule, iterations)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), frozen(model):
        torch.manual_seed(seed)
        if space is None:
            space = ChannelSpace(model, x.detach(), layer, baseline=baseline, split=split)
        params, out = optimise(
            space, targets, areas, variant=variant, reward_kind=reward, schedule=schedule,
            progress=progress, description=f"channels at {layer} ({variant})",
        )
    n, k = x.shape[0], len(areas)
    return ChannelResult(
        masks=params.view(n, k, -1).cpu(),
        areas=out["areas"],
        targets=targets.cpu(),
        variant=variant,
        reward_kind=reward,
        reward_history=out["reward_history"],
        area_history=out["area_history"],
        final_reward=out["final_reward"],
        binary_reward=out["binary_reward"],
        iterations=out["iterations"],
        seconds=out["seconds"],
        info={"space": "channel", "layer": layer, "path": space.path, "split_reason": space.reason,
              "baseline": baseline if isinstance(baseline, str) else "tensor", "channels": space.num_channels},
    )


def class_channels(masks: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> dict[int, dict]:
    """Per-class channel masks: the mean (and standard deviation) of the masks of the images
    of each class. ``masks``: N x ... (e.g. N x K x C); ``labels``: N class indices.
    Returns {class: {"mean": ..., "std": ..., "count": n}}."""
    labels = torch.as_tensor(labels).flatten()
    if labels.numel() != masks.shape[0]:
        raise ChanattrError(f"{labels.numel()} labels for {masks.shape[0]} masks")
    out = {}
    for c in labels.unique().tolist():
        group = masks[labels == c].float()
        out[int(c)] = {
            "mean": group.mean(0),
            "std": group.std(0, unbiased=False),
            "count": int(group.shape[0]),
        }
    return out
