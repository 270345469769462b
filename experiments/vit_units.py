"""Unit spaces on a real trained transformer (the Fashion-MNIST ViT of fmnist_vit.py): do the
units our unit extremal perturbation keeps hold more of the target than the units other
rankings pick -- for hidden units, tokens and attention heads?

For each test image (the first ``--images`` of the 10 000 Fashion-MNIST test images, none
looked at before; the model's top-1 class as the target) and each (layer, unit kind):

- rankings: ours (the preserve mask optimised at each area; at area a its top round(a U) units),
  activation norm, gradient x activation (Taylor), single-unit ablation, random (5 draws);
- scores at k = round(a U) units: the target logit with only those k kept (the rest at the
  zero baseline) -- **the quantity our preserve masks optimise** -- and with those k removed
  (not optimised by ours: a deletion score, low is better), plus the fraction of the target
  kept, (kept - none) / (full - none).

Kinds and layers: hidden units (64) at ``blocks.1`` and ``blocks.2`` at 5 % and 10 % (3 and 6
units), patch tokens (16, class token kept) at ``blocks.1`` at 5 % and 10 % (1 and 2 tokens), heads
(4) at ``blocks.1.attn`` and ``blocks.2.attn`` at 25 % (1 head: 5 % and 10 % of 4 heads round
to none). Per-image records go to ``results/vit_units.jsonl`` (keyed by the settings, the code
and the weights), so the run resumes; ``--figures`` writes ``docs/vit_units.png`` (inversions of
the salient hidden units and head of three test images).

    python experiments/vit_units.py --images 64 --threads 1
    python experiments/vit_units.py --table-only
    python experiments/vit_units.py --figures
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chanattr import UnitSpace, unit_extremal_perturbation  # noqa: E402
from chanattr.channel_rankings import rank_by_ablation, rank_by_activation, rank_by_taylor, rank_random  # noqa: E402

from _common import append_record, code_version, library_versions, read_records, settings_key  # noqa: E402
from fmnist_vit import CLASSES, WEIGHTS, fmnist_vit, normalise  # noqa: E402

LOG = HERE / "results" / "vit_units.jsonl"
SITES = [("blocks.1", "hidden", (0.05, 0.1)), ("blocks.2", "hidden", (0.05, 0.1)), ("blocks.1", "tokens", (0.05, 0.1)),
         ("blocks.1.attn", "heads", (0.25,)), ("blocks.2.attn", "heads", (0.25,))]
RANKINGS = ["ours", "activation", "taylor", "ablation", "random"]
CODE = ["experiments/vit_units.py", "chanattr/extremal.py", "chanattr/channel_rankings.py", "chanattr/units/space.py",
        "chanattr/units/base.py", "chanattr/units/hidden.py", "chanattr/units/heads.py", "chanattr/units/tokens.py",
        "chanattr/units/layout.py", "chanattr/model_output.py", "chanattr/split.py", "chanattr/hooks.py"]


def run_key() -> str:
    weights = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:12]
    settings = {"sites": SITES, "rankings": RANKINGS, "code": code_version(CODE), "weights": weights,
                "versions": library_versions(("torch", "timm")), "threads": torch.get_num_threads()}
    return settings_key(settings)


def scores_at(space: UnitSpace, order: torch.Tensor, target: int, k: int) -> tuple[float, float]:
    """(target logit with only the first k units of ``order`` kept, with them removed)."""
    u = space.num_units
    keep = torch.zeros(2, u)
    keep[0, order[:k]] = 1
    keep[1] = 1 - keep[0]
    out = space.target_scores(keep, torch.zeros(2, dtype=torch.long), torch.tensor([target]))
    return float(out[0]), float(out[1])


def run_image(model, x: torch.Tensor, index: int, key: str) -> dict:
    with torch.no_grad():
        logits = model(x)[0]
    target = int(logits.argmax())
    rec = {"key": key, "image": index, "target": target, "class": CLASSES[target], "sites": {}}
    for layer, unit, areas in SITES:
        space = UnitSpace(model, x, layer, unit=unit)
        u = space.num_units
        ends = space.target_scores(torch.stack([torch.ones(u), torch.zeros(u)]), torch.zeros(2, dtype=torch.long),
                                   torch.tensor([target]))
        full, none = float(ends[0]), float(ends[1])
        ours = unit_extremal_perturbation(model, x, target, layer, list(areas), unit=unit, space=space, progress=False)
        orders = {"activation": rank_by_activation(space)[0], "taylor": rank_by_taylor(space, target)[0],
                  "ablation": rank_by_ablation(space, target)[0]}
        site = {"units": u, "full": full, "none": none, "areas": {}}
        for j, a in enumerate(areas):
            k = max(1, round(a * u))
            row = {"k": k}
            row["ours"] = scores_at(space, torch.tensor(ours.kept_units(0, j)), target, k)
            for name, order in orders.items():
                row[name] = scores_at(space, order, target, k)
            draws = [scores_at(space, rank_random(space, seed=s)[0], target, k) for s in range(5)]
            row["random"] = (statistics.mean(d[0] for d in draws), statistics.mean(d[1] for d in draws))
            row["ours_units"] = ours.kept_units(0, j)
            site["areas"][str(a)] = row
        rec["sites"][f"{layer}/{unit}"] = site
    return rec


def table(rows: list[dict]) -> str:
    out = [f"{len(rows)} Fashion-MNIST test images, top-1 targets. Kept: the target logit with only the k units kept "
           f"(what our preserve masks optimise; higher is better); removed: with them removed (not optimised by ours; "
           f"lower is better); frac: (kept - none) / (full - none), the median over images.", ""]
    out.append("| layer / unit | k of U | full / none | " + " | ".join(f"{r} kept / removed (frac)" for r in RANKINGS)
               + " |")
    out.append("|---" * (3 + len(RANKINGS)) + "|")
    for layer, unit, areas in SITES:
        name = f"{layer}/{unit}"
        for a in areas:
            cells = [r["sites"][name]["areas"][str(a)] for r in rows]
            sites = [r["sites"][name] for r in rows]
            line = [name, f"{cells[0]['k']} of {sites[0]['units']}",
                    f"{statistics.mean(s['full'] for s in sites):.2f} / {statistics.mean(s['none'] for s in sites):.2f}"]
            for method in RANKINGS:
                kept = statistics.mean(c[method][0] for c in cells)
                removed = statistics.mean(c[method][1] for c in cells)
                frac = statistics.median((c[method][0] - s["none"]) / (s["full"] - s["none"])
                                         for c, s in zip(cells, sites) if abs(s["full"] - s["none"]) > 1e-6)
                line.append(f"{kept:.2f} / {removed:.2f} ({frac:.2f})")
            out.append("| " + " | ".join(line) + " |")
    heads = []
    for layer, unit, _ in SITES:
        if unit == "heads":
            counts = [0] * rows[0]["sites"][f"{layer}/{unit}"]["units"]
            for r in rows:
                counts[r["sites"][f"{layer}/{unit}"]["areas"]["0.25"]["ours_units"][0]] += 1
            heads.append(f"{layer}: the head kept alone, per image: " + ", ".join(
                f"head {h} {c}" for h, c in enumerate(counts)))
    return "\n".join(out + [""] + heads)


def figures(model, x: torch.Tensor, path: Path) -> None:
    """Inversions (plain pixels, 200 steps) of three test images from all hidden units of
    blocks.2, its salient 10 % (ours) and the rest, and from its salient head."""
    import matplotlib.pyplot as plt

    from chanattr.models import Preprocessing
    from chanattr.plotting import STYLE, _off
    from inversion import InversionSettings, invert

    from fmnist_vit import MEAN, STD

    pre = Preprocessing(28, (MEAN,), (STD,))
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        target = int(model(xi).argmax())
        hid = unit_extremal_perturbation(model, xi, target, "blocks.2", [0.1], unit="hidden", progress=False)
        head = unit_extremal_perturbation(model, xi, target, "blocks.2.attn", [0.25], unit="heads", progress=False)
        sel = torch.zeros(64)
        sel[hid.kept_units(0, 0)] = 1
        masks = torch.stack([torch.ones(64), sel, 1 - sel])
        settings = InversionSettings(param="pixel", iterations=200)
        inv = invert(model, xi.expand(3, -1, -1, -1), "blocks.2", masks, pre, settings=settings, unit="hidden",
                     progress=False)
        hmask = torch.zeros(4)
        hmask[head.kept_units(0, 0)] = 1
        inv_h = invert(model, xi, "blocks.2.attn", hmask[None], pre, settings=settings, unit="heads", progress=False)
        rows.append((xi, target, inv.images, inv_h.images[0], hid.kept_units(0, 0), head.kept_units(0, 0)[0]))
    titles = ["input", "all 64 hidden", "salient 6 hidden", "the other 58", "salient head"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), 5, figsize=(9, 2.0 * len(rows)), layout="constrained")
        for r, (xi, target, inv, inv_h, units, h) in enumerate(rows):
            panels = [pre.denormalize(xi)[0], inv[0], inv[1], inv[2], inv_h]
            for c, img in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(img[0].clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(titles[c] if r == 0 else "", fontsize=8)
                _off(ax)
            axes[r, 0].set_ylabel(CLASSES[target], fontsize=8)
            axes[r, 0].set_title(f"{titles[0]}: {CLASSES[target]}", fontsize=8)
            axes[r, 4].set_title(f"head {h}" if r else f"salient head ({h})", fontsize=8)
        fig.suptitle("Fashion-MNIST ViT, blocks.2: inversions of the salient hidden units and head")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)


def main(argv=None) -> int:
    from roar import DATA, load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--figures", action="store_true", help="write docs/vit_units.png and stop")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = fmnist_vit()
    x_all, _ = load(args.data, "test", max(args.images, 3))
    if args.figures:
        figures(model, normalise(x_all[:3]), HERE.parent / "docs" / "vit_units.png")
        return 0
    key = run_key()
    rows, stale = read_records(LOG, {key})
    if not args.table_only:
        from tqdm.auto import tqdm

        done = {r["image"] for r in rows}
        for i in tqdm(range(args.images), desc="test images", mininterval=10):
            if i in done:
                continue
            append_record(LOG, run_image(model, normalise(x_all[i : i + 1]), i, key))
        rows, stale = read_records(LOG, {key})
    rows = sorted(rows, key=lambda r: r["image"])
    if not rows:
        print("no records yet: run without --table-only")
        return 0
    print(table(rows) + (f"\n({stale} records of other settings or code in the log, not shown)" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
