"""Dataset runs (``chanattr run``): one method over many items, sharded over the processes
torchrun starts, resumable at any moment.

Layout of a run folder ``DIR``:

- ``manifest.json``: the method, every setting that changes a result, the model (name,
  weights, fingerprint), the code version (a hash of chanattr's sources), the library
  versions, the item ids and their digest. A rerun into the same folder must match it.
- ``items/ID.npz``: one file per item, written atomically (a temporary name, then a rename):
  the method's arrays, plus ``_rows`` (JSON: the item's rows) and ``_item``.
- ``results.parquet``: every item's rows, merged when all processes finish (``merge_run``).
- ``processes/rank-R.json``: each process's items, seconds and peak memory in the last invocation.

Work is split in *batches* of consecutive items (``--batch-images``); a batch always holds the
same items, whatever the number of processes, so one process and several give the same
results. Finished batches (every item's file present) are skipped on a rerun; the rest are
shared out round-robin among the processes (rank r takes every world-size-th).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .distributed import Processes, barrier
from .errors import ChanattrError
from .items import Item, ItemSource

#: options that do not change a result (where, how fast, how shown)
NOT_SETTINGS = {"images", "out", "overwrite", "no_progress", "threads", "device", "func", "command", "method",
                "run_func"}
#: manifest entries a rerun must match
COMPARED = ("method", "settings", "model", "code", "code_files", "items_sha256")
ALL_CODE = "all of chanattr and inversion"


def code_version(files: Sequence[str] | None = None) -> str:
    """SHA-256 (12 hex digits) of chanattr's and inversion's Python sources, or of ``files``
    only (paths relative to the folder that holds the ``chanattr`` package, e.g.
    ``"chanattr/pixel.py"``): an experiment can key a method on the code that method runs."""
    import chanattr
    import inversion

    base = Path(chanattr.__file__).parent.parent
    if files is None:
        paths = [p for package in (chanattr, inversion) for p in sorted(Path(package.__file__).parent.rglob("*.py"))]
    else:
        paths = [base / f for f in files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ChanattrError(f"code files not found: {', '.join(missing)} (give paths like chanattr/pixel.py)")
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(base) if path.is_relative_to(base) else path).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def library_versions(names: Sequence[str] = ("torch", "torchvision", "timm", "captum", "numpy")) -> dict:
    """The installed version of each distribution in ``names`` (None where it is not installed)."""
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def run_settings(args: argparse.Namespace) -> dict:
    """Every option of the command that can change a result."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS and not callable(v)}


