"""A reader for COCO-style evaluation folders (``../shared/data/coco128``'s layout) and the
mapping from COCO classes to the ImageNet classes that depict them.

Folder layout: ``images/NAME.jpg``; ``boxes/NAME.txt`` with YOLO lines ``class cx cy w h``
(normalised by the photo's width and height; classes 0-79 as in ``boxes_classes.yaml``);
optionally ``masks/NAME.png`` (panoptic category ids as in ``masks_classes.yaml``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ChanattrError
from .images import crop_geometry

# COCO class name -> ImageNet-1k indices of the classes that depict it. Classes without a
# clear ImageNet counterpart (person, giraffe, fire hydrant, kite, skateboard, ...) are absent:
# the ImageNet model cannot be asked about them.
COCO_TO_IMAGENET: dict[str, list[int]] = {
    "bicycle": [444, 671],
    "car": [436, 468, 511, 609, 627, 656, 661, 717, 751, 817],
    "motorcycle": [665, 670],
    "airplane": [404, 895],
    "bus": [654, 779, 874],
    "train": [466, 547, 565, 705, 820],
    "truck": [555, 569, 675, 717, 864, 867],
    "boat": [403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914],
    "traffic light": [920],
    "stop sign": [919],
    "parking meter": [704],
    "bench": [703],
    "bird": list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147)),
    "cat": list(range(281, 286)),
    "dog": list(range(151, 269)),
    "horse": [339, 603],
    "sheep": [348, 349],
    "cow": [345, 346, 347],
    "elephant": [101, 385, 386],
    "bear": list(range(294, 298)),
    "zebra": [340],
    "backpack": [414],
    "umbrella": [879],
    "handbag": [748],
    "tie": [457, 906],
    "skis": [795],
    "sports ball": [429, 430, 522, 574, 722, 768, 805, 852, 890],
    "tennis racket": [752],
    "bottle": [440, 720, 737, 898, 907],
    "cup": [504, 968],
    "spoon": [910],
    "bowl": [659, 809],
    "banana": [954],
    "apple": [948],
    "orange": [950],
    "broccoli": [937],
    "hot dog": [934],
    "pizza": [963],
    "chair": [423, 559, 765, 857],
    "couch": [831],
    "potted plant": [738],
    "bed": [564],
    "dining table": [532],
    "toilet": [861],
    "tv": [664, 782, 851],
    "laptop": [620, 681],
    "mouse": [673],
    "remote": [761],
    "keyboard": [508],
    "cell phone": [487],
    "microwave": [651],
    "toaster": [859],
    "sink": [896],
    "refrigerator": [760],
    "clock": [409, 530, 892],
    "vase": [883],
    "teddy bear": [850],
    "hair drier": [589],
}


def default_coco_root() -> Path:
    """Where coco128 is: ``$CHANATTR_COCO``, else ``shared/data/coco128`` beside this checkout,
    else the same beside the working directory (the first that exists; the second when none does)."""
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
    options = [Path(os.environ["CHANATTR_COCO"])] if os.environ.get("CHANATTR_COCO") else []
    options += [here, Path.cwd().parent / "shared" / "data" / "coco128"]
    return next((p for p in options if (p / "images").is_dir()), here)


def read_class_names(path: str | Path) -> dict[int, str]:
    """``id: name`` lines of a YOLO-style yaml file (the ``names:``/``classes:`` block)."""
    names = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^\s+(\d+):\s*(.+?)\s*$", line)
        if m:
            names[int(m.group(1))] = m.group(2).strip("'\"")
    if not names:
        raise ChanattrError(f"no 'id: name' lines in {path}")
    return names


@dataclass
class CocoObject:
    """One box: class id (0-79) and name, corners in pixels of the original photo."""

    class_id: int
    name: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass
class CocoImage:
    name: str
    path: Path
    size: tuple[int, int]  # width, height
    objects: list[CocoObject]
    mask_path: Path | None = None

    def classes(self) -> list[str]:
        return sorted({o.name for o in self.objects})


@dataclass
class CocoDataset:
    root: Path
    images: list[CocoImage]
    box_classes: dict[int, str]
    mask_classes: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, name: str) -> CocoImage:
        for im in self.images:
            if im.name == name:
                return im
        raise KeyError(name)

    def pairs(self, mapping: dict[str, list[int]] = COCO_TO_IMAGENET) -> list[tuple[CocoImage, str]]:
        """Every (image, COCO class) pair whose class has an ImageNet set, sorted by name."""
        return [(im, c) for im in self.images for c in im.classes() if c in mapping]


def read_coco(root: str | Path) -> CocoDataset:
    """Read a coco128-style folder (see the module docstring)."""
    from PIL import Image

    root = Path(root)
    if not (root / "images").is_dir() or not (root / "boxes").is_dir():
        raise ChanattrError(f"{root} has no images/ and boxes/ folders; give a folder laid out like coco128")
    box_classes = read_class_names(root / "boxes_classes.yaml")
    mask_classes = read_class_names(root / "masks_classes.yaml") if (root / "masks_classes.yaml").exists() else {}
    images = []
    for path in sorted((root / "images").glob("*.jpg")):
        with Image.open(path) as im:
            w, h = im.size
        objects = []
        label = root / "boxes" / f"{path.stem}.txt"
        if label.exists():
            for line in label.read_text().split("\n"):
                parts = line.split()
                if len(parts) != 5:
                    continue
                c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:])
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                objects.append(CocoObject(c, box_classes[c], box))
        mask = root / "masks" / f"{path.stem}.png"
        images.append(CocoImage(path.stem, path, (w, h), objects, mask if mask.exists() else None))
    return CocoDataset(root, images, box_classes, mask_classes)


def box_mask(image: CocoImage, name: str, input_size: int) -> torch.Tensor:
    """H x W bool: the union of ``name``'s boxes in the model's input frame (after crop)."""
    nw, nh, left, top = crop_geometry(image.size, input_size)
    sx, sy = nw / image.size[0], nh / image.size[1]
    out = torch.zeros(input_size, input_size, dtype=torch.bool)
    ys = torch.arange(input_size).float() + 0.5
    for o in image.objects:
        if o.name != name:
            continue
        x0, y0, x1, y1 = o.box[0] * sx - left, o.box[1] * sy - top, o.box[2] * sx - left, o.box[3] * sy - top
        rows = (ys >= y0) & (ys <= y1)
        cols = (ys >= x0) & (ys <= x1)
        out |= rows[:, None] & cols[None, :]
    return out


def segment_mask(image: CocoImage, name: str, mask_classes: dict[int, str], input_size: int) -> torch.Tensor | None:
    """H x W bool: the pixels of class ``name`` in the panoptic mask, in the model's input frame
    (resized and cropped like the photo); None when the photo has no mask file."""
    from PIL import Image

    if image.mask_path is None:
        return None
    ids = [i for i, n in mask_classes.items() if n == name]
    with Image.open(image.mask_path) as im:
        m = np.asarray(im)
    hit = np.isin(m, ids).astype(np.uint8) * 255
    nw, nh, left, top = crop_geometry(image.size, input_size)
    big = Image.fromarray(hit).resize((nw, nh), Image.NEAREST)
    crop = np.asarray(big)[top:top + input_size, left:left + input_size]
    return torch.from_numpy(crop > 127)


def imagenet_target(logits: torch.Tensor, name: str, mapping: dict[str, list[int]] = COCO_TO_IMAGENET) -> int:
    """The most probable ImageNet class within ``name``'s set (``logits``: 1000 values)."""
    ids = torch.tensor(mapping[name])
    return int(ids[logits[ids].argmax()])
