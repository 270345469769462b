"""The pointing game on COCO photos with the default ImageNet model (EfficientNet-Lite0).

Every (image, COCO class) pair whose class maps to a set of ImageNet classes
(``chanattr.coco.COCO_TO_IMAGENET``) and whose object lies at least partly inside the
model's centre crop is scored; the target is the most probable ImageNet class within the
set. A map's maximum is a hit when it lies within 15 px of the object (the union of its
boxes, and, for photos with masks, the union of its mask pixels). Accuracy is the mean over
classes of the hit rate, with a 95 % bootstrap interval (pairs resampled).

    pip install -e ".[bench]"
    python experiments/pointing_game.py                 # every method, every pair
    python experiments/pointing_game.py --methods gradcam centre --limit 20

Results are cached per (image, class, method) under ``--cache``, keyed by the method's
settings, the code version (a hash of the modules it runs) and the library versions, so an
interrupted run resumes and a changed setting or code is never served from the cache;
``--fresh`` recomputes. Extremal perturbation uses the paper's COCO areas
(0.018, 0.025, 0.05, 0.1) and the toolkit's default schedule unless ``--extremal-iterations``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from chanattr import prepare_image
from chanattr.baselines import METHODS, saliency
from chanattr.coco import box_mask, default_coco_root, imagenet_target, read_coco, segment_mask
from chanattr.evaluation import PointingGame, extremal_score, max_point, pointing_hit
from chanattr.extremal import Schedule, binary_masks
from chanattr.pixel import extremal_perturbation, saliency_map

from _common import add_device_args, code_version, library_versions, model_on_device, settings_key

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = default_coco_root()
ORDER = ["extremal", "gradcam", "rise", "prunegrad", "integrated_gradients", "gradient", "gradient_x_input",
         "guided_backprop", "centre"]


#: the modules the methods and the scoring run (their hash keys every cached result)
CODE = ["chanattr/extremal.py", "chanattr/pixel.py", "chanattr/smooth_mask.py", "chanattr/perturbations.py",
        "chanattr/baselines.py", "chanattr/prunegrad.py", "chanattr/coco.py", "chanattr/images.py",
        "chanattr/evaluation/pointing.py", "chanattr/evaluation/extremal_score.py"]


def cache_key(method: str, args) -> str:
    """Every setting a method's cached result depends on, the code version and the library versions."""
    return settings_key({"method": method, "kwargs": repr(method_kwargs(method, args)), "tolerance": args.tolerance,
                         "score_area": args.score_area, "device": str(args.device), "code": code_version(CODE),
                         "versions": library_versions()})


def method_kwargs(method: str, args) -> dict:
    if method == "extremal":
        schedule = Schedule(search_side=args.extremal_search_side, search_parts=args.extremal_search_parts)
        if args.extremal_iterations:
            schedule = replace(schedule, iterations=args.extremal_iterations)
        return {"areas": (0.018, 0.025, 0.05, 0.1), "schedule": schedule}
    if method == "rise":
        return {"masks": args.rise_masks}
    return {}


def strength_table(results: dict[str, list[dict]], methods: list[str], tolerance: float, size: int,
                   threshold: float = 0.1) -> str:
    """Box accuracy split by how strongly the model predicts the target on the whole photo
    (softmax probability below / at least ``threshold``), and the share of maxima on the border."""
    lines = ["", f"| method | boxes %, target probability < {threshold:g} | boxes %, >= {threshold:g} | "
             "maxima within 10 px of the border |", "|---|---|---|---|"]
    for method in methods:
        recs = [r for r in results[method] if "target_prob" in r]
        if not recs:
            continue
        cells = []
        for weak in (True, False):
            game = PointingGame(tolerance)
            part = [r for r in recs if (r["target_prob"] < threshold) == weak]
            for r in part:
                game.add_result(r["class"], r["hit_box"])
            cells.append(f"{100 * game.accuracy():.1f} ({len(part)} pairs)" if part else "-")
        border = np.mean([min(*r["point"], size - 1 - r["point"][0], size - 1 - r["point"][1]) < 10 for r in recs])
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {100 * border:.0f} % |")
    return "\n".join(lines)


def disagreement(results: dict[str, list[dict]], a: str = "extremal", b: str = "gradcam") -> str:
    """Where ``b`` points at the object and ``a`` does not: which map's top pixels keep more of
    the target logit (the recorded extremal score)? If ``a``'s off-object region keeps more, the
    model's evidence for the target lies (also) off the object."""
    if not results.get(a) or not results.get(b):
        return ""
    rb = {(r["image"], r["class"]): r for r in results[b] if r}
    pairs = [(r, rb[(r["image"], r["class"])]) for r in results[a] if r and (r["image"], r["class"]) in rb]
    pairs = [(ra, rb_) for ra, rb_ in pairs if "score" in ra and "score" in rb_]
    only_b = [(ra, rb_) for ra, rb_ in pairs if rb_["hit_box"] and not ra["hit_box"]]
    only_a = [(ra, rb_) for ra, rb_ in pairs if ra["hit_box"] and not rb_["hit_box"]]
    if not only_b:
        return ""
    higher = sum(ra["score"] > rb_["score"] for ra, rb_ in only_b)
    return (f"\nOf {len(pairs)} pairs, {b} hits and {a} misses on {len(only_b)} ({a} hits and {b} misses on "
            f"{len(only_a)}). On those {len(only_b)}, the target logit with the top {100 * only_b[0][0]['score_area']:g} % "
            f"of each map kept: {a} {np.mean([ra['score'] for ra, _ in only_b]):.2f}, {b} "
            f"{np.mean([rb_['score'] for _, rb_ in only_b]):.2f}; {a}'s off-object region keeps more in {higher} of them.")


