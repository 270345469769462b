"""PruneGrad against the Captum baselines: the cascading model-randomisation sanity check and
insertion / deletion AUCs, on the default model (EfficientNet-Lite0) with the four bundled
photos and the first four COCO photos (top-1 targets).

Sanity check (Adebayo et al.): the weights are re-initialised stage by stage from the
classifier down (``chanattr.evaluation.default_stages``: classifier, bn2, conv_head,
blocks.6 ... blocks.0, bn1, conv_stem); after each stage the map is recomputed and compared
with the trained model's map (Spearman rank correlation and SSIM of the absolute maps).
Lower means the map depends on what the model learned: a method "passes" when the
similarity falls towards 0 as more of the model is randomised.

Insertion / deletion: the target's softmax probability as pixels go, most salient first,
from a blurred copy into the image (insertion, higher AUC better) or from the image into the
blurred copy (deletion, lower better); 32 steps.

    pip install -e ".[bench]"
    python experiments/prunegrad_eval.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from chanattr import saliency
from chanattr.coco import default_coco_root
from chanattr.evaluation import cascading_randomisation, default_stages, insertion_deletion

from _common import add_device_args, model_on_device, photo_sources, photos_with_targets

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = default_coco_root()
METHODS = ["prunegrad", "gradient", "gradient_x_input", "integrated_gradients", "guided_backprop", "gradcam"]


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--coco", type=int, default=4, help="how many COCO photos (the first by name)")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--steps", type=int, default=32, help="insertion / deletion steps")
    add_device_args(ap)
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    images, x, targets = photos_with_targets(lm, model, photo_sources(args.data, args.coco), args.device)
    stages = default_stages(model)
    mid = len(stages) // 2
    marks = {"classifier only": 0, f"down to {stages[mid]}": mid, "all": len(stages) - 1}
    rho = {m: {k: [] for k in marks} for m in args.methods}
    ssim = {m: {k: [] for k in marks} for m in args.methods}
    ins = {m: [] for m in args.methods}
    dele = {m: [] for m in args.methods}
    bar = tqdm(total=len(images) * len(args.methods), desc="prunegrad_eval")
    for i in range(len(images)):
        xi, t = x[i : i + 1], int(targets[i])
        for m in args.methods:
            original, result = cascading_randomisation(model, xi, t, lambda mod, xx, tt: saliency(m, mod, xx, tt),
                                                       stages=stages)
            for k, s in marks.items():
                rho[m][k].append(result[s].spearman)
                ssim[m][k].append(result[s].ssim)
            a, _ = insertion_deletion(model, xi, original[None], t, mode="insertion", steps=args.steps)
            d, _ = insertion_deletion(model, xi, original[None], t, mode="deletion", steps=args.steps)
            ins[m].append(float(a))
            dele[m].append(float(d))
            bar.update(1)
    bar.close()
    head = " | ".join(f"Spearman: {k}" for k in marks) + " | " + " | ".join(f"SSIM: {k}" for k in marks)
    lines = [f"| method | {head} | insertion AUC ↑ | deletion AUC ↓ |", "|---|" + "---|" * (2 * len(marks) + 2)]
    for m in args.methods:
        cells = [fmt(rho[m][k]) for k in marks] + [fmt(ssim[m][k]) for k in marks] + [fmt(ins[m]), fmt(dele[m])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"\nMean ± sd over {len(images)} images ({', '.join(im.name for im in images)}); {len(stages)} stages "
          f"randomised from the output down; similarity of absolute maps to the trained model's map (lower: the "
          f"map depends on the weights). Device {args.device}, {torch.get_num_threads()} thread(s).")
    if "prunegrad" in args.methods and "gradient" in args.methods:
        better_ins = sum(p > g for p, g in zip(ins["prunegrad"], ins["gradient"]))
        better_del = sum(p < g for p, g in zip(dele["prunegrad"], dele["gradient"]))
        print(f"PruneGrad vs gradient: higher insertion AUC on {better_ins} of {len(images)} images, lower deletion "
              f"AUC on {better_del} of {len(images)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
