"""The pointing game, the paper, fast and feathered presets against Grad-CAM, on the same pairs.

The (image, COCO class) pairs of ``coco:DATA`` (object inside the centre crop, target = the
most probable ImageNet class of the COCO class's set; ``chanattr.items``) where the model
gives the target a probability of at least ``--min-probability`` (0.1: where it sees the
object). Extremal perturbation at the paper's COCO areas (0.018, 0.025, 0.05, 0.1), preserve;
its map is the smoothed sum of the binary top-a masks (``PixelResult.saliency``).

Every method is a ``chanattr run`` (rows only) into ``--out/METHOD``: Grad-CAM over every pair
first (its rows give the target probabilities that pick the pairs), then the fast, feathered and
paper presets over the picked pairs (``--methods feathered`` runs one of them and only reads
Grad-CAM's finished run: each method's run folder holds its own code version). The paper preset takes minutes a pair on a CPU; the runs resume
where any earlier one stopped (their item files are small and committed), and shard over
processes under torchrun. A run refuses to resume with other code (the manifest holds the code
version): run a long experiment from a git worktree at a fixed commit.

    torchrun --nproc_per_node 2 experiments/pointing_presets.py --threads 1
    python experiments/pointing_presets.py --table-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chanattr.cli import build_parser, model_from_args
from chanattr.coco import default_coco_root
from chanattr.distributed import barrier, process_device, processes_from_environment, start, stop
from chanattr.errors import ChanattrError
from chanattr.items import ItemSource, read_items
from chanattr.run_methods import method_function
from chanattr.runs import finished_items, read_results, run_items

from _common import pointing_cells

HERE = Path(__file__).resolve().parent
AREAS = ("0.018", "0.025", "0.05", "0.1")
METHODS = ("gradcam", "fast", "feathered", "paper")


def run_args(method: str, spec: str, out: Path, args) -> argparse.Namespace:
    """The ``chanattr run`` options of a method (what its manifest records)."""
    argv = ["run", "gradcam" if method == "gradcam" else "explain", "--images", spec, "--out", str(out / method),
            "--rows-only", "--tolerance", str(args.tolerance), "--device", args.device, "--no-progress"]
    if method == "gradcam":
        argv += ["--score-areas", "0.05"]
    else:
        argv += ["--preset", method, "--areas", *AREAS, "--batch-images", "1"]
        if args.iterations:
            argv += ["--iterations", str(args.iterations)]
    return build_parser().parse_args(argv)


def _pairs(n: int) -> str:
    return f"{n} pair" + ("" if n == 1 else "s")


def table(rows: dict[str, list[dict]], tolerance: float) -> str:
    by = {m: {r["item"]: r for r in rs if r.get("area") in (None, 0.05)} for m, rs in rows.items()}
    present = [m for m in METHODS if by.get(m)]
    common = sorted(set.intersection(*(set(by[m]) for m in present))) if present else []
    if not common:
        return "no pair has every method's result yet"
    lines = ["| method | boxes: accuracy % (95 % CI) | masks: accuracy % (95 % CI) | pairs | s / pair |",
             "|---|---|---|---|---|"]
    for m in present:
        cells, _, _ = pointing_cells([by[m][key] for key in common], tolerance)
        secs = sum(by[m][k]["seconds"] for k in common) / len(common)
        lines.append(f"| {m} | {cells[0]} | {cells[1]} | {len(common)} | {secs:.1f} |")
    # where the methods disagree, and what the extremal masks keep at each area (the same pairs)
    for a, b in [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]:
        only_a = sum(by[a][k]["hit_box"] and not by[b][k]["hit_box"] for k in common)
        only_b = sum(by[b][k]["hit_box"] and not by[a][k]["hit_box"] for k in common)
        lines.append(f"\n{a} hits the box and {b} misses on {_pairs(only_a)}; the reverse on {only_b}.")
    for m in [m for m in present if m != "gradcam"]:
        per_area = {}
        for r in rows[m]:
            if r["item"] in common:
                per_area.setdefault(r["area"], []).append(r["score"])
        lines.append(f"\n{m}: mean extremal score (target logit, the area's mask kept, hard edge) at "
                     + ", ".join(f"{a:g}: {sum(v) / len(v):.2f}" for a, v in sorted(per_area.items())) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_coco_root(), help="a folder laid out like coco128")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--min-probability", type=float, default=0.1)
    ap.add_argument("--tolerance", type=float, default=15.0, help="pixels, at the model's input size")
    ap.add_argument("--iterations", type=int, default=None, help="override the presets' iterations (tests)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N picked pairs (tests)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pointing_presets")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--table-methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="the methods the table compares (on the pairs all of them finished)")
    args = ap.parse_args(argv)
    spec = f"coco:{args.data}"
    if not args.table_only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        procs = processes_from_environment()
        args.device = process_device(args.device, procs)
        start(procs, args.device)
        try:
            grad = run_args("gradcam", spec, args.out, args)
            lm = model_from_args(grad)
            everything = read_items(spec, input_size=lm.preprocessing.input_size)
            if "gradcam" in args.methods:  # else its finished run only picks the pairs (it may be of older code)
                run_items("gradcam", method_function("gradcam"), grad, lm, everything, args.out / "gradcam", procs,
                          device=args.device, progress=procs.main, tolerance=args.tolerance)
            elif len(finished_items(args.out / "gradcam")) < len(everything.items):
                raise ChanattrError("Grad-CAM's run picks the pairs: finish it first (--methods gradcam)")
            seen = {r["item"] for r in read_results(args.out / "gradcam") if r["target_prob"] >= args.min_probability}
            picked = [it for it in everything.items if it.id in seen][: args.limit]
            picked = ItemSource(picked, "coco", spec, everything.coco)
            for method in [m for m in args.methods if m != "gradcam"]:
                run_items("explain", method_function("explain"), run_args(method, spec, args.out, args), lm, picked,
                          args.out / method, procs, device=args.device, batch_size=1, progress=procs.main,
                          tolerance=args.tolerance)
                barrier(procs)
        except ChanattrError as e:
            raise SystemExit(f"pointing_presets: {e}")
        finally:
            stop(procs)
        if not procs.main:
            return 0
    rows = {m: [r for _, rs in finished_items(args.out / m).values() for r in rs] for m in METHODS
            if (args.out / m / "items").is_dir() and (m in args.table_methods or m == "gradcam")}
    seen = {r["item"] for r in rows.get("gradcam", []) if r["target_prob"] >= args.min_probability}
    rows = {m: [r for r in rs if r["item"] in seen] for m, rs in rows.items()}
    print(table(rows, args.tolerance))
    print(f"\n{len(seen)} pairs with target probability >= {args.min_probability:g}; tolerance {args.tolerance:g} px "
          f"at 224 px; extremal at areas {', '.join(AREAS)}; finished: "
          + ", ".join(f"{m} {len(rs) // (len(AREAS) if m != 'gradcam' else 1)}" for m, rs in rows.items()) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
