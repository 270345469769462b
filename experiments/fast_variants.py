"""Variants of the fast preset, looking for a default that deserves the name (issue 12, deliverable 5).

The goal: on the held-out photos, a feathered extremal score at least TorchRay's, in at most a
tenth of TorchRay's time (and, in ``pointing_presets.py``, maps that point at the object at
least as often as Grad-CAM's). Each variant is the fast preset with some settings changed
(``VARIANTS``); every variant is reported, kept or not.

Protocol. Variants are chosen on the ``--set tuning`` photos only (the 8 of
``bench_extremal.TUNING``); the one(s) kept then run on the held-out photos
(``bench_extremal.HELD_OUT``), which no setting was chosen on. Same scores as
``bench_extremal.py`` (hard-edged extremal score at 0.05 / 0.1 / 0.2; feathered by 2, 4, 8 px;
the target probability); TorchRay's, the paper preset's and the fast preset's numbers in the
table are that benchmark's records (``--bench-code``: their code version), made under the same
conditions (one image at a time, one thread, two processes on the two cores). Their scoring code
(``chanattr/evaluation/extremal_score.py``, ``chanattr/perturbations.py``) is unchanged since, which
the script checks against ``SCORING_SHA``.

Records (one per image and variant) go to ``--log`` (JSON Lines, committed), keyed by the
variant's settings, the code version of the files the variants run (``CODE``) and the library
versions, so the run resumes after any stop and a new variant leaves the others' records valid.

    python experiments/fast_variants.py --threads 1 --set tuning             # screen
    python experiments/fast_variants.py --threads 1 --set held-out --variants NAME ...
    python experiments/fast_variants.py --table-only
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from chanattr import prepare_image
from chanattr.extremal import preset_schedule
from chanattr.pixel import extremal_perturbation

from _common import (add_device_args, append_record, code_version, library_versions, model_on_device,
                     read_records, settings_key)
from bench_extremal import (AREAS, FEATHERS, HELD_OUT, LIBRARIES, SCORE_HEAD, TUNING, image_source, masks_of, mean,
                            run_method, score_cells, scores, wins_over)
from bench_extremal import run_key as bench_key

HERE = Path(__file__).resolve().parent
SMALL = {"search_side": 5, "search_parts": 2, "min_iterations": 30, "stall": 25}
#: name -> (``Schedule`` changes, ``extremal_perturbation`` keywords)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "fast": ({}, {}),
    "small_search": (SMALL, {}),
    "feather4": ({}, {"feather": 4.0}),
    "feather4_small": (SMALL, {"feather": 4.0}),
    "soft_first_small": (dict(SMALL, harden=0.5, iterations=120, min_iterations=70), {}),
    "feather4_small80": (dict(SMALL, iterations=80), {"feather": 4.0}),
    "feather8_small80": (dict(SMALL, iterations=80), {"feather": 8.0}),
}
#: the files the variants and their scores run (not this script: a record's key holds its variant's settings,
#: so adding a variant leaves the others' records valid; the scores are bench_extremal.py's)
CODE = ["chanattr/extremal.py", "chanattr/pixel.py", "chanattr/smooth_mask.py", "chanattr/perturbations.py",
        "chanattr/evaluation/extremal_score.py", "experiments/bench_extremal.py"]
SCORING = ["chanattr/evaluation/extremal_score.py", "chanattr/perturbations.py"]
#: ``code_version(SCORING)`` when bench_extremal.jsonl's records were made (commit d5ce4b4)
SCORING_SHA = "c0ac8d2be659"
BENCH_CODE = "b108e03d2362"
SETS = {"tuning": TUNING, "held-out": HELD_OUT}


HERE_TORCHRAY = "torchray (timed here)"


def variant_key(name: str, args) -> str:
    changes, kwargs = VARIANTS.get(name, ({}, {}))
    return settings_key({"variant": name, "changes": changes, "kwargs": kwargs, "areas": AREAS, "feathers": FEATHERS,
                         "device": str(args.device), "threads": torch.get_num_threads(),
                         "code": args.code or code_version(CODE),
                         "versions": library_versions(LIBRARIES), "model": "efficientnet_lite0"})


def run_variant(name: str, model, x, target: int):
    if name == HERE_TORCHRAY:  # TorchRay again, timed beside the variants (the benchmark's run shared its cores)
        return masks_of("torchray", model, x, target)
    changes, kwargs = VARIANTS[name]
    r = extremal_perturbation(model, x, target, AREAS, preset="fast", progress=False,
                              schedule=replace(preset_schedule("fast"), **changes), **kwargs)
    return r.masks, int(r.iterations)


def table(rows: list[dict], bench: list[dict], set_name: str, names: list[str]) -> str:
    images = SETS[set_name]
    by = {(r["image"], r["method"]): r for r in rows + bench if r["kind"] == "method"}
    methods = [m for m in ["torchray", HERE_TORCHRAY, "paper", "fast (bench)"] + names
               if any((i, m) in by for i in images)]
    lines = []
    head = ["method", "images"] + SCORE_HEAD + ["x TorchRay's time", "wins vs TorchRay (feathered 4 px)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        common = [i for i in images if (i, m) in by and (i, "torchray") in by]
        if not common:
            continue
        rs = [by[(i, m)] for i in common]
        tr = [by[(i, "torchray")] for i in common]
        feather = VARIANTS[m][1].get("feather", 0.0) if m in VARIANTS else 0.0
        hard = m == "fast (bench)" or (m in VARIANTS and not feather and "harden" not in VARIANTS[m][0])
        cells = [m + (" *" if hard else f" (optimises feathered {feather:g} px)" if feather else ""), str(len(common))]
        cells += score_cells(rs)
        cells.append(f"{mean(r['seconds'] for r in rs) / mean(r['seconds'] for r in tr):.2f}")
        if m not in ("torchray", HERE_TORCHRAY):
            cells.append(f"{wins_over(rs, tr)} of {len(common) * len(AREAS)}")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    here = [i for i in images if (i, HERE_TORCHRAY) in by]
    timed = [m for m in names if here and all((i, m) in by for i in here)]
    if timed:
        theirs = sum(by[(i, HERE_TORCHRAY)]["seconds"] for i in here)
        lines.append(f"\nTimed under the same load as the variants, on {', '.join(here)}: TorchRay {theirs:.0f} s; "
                     + "; ".join(f"{m} {sum(by[(i, m)]['seconds'] for i in here):.0f} s "
                                 f"({sum(by[(i, m)]['seconds'] for i in here) / theirs:.3f} of TorchRay's)"
                                 for m in timed) + ".")
    lines.append("")
    lines.append(f"{set_name} photos. Target logit, mean over the images (feathered columns: over the areas too); "
                 "each row on the images it has finished, TorchRay's on the same. * optimises the hard-edged score "
                 "(the first three columns) directly; the feathered variants optimise the feathered score named.")
    return "\n".join(lines)


def bench_records(args) -> list[dict]:
    """bench_extremal.py's records (TorchRay, paper, fast), the fast preset's renamed ``fast (bench)``."""
    ns = argparse.Namespace(device=args.device, code=args.bench_code)
    key, _ = bench_key(ns)
    rows, _ = read_records(args.bench_log, {key})
    out = []
    for r in rows:
        if r["kind"] == "method" and r["method"] in ("torchray", "paper", "fast"):
            out.append(dict(r, method="fast (bench)") if r["method"] == "fast" else r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="a folder laid out like coco128")
    add_device_args(ap)
    ap.add_argument("--log", type=Path, default=HERE / "results" / "fast_variants.jsonl")
    ap.add_argument("--bench-log", type=Path, default=HERE / "results" / "bench_extremal.jsonl")
    ap.add_argument("--bench-code", default=BENCH_CODE, help="the code version of bench_extremal's records to compare")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS) + [HERE_TORCHRAY],
                    help=f"which to run ('{HERE_TORCHRAY}': TorchRay again, to time it beside the variants)")
    ap.add_argument("--set", dest="set_name", default="tuning", choices=list(SETS))
    ap.add_argument("--images", nargs="+", default=None, help="only these photos of the set")
    ap.add_argument("--shard", default="0/1", help="I/N: this process takes images I, I+N, ...")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--code", metavar="HASH", help="with --table-only: the records of an earlier code version")
    ap.add_argument("--print-scoring-sha", action="store_true")
    args = ap.parse_args(argv)
    if args.code and not args.table_only:
        raise SystemExit("--code goes with --table-only: new records always carry the current code version")
    if args.print_scoring_sha:
        print(code_version(SCORING))
        return 0
    if code_version(SCORING) != SCORING_SHA:
        raise SystemExit("fast_variants: the scoring code changed since bench_extremal's records were made; "
                         "their scores are not comparable: re-run bench_extremal.py")
    from chanattr.coco import default_coco_root

    args.data = args.data or default_coco_root()
    lm, model = model_on_device(args)
    keys = {variant_key(n, args): n for n in [*VARIANTS, HERE_TORCHRAY]}
    rows, _ = read_records(args.log, set(keys))
    if not args.table_only:
        done = {(r["image"], r["method"]) for r in rows}
        shard, shards = (int(v) for v in args.shard.split("/"))
        device = torch.device(args.device)
        names = [i for i in SETS[args.set_name] if args.images is None or i in args.images]
        for name in names[shard::shards]:
            x = prepare_image(image_source(name, args.data), lm.preprocessing).input[None].to(device)
            with torch.no_grad():
                target = int(model(x)[0].argmax())
            for v in args.variants:
                if (name, v) in done:
                    continue
                (masks, its), seconds, mb = run_method(lambda: run_variant(v, model, x, target), device)
                rec = {"key": variant_key(v, args), "kind": "method", "image": name, "set": args.set_name,
                       "method": v, "target": target, "seconds": seconds, "peak_mb": mb, "iterations": its,
                       "scores": scores(model, x, masks, target)}
                append_record(args.log, rec)
                print(f"fast_variants: {name} {v}: {seconds:.1f} s, {its} it, logit "
                      f"{['%.2f' % s for s in rec['scores']['logit']['0.0']]}, feathered 4 px "
                      f"{['%.2f' % s for s in rec['scores']['logit']['4.0']]}", file=sys.stderr, flush=True)
        rows, _ = read_records(args.log, set(keys))
    for r in rows:
        r["method"] = keys[r["key"]]
    bench = bench_records(args)
    for set_name in SETS:
        print(table(rows, bench, set_name, list(VARIANTS)))
        print()
    print(f"Code {args.code or code_version(CODE)}; bench_extremal records of code {args.bench_code}; device {args.device}, "
          f"{torch.get_num_threads()} thread(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
