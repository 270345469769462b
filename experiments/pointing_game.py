"""The pointing game on COCO photos with the default ImageNet model (EfficientNet-Lite0).

Every (image, COCO class) pair whose class maps to a set of ImageNet classes
(``chanattr.coco.COCO_TO_IMAGENET``) and whose object lies at least partly inside the
model's centre crop is scored; the target is the most probable ImageNet class within the
set. A map's maximum is a hit when it lies within 15 px of the object (the union of its
boxes, and, for photos with masks, the union of its mask pixels). Accuracy is the mean over
classes of the hit rate, with a 95 % bootstrap interval (pairs resampled).

Every method is a ``chanattr run`` over ``coco:DATA`` into ``--out/METHOD`` (the items, the
targets, the hits and the scores are the run's; ``chanattr.runs``): it resumes where any
earlier run stopped, refuses other settings or code, and shards over processes under torchrun.
Extremal perturbation is ``chanattr run explain`` at the paper's COCO areas (0.018, 0.025,
0.05, 0.1) with the fast preset, its items keeping their masks (for the map table); the other
methods keep rows only. ``score``: the target logit with only the top ``--score-area`` of the
map kept (for extremal perturbation, of its own mask at that area: the quantity it optimises).

    pip install -e ".[bench]"
    torchrun --nproc_per_node 2 experiments/pointing_game.py --threads 1      # every method, every pair
    python experiments/pointing_game.py --methods gradcam centre --table-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from chanattr.cli import build_parser, model_from_args
from chanattr.coco import box_mask, default_coco_root
from chanattr.distributed import barrier, process_device, processes_from_environment, start, stop
from chanattr.errors import ChanattrError
from chanattr.evaluation import PointingGame, extremal_score, pointing_hit
from chanattr.extremal import Schedule, binary_masks
from chanattr.items import read_items
from chanattr.pixel import saliency_map
from chanattr.run_methods import method_function
from chanattr.runs import finished_items, run_items

from _common import pointing_cells

HERE = Path(__file__).resolve().parent
ORDER = ["extremal", "gradcam", "rise", "prunegrad", "integrated_gradients", "gradient", "gradient_x_input",
         "guided_backprop", "centre"]
AREAS = ("0.018", "0.025", "0.05", "0.1")


def run_args(method: str, spec: str, args) -> argparse.Namespace:
    """The ``chanattr run`` options of a method (what its manifest records)."""
    argv = ["run", "explain" if method == "extremal" else method, "--images", spec, "--out", str(args.out / method),
            "--tolerance", str(args.tolerance), "--device", args.device, "--no-progress"]
    if method == "extremal":
        argv += ["--areas", *AREAS, "--search-side", str(args.extremal_search_side),
                 "--search-parts", str(args.extremal_search_parts)]
        if args.extremal_iterations:
            argv += ["--iterations", str(args.extremal_iterations)]
    else:
        argv += ["--rows-only", "--score-areas", str(args.score_area)]
        if method == "rise":
            argv += ["--rise-masks", str(args.rise_masks)]
    return build_parser().parse_args(argv)


def records(folder: Path, score_area: float) -> list[dict]:
    """One record per finished pair: the row at ``score_area`` (the nearest area), with
    ``point`` and ``score_area``."""
    recs = []
    for _, rows in finished_items(folder).values():
        row = min(rows, key=lambda r: abs((r.get("area") or 0) - score_area))
        recs.append({**row, "point": [row["point_row"], row["point_col"]], "score_area": row.get("area")})
    return recs


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


def extremal_map_table(folder: Path, source, size: int, tolerance: float, model=None, device="cpu") -> str:
    """Box accuracy of other maps made from the same extremal masks (the run's item files): each
    area's binary mask alone (smoothed like the saliency), and TorchRay's benchmark map (the
    plain sum of the soft masks), next to the toolkit's saliency (the smoothed sum of the binary
    masks); and the mean binary reward per area beside the logit of the wholly blurred photo."""
    from chanattr import prepare_image

    areas = tuple(float(a) for a in AREAS)
    large = [k for k, a in enumerate(areas) if a >= 0.05]
    names = ["saliency (smoothed sum of binary masks)", "sum of soft masks (TorchRay's map)"] + [
        f"area {a:g} alone (binary, smoothed)" for a in areas] + [
        "areas " + " + ".join(f"{areas[k]:g}" for k in large) + " only (smoothed sum of binary masks)"]
    games = {n: PointingGame(tolerance) for n in names}
    rewards, blurred = [], []
    by_id = {it.id: it for it in source.items}
    for ident, (path, rows) in finished_items(folder).items():
        it = by_id.get(ident)
        if it is None:
            continue
        with np.load(path) as d:
            if "masks" not in d.files:
                continue
            masks = torch.from_numpy(d["masks"].astype(np.float32))  # K x H x W
            sal = torch.from_numpy(d["saliency"].astype(np.float32))
        hard = binary_masks(masks[None], areas)  # 1 x K x H x W
        box = box_mask(source.coco[it.image], it.coco_class, size)
        maps = [sal, masks.sum(0)] + [saliency_map(hard[:, [k]])[0] for k in range(len(areas))] + [
            saliency_map(hard[:, large])[0]]
        for n, m in zip(names, maps):
            games[n].add_result(it.coco_class, pointing_hit(m, box, tolerance))
        rewards.append([r["score"] for r in sorted(rows, key=lambda r: r["area"])])
        if model is not None:  # the extremal score of a mask that keeps nothing
            x = prepare_image(it.source, PRE).input[None].to(device)
            blurred.append(float(extremal_score(model, x, torch.zeros(1, 1, size, size, device=device),
                                                rows[0]["target"], 0.0)[0, 0]))
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


PRE = None  # the model's preprocessing, set in main


def main(argv: list[str] | None = None) -> int:
    global PRE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_coco_root(), help="a folder laid out like coco128")
    ap.add_argument("--methods", nargs="+", default=ORDER, choices=ORDER)
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
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pointing_game",
                    help="the runs' folders (one per method; not committed: the extremal items keep their masks)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--table-only", action="store_true", help="compute nothing: tables over the finished pairs")
    args = ap.parse_args(argv)
    spec = f"coco:{args.data}"
    procs = processes_from_environment()
    args.device = process_device(args.device, procs)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = model_from_args(run_args("centre", spec, args))
    PRE = lm.preprocessing
    size = lm.preprocessing.input_size
    source = read_items(spec, input_size=size)
    if not args.table_only:
        start(procs, args.device)
        try:
            for method in args.methods:
                ra = run_args(method, spec, args)
                run_items(ra.method, method_function(ra.method), ra, lm, source, args.out / method, procs,
                          device=args.device, batch_size=ra.batch_images, progress=procs.main,
                          tolerance=args.tolerance)
                barrier(procs)
        except ChanattrError as e:
            raise SystemExit(f"pointing_game: {e}")
        finally:
            stop(procs)
        if not procs.main:
            return 0
    results = {m: records(args.out / m, args.score_area) for m in args.methods if (args.out / m / "items").is_dir()}
    common = set.intersection(*({r["item"] for r in rs} for rs in results.values())) if results else set()
    results = {m: [r for r in rs if r["item"] in common] for m, rs in results.items()}
    methods = [m for m in args.methods if m in results]
    lines = ["| method | boxes: accuracy % (95 % CI) | masks: accuracy % (95 % CI) | pairs (boxes / masks) | "
             f"classes | s / pair | target logit, top {100 * args.score_area:g} % kept |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        recs = results[method]
        if not recs:
            continue
        cells, boxes, masks = pointing_cells(recs, args.tolerance)
        secs = sum(r["seconds"] for r in recs) / len(recs)
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {boxes} / {masks} | {len({r['class'] for r in recs})} | "
                     f"{secs:.2f} | {np.mean([r['score'] for r in recs]):.2f} |")
    print("\n".join(lines))
    print(strength_table(results, methods, args.tolerance, size))
    print(disagreement(results))
    if "extremal" in methods:
        print(extremal_map_table(args.out / "extremal", source, size, args.tolerance, lm.model, lm.device))
    print(f"\n{args.data.name}: {len(common)} of {len(source.items)} (image, class) pairs finished by every method, "
          f"{len({r['image'] for r in next(iter(results.values()), [])})} photos; tolerance {args.tolerance:g} px "
          f"at {size} px; {torch.get_num_threads()} thread(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
