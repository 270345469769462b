"""The items a dataset run works through (``chanattr run``): images from a folder, from a text
file of paths, or (image, class) pairs from a COCO-style folder (``coco:DIR``).

Each item has an ``id`` that names its result file (unique within the run, safe as a file
name), the image ``source`` and, for COCO pairs, the COCO class whose ImageNet classes give
the target (the most probable of them, as the pointing game does) and whose boxes and masks
give the ground truth."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ChanattrError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    id: str
    source: str
    image: str  # the image's name (file stem, or the bundled sample's name)
    coco_class: str | None = None


@dataclass
class ItemSource:
    """The items of a run, in order, and where they came from (``kind``: folder, list or coco)."""

    items: list[Item]
    kind: str
    spec: str
    coco: object | None = None  # chanattr.coco.CocoDataset for coco: sources

    def digest(self) -> str:
        """SHA-256 (16 hex digits) of the item list: a resumed run must have the same items."""
        text = json.dumps([asdict(it) for it in self.items], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "item"


def _unique_ids(names: list[str]) -> list[str]:
    """File-safe ids, numbered where two names would clash."""
    safe = [_safe(n) for n in names]
    seen: dict[str, int] = {}
    for s in safe:
        seen[s] = seen.get(s, 0) + 1
    out, used = [], set()
    for i, s in enumerate(safe):
        ident = s if seen[s] == 1 else f"{s}-{i:06d}"
        while ident in used:
            ident += "_"
        used.add(ident)
        out.append(ident)
    return out


def read_items(spec: str, *, input_size: int = 224, coco_class: str | None = None) -> ItemSource:
    """Items from ``spec``: a folder of images (sorted by file name), a text file with one
    image path (or bundled sample name) a line (relative paths from the file's folder; ``#``
    comments), or ``coco:DIR`` (every (image, class) pair whose class has ImageNet classes and
    whose object lies at least partly inside the model's centre crop of ``input_size`` px;
    ``coco_class``: only that class's pairs)."""
    from .images import SAMPLES

    if spec.startswith("coco:"):
        return _coco_items(spec, input_size, coco_class)
    if coco_class is not None:
        raise ChanattrError("a COCO class name goes with --images coco:DIR; for other sources give --class an index")
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ChanattrError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}): give a folder of images, "
                                f"a text file of paths or coco:DIR")
        sources, names, kind = [str(p) for p in files], [p.stem for p in files], "folder"
    elif path.is_file():
        sources, names = [], []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line in SAMPLES:
                sources.append(line)
                names.append(line)
                continue
            p = Path(line) if Path(line).is_absolute() else path.parent / line
            if not p.is_file():
                raise ChanattrError(f"{path}: {line!r} is not a file (paths are relative to the list's folder)")
            sources.append(str(p))
            names.append(p.stem)
        if not sources:
            raise ChanattrError(f"{path} lists no images: one path a line")
        kind = "list"
    else:
        raise ChanattrError(f"--images {spec!r} is neither a folder, a text file of image paths, nor coco:DIR")
    ids = _unique_ids(names)
    return ItemSource([Item(i, s, n) for i, s, n in zip(ids, sources, names)], kind, spec)


def _coco_items(spec: str, input_size: int, only: str | None) -> ItemSource:
    from .coco import box_mask, read_coco

    data = read_coco(spec[len("coco:"):])
    pairs = [(im, c) for im, c in data.pairs() if box_mask(im, c, input_size).any()]
    if only is not None:
        known = sorted({c for _, c in data.pairs()})
        if only not in known:
            raise ChanattrError(f"no pairs of COCO class {only!r} in {data.root}: use one of {', '.join(known)}")
        pairs = [(im, c) for im, c in pairs if c == only]
    if not pairs:
        raise ChanattrError(f"{data.root} has no (image, class) pair with an ImageNet class inside the centre crop")
    ids = _unique_ids([f"{im.name}-{c}" for im, c in pairs])
    items = [Item(i, str(im.path), im.name, c) for i, (im, c) in zip(ids, pairs)]
    return ItemSource(items, "coco", spec, data)
