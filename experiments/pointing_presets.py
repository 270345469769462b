"""The pointing game, paper preset against fast preset against Grad-CAM, on the same pairs.

The (image, COCO class) pairs of ``experiments/pointing_game.py`` (object inside the centre
crop, target = the most probable ImageNet class of the COCO class's set) where the model
gives the target a probability of at least ``--min-probability`` (0.1: where it sees the
object). Extremal perturbation at the paper's COCO areas (0.018, 0.025, 0.05, 0.1), preserve;
its map is the smoothed sum of the binary top-a masks (``PixelResult.saliency``).

The paper preset takes minutes a pair on a CPU, so every (image, method) result is appended
to ``--log`` (JSON Lines, committed), keyed by the method's settings, the code version (a
hash of the modules it runs) and the library versions: the command resumes where any earlier
run stopped, on any machine, and ``--shard I/N`` splits the photos over processes. The table
is printed from the log (``--table-only`` computes nothing), over the pairs every method has.

    python experiments/pointing_presets.py --threads 1 --shard 0/2 &
    python experiments/pointing_presets.py --threads 1 --shard 1/2
    python experiments/pointing_presets.py --table-only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from chanattr import prepare_image
from chanattr.baselines import saliency
from chanattr.coco import box_mask, default_coco_root, imagenet_target, read_coco, segment_mask
from chanattr.evaluation import PointingGame, max_point, pointing_hit
from chanattr.pixel import extremal_perturbation

from _common import (add_device_args, append_record, code_version, library_versions, model_on_device,
                     read_records, settings_key)

HERE = Path(__file__).resolve().parent
AREAS = (0.018, 0.025, 0.05, 0.1)
METHODS = ("gradcam", "fast", "paper")
CODE = ["chanattr/extremal.py", "chanattr/pixel.py", "chanattr/smooth_mask.py", "chanattr/perturbations.py",
        "chanattr/baselines.py", "chanattr/coco.py", "chanattr/images.py", "chanattr/evaluation/pointing.py",
        "experiments/pointing_presets.py"]


def method_settings(method: str, args) -> dict:
    base = {"method": method, "tolerance": args.tolerance, "min_probability": args.min_probability,
            "device": str(args.device), "code": code_version(CODE), "versions": library_versions()}
    if method in ("fast", "paper"):
        base.update(areas=AREAS, preset=method, iterations=args.iterations)
    return base


def run_maps(method: str, model, x, targets: list[int], args) -> tuple[torch.Tensor, list]:
    """N x H x W maps (one per class of this photo) and per-pair extras."""
    if method == "gradcam":
        return saliency("gradcam", model, x, targets), [{} for _ in targets]
    r = extremal_perturbation(model, x, targets, AREAS, preset=method, iterations=args.iterations, progress=False)
    return r.saliency().cpu(), [{"binary_reward": [float(v) for v in row], "iterations": int(r.iterations)}
                                for row in r.binary_reward]


def table(rows: list[dict], tolerance: float) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["method"], {})[(r["image"], r["class"])] = r
    present = [m for m in METHODS if m in by]
    common = sorted(set.intersection(*(set(by[m]) for m in present))) if present else []
    if not common:
        return "no pair has every method's result yet"
    lines = ["| method | boxes: accuracy % (95 % CI) | masks: accuracy % (95 % CI) | pairs | s / pair |",
             "|---|---|---|---|---|"]
    for m in present:
        box, mask = PointingGame(tolerance), PointingGame(tolerance)
        for key in common:
            r = by[m][key]
            box.add_result(r["class"], r["hit_box"])
            if r["hit_mask"] is not None:
                mask.add_result(r["class"], r["hit_mask"])
        cells = []
        for game in (box, mask):
            if len(game):
                lo, hi = game.interval()
                cells.append(f"{100 * game.accuracy():.1f} ({100 * lo:.1f}-{100 * hi:.1f})")
            else:
                cells.append("-")
        secs = sum(by[m][k]["seconds"] for k in common) / len(common)
        lines.append(f"| {m} | {cells[0]} | {cells[1]} | {len(common)} | {secs:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_coco_root(), help="a folder laid out like coco128")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--min-probability", type=float, default=0.1)
    ap.add_argument("--tolerance", type=float, default=15.0, help="pixels, at the model's input size")
    ap.add_argument("--iterations", type=int, default=None, help="override the presets' iterations (tests)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos")
    ap.add_argument("--shard", default="0/1", help="I/N: this process takes photos I, I+N, ...")
    ap.add_argument("--log", type=Path, default=HERE / "results" / "pointing_presets.jsonl")
    ap.add_argument("--table-only", action="store_true")
    add_device_args(ap)
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    device = torch.device(args.device)
    size = lm.preprocessing.input_size
    keys = {m: settings_key(method_settings(m, args)) for m in args.methods}
    rows, stale = read_records(args.log, set(keys.values()))
    if not args.table_only:
        data = read_coco(args.data)
        by_image: dict[str, list[str]] = {}
        for im, c in data.pairs():
            if box_mask(im, c, size).any():
                by_image.setdefault(im.name, []).append(c)
        names = list(by_image)[: args.limit] if args.limit else list(by_image)
        shard, shards = (int(v) for v in args.shard.split("/"))
        done = {(r["image"], r["method"]) for r in rows}
        for name in names[shard::shards]:
            if all((name, m) in done for m in args.methods):
                continue
            im = data[name]
            x1 = prepare_image(im.path, lm.preprocessing).input[None].to(device)
            with torch.no_grad():
                logits = model(x1)[0].cpu()
            probs = logits.softmax(0)
            pairs = [(c, imagenet_target(logits, c)) for c in by_image[name]]
            pairs = [(c, t) for c, t in pairs if float(probs[t]) >= args.min_probability]
            for method in args.methods:
                if (name, method) in done:
                    continue
                start = time.perf_counter()
                if pairs:
                    maps, extras = run_maps(method, model, x1.expand(len(pairs), -1, -1, -1), [t for _, t in pairs],
                                            args)
                seconds = (time.perf_counter() - start) / max(1, len(pairs))
                for (c, t), m, e in zip(pairs, maps if pairs else [], extras if pairs else []):
                    seg = segment_mask(im, c, data.mask_classes, size)
                    append_record(args.log, {
                        "key": keys[method], "kind": "pair", "image": name, "class": c, "target": t, "method": method,
                        "target_probability": float(probs[t]), "seconds": seconds, "point": list(max_point(m)),
                        "hit_box": pointing_hit(m, box_mask(im, c, size), args.tolerance),
                        "hit_mask": None if seg is None or not seg.any() else pointing_hit(m, seg, args.tolerance),
                        **e})
                # the photo is done for this method (also when none of its pairs qualified)
                append_record(args.log, {"key": keys[method], "kind": "photo", "image": name, "method": method,
                                         "pairs": len(pairs)})
                print(f"pointing_presets: {name} {method}: {len(pairs)} pair(s), {seconds:.1f} s / pair",
                      file=sys.stderr, flush=True)
        rows, stale = read_records(args.log, set(keys.values()))
    pair_rows = [r for r in rows if r.get("kind") == "pair"]
    print(table(pair_rows, args.tolerance))
    photos = {r["image"] for r in rows if r.get("kind") == "photo"}
    print(f"\n{len(photos)} photo(s) done; pairs with target probability >= {args.min_probability:g}; tolerance "
          f"{args.tolerance:g} px at {size} px; extremal at areas {list(AREAS)}"
          + (f"; {stale} records with other settings or code not used" if stale else "") + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
