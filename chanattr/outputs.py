"""Writing command outputs: folders that never overwrite what a user wrote without asking,
``.npz`` arrays and ``summary.json`` files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .errors import ChanattrError


def output_dir(path: str | Path, files: Iterable[str], overwrite: bool = False) -> Path:
    """Create ``path`` (and parents) for writing ``files``; refuse, with a hint, if any of
    them already exists there unless ``overwrite``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ChanattrError(f"{p} exists and is not a folder: give another --out")
    clash = [f for f in files if (p / f).exists()]
    if clash and not overwrite:
        raise ChanattrError(f"{p / clash[0]} already exists: pass --overwrite to replace it, or give another --out")
    missing = [q for q in [p, *p.parents] if not q.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChanattrError(f"cannot create the output folder {p}: {e.strerror or e}: give another --out") from None
    CREATED.extend(reversed(missing))  # parents first
    return p


#: Folders that ``output_dir`` created in this process (parents first): the command line
#: removes those still empty when a run fails, so a failed run leaves nothing behind.
CREATED: list[Path] = []


def remove_empty_created() -> None:
    """Remove the folders ``output_dir`` created that are still empty (deepest first)."""
    for folder in reversed(CREATED):
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass
    CREATED.clear()


def input_digest(x: torch.Tensor) -> str:
    """SHA-1 (12 hex digits) of one image's model input (C x H x W, float32)."""
    import hashlib

    t = x.detach().float().cpu().contiguous().reshape(-1)
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()[:12]


def provenance(lm, x: torch.Tensor) -> dict:
    """What a result was made from, for summary.json: the model, its weights (file, random and
    seed), a fingerprint of the network and of the input (one image, C x H x W)."""
    return {"model": lm.name, "weights": lm.extra.get("weights"), "random_weights": lm.extra.get("random_weights"),
            "seed": lm.extra.get("seed"), "model_fingerprint": lm.fingerprint(),
            "input_sha1": input_digest(x[0] if x.dim() == 4 else x)}


def check_provenance(folder: str | Path, lm, x: torch.Tensor | None = None) -> None:
    """Refuse a result folder made with another network (or, given ``x``, another input)."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        path = Path(folder) / "class_summary.json"  # a class mask (chanattr run class-channels): no one input
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    if saved.get("model_fingerprint") not in (None, lm.fingerprint()):
        raise ChanattrError(
            f"{folder} was made with another network ({saved.get('model')}, weights {saved.get('weights')}, random "
            f"{saved.get('random_weights')}, seed {saved.get('seed')}): give the same --model/--weights/"
            f"--random-weights/--seed, or drop --from")
    if x is not None and saved.get("input_sha1") not in (None, input_digest(x[0] if x.dim() == 4 else x)):
        raise ChanattrError(f"{folder} was made for another image ({saved.get('image')}) or input size: give the "
                            f"same image and --input-size/--mean/--std, or drop --from")


def image_dirs(out: str | Path, names: list[str]) -> list[Path]:
    """One folder: ``out`` itself for one image, ``out/<name>`` for each of several."""
    base = Path(out)
    return [base] if len(names) == 1 else [base / n for n in names]


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(_plain(data), indent=2) + "\n", encoding="utf-8")


def write_npz(path: str | Path, **arrays) -> None:
    """Save arrays (tensors converted; floats as float32) compressed."""
    out = {}
    for key, value in arrays.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(np.float32)
        out[key] = value
    np.savez_compressed(path, **out)


# --- what the commands write ------------------------------------------------------------------


def _curve_areas(areas: list[float]) -> list[float]:
    top = min(0.9, max(areas) * 1.5)
    grid = np.linspace(min(0.01, min(areas)), top, 20).tolist()
    return sorted(set(round(a, 4) for a in grid + list(areas)))


def write_explain(folder: Path, lm, image, x: torch.Tensor, result, index: int) -> dict:
    """``masks.npz``, ``summary.json`` and ``explain.png`` for image ``index`` of a pixel result."""
    from .evaluation import area_curve, extremal_score
    from .perturbations import make_perturbation
    from .plotting import plot_explain

    masks = result.masks[index]  # K x H x W
    areas = result.areas.tolist()
    target = int(result.targets[index])
    x1 = x[None]
    with torch.no_grad():
        full = float(lm.model(x1)[0, target])
    score_variant = "delete" if result.variant == "delete" else "preserve"
    scores = extremal_score(lm.model, x1, masks[None], target, areas, variant=score_variant)[0]
    curve = None
    if len(areas) >= 3:
        grid = _curve_areas(areas)
        curve = (grid, area_curve(lm.model, x1, masks[None], target, grid, variant=score_variant)[0].tolist())
    # what the optimiser scored: the binary top-a of each mask (its soft values need only the
    # right order, so they can sit below 0.5); the figure shows these binary masks
    binary = result.binary_masks()[index]
    keep = (1 - binary if result.variant == "delete" else binary).to(x.device)
    perturbation = make_perturbation(result.info["perturbation"], x1, max_sigma=result.info["max_blur"])
    with torch.no_grad():
        seen = perturbation.apply(keep[:, None], torch.zeros(len(areas), dtype=torch.long, device=x.device))
    seen = lm.preprocessing.denormalize(seen).clamp(0, 1)
    write_npz(folder / "masks.npz", masks=masks, areas=result.areas, input=x, target=np.int64(target))
    summary = {
        "image": image.name,
        **provenance(lm, x),
        "target": target,
        "class_name": lm.class_name(target),
        "target_logit_full_image": full,
        "areas": areas,
        "preset": result.info.get("preset", "fast"),
        "variant": result.variant,
        "perturbation": result.info["perturbation"],
        "reward": result.reward_kind,
        "final_reward": result.final_reward[index].tolist(),
        "binary_reward": result.binary_reward[index].tolist(),
        "extremal_score": scores.tolist(),
        "mask_area": result.mask_area()[index].tolist(),
        "iterations": result.iterations,
        "seconds": result.seconds,
        "images_in_batch": result.num_images,
    }
    if curve is not None:
        summary["area_curve"] = {"areas": curve[0], "best_score": curve[1]}
    write_json(folder / "summary.json", summary)
    fig = plot_explain(image.rgb, binary, areas, seen, title=f"{image.name}: {lm.class_name(target)} ({target})",
                       rewards=scores.tolist(), curve=curve, full_score=full,
                       variant=result.variant, perturbation=result.info["perturbation"])
    fig.savefig(folder / "explain.png", dpi=150)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return summary


def write_channels(folders: list[Path], lm, images, x: torch.Tensor, result, space) -> list[dict]:
    """``channels.npz``, ``summary.json`` and ``channels.png`` for every image of a unit result
    (channels, hidden units, heads or tokens: one format, ``read_channel_result``). The scores in
    the summaries come from ``unit_result_scores``; this only writes."""
    import matplotlib.pyplot as plt

    from .plotting import plot_channels
    from .units.space import unit_result_scores

    n = result.masks.shape[0]
    scored = unit_result_scores(space, result)
    summaries = []
    for i in range(n):
        target = int(result.targets[i])
        summary = {
            "image": images[i].name,
            **provenance(lm, x[i]),
            "layer": result.info["layer"],
            "unit": result.info.get("unit", "channels"),
            "layout": result.info.get("layout"),
            "channels": result.masks.shape[-1],
            "units": result.masks.shape[-1],
            "unit_info": {k: v for k, v in result.info.items() if k in ("site", "port", "prefix_tokens",
                                                                       "class_token_masked", "head_dim")},
            "target": target,
            "class_name": lm.class_name(target),
            "variant": result.variant,
            "baseline": result.info["baseline"],
            "path": result.info["path"],
            "split_reason": result.info["split_reason"] or None,
            "areas": scored[i]["areas"],
            "channel_curve": scored[i]["curve"],
            "iterations": result.iterations,
            "seconds": result.seconds,
            "images_in_batch": n,
        }
        folder = folders[i]
        write_npz(folder / "channels.npz", masks=result.masks[i], areas=result.areas, input=x[i],
                  target=np.int64(target), layer=np.array(result.info["layer"]),
                  unit=np.array(result.info.get("unit", "channels")), layout=np.array(result.info.get("layout", "")))
        write_json(folder / "summary.json", summary)
        fig = plot_channels(result.masks[i], result.areas.tolist(), scored[i]["curve"],
                            title=f"{images[i].name}: {lm.class_name(target)} ({target}) at {result.info['layer']}",
                            variant=result.variant, unit=result.info.get("unit", "channels"))
        fig.savefig(folder / "channels.png", dpi=150)
        plt.close(fig)
        summaries.append(summary)
    return summaries


def read_channel_result(folder: str | Path, layer: str | None = None, unit: str | None = "channels") -> dict:
    """A ``channels.npz`` written by ``chanattr channels`` (or ``chanattr prunegrad``):
    masks (K x U), areas, layer, unit (``channels`` in files from before units), layout; plus
    ``ranking`` (units by mean mask value, best first) and ``values`` (each unit's mean mask
    value). ``unit``: refuse a file of another unit kind (``None``: any)."""
    path = Path(folder) / "channels.npz"
    if not path.is_file():
        raise ChanattrError(f"{path} not found: give a folder written by `chanattr channels` or `chanattr prunegrad`")
    with np.load(path) as data:
        masks, areas, saved = data["masks"], data["areas"], str(data["layer"])
        saved_unit = str(data["unit"]) if "unit" in data.files else "channels"
        layout = str(data["layout"]) if "layout" in data.files else "nchw"
    if unit is not None and saved_unit != unit:
        raise ChanattrError(f"{path} holds {saved_unit} of {saved}, not {unit}: give --unit {saved_unit}")
    if layer is not None and saved != layer:
        raise ChanattrError(f"{path} holds channels of layer {saved!r}, not {layer!r}: pass --layer {saved}")
    values = masks.mean(0)
    return {"masks": masks, "areas": areas, "layer": saved, "values": values, "unit": saved_unit, "layout": layout,
            "ranking": np.argsort(-values, kind="stable")}


def salient_channels(lm, x: torch.Tensor, layer: str, choice: str, from_dir: str | None, area: float | None,
                     *, progress: bool = True, parse=None, unit: str | None = None,
                     layout: str | None = None) -> tuple[list[int] | None, str, str]:
    """The unit subset to invert: from a saved unit result (its unit kind), from a fresh unit
    extremal perturbation (``auto``), all units (``None``), or explicit indices. Returns
    (subset, how it was chosen, the unit kind)."""
    if from_dir is not None:
        check_provenance(from_dir, lm, x)
        found = read_channel_result(from_dir, layer, unit=None)
        if unit is not None and unit != found["unit"]:
            raise ChanattrError(f"{from_dir} holds {found['unit']}, not {unit}: drop --unit or give --unit "
                                f"{found['unit']}")
        masks, areas = found["masks"], found["areas"].tolist()
        c = masks.shape[1]
        if area is None or any(abs(a - area) < 1e-6 for a in areas):
            k = int(np.argmin(areas)) if area is None else int(np.argmin([abs(a - area) for a in areas]))
            count = max(1, round(areas[k] * c))
            order = np.argsort(-masks[k], kind="stable")[:count]
            return [int(i) for i in order], f"area {areas[k]:g} of {from_dir}", found["unit"]
        count = max(1, round(area * c))
        return [int(i) for i in found["ranking"][:count]], f"top {area:g} of {from_dir}", found["unit"]
    unit = unit or "channels"
    if choice == "all":
        return None, f"all {unit}", unit
    if choice == "auto":
        from .units.space import unit_extremal_perturbation

        with torch.no_grad():
            target = int(lm.model(x).argmax(1)[0])
        a = 0.05 if area is None else area
        result = unit_extremal_perturbation(lm.model, x, target, layer, [a], unit=unit, layout=layout,
                                            progress=None if progress else False)
        return result.kept_units(0, 0), f"{unit} extremal perturbation, area {a:g}, target {target}", unit
    channels = parse(choice) if parse else [int(t) for t in choice.split(",")]
    if not channels:
        raise ChanattrError(f"no {unit} given: use auto, all or indices like 3,17,42")
    return channels, "given", unit


def write_inversion(folder: Path, lm, image, x: torch.Tensor, layer: str, subset: list[int] | None, how: str, *,
                    iterations: int = 300, param: str = "fourier", seed: int = 0, progress=None,
                    unit: str = "channels", layout: str | None = None) -> dict:
    """Invert ``layer`` from all its units (channels, hidden units, heads or tokens), the subset
    and the rest; write ``inversions.npz``, ``inversion.png`` and ``summary.json``."""
    import matplotlib.pyplot as plt

    from inversion import InversionSettings, invert, plot_inversions
    from inversion.invert import channel_mask

    from .units.space import UnitSpace

    c = UnitSpace(lm.model, x, layer, unit=unit, layout=layout, split="full").num_units
    masks = {"all": torch.ones(c)}
    if subset is not None:
        masks["subset"] = channel_mask(subset, c)
        if len(set(subset)) < c:
            masks["rest"] = 1 - masks["subset"]
    names = list(masks)
    result = invert(lm.model, x.expand(len(names), -1, -1, -1), layer, torch.stack([masks[k] for k in names]),
                    lm.preprocessing, settings=InversionSettings(param=param, iterations=iterations), seed=seed,
                    progress=progress, unit=unit, layout=layout)
    images = dict(zip(names, result.images.cpu()))
    counts = {k: int(masks[k].sum()) for k in names}
    write_npz(folder / "inversions.npz", original=image.rgb, **images,
              channels=np.array(sorted(subset) if subset is not None else list(range(c)), dtype=np.int64),
              unit=np.array(unit))
    fig = plot_inversions(image.rgb, images, counts, c, title=f"{image.name}: inverting {layer}", unit=unit)
    fig.savefig(folder / "inversion.png", dpi=150)
    plt.close(fig)
    summary = {"image": image.name, **provenance(lm, x), "layer": layer, "unit": unit, "channels": c, "units": c,
               "counts": counts, "subset": subset, "subset_from": how, "param": param, "iterations": iterations,
               "seed": seed, "relative_error": dict(zip(names, result.relative_error.tolist())),
               "seconds": result.seconds}
    write_json(folder / "summary.json", summary)
    return summary


def write_visualisation(folder: Path, lm, layer: str, channels: list[int], labels: list[str] | None, *,
                        iterations: int = 256, seed: int = 0, progress=None, unit: str = "channels") -> dict:
    """Activation maximisation of each channel; ``channels.png`` (the grid) and
    ``visualizations.npz``."""
    import matplotlib.pyplot as plt

    from inversion import plot_channel_grid, visualize_channels

    v = visualize_channels(lm.model, layer, channels, lm.preprocessing, iterations=iterations, seed=seed,
                           progress=progress, unit=unit)
    labels = labels or [f"#{c}" for c in channels]
    write_npz(folder / "visualizations.npz", images=v.images, channels=np.array(channels, dtype=np.int64),
              activation=v.activation)
    fig = plot_channel_grid(v.images, labels, title=f"{lm.name}, {layer}: {unit}")
    fig.savefig(folder / "channels.png", dpi=150)
    plt.close(fig)
    return {"channels": channels, "unit": unit, "seconds": v.seconds}


def write_prunegrad(folder: Path, lm, image, x: torch.Tensor, result, index: int, plain: torch.Tensor,
                    units: dict | None = None) -> dict:
    """``saliency.npz``, ``channels.npz`` (the kept units of ``units``, readable by ``chanattr
    invert --from``), ``summary.json`` and ``prunegrad.png`` for one image. ``plain``: the plain
    input-gradient map of the same image (H x W), for the figure; ``units``:
    ``chanattr.prunegrad_units.kept_unit_scores`` of the image (None: no channel attribution). Only writes."""
    import matplotlib.pyplot as plt

    from .plotting import plot_saliency_maps

    target = int(result.targets[index])
    sites = list(result.kept)
    counts = {s: int((k[index] > 0).sum()) for s, k in result.kept.items()}
    totals = {s: int(k.shape[1]) for s, k in result.kept.items()}
    write_npz(folder / "saliency.npz", saliency=result.saliency[index], input=x, target=np.int64(target),
              kept_layers=np.array(sites), kept_counts=np.array([counts[s] for s in sites], dtype=np.int64),
              kept_totals=np.array([totals[s] for s in sites], dtype=np.int64))
    summary = {
        "image": image.name,
        **provenance(lm, x),
        "target": target,
        "class_name": lm.class_name(target),
        **{k: result.info[k] for k in ("keep", "granularity", "scope", "criterion")},
        "target_logit": float(result.logit[index]),
        "target_probability": float(result.probability[index]),
        "pruned_target_logit": float(result.pruned_logit[index]),
        "pruned_target_probability": float(result.pruned_probability[index]),
        "pruned_layers": result.info["layers"],
        "kept_fraction_per_layer": {s: float(f[index]) for s, f in result.kept_fraction.items()},
        "kept_channels": {s: {"kept": counts[s], "of": totals[s]} for s in sites},
        "channel_attribution": None,  # every pruned module runs several times: no single output
    }
    if units is not None:
        site, values = units["site"], units["values"]
        fraction = max(units["count"], 1) / totals[site]
        write_npz(folder / "channels.npz", masks=values[None], areas=np.array([fraction], dtype=np.float32),
                  input=x, target=np.int64(target), layer=np.array(site), unit=np.array(units["unit"]),
                  layout=np.array(units["layout"]))
        summary["channel_attribution"] = {"layer": site, "unit": units["unit"],
                                          "channels": units["ranking"][: units["count"]].tolist(),
                                          "channel_curve": units["curve"], "path": units["path"]}
    write_json(folder / "summary.json", summary)
    fig = plot_saliency_maps(image.rgb, [plain.cpu().numpy(), result.saliency[index].cpu().numpy()],
                             ["gradient", f"PruneGrad (keep {result.info['keep']:g})"],
                             title=f"{image.name}: {lm.class_name(target)} ({target})")
    fig.savefig(folder / "prunegrad.png", dpi=150)
    plt.close(fig)
    return summary
