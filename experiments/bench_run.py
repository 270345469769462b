"""Throughput of ``chanattr run`` with 1 and 2 processes (1 thread each) on the bundled model.

For each method, over the first ``--images`` COCO photos (a list file):
- *direct*: the method's batch function called in this process, no run machinery (images
  loaded, targets, the method; nothing written) -- the work itself;
- *1 process*: ``python -m chanattr run METHOD`` (a fresh process: Python, torch and the model
  load, the manifest, the item files, the merge);
- *no-op*: the same command again, every item finished -- the fixed cost of a run;
- *2 processes*: ``torchrun --nproc_per_node 2 -m chanattr run METHOD``.
Speed-up = 1-process wall time / 2-process wall time. Overhead per item = (1-process wall -
no-op wall - direct) / items. Peak memory per process: from ``DIR/processes/rank-R.json``.

    python experiments/bench_run.py                       # channels at blocks.6 and gradcam
    python experiments/bench_run.py --table-only

Each measurement is appended to ``results/bench_run.jsonl`` with the code version; the table
is printed from the records of the current code. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, append_record, library_versions, read_records, settings_key
from chanattr.coco import default_coco_root
from chanattr.runs import code_version

HERE = Path(__file__).resolve().parent
LOG = HERE / "results" / "bench_run.jsonl"
METHODS = {
    "channels": ["--layer", "blocks.6", "--areas", "0.05", "--iterations", "100"],
    "gradcam": ["--score-areas", "0.1"],
}


def _wall(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _direct(method: str, options: list[str], files: list[str], batch: int) -> float:
    """The method's own work in this process (one thread), no run machinery."""
    from chanattr.cli import build_parser, model_from_args
    from chanattr.images import prepare_images
    from chanattr.run_methods import method_function

    args = build_parser().parse_args(["run", method, "--images", "x", "--out", "x", "--device", "cpu", *options])
    from chanattr import retain_freed_memory

    retain_freed_memory()  # as the command line does (chanattr.runtime): the same allocator for both
    torch.set_num_threads(1)
    lm = model_from_args(args)
    compute = method_function(method)
    start = time.perf_counter()
    for s in range(0, len(files), batch):
        images = prepare_images(files[s : s + batch], lm.preprocessing)
        x = torch.stack([im.input for im in images])
        with torch.no_grad():
            targets = lm.model(x).argmax(1)
        compute(lm, x, targets, args)
    return time.perf_counter() - start


def measure(method: str, files: list[str], batch: int, work: Path) -> dict:
    listing = work / "images.txt"
    listing.write_text("\n".join(files) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["run", method, "--images", str(listing), "--threads", "1", "--device", "cpu", "--no-progress",
              "--batch-images", str(batch), *METHODS[method]]
    one = _wall([sys.executable, "-m", "chanattr", *common, "--out", str(work / "one")], env)
    one_stats = json.loads((work / "one" / "processes" / "rank-0.json").read_text())
    noop = _wall([sys.executable, "-m", "chanattr", *common, "--out", str(work / "one")], env)
    two = _wall([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                 "chanattr", *common, "--out", str(work / "two")], env)
    stats = [json.loads(p.read_text()) for p in sorted((work / "two" / "processes").glob("rank-*.json"))]
    direct = _direct(method, METHODS[method], files, batch)
    return {"direct_s": direct, "one_process_s": one, "noop_s": noop, "two_processes_s": two,
            "speedup": one / two, "overhead_per_item_s": (one - noop - direct) / len(files),
            "peak_mib_two": [s["peak_memory_mib"] for s in stats], "items_per_rank": [s["items_computed"] for s in stats],
            "peak_mib_one": one_stats["peak_memory_mib"], "same_results": _same(work / "one", work / "two")}


def _same(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    def rows(folder: Path) -> list[dict]:  # without the timing column
        return [{k: v for k, v in r.items() if k != "seconds"} for r in pq.read_table(folder / "results.parquet").to_pylist()]

    return rows(a) == rows(b)


def run_key(method: str, images: int, batch: int, code: str | None = None) -> str:
    from chanattr.runs import code_version

    return settings_key({"method": method, "options": METHODS[method], "images": images, "batch": batch,
                         "code": code or code_version(), "versions": library_versions(), "cpus": os.cpu_count()})


def table(records: list[dict]) -> str:
    lines = ["| method | items | direct (s) | 1 process (s) | 2 processes (s) | speed-up | fixed cost of a run (s) | "
             "overhead per item (s) | peak memory, 1 process (MiB) | peak memory per process, 2 processes (MiB) | "
             "same results |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['images']} | {r['direct_s']:.1f} | {r['one_process_s']:.1f} | "
                     f"{r['two_processes_s']:.1f} | {r['speedup']:.2f} | {r['noop_s']:.1f} | "
                     f"{r['overhead_per_item_s']:.2f} | {r['peak_mib_one']:.0f} | {' / '.join(f'{m:.0f}' for m in r['peak_mib_two'])} | "
                     f"{'yes' if r['same_results'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--images", type=int, default=16, help="first N COCO photos (default 16)")
    ap.add_argument("--batch-images", type=int, default=4)
    ap.add_argument("--data", type=Path, default=default_coco_root())
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--code", help="with --table-only: the records of this code version (chanattr.runs.code_version)")
    args = ap.parse_args(argv)
    keys = {m: run_key(m, args.images, args.batch_images, args.code) for m in args.methods}
    records, stale = read_records(LOG, set(keys.values()))
    have = {r["method"] for r in records}
    if not args.table_only:
        files = sorted(str(p) for p in (args.data / "images").glob("*.jpg"))[: args.images]
        if len(files) < args.images:
            raise SystemExit(f"found {len(files)} photos under {args.data}/images, need {args.images}")
        for method in args.methods:
            if method in have:
                continue
            with tempfile.TemporaryDirectory() as work:
                rec = {"key": keys[method], "method": method, "images": args.images, "batch": args.batch_images,
                       "code": code_version(),
                       **measure(method, files, args.batch_images, Path(work))}
            append_record(LOG, rec)
            records.append(rec)
            print(json.dumps(rec), file=sys.stderr)
    print(table([r for m in args.methods for r in records if r["method"] == m]))
    print(f"code version {args.code or code_version()}; {os.cpu_count()} CPUs", file=sys.stderr)
    if stale:
        print(f"({stale} records of other code or settings in {LOG.name} not shown)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
