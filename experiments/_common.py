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