def build_manifest(method: str, args: argparse.Namespace, lm, source: ItemSource, procs: Processes,
                   device: str, code_files: Sequence[str] | None = None) -> dict:
    return {
        "method": method,
        "settings": run_settings(args),
        "model": {"name": lm.name, "weights": lm.extra.get("weights"), "random_weights": lm.extra.get("random_weights"),
                  "seed": lm.extra.get("seed"), "fingerprint": lm.fingerprint()},
        "code": code_version(code_files),
        "code_files": list(code_files) if code_files is not None else ALL_CODE,
        "versions": library_versions(),
        "items_sha256": source.digest(),
        "source": {"kind": source.kind, "spec": source.spec},
        "items": [it.id for it in source.items],
        "run": {"processes": procs.world_size, "device": device, "threads": torch.get_num_threads(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json(value):
    """JSON-safe copies of settings (tuples, paths, numpy scalars)."""
    return json.loads(json.dumps(value, default=str))


def check_run_folder(out: Path, manifest: dict, overwrite: bool) -> bool:
    """Refuse a folder whose run had other settings (unless ``overwrite``); True when the
    folder holds this run already (a resume). Reads only: every process calls it."""
    path = out / "manifest.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = {}
        saved.setdefault("code_files", ALL_CODE)  # manifests from before code_files
        differ = [k for k in COMPARED if _json(saved.get(k)) != _json(manifest.get(k))]
        if not differ:
            return True
        if overwrite:
            return False
        what = []
        for k in differ:
            if k == "settings":
                a, b = saved.get(k) or {}, _json(manifest[k])
                keys = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
                what.append("settings (" + ", ".join(f"{n}: {a.get(n)!r} -> {b.get(n)!r}" for n in keys) + ")")
            else:
                what.append({"items_sha256": "its items", "code": "chanattr's code version", "model": "the model",
                             "code_files": "the files its code version covers",
                             "method": f"the method ({saved.get('method')})"}.get(k, k))
        raise ChanattrError(f"{out} holds a run that differs in {'; '.join(what)}: give another --out, or "
                            f"--overwrite to start it again")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ChanattrError(f"{out} is not empty and holds no run (no manifest.json): give another --out, or "
                            f"--overwrite to write the run beside what is there")
    return False


def clear_run(out: Path) -> None:
    """Remove a run's own files (items, merged results, manifest): what --overwrite replaces."""
    items = out / "items"
    if items.is_dir():
        for p in items.iterdir():
            if p.is_file():
                p.unlink()
    for name in ("results.parquet", "manifest.json", "channels.npz"):
        if (out / name).exists():
            (out / name).unlink()
    for p in [*out.glob("class_*"), *out.glob("processes/rank-*.json")]:
        if p.is_file():
            p.unlink()


def item_path(out: Path, item: Item) -> Path:
    return out / "items" / f"{item.id}.npz"


def write_item(out: Path, item: Item, arrays: dict, rows: list[dict]) -> None:
    """The item's file, written under a temporary name and renamed: it exists only complete."""
    final = item_path(out, item)
    tmp = final.with_name(f".{item.id}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays, _rows=np.array(json.dumps(rows)), _item=np.array(json.dumps(item.__dict__)))
    os.replace(tmp, final)


def read_item(out: Path, item: Item) -> tuple[dict, list[dict]]:
    """(arrays, rows) of a finished item."""
    with np.load(item_path(out, item)) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("_")}
        rows = json.loads(str(data["_rows"]))
    return arrays, rows


def finished_items(out: str | Path) -> dict[str, tuple[Path, list[dict]]]:
    """item id -> (its file, its rows) for every finished item of a run folder, merged or not
    (a run still under way, or stopped): what a table of partial results reads."""
    found = {}
    for p in sorted((Path(out) / "items").glob("[!.]*.npz")):  # not a half-written .tmp file
        with np.load(p) as data:
            found[p.stem] = (p, json.loads(str(data["_rows"])))
    return found


def batches_of(items: Sequence[Item], size: int) -> list[list[Item]]:
    return [list(items[s : s + size]) for s in range(0, len(items), max(1, size))]


def _done(out: Path, batch: list[Item]) -> bool:
    return all(item_path(out, it).is_file() for it in batch)


@dataclass
class RunSummary:
    out: Path
    items: int
    skipped: int  # items already finished when this run started
    computed: int  # items this process computed
    seconds: float


BatchFunction = Callable[[object, torch.Tensor, torch.Tensor, argparse.Namespace], list]


def run_items(
    method: str,
    compute: BatchFunction,
    args: argparse.Namespace,
    lm,
    source: ItemSource,
    out: str | Path,
    procs: Processes,
    *,
    device: str,
    batch_size: int = 4,
    overwrite: bool = False,
    progress: bool = True,
    tolerance: float = 15.0,
    code_files: Sequence[str] | None = None,
) -> RunSummary:
    """Run ``compute`` over the items not yet finished in ``out``, this process's share of the
    batches; every process calls it. Returns when every process is done (the results merged).
    ``code_files``: the sources the run's code version covers (default all of chanattr; an
    experiment can narrow it to what its method runs, so other edits do not refuse a resume)."""
    out = Path(out)
    start = time.perf_counter()
    manifest = build_manifest(method, args, lm, source, procs, device, code_files)
    barrier(procs)  # every process sees the folder as it was before this run
    resume = check_run_folder(out, manifest, overwrite)  # every process refuses alike
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            clear_run(out)
            (out / "items").mkdir(exist_ok=True)
            _write_atomic(out / "manifest.json", json.dumps(_json(manifest), indent=2) + "\n")
        for stale in [*(out / "items").glob(".*.tmp.npz"),  # a killed process's half-written file
                      *out.glob("processes/rank-*.json")]:  # the last invocation's statistics
            stale.unlink(missing_ok=True)
    barrier(procs)
    batches = batches_of(source.items, batch_size)
    todo = [b for b in batches if not _done(out, b)]
    skipped = len(source.items) - sum(len(b) for b in todo)
    barrier(procs)  # every process has listed what is left before any writes
    mine = todo[procs.rank :: procs.world_size]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(source.items), initial=skipped, desc=f"chanattr run {method}", unit="item",
               disable=not (progress and procs.main), dynamic_ncols=True)
    computed = 0
    for batch in mine:
        outputs = _compute_batch(compute, args, lm, source, batch, device, tolerance)
        for item, (arrays, rows) in zip(batch, outputs):
            write_item(out, item, {} if getattr(args, "rows_only", False) else arrays, rows)
        computed += len(batch)
        if bar.total:
            bar.n = len(source.items) - sum(len(b) for b in todo if not _done(out, b))
            bar.refresh()
    _write_process_stats(out, procs, device, computed, time.perf_counter() - start)
    barrier(procs)
    bar.n = len(source.items)
    bar.close()
    if procs.main:
        merge_run(out)
    barrier(procs)
    return RunSummary(out, len(source.items), skipped, computed, time.perf_counter() - start)


def peak_memory_mib(device: str = "cpu") -> float:
    """This process's peak resident memory (MiB; Linux and macOS), or the peak CUDA memory
    allocated on ``device`` when it is a GPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _write_process_stats(out: Path, procs: Processes, device: str, computed: int, seconds: float) -> None:
    """``DIR/processes/rank-R.json``: what this process did in its last invocation."""
    folder = out / "processes"
    folder.mkdir(exist_ok=True)
    stats = {"rank": procs.rank, "world_size": procs.world_size, "device": device,
             "threads": torch.get_num_threads(), "items_computed": computed, "seconds": seconds,
             "peak_memory_mib": peak_memory_mib("cpu"),
             "peak_cuda_memory_mib": peak_memory_mib(device) if device.startswith("cuda") else None}
    _write_atomic(folder / f"rank-{procs.rank}.json", json.dumps(stats, indent=2) + "\n")


def _compute_batch(compute, args, lm, source: ItemSource, batch: list[Item], device: str,
                   tolerance: float) -> list[tuple[dict, list[dict]]]:
    """Load the batch's images, resolve the targets, run the method, add the item columns
    (and, for COCO pairs with a map, the pointing game's hit)."""
    from .images import prepare_images

    images = prepare_images([it.source for it in batch], lm.preprocessing)
    x = torch.stack([im.input for im in images]).to(device)
    with torch.no_grad():
        logits = lm.model(x).float()
    targets = item_targets(logits, batch, args)
    start = time.perf_counter()
    outputs = compute(lm, x, targets, args)
    seconds = (time.perf_counter() - start) / len(batch)
    probs = logits.softmax(1).cpu()
    results = []
    for i, (item, o) in enumerate(zip(batch, outputs)):
        t = int(targets[i])
        base = {"item": item.id, "image": item.image, "source": item.source, "target": t,
                "target_name": lm.class_name(t), "class": item.coco_class, "full_logit": float(logits[i, t]),
                "target_prob": float(probs[i, t]), "seconds": seconds}
        if item.coco_class is not None and "saliency" in o.arrays:
            base.update(_pointing(source, item, torch.from_numpy(o.arrays["saliency"].astype(np.float32)),
                                  lm.preprocessing.input_size, tolerance))
        rows = [{**base, **r} for r in (o.rows or [{}])]
        results.append((o.arrays, rows))
    return results


def item_targets(logits: torch.Tensor, batch: list[Item], args) -> torch.Tensor:
    """The items' targets: a COCO pair's most probable ImageNet class of its COCO class, else
    ``--target`` (``auto``: the top-1 class; or one index). ``logits``: N x classes."""
    from .coco import imagenet_target

    if any(it.coco_class is not None for it in batch):
        if getattr(args, "target", "auto") != "auto":
            raise ChanattrError("COCO items bring their targets (the most probable ImageNet class of the COCO class): "
                                "drop --target")
        return torch.tensor([imagenet_target(logits[i].cpu(), it.coco_class) for i, it in enumerate(batch)],
                            device=logits.device)
    from .targets import class_index

    index = class_index(getattr(args, "target", "auto"))
    if index is None:
        return logits.argmax(1)
    if not 0 <= index < logits.shape[1]:
        raise ChanattrError(f"--target {index} is outside the model's {logits.shape[1]} classes")
    return torch.full((len(batch),), index, dtype=torch.long, device=logits.device)


def _pointing(source: ItemSource, item: Item, saliency: torch.Tensor, size: int, tolerance: float) -> dict:
    from .coco import box_mask, segment_mask
    from .evaluation import max_point, pointing_hit

    im = source.coco[item.image]
    box = box_mask(im, item.coco_class, size)
    seg = segment_mask(im, item.coco_class, source.coco.mask_classes, size)
    row, col = max_point(saliency)
    return {"point_row": row, "point_col": col, "hit_box": pointing_hit(saliency, box, tolerance),
            "hit_mask": None if seg is None or not seg.any() else pointing_hit(saliency, seg, tolerance)}


def merge_run(out: str | Path) -> Path:
    """Merge every item's rows into ``results.parquet`` (written atomically); refuse while
    items are unfinished."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    path = out / "manifest.json"
    if not path.is_file():
        raise ChanattrError(f"{out} holds no run (no manifest.json): give a folder written by chanattr run")
    manifest = json.loads(path.read_text())
    items = [Item(i, "", "") for i in manifest["items"]]
    missing = [it.id for it in items if not item_path(out, it).is_file()]
    if missing:
        raise ChanattrError(f"{len(missing)} of {len(items)} items of {out} are unfinished (e.g. {missing[0]}): run "
                            f"the same command again to finish them")
    rows = []
    for it in items:
        rows += read_item(out, it)[1]
    table = pa.Table.from_pylist(rows)
    tmp = out / f".results.{os.getpid()}.tmp.parquet"
    pq.write_table(table, tmp)
    os.replace(tmp, out / "results.parquet")
    return out / "results.parquet"


def read_results(out: str | Path):
    """``results.parquet`` of a run as a list of row dicts."""
    import pyarrow.parquet as pq

    path = Path(out) / "results.parquet"
    if not path.is_file():
        raise ChanattrError(f"{path} not found: run `chanattr merge {out}` once every item is finished")
    return pq.read_table(path).to_pylist()
