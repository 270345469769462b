"""Pixel-space extremal perturbations: chanattr against TorchRay on the same inputs.

For each image (the four bundled photos and the first COCO photos of ``--data``), at areas
0.05, 0.1 and 0.2 (preserve, top-1 target), run our ``extremal_perturbation`` (its defaults)
and TorchRay's ``extremal_perturbation`` (800 iterations, its defaults), score every mask with
the extremal score (top round(a H W) pixels kept, the rest blurred with sigma 20 px; target
logit) and time both. Prints a markdown table. Results are cached per image in ``--cache`` so
an interrupted run resumes; ``--fresh`` ignores the cache.

    pip install -e ".[bench]"
    python experiments/bench_extremal.py --threads 1

Needs TorchRay (the ``bench`` extra). Peak memory: the resident set size above its level at
the start of each method's call, sampled every 20 ms (CPU), or ``torch.cuda.max_memory_allocated``
(GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from chanattr import SAMPLES, prepare_image
from chanattr.coco import default_coco_root
from chanattr.evaluation import extremal_score
from chanattr.pixel import extremal_perturbation

from _common import add_device_args, model_on_device, photo_sources

AREAS = (0.05, 0.1, 0.2)
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = default_coco_root()


def rss_mb() -> float:
    """The process's current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0


def run_method(fn, device: torch.device):
    """Run ``fn`` and return (result, seconds, peak MB above the resident size at the start,
    sampled every 20 ms on the CPU; ``torch.cuda.max_memory_allocated`` on a GPU)."""
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


def bench_one(lm, source: str, device: torch.device) -> dict:
    from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep

    model = lm.model.to(device)
    x = prepare_image(source, lm.preprocessing).input[None].to(device)
    with torch.no_grad():
        logits = model(x)[0]
    target = int(logits.argmax())
    ours, ours_s, ours_mb = run_method(lambda: extremal_perturbation(model, x, target, AREAS, progress=False), device)
    flags = [p.requires_grad for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (tr_masks, _), tr_s, tr_mb = run_method(lambda: torchray_ep(model, x, target, areas=list(AREAS)), device)
    for p, f in zip(model.parameters(), flags):  # TorchRay leaves requires_grad off; restore
        p.requires_grad_(f)
    ours_score = extremal_score(model, x, ours.masks, target, AREAS)[0]
    tr_score = extremal_score(model, x, tr_masks[:, 0][None], target, AREAS)[0]
    return {
        "image": Path(source).stem if not source in SAMPLES else source,
        "target": target,
        "class": lm.class_names[target],
        "logit_range": float(logits.max() - logits.min()),
        "ours": [float(v) for v in ours_score],
        "torchray": [float(v) for v in tr_score],
        "ours_seconds": ours_s,
        "torchray_seconds": tr_s,
        "ours_peak_mb": ours_mb,
        "torchray_peak_mb": tr_mb,
        "ours_iterations": int(ours.iterations),
    }


def table(rows: list[dict], device: str, threads: int) -> str:
    head = ["image (target)"] + [f"ours / TorchRay @ {a}" for a in AREAS] + [
        "ours s", "TorchRay s", "time ratio", "peak MB ours / TorchRay"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    wins = ties = losses = 0
    for r in rows:
        cells = [f"{r['image']} ({r['class'].split(',')[0]})"]
        tol = 0.01 * r["logit_range"]
        for o, t in zip(r["ours"], r["torchray"]):
            mark = "" if o >= t - tol else " ✗"
            wins += o > t + tol
            ties += abs(o - t) <= tol
            losses += o < t - tol
            cells.append(f"{o:.2f} / {t:.2f}{mark}")
        cells += [f"{r['ours_seconds']:.1f}", f"{r['torchray_seconds']:.1f}",
                  f"{r['ours_seconds'] / r['torchray_seconds']:.3f}",
                  f"{r['ours_peak_mb']:.0f} / {r['torchray_peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ours_t = sum(r["ours_seconds"] for r in rows)
    tr_t = sum(r["torchray_seconds"] for r in rows)
    lines.append(
        f"| **all {len(rows)} images** | wins {wins}, ties {ties}, losses {losses} (of {3 * len(rows)}) | | | "
        f"{ours_t:.0f} | {tr_t:.0f} | {ours_t / tr_t:.3f} | |")
    lines.append("")
    lines.append(f"Extremal score = target logit (higher is better); tie = within 1 % of the image's logit range; "
                 f"✗ = ours below TorchRay. Device {device}, {threads} torch thread(s).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder laid out like coco128")
    ap.add_argument("--coco", type=int, default=4, help="how many COCO photos (the first by name)")
    ap.add_argument("--samples", nargs="*", default=list(SAMPLES), help="bundled photos")
    add_device_args(ap)
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "bench_extremal")
    ap.add_argument("--fresh", action="store_true", help="ignore cached per-image results")
    args = ap.parse_args(argv)
    lm, _ = model_on_device(args)
    device = torch.device(args.device)
    sources = photo_sources(args.data, args.coco, args.samples)
    tag = f"{device.type}-t{torch.get_num_threads()}"
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for source in sources:
        path = args.cache / f"{Path(source).stem}-{tag}.json"
        if path.exists() and not args.fresh:
            rows.append(json.loads(path.read_text()))
            continue
        print(f"bench_extremal: {source} ...", file=sys.stderr, flush=True)
        row = bench_one(lm, source, device)
        path.write_text(json.dumps(row, indent=1))
        print(f"  ours {row['ours_seconds']:.1f} s {['%.2f' % v for v in row['ours']]}, "
              f"TorchRay {row['torchray_seconds']:.1f} s {['%.2f' % v for v in row['torchray']]}",
              file=sys.stderr, flush=True)
        rows.append(row)
    print(table(rows, str(device), torch.get_num_threads()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
