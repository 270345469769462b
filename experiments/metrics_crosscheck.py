"""Our metrics against Quantus's on the same maps (issue 16, first part: the pointing game and
pixel flipping against our deletion curve).

Maps: gradient, Grad-CAM and PruneGrad of the bundled EfficientNet-Lite0 on the first ``--pairs``
(image, class) pairs of coco128 whose class has an ImageNet set (the pointing game's pairs), the
target the best ImageNet class of the COCO class. For each map:

- pointing game: ours (``pointing_hit``: the map's maximum within 15 px of the box; and with 0 px)
  against ``quantus.PointingGame`` (the maximum inside the box). Same definition at 0 px, so the
  hits must agree exactly; at 15 px ours is more lenient by design (TorchRay's tolerance);
- deletion: ours (``insertion_deletion(mode="deletion")``: the pixels in map order replaced by a
  blurred copy, the target probability, 32 steps) against ``quantus.PixelFlipping`` (pixels in
  map order set to black, 1/32 of them a step, the model's output for the target: the
  probability here, via a softmax head; its AUC computed here with the trapezoid rule over the
  fraction flipped, as ours, since Quantus 0.6's own calls ``np.trapz``, which numpy 2.4 no
  longer has). The perturbations differ (blur against black), so the
  numbers differ; the check is whether the two rank the three methods alike (Spearman's rho over
  the maps' AUCs, and which method each calls best per pair).
- model-parameter randomisation (cascading, from the output down, to the whole network): ours
  (``cascading_randomisation``, the last stage's Spearman correlation between the absolute maps
  of the trained and the randomised network) against ``quantus.MPRT`` (``layer_order="top_down"``,
  ``skip_layers=True``, ``return_last_correlation=True``: the same correlation after every layer is
  randomised), on the first ``--mprt-pairs`` pairs. The re-initialisations differ by design:
  ours keeps each layer's trained weight scale (``init="scaled"``), Quantus calls each module's
  ``reset_parameters()``; ours with ``init="reset"`` is the same definition as Quantus's (other
  random draws), so those two columns should agree on average, and the share of randomised
  maps that are constant (all zero) says why the two re-initialisations differ.

    python experiments/metrics_crosscheck.py --pairs 12 --mprt-pairs 6 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chanattr import prepare_image, saliency  # noqa: E402
from chanattr.coco import box_mask, default_coco_root, imagenet_target, read_coco  # noqa: E402
from chanattr.evaluation import insertion_deletion, pointing_hit  # noqa: E402

from _common import add_device_args, model_on_device  # noqa: E402

METHODS = ("gradient", "gradcam", "prunegrad")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> int:
    import quantus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_coco_root())
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--mprt-pairs", type=int, default=6)
    add_device_args(ap)
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    size = lm.preprocessing.input_size
    data = read_coco(args.data)
    pairs = [(im, c) for im, c in data.pairs() if box_mask(im, c, size).any()][: args.pairs]
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    rows = []
    for im, c in pairs:
        x = prepare_image(im.path, lm.preprocessing).input[None]
        with torch.no_grad():
            target = imagenet_target(model(x)[0], c)
        box = box_mask(im, c, size)
        maps = {m: saliency(m, model, x, target)[0] for m in METHODS}
        for m, s in maps.items():
            a = s[None, None].numpy()
            q_point = quantus.PointingGame(disable_warnings=True)(
                model=model, x_batch=x.numpy(), y_batch=np.array([target]), a_batch=a,
                s_batch=box[None, None].numpy().astype(float), device="cpu", channel_first=True)[0]
            curve = quantus.PixelFlipping(features_in_step=size * size // 32, perturb_baseline="black",
                                          disable_warnings=True)(
                model=probs, x_batch=x.numpy(), y_batch=np.array([target]), a_batch=a, device="cpu",
                channel_first=True)[0]
            # its own AUC (return_auc_per_sample) calls np.trapz, gone from numpy 2.4: the trapezoid rule here,
            # over the fraction of pixels flipped, as ours
            q_flip = np.trapezoid(np.asarray(curve, dtype=float), dx=1.0 / (len(curve) - 1))
            ours_del = float(insertion_deletion(model, x, s[None], target, mode="deletion")[0][0])
            rows.append({"pair": f"{im.name}/{c}", "method": m, "ours15": pointing_hit(s, box, 15.0),
                         "ours0": pointing_hit(s, box, 0.0), "quantus": bool(q_point), "ours_deletion": ours_del,
                         "quantus_flipping": float(q_flip)})
        print(f"{im.name}/{c}: done", file=sys.stderr, flush=True)
    n = len(rows)
    agree0 = sum(r["ours0"] == r["quantus"] for r in rows)
    print(f"{len(pairs)} pairs x {len(METHODS)} methods = {n} maps (bundled EfficientNet-Lite0, coco128)\n")
    print("| method | ours, 15 px | ours, 0 px | Quantus PointingGame | ours 0 px = Quantus | deletion AUC, ours "
          "(blur) | pixel flipping AUC, Quantus (black) |")
    print("|---|---|---|---|---|---|---|")
    for m in METHODS:
        rs = [r for r in rows if r["method"] == m]
        print(f"| {m} | {sum(r['ours15'] for r in rs)}/{len(rs)} | {sum(r['ours0'] for r in rs)}/{len(rs)} | "
              f"{sum(r['quantus'] for r in rs)}/{len(rs)} | {sum(r['ours0'] == r['quantus'] for r in rs)}/{len(rs)} | "
              f"{np.mean([r['ours_deletion'] for r in rs]):.3f} | {np.mean([r['quantus_flipping'] for r in rs]):.3f} |")
    ours = np.array([r["ours_deletion"] for r in rows])
    theirs = np.array([r["quantus_flipping"] for r in rows])
    best_same = 0
    for p in dict.fromkeys(r["pair"] for r in rows):
        rs = [r for r in rows if r["pair"] == p]
        best_same += min(rs, key=lambda r: r["ours_deletion"])["method"] == min(
            rs, key=lambda r: r["quantus_flipping"])["method"]
    print(f"\nPointing game at 0 px: ours and Quantus agree on {agree0} of {n} maps. Deletion: Spearman's rho between "
          f"our AUCs and Quantus's over the {n} maps {spearman(ours, theirs):.2f}; the best method (lowest AUC) is the "
          f"same in {best_same} of {len(pairs)} pairs.")
    print(mprt_table(model, lm, pairs[: args.mprt_pairs]))
    return 0


def mprt_table(model, lm, pairs) -> str:
    """Cascading model randomisation: ours (scaled and reset re-initialisation) against Quantus's MPRT."""
    import copy

    import quantus

    from chanattr.evaluation import cascading_randomisation, map_similarity

    rows = []
    for im, c in pairs:
        x = prepare_image(im.path, lm.preprocessing).input[None]
        with torch.no_grad():
            target = imagenet_target(model(x)[0], c)
        for m in METHODS:
            def explain(model, inputs, targets, m=m, **kw):
                return saliency(m, model, torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()
                                ).detach().numpy()[:, None]

            q = quantus.MPRT(layer_order="top_down", skip_layers=True, return_last_correlation=True,
                             disable_warnings=True)(model=copy.deepcopy(model), x_batch=x.numpy(),
                                                    y_batch=np.array([target]), a_batch=None, explain_func=explain,
                                                    device="cpu", channel_first=True)[0]
            row = {"method": m, "quantus": float(q)}
            for init in ("scaled", "reset"):
                _, stages = cascading_randomisation(model, x, target, lambda mm, xx, tt, m=m: saliency(m, mm, xx, tt),
                                                    init=init)
                last = stages[-1]
                row[init] = last.spearman
                row[f"{init}_constant"] = bool(float(last.saliency.max()) == float(last.saliency.min()))
            rows.append(row)
        print(f"{im.name}/{c}: MPRT done", file=sys.stderr, flush=True)
    lines = [f"\nModel randomisation, whole network, {len(pairs)} pairs: Spearman correlation between the trained and "
             "the randomised network's absolute maps (mean, min-max over pairs; near 0: the map depends on the "
             "weights)\n",
             "| method | ours, scaled re-init (default) | ours, reset_parameters() | Quantus MPRT (reset_parameters()) | "
             "constant maps after randomisation: scaled / reset |", "|---|---|---|---|---|"]
    for m in METHODS:
        rs = [r for r in rows if r["method"] == m]
        cells = []
        for k in ("scaled", "reset", "quantus"):
            v = np.array([r[k] for r in rs], dtype=float)
            v = np.nan_to_num(v, nan=0.0)
            cells.append(f"{v.mean():.2f} ({v.min():.2f} to {v.max():.2f})")
        const = f"{sum(r['scaled_constant'] for r in rs)}/{len(rs)} / {sum(r['reset_constant'] for r in rs)}/{len(rs)}"
        lines.append(f"| {m} | {cells[0]} | {cells[1]} | {cells[2]} | {const} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
