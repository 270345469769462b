"""What each method of ``chanattr run`` computes for a batch of images: the arrays kept in
each item's file and its rows of ``results.parquet`` (one per area, or one per unit).

Every function takes the loaded model, the batch (N x 3 x H x W, on the model's device), the
N targets and the command's options, and returns one ``ItemOutput`` per image. ``score`` is,
for every pixel method, the target logit with only the top ``area`` of the map (explain: of
its mask at that area) kept and the rest blurred -- the extremal score (``chanattr.evaluation``),
which explain optimises and the others do not; for unit methods, the target logit with only
the units found kept."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import ChanattrError


@dataclass
class ItemOutput:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)


def _f16(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float16)


def _map_rows(lm, x, targets, maps: torch.Tensor, areas: list[float]) -> list[list[dict]]:
    """Per image, one row per area: the target logit with the top ``area`` of its map kept."""
    from .evaluation import extremal_score

    ranked = maps[:, None].expand(-1, len(areas), -1, -1).to(x.device)  # the same map, ranked at every area
    scores = extremal_score(lm.model, x, ranked, targets, areas).cpu()
    return [[{"area": a, "score": float(scores[i, k])} for k, a in enumerate(areas)] for i in range(x.shape[0])]


def explain(lm, x, targets, args: argparse.Namespace) -> list[ItemOutput]:
    from .cli import explain_schedule
    from .pixel import extremal_perturbation

    result = extremal_perturbation(
        lm.model, x, targets, args.areas, preset=args.preset, variant=args.variant, perturbation=args.perturbation,
        schedule=explain_schedule(args), feather=getattr(args, "feather", None),
        reward=args.reward, iterations=args.iterations, seed=args.seed, progress=False)
    maps = result.saliency()
    feather = result.info["feather"]
    hard = result.binary_reward
    if feather > 0 and args.variant != "dual":  # binary_reward is then the feathered score: the plain one too
        from .evaluation import extremal_score

        hard = extremal_score(lm.model, x, result.masks, targets, result.areas.tolist(), variant=args.variant).cpu()
    out = []
    for i in range(x.shape[0]):
        rows = [{"area": float(a), "score": float(hard[i, k]),
                 "final_reward": float(result.final_reward[i, k]), "iterations": result.iterations}
                | ({"feathered_score": float(result.binary_reward[i, k])} if feather > 0 else {})
                for k, a in enumerate(result.areas.tolist())]
        out.append(ItemOutput({"masks": _f16(result.masks[i]), "saliency": _f16(maps[i])}, rows))
    return out


def channels(lm, x, targets, args: argparse.Namespace) -> list[ItemOutput]:
    from .units.space import unit_extremal_perturbation

    options = {"class_token": True} if getattr(args, "class_token", False) else {}
    result = unit_extremal_perturbation(
        lm.model, x, targets, args.layer, args.areas, unit=args.unit, layout=args.layout, variant=args.variant,
        reward=args.reward, baseline=args.baseline, split="full" if args.full_path else "auto",
        iterations=args.iterations, seed=args.seed, progress=False, **options)
    out = []
    for i in range(x.shape[0]):
        rows = []
        for k, a in enumerate(result.areas.tolist()):
            kept = result.kept_units(i, k)
            rows.append({"area": float(a), "score": float(result.binary_reward[i, k]), "unit": result.info["unit"],
                         "units": len(kept), "kept": kept, "final_reward": float(result.final_reward[i, k])})
        out.append(ItemOutput({"masks": result.masks[i].numpy().astype(np.float32)}, rows))
    return out


def prunegrad(lm, x, targets, args: argparse.Namespace) -> list[ItemOutput]:
    from .prunegrad import prunegrad as run

    result = run(lm.model, x, targets, keep=args.keep, granularity=args.granularity, scope=args.scope,
                 layers=args.layers, criterion=args.criterion, layer_types=args.layer_types)
    rows = _map_rows(lm, x, targets, result.saliency, args.score_areas)
    out = []
    for i in range(x.shape[0]):
        extra = {"pruned_logit": float(result.pruned_logit[i]), "keep": args.keep}
        out.append(ItemOutput({"saliency": _f16(result.saliency[i])}, [{**r, **extra} for r in rows[i]]))
    return out


def saliency_method(name: str) -> Callable:
    def compute(lm, x, targets, args: argparse.Namespace) -> list[ItemOutput]:
        from .baselines import saliency

        options = {"masks": args.rise_masks} if name == "rise" else {}
        maps = saliency(name, lm.model, x, targets, **options)
        rows = _map_rows(lm, x, targets, maps, args.score_areas)
        return [ItemOutput({"saliency": _f16(maps[i])}, rows[i]) for i in range(x.shape[0])]

    compute.__name__ = name
    return compute


def invert(lm, x, targets, args: argparse.Namespace) -> list[ItemOutput]:
    from inversion import InversionSettings, invert as run
    from inversion.invert import channel_mask

    from .units.space import UnitSpace, unit_extremal_perturbation

    unit = args.unit or "channels"
    count = UnitSpace(lm.model, x[:1], args.layer, unit=unit, layout=args.layout, split="full").num_units
    if args.channels == "auto":
        found = unit_extremal_perturbation(lm.model, x, targets, args.layer, [args.area], unit=unit,
                                           layout=args.layout, progress=False)
        subsets = [found.kept_units(i, 0) for i in range(x.shape[0])]
    elif args.channels == "all":
        subsets = [list(range(count))] * x.shape[0]
    else:
        subsets = [[int(t) for t in args.channels.split(",") if t.strip()]] * x.shape[0]
    masks = torch.stack([channel_mask(s, count) for s in subsets])
    result = run(lm.model, x, args.layer, masks, lm.preprocessing,
                 settings=InversionSettings(param=args.param, iterations=args.iterations), seed=args.seed,
                 progress=False, unit=unit, layout=args.layout)
    return [ItemOutput({"inversion": _f16(result.images[i]), "kept": np.array(sorted(s), dtype=np.int64)},
                       [{"unit": unit, "units": len(s), "kept": sorted(s),
                         "relative_error": float(result.relative_error[i])}])
            for i, s in enumerate(subsets)]


def run_methods() -> dict[str, Callable]:
    """METHOD -> its batch function (``chanattr run METHOD``)."""
    from .method_names import MAP_METHODS

    out: dict[str, Callable] = {"explain": explain, "channels": channels, "prunegrad": prunegrad, "invert": invert}
    for name in MAP_METHODS:
        out[name] = saliency_method(name)
    out["class-channels"] = channels  # per image; the shared mask follows (chanattr.class_channels)
    return out


def method_function(name: str) -> Callable:
    methods = run_methods()
    if name not in methods:
        raise ChanattrError(f"unknown method {name!r}: use one of {', '.join(methods)}")
    return methods[name]
