"""Extremal perturbations over the units of a named layer: channels, hidden units, attention
heads or tokens (``chanattr.units``).

A mask m in [0, 1]^U acts on the tensor A the unit kind reads at layer L (its output, or for
heads the input of its output projection): A' = m A + (1 - m) B, m broadcast over the positions
each unit covers, with B the baseline (zero, this image's A averaged over its positions --
pixels or tokens -- or a given tensor such as a dataset mean). The same optimiser as in pixel
space (``chanattr.extremal``) finds, for each image and area a, the fraction a of units that
keeps the target output (``preserve``) or whose removal destroys it (``delete``).

Nothing before L depends on the mask, so A is computed once; where the model can be split at
L (``chanattr.split``) each iteration runs only the rest of the network (path ``"split"``),
otherwise a full forward pass with a hook (path ``"full"``).

Layers that return tuples, dicts or Hugging Face ``ModelOutput``s are read at their first
tensor, or at ``NAME:k`` / ``NAME:key``; the model's own output is picked by ``output=``
(``chanattr.model_output``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import ChanattrError
from ..extremal import ExtremalResult, Schedule, check_areas, optimise, result_fields, with_iterations
from ..hooks import LayerHooks, edit, frozen, get_layer
from ..model_output import OutputSpec, logits_model, target_model, unwrap
from ..batch import as_targets, check_batch
from ..split import split_at
from . import UnitKind, detect_layout, unit_kind
from .layout import position_dims

BASELINES = ("zero", "mean")

#: Channel space's schedule: start from greedy elimination (``ChannelSpace.search``: exact
#: rewards of the current set, so channels that matter only together are kept together), then
#: Adam on the binary top-a masks (straight-through) from there, the best binary set kept: never
#: worse than the search. A start from the whole activation under a growing area penalty (the
#: previous default) followed the gradient, and at a saturated input the gradient ranks
#: channels the way gradient x activation does (tests/test_channel.py has the planted case).
CHANNEL_SCHEDULE = Schedule(
    iterations=300, optimiser="adam", lr=0.02, area_weight=3.0, area_weight_final=5000.0, start="search",
    jitter=False, harden=0.0, min_iterations=100,
)


class UnitSpace:
    """Unit masks at ``layer`` for N images, with the layer's tensor computed once.

    ``unit``: ``"channels"`` (default), ``"hidden"``, ``"heads"`` or ``"tokens"``
    (``chanattr.units``), or ``"auto"`` (channels of a channels-first map, else hidden units); ``layout``: ``"nchw"``, ``"ntc"`` or ``"nhwc"`` where it cannot be
    detected; ``unit_options``: the kind's options (tokens: ``class_token=True`` masks the prefix
    tokens too). ``baseline``: ``"zero"``, ``"mean"`` (per image and unit, over the positions:
    pixels or tokens) or a tensor broadcastable to the tensor without its batch dimension (e.g.
    C, or C x H x W: a dataset mean). ``split``: ``"auto"`` (split where possible) or ``"full"``
    (always full forward passes with a hook). ``output``: which of the model's outputs holds the
    logits (``chanattr.model_output.select_output``).
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        layer: str,
        *,
        unit: str = "channels",
        layout: str | None = None,
        baseline: str | torch.Tensor = "zero",
        split: str = "auto",
        output: OutputSpec = None,
        **unit_options,
    ) -> None:
        get_layer(model, layer)
        if split not in ("auto", "full"):
            raise ChanattrError(f"unknown split mode {split!r}: use auto or full")
        model = logits_model(model, output)
        auto = unit == "auto"  # channels of a channels-first map, else hidden units
        self.kind: UnitKind = unit_kind("channels" if auto else unit)(model, layer, **unit_options)
        site = self.kind.site
        self.model, self.images, self.layer = model, images, layer
        self.num_images = images.shape[0]
        self.split, self.reason = (None, "full forward passes asked for")
        with torch.no_grad(), frozen(model):
            if split == "auto" and site.port == "output":
                self.split, self.reason = split_at(model, site.name, images)
            elif split == "auto":
                self.reason = f"the {unit} of {layer!r} are inside the layer (the input of {site.name}): full passes"
            if self.split is not None:
                self.activation, self.others = self.split.prefix(images)
            else:
                with LayerHooks(model, site.name, detach=True, port=site.port) as hooks:
                    model(images)
                try:
                    self.activation, self.others = hooks[site.name], ()
                except KeyError:
                    raise ChanattrError(
                        f"{site.name!r} never runs as a module in the forward pass (the model calls its weights "
                        f"directly, as torchvision's Swin attention does), so its {self.kind.name} cannot be "
                        f"reached there: use --unit hidden, or another layer") from None
        rows = self.activation.shape[0]
        #: rows of the layer's tensor per image: windowed attention (Swin) folds each image's windows into
        #: the batch, image-major (timm's window_partition); heads are masked alike in all of an image's windows
        self.fold = rows // self.num_images if rows % self.num_images == 0 else 0
        if self.fold != 1 and not (self.fold > 1 and self.kind.name == "heads"):
            raise ChanattrError(f"{site.name!r} sees {rows} rows for {self.num_images} images "
                                f"(windows or heads folded into the batch): pick another layer or unit")
        layout = detect_layout(model, get_layer(model, site.name), self.activation, layout, site.name)
        if auto and layout != "nchw":
            self.kind = unit_kind("hidden")(model, layer, **unit_options)
        self.kind.bind(self.activation, layout)
        self.num_units = self.kind.count()
        self.baseline = self._baseline(baseline)
        self.baseline_name = baseline if isinstance(baseline, str) else "tensor"
        self.split_mode = split

    @property
    def unit(self) -> str:
        return self.kind.name

    @property
    def layout(self) -> str:
        return self.kind.layout

    @property
    def num_channels(self) -> int:
        """The number of units (channels, hidden units, heads or tokens); the name predates units."""
        return self.num_units

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
            dims = position_dims(self.layout, a.dim())
            if not dims:
                raise ChanattrError("baseline 'mean' needs positions (pixels or tokens) to average over; this layer "
                                    "returns N x C vectors: use zero or a tensor")
            if self.fold > 1:  # over every token of every window of the image
                per_image = a.reshape(self.num_images, -1, a.shape[-1]).mean(1)
                return per_image.repeat_interleave(self.fold, 0)[:, None]
            return a.mean(dim=dims, keepdim=True)
        raise ChanattrError(f"unknown baseline {baseline!r}: use {', '.join(BASELINES)}, or give a tensor")

    def _mix(self, activation: torch.Tensor, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        k = self.kind.expand(keep).to(activation.dtype)
        if self.fold > 1:  # one row per window: each image's mask on all its windows
            k = k.repeat_interleave(self.fold, 0)
            image_index = (image_index[:, None] * self.fold + torch.arange(self.fold, device=image_index.device)
                           ).flatten()
        b = self.baseline[image_index] if self.baseline.shape[0] > 1 else self.baseline
        return k * activation + (1 - k) * b

    def init_params(self, num_items: int, value: float) -> torch.Tensor:
        return torch.full((num_items, self.num_units), float(value), device=self.activation.device)

    def masks(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def logits(self, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Model outputs with the layer's units mixed by ``keep`` (B x U).
        The model runs in eval mode without parameter gradients, and is left as found."""
        with frozen(self.model):
            if self.split is not None:
                a = self._mix(self.activation[image_index], keep, image_index)
                return self.split.suffix(a, tuple(o[image_index] for o in self.others))
            site = self.kind.site
            with edit(self.model, {site.name: lambda out: self._mix(out, keep, image_index)}, port=site.port):
                return self.model(self.images[image_index])

    def info(self) -> dict:
        """What the results record about the space."""
        return {"layer": self.layer, "path": self.path, "split_reason": self.reason, "baseline": self.baseline_name,
                "channels": self.num_units, **self.kind.info()}


    @torch.no_grad()
    def search(self, image_index: torch.Tensor, targets: torch.Tensor, areas: torch.Tensor, variant: str,
               reward_kind: str, keep: int = 1, chunk: float = 0.25, batch_size: int = 64,
               progress: bool = False) -> torch.Tensor:
        """Starts by greedy elimination, evaluated exactly (not by gradients).

        The salient mask m starts with every channel in it (``preserve``: all kept; ``delete``:
        all removed) and shrinks: at each step the channels whose leaving m, each alone from the
        current set, hurts the objective least (preserve: the reward with m kept stays highest;
        delete: the reward with m removed stays lowest; dual: both) leave it -- a fraction
        ``chunk`` of the channels still to go, one at a time near each area's count -- down to
        round(a C) channels. One path per (image, target) serves every area (the sets are
        nested). Unlike a gradient or single-ablation ranking, each step sees the current set,
        so channels that matter only together (saturated at the full input) stay together.
        Returns (items * keep) x C binary masks (1 = the channels found). About
        C / chunk x log C passes of the network after the layer per image."""
        c = self.num_channels
        device = self.activation.device
        counts = [max(1, int(round(float(a) * c))) for a in areas]
        keys = [(int(image_index[j]), int(targets[j])) for j in range(image_index.shape[0])]
        paths: dict = {}
        out = []
        from tqdm.auto import tqdm

        for item, key in enumerate(tqdm(keys, desc=f"{self.unit} at {self.layer}: greedy search", unit="mask",
                                        disable=not progress, leave=False)):
            if key not in paths:
                wanted = sorted({n for k, n in zip(keys, counts) if k == key}, reverse=True)
                paths[key] = self._greedy(key[0], key[1], wanted, variant, reward_kind, chunk, batch_size)
            out.append(paths[key][counts[item]].to(device)[None].expand(keep, -1))
        return torch.cat(out)

    def _greedy(self, image: int, target: int, counts: list[int], variant: str, kind: str, chunk: float,
                batch_size: int) -> dict[int, torch.Tensor]:
        """{count: C binary mask} along one greedy path from all channels down (see ``search``);
        ``counts`` in decreasing order."""
        from ..extremal import _variant_reward

        c = self.num_channels
        device = self.activation.device
        sign = -1.0 if variant == "delete" else 1.0
        inside = torch.ones(c, dtype=torch.bool, device=device)
        found: dict[int, torch.Tensor] = {}
        for stop in counts:
            while int(inside.sum()) > stop:
                members = inside.nonzero()[:, 0]
                trial = inside[None].repeat(members.numel(), 1)
                trial[torch.arange(members.numel()), members] = False  # row j: member j leaves
                values = []
                for s in range(0, trial.shape[0], batch_size):
                    m = trial[s : s + batch_size].float()
                    b = m.shape[0]
                    values.append(sign * _variant_reward(
                        self, m, torch.full((b,), image, device=device), torch.full((b,), target, device=device),
                        variant, kind, False))
                order = torch.cat(values).argsort(descending=True, stable=True)
                size = members.numel()
                step = max(1, min(int(chunk * (size - counts[-1])), size - stop))
                inside[members[order[:step]]] = False
            found[stop] = inside.float().clone()
        return found

    @torch.no_grad()
    def target_scores(self, keep: torch.Tensor, image_index: torch.Tensor, targets: torch.Tensor,
                      batch_size: int = 64) -> torch.Tensor:
        """The target logit for many keep masks (B x C), in batches; B values on the CPU."""
        out = []
        for s in range(0, keep.shape[0], batch_size):
            logits = self.logits(keep[s : s + batch_size], image_index[s : s + batch_size])
            out.append(logits.gather(1, targets[image_index[s : s + batch_size]].view(-1, 1))[:, 0].float().cpu())
        return torch.cat(out) if out else torch.empty(0)


#: The channel space of earlier versions: a ``UnitSpace`` (``unit="channels"`` by default).
ChannelSpace = UnitSpace


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
class UnitResult(ExtremalResult):
    """``ExtremalResult`` with N x K x U unit masks (1 = the units found); ``info`` records the
    unit kind, the layout and the count (``info["units"]``)."""

    def kept_units(self, image: int = 0, area: int = 0) -> list[int]:
        """The round(a U) units with the highest mask values, best first."""
        u = self.masks.shape[-1]
        count = int(round(float(self.areas[area]) * u))
        values = self.masks[image, area]
        return values.argsort(descending=True, stable=True)[: max(1, count)].tolist()

    kept_channels = kept_units

    def ranking(self) -> torch.Tensor:
        """N x U: units ordered by their mean mask value over the areas, best first."""
        return self.masks.mean(1).argsort(dim=1, descending=True, stable=True)


#: The channel result of earlier versions.
ChannelResult = UnitResult


def unit_extremal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    layer: str,
    areas: Sequence[float] | float = (0.05, 0.1, 0.2),
    *,
    unit: str = "channels",
    layout: str | None = None,
    variant: str = "preserve",
    reward: str = "simple",
    baseline: str | torch.Tensor | None = None,
    split: str | None = None,
    output: OutputSpec = None,
    schedule: Schedule | None = None,
    iterations: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    space: UnitSpace | None = None,
    **unit_options,
) -> UnitResult:
    """Unit extremal perturbations at ``layer`` for N images (``x``: N x C x H x W).

    ``unit``: ``"channels"``, ``"hidden"``, ``"heads"`` or ``"tokens"`` (``chanattr.units``),
    ``layout`` where it cannot be detected, ``unit_options`` for the kind (tokens:
    ``class_token=True``). ``target``: a class index (or one per image), or a function of the
    model's output giving one score per image (``chanattr.model_output.target_model``). ``areas``: fractions of the layer's units. ``output``: which of the
    model's outputs holds the logits (an index, a key, a callable; default: the tensor, or
    ``logits``). Returns a ``UnitResult`` with masks N x K x U in [0, 1]; ``info`` says the unit,
    layout, count and whether the split or the full path ran. ``baseline`` (default ``"zero"``)
    and ``split`` (default ``"auto"``): see ``UnitSpace``. A ``space`` built on the same images
    and layer can be passed to reuse its activations; its settings are then the ones used (and
    recorded), and a ``baseline``, ``split``, unit, layer or input that disagrees with it is
    refused. The model runs in eval mode and is left as found. Results are deterministic:
    ``seed`` seeds only ``Schedule.init_noise``.
    """
    x = check_batch(x)
    model, target = target_model(model, target, output)
    if space is not None:
        _check_space(space, model, x, layer, baseline, split, unit)
    baseline = "zero" if baseline is None else baseline
    split = "auto" if split is None else split
    areas = check_areas(areas)
    targets = as_targets(target, x.shape[0], x.device)
    schedule = schedule or CHANNEL_SCHEDULE
    if iterations is not None:
        schedule = with_iterations(schedule, iterations, allow_zero=schedule.start == "search")
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), frozen(model):
        torch.manual_seed(seed)
        if space is None:
            space = UnitSpace(model, x.detach(), layer, unit=unit, layout=layout, baseline=baseline, split=split,
                              **unit_options)
        params, out = optimise(
            space, targets, areas, variant=variant, reward_kind=reward, schedule=schedule,
            progress=progress, description=f"{space.unit} at {layer} ({variant})",
        )
    n, k = x.shape[0], len(areas)
    return UnitResult(
        masks=params.view(n, k, -1).cpu(),
        **result_fields(out, targets, variant, reward),
        info={"space": space.unit, **space.info()},
    )


def channel_extremal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    layer: str,
    areas: Sequence[float] | float = (0.05, 0.1, 0.2),
    **kwargs,
) -> UnitResult:
    """``unit_extremal_perturbation`` over channels (``unit="channels"`` unless given)."""
    return unit_extremal_perturbation(model, x, target, layer, areas, **kwargs)


def _check_space(space: UnitSpace, model, x, layer, baseline, split, unit) -> None:
    """Refuse a ``space`` that was not built for this model, input, layer and unit, or whose
    baseline or split differs from the ones asked for."""
    if unwrap(space.model) is not unwrap(model) or space.layer != layer:
        raise ChanattrError(f"the space was built for layer {space.layer!r} of another call: build a UnitSpace "
                            f"for this model and layer {layer!r}, or pass no space")
    if unit != space.unit:
        raise ChanattrError(f"the space masks {space.unit}, not {unit}: build it with unit={unit!r}, or pass no space")
    if space.images.shape != x.shape or not torch.equal(space.images, x.detach().to(space.images.device)):
        raise ChanattrError("x is not the input the space was built on: pass the same images, or no space")
    if baseline is not None:
        same = (baseline == space.baseline_name) if isinstance(baseline, str) else (
            space.baseline_name == "tensor" and torch.equal(
                torch.broadcast_to(baseline.to(space.baseline), space.baseline.shape[1:])[None], space.baseline))
        if not same:
            raise ChanattrError(f"baseline {baseline if isinstance(baseline, str) else 'tensor'!r} differs from the "
                                f"space's ({space.baseline_name!r}): build the space with it, or leave baseline out")
    if split is not None and split != space.split_mode:
        raise ChanattrError(f"split {split!r} differs from the space's ({space.split_mode!r}): build the space with "
                            f"it, or leave split out")


@torch.no_grad()
def unit_result_scores(space: UnitSpace, result: UnitResult) -> list[dict]:
    """Per image of a unit result: for each area, the units found (best first), their mask values,
    the target logit with only them kept and with them removed, and the final reward
    (``"areas"``); and the unit curve of the result's ranking (``"curve"``, ``ChannelCurve.to_dict``)."""
    x_device = space.activation.device
    targets = result.targets.to(x_device)
    curves = channel_curve(space, result.ranking(), targets)
    out = []
    for i in range(result.masks.shape[0]):
        per_area = []
        for j, area in enumerate(result.areas.tolist()):
            kept = result.kept_units(i, j)
            keep = torch.zeros(2, space.num_units, device=x_device)
            keep[0, kept] = 1
            keep[1] = 1 - keep[0]
            only, without = space.target_scores(keep, torch.full((2,), i, device=x_device), targets).tolist()
            per_area.append({"area": area, "channels": kept, "mask_values": result.masks[i, j, kept].tolist(),
                             "score_only_these_kept": only, "score_these_removed": without,
                             "final_reward": float(result.final_reward[i, j])})
        out.append({"areas": per_area, "curve": curves.to_dict(i)})
    return out


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