def extremal_map_table(cache: Path, pairs: list, size: int, tolerance: float, areas: tuple,
                       blurred_logit=None, key: str = "") -> str:
    """Box accuracy of other maps made from the same cached extremal masks: each area's binary
    mask alone (smoothed like the saliency), and TorchRay's benchmark map (the plain sum of the
    soft masks), next to the toolkit's saliency (the smoothed sum of the binary masks)."""
    large = [k for k, a in enumerate(areas) if a >= 0.05]
    names = ["saliency (smoothed sum of binary masks)", "sum of soft masks (TorchRay's map)"] + [
        f"area {a:g} alone (binary, smoothed)" for a in areas] + [
        "areas " + " + ".join(f"{areas[k]:g}" for k in large) + " only (smoothed sum of binary masks)"]
    games = {n: PointingGame(tolerance) for n in names}
    rewards, blurred = [], []
    for im, c in pairs:
        f = cache / f"{im.name}-{c.replace(' ', '_')}-extremal-{key}.npz"
        if not f.exists():
            continue
        d = np.load(f)
        if "masks" not in d:
            continue
        masks = torch.from_numpy(d["masks"].astype(np.float32))  # K x H x W
        hard = binary_masks(masks[None], areas)  # 1 x K x H x W
        box = box_mask(im, c, size)
        maps = [torch.from_numpy(d["saliency"].astype(np.float32)), masks.sum(0)] + [
            saliency_map(hard[:, [k]])[0] for k in range(len(areas))] + [saliency_map(hard[:, large])[0]]
        for n, m in zip(names, maps):
            games[n].add_result(c, pointing_hit(m, box, tolerance))
        rewards.append(d["binary_reward"])
        if blurred_logit is not None:
            blurred.append(blurred_logit(im, json.loads(f.with_suffix(".json").read_text())["target"]))
    if not rewards:
        return ""
    lines = ["", f"| extremal perturbation: map from its masks ({len(rewards)} pairs) | boxes: accuracy % (95 % CI) |",
             "|---|---|"]
    for n, game in games.items():
        lo, hi = game.interval()
        lines.append(f"| {n} | {100 * game.accuracy():.1f} ({100 * lo:.1f}-{100 * hi:.1f}) |")
    lines.append("")
    lines.append("Mean binary reward (target logit, the mask's top area kept) per area: " + ", ".join(
        f"{a:g}: {v:.2f}" for a, v in zip(areas, np.mean(rewards, 0))) + (
        f"; with the whole photo blurred: {np.mean(blurred):.2f}" if blurred else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder laid out like coco128")
    ap.add_argument("--methods", nargs="+", default=ORDER, choices=sorted(METHODS))
    ap.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    ap.add_argument("--tolerance", type=float, default=15.0, help="pixels, at the model's input size")
    ap.add_argument("--extremal-iterations", type=int, default=None)
    ap.add_argument("--extremal-search-side", type=int, default=0,
                    help="candidates per side of the extremal search grid (0: the default, more for small areas)")
    ap.add_argument("--extremal-search-parts", type=int, default=Schedule.search_parts,
                    help="the search also tries unions of up to this many blobs (fewer: faster)")
    ap.add_argument("--rise-masks", type=int, default=2000)
    ap.add_argument("--score-area", type=float, default=0.05,
                    help="also record each map's extremal score at this area (the target logit with only "
                         "the map's top pixels kept): does the map find what the model uses?")
    add_device_args(ap)
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "pointing_game")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--cached-only", action="store_true",
                    help="compute nothing: report the pairs that every method has cached (say how many)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--reverse", action="store_true",
                    help="work through the photos last first (a second process can share the cache)")
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    device = torch.device(args.device)
    size = lm.preprocessing.input_size
    data = read_coco(args.data)
    pairs = [(im, c) for im, c in data.pairs() if box_mask(im, c, size).any()]
    skipped = len(data.pairs()) - len(pairs)
    if args.limit:
        pairs = pairs[: args.limit]
    cache = args.cache / data.root.name
    cache.mkdir(parents=True, exist_ok=True)
    keys = {m: cache_key(m, args) for m in args.methods}  # results of other settings or code are not used

    # group pairs by image so that one image's classes share a batch (and RISE's forward passes)
    by_image: dict[str, list[str]] = {}
    for im, c in pairs:
        by_image.setdefault(im.name, []).append(c)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    bar = tqdm(total=len(pairs) * len(args.methods), disable=args.quiet or None, desc="pointing game")
    for name, classes in (reversed(by_image.items()) if args.reverse else by_image.items()):
        im = data[name]
        x = truth = None
        for method in args.methods:
            paths = [cache / f"{name}-{c.replace(' ', '_')}-{method}-{keys[method]}.json" for c in classes]
            if args.cached_only or (all(p.exists() for p in paths) and not args.fresh):
                results[method] += [json.loads(p.read_text()) if p.exists() else None for p in paths]
                bar.update(len(classes))
                continue
            if x is None:
                x = prepare_image(im.path, lm.preprocessing).input[None].to(device)
                with torch.no_grad():
                    logits = model(x)[0].cpu()
                targets = [imagenet_target(logits, c) for c in classes]
                probs = logits.softmax(0)
                truth = [(box_mask(im, c, size), segment_mask(im, c, data.mask_classes, size)) for c in classes]
            start = time.perf_counter()
            xs = x.expand(len(classes), -1, -1, -1)
            extra = [{} for _ in classes]
            if method == "extremal":  # keep the masks too: which area (and which sum of them) points best?
                result = extremal_perturbation(model, xs, targets, progress=False, **method_kwargs(method, args))
                maps = result.saliency().cpu()
                for e, m, rw in zip(extra, result.masks.cpu(), result.binary_reward):
                    e["masks"] = m.numpy().astype(np.float16)
                    e["binary_reward"] = rw.numpy()
            else:
                maps = saliency(method, model, xs, targets, **method_kwargs(method, args))
            seconds = (time.perf_counter() - start) / len(classes)
            kept = extremal_score(model, xs, maps[:, None].to(device), targets, args.score_area)[:, 0]
            for c, t, m, p, (box, seg), score, e in zip(classes, targets, maps, paths, truth, kept, extra):
                rec = {
                    "image": name, "class": c, "target": t, "method": method, "seconds": seconds,
                    "settings": repr(method_kwargs(method, args)),
                    "point": list(max_point(m)),
                    "hit_box": pointing_hit(m, box, args.tolerance),
                    "hit_mask": None if seg is None or not seg.any() else pointing_hit(m, seg, args.tolerance),
                    "target_prob": float(probs[t]), "target_rank": int((logits > logits[t]).sum()),
                    "full_logit": float(logits[t]), "score_area": args.score_area, "score": float(score),
                }
                p.write_text(json.dumps(rec))
                np.savez_compressed(p.with_suffix(".npz"), saliency=m.numpy().astype(np.float16), **e)  # for other metrics
                results[method].append(rec)
            bar.update(len(classes))
    bar.close()
    if args.cached_only:  # the pairs every method has
        complete = [all(results[m][i] is not None for m in args.methods) for i in range(len(pairs))]
        results = {m: [r for r, ok in zip(results[m], complete) if ok] for m in args.methods}
        print(f"cached only: {sum(complete)} of {len(pairs)} pairs have every method's result", file=sys.stderr)
        pairs = [p for p, ok in zip(pairs, complete) if ok]

    lines = ["| method | boxes: accuracy % (95 % CI) | masks: accuracy % (95 % CI) | pairs (boxes / masks) | "
             f"classes | s / pair | target logit, top {100 * args.score_area:g} % kept |", "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        recs = results[method]
        if not recs:
            continue
        box, mask = PointingGame(args.tolerance), PointingGame(args.tolerance)
        for r in recs:
            box.add_result(r["class"], r["hit_box"])
            if r["hit_mask"] is not None:
                mask.add_result(r["class"], r["hit_mask"])
        cells = []
        for game in (box, mask):
            lo, hi = game.interval()
            cells.append(f"{100 * game.accuracy():.1f} ({100 * lo:.1f}-{100 * hi:.1f})")
        secs = sum(r["seconds"] for r in recs) / len(recs)
        scores = [r["score"] for r in recs if "score" in r]
        kept = f"{np.mean(scores):.2f}" if scores else "-"
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {len(box)} / {len(mask)} | {len(box.per_class())} | "
                     f"{secs:.2f} | {kept} |")
    print("\n".join(lines))
    print(strength_table(results, args.methods, args.tolerance, size))
    print(disagreement(results))
    if "extremal" in args.methods:
        def blurred_logit(im, target: int) -> float:  # the extremal score of a mask that keeps nothing
            x = prepare_image(im.path, lm.preprocessing).input[None].to(device)
            return float(extremal_score(model, x, torch.zeros(1, 1, size, size), target, 0.0)[0, 0])

        print(extremal_map_table(cache, pairs, size, args.tolerance, method_kwargs("extremal", args)["areas"],
                                 blurred_logit, keys["extremal"]))
    print(f"\n{args.data.name}: {len(pairs)} (image, class) pairs scored, {len({im.name for im, _ in pairs})} photos, "
          f"{len({c for _, c in pairs})} classes; {skipped} mapped pairs left out because the object lies outside "
          f"the centre crop; tolerance {args.tolerance:g} px at {size} px; device {device}, "
          f"{torch.get_num_threads()} thread(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
