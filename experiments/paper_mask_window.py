"""Why do the paper preset's masks not overlap TorchRay's? Suspects: the smooth max, the frame
counted in the area, and how ties are ranked in the sorted area constraint.

The paper preset combines every bump of the grid in its smooth max (the paper's formula read
literally); far bumps add ~1 each to the softmax's denominator, which damps mid and low mask
values (a uniform parameter of 0.1 gives a mask of 0.015). DESIGN.md's reading is "the bumps
covering a pixel": a local window, where the same parameter gives 0.08. This script runs the
paper preset's schedule with both forms on the given photos and reports each one's extremal
score and the IoU of its top-a masks with TorchRay's (read from bench_extremal's TorchRay run,
or computed when it has not finished the photo).

    python experiments/paper_mask_window.py --threads 1 --images chelsea
    python experiments/paper_mask_window.py --threads 1 --images 000000000590 --forms every margin
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from chanattr import prepare_image
from chanattr.evaluation import extremal_score
from chanattr.extremal import binary_masks, optimise, preset_schedule
from chanattr.pixel import PixelSpace
from chanattr.smooth_mask import SmoothMask

from _common import add_device_args, model_on_device
from bench_extremal import DEFAULT_DATA, DEFAULT_OUT, SETS, image_source, records, top_masks

HERE = Path(__file__).resolve().parent
AREAS = (0.05, 0.1, 0.2)


def torchray_masks(name: str, model, x, target) -> np.ndarray:
    for set_name in SETS:  # the benchmark's TorchRay run, where it has finished this photo
        rec = records(DEFAULT_OUT / set_name / "torchray").get(name)
        if rec is not None:
            return top_masks(rec)
    from torchray.attribution.extremal_perturbation import extremal_perturbation as tr

    flags = [p.requires_grad for p in model.parameters()]
    masks, _ = tr(model, x, target, areas=list(AREAS))
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
    return binary_masks(masks[:, 0][None], AREAS)[0].bool().numpy()


def plain_area_loss(masks, reference, tie_tol=0.0):
    """The sorted-mask constraint with ties broken by sort order (no averaging of tied values)."""
    return ((masks.sort(dim=1).values - reference.expand_as(masks)) ** 2).mean(1)


def run(model, x, target, form: str) -> torch.Tensor:
    import chanattr.extremal as ex

    h, w = x.shape[-2:]
    space = PixelSpace(model, x, mask_form="paper", area_margin=21.0 * min(h, w) / 224 if form == "margin" else 0.0)
    if form == "window":  # the bumps within 1.4 sigma of a pixel, none counted beyond
        space.smooth = SmoothMask((h, w), space.step, space.sigma, padding="none", reach=1.4, device=x.device)
        space.smooth.far = None
    original = ex.area_loss
    if form == "plain-sort":
        ex.area_loss = plain_area_loss
    try:
        params, _ = optimise(space, torch.tensor([target]), AREAS, schedule=preset_schedule("paper"), progress=False)
    finally:
        ex.area_loss = original
    with torch.no_grad():
        return space.full_masks(space.masks(params)).view(1, len(AREAS), h, w)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=["chelsea"],
                    help="bundled photos or coco128 names (bench_extremal's TUNING / HELD_OUT)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder laid out like coco128")
    ap.add_argument("--forms", nargs="+", default=["every", "window"], choices=["every", "window", "margin",
                                                                                "plain-sort"])
    add_device_args(ap)
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    print("| image | smooth max over | score @ 0.05 / 0.1 / 0.2 | feathered 4 px | IoU with TorchRay's top-a | s |")
    print("|---|---|---|---|---|---|")
    for name in args.images:
        x = prepare_image(image_source(name, args.data), lm.preprocessing).input[None].to(args.device)
        target = int(model(x).argmax())
        tr = torchray_masks(name, model, x, target)
        for form in args.forms:
            start = time.perf_counter()
            masks = run(model, x, target, form)
            seconds = time.perf_counter() - start
            hard = extremal_score(model, x, masks, target, AREAS)[0].tolist()
            soft = extremal_score(model, x, masks, target, AREAS, feather=4.0)[0].tolist()
            ours = binary_masks(masks, AREAS)[0].bool().numpy()
            iou = [float((ours[k] & tr[k]).sum() / max(1, (ours[k] | tr[k]).sum())) for k in range(len(AREAS))]
            label = {"every": "every bump", "window": "bumps within 1.4 sigma", "margin": "every bump, area with "
                     "TorchRay's frame", "plain-sort": "every bump, ties sorted plainly"}[form]
            print(f"| {name} | {label} | "
                  + " / ".join(f"{v:.2f}" for v in hard) + " | " + " / ".join(f"{v:.2f}" for v in soft) + " | "
                  + " / ".join(f"{v:.2f}" for v in iou) + f" | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
