"""Images: load any file PIL reads (or a bundled sample by name) and prepare it for a model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ChanattrError
from .models import Preprocessing

#: Photos bundled with scikit-image, usable by name wherever an image path is taken.
SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass
class PreparedImage:
    """One image ready for a model.

    ``input``: C x S x S float32, exactly what the model is given (normalised; C = 3, or 1 for
    a greyscale model's preprocessing).
    ``rgb``: C x S x S float32 in [0, 1], the same crop before normalisation (for figures).
    ``original_size``: (width, height) of the photo as loaded (after its EXIF orientation).
    """

    name: str
    input: torch.Tensor
    rgb: torch.Tensor
    original_size: tuple[int, int] = (0, 0)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, I;16, I, F, CMYK, ...) -> 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray((arr * 255).round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(source: str | os.PathLike) -> Image.Image:
    """An RGB PIL image from a file path or a sample name (see ``SAMPLES``), turned upright by
    its EXIF orientation."""
    text = str(source)
    if text in SAMPLES and not Path(text).exists():
        from skimage import data

        return Image.fromarray(getattr(data, text)()).convert("RGB")
    path = Path(text)
    if not path.exists():
        raise ChanattrError(f"image not found: {path} (give a file, or a sample: {', '.join(SAMPLES)})")
    if path.is_dir():
        raise ChanattrError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))  # phone photos: upright, as they are shown
    except UnidentifiedImageError:
        raise ChanattrError(f"{path} is not an image file PIL can read") from None
    except OSError as e:
        raise ChanattrError(f"cannot read image {path}: {e}") from None


def crop_geometry(size: tuple[int, int], input_size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the model's preprocessing for a W x H
    photo: the shorter side resized to ``input_size``, then the centre square from (left, top).
    A photo pixel (u, v) lands at (u * width / W - left, v * height / H - top)."""
    w, h = size
    scale = input_size / min(w, h)
    nw, nh = max(input_size, round(w * scale)), max(input_size, round(h * scale))
    return nw, nh, (nw - input_size) // 2, (nh - input_size) // 2


def crop_to_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` pixels (bicubic), then take the centre square."""
    nw, nh, left, top = crop_geometry(img.size, size)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    return img.crop((left, top, left + size, top + size))


def prepare_image(source: str | os.PathLike | Image.Image, preprocessing: Preprocessing) -> PreparedImage:
    """Load (unless given a PIL image), crop to the model's input size and normalise."""
    if isinstance(source, Image.Image):
        img, name = _to_rgb(source), "image"
    else:
        img, name = load_image(source), Path(str(source)).stem or str(source)
    if min(img.size) < preprocessing.input_size:
        import warnings

        from .errors import ChanattrWarning

        warnings.warn(f"{name} is {img.size[0]} x {img.size[1]} px: upscaled to the model's "
                      f"{preprocessing.input_size} px input (fine detail there is interpolated)", ChanattrWarning)
    crop = crop_to_square(img, preprocessing.input_size)
    if preprocessing.channels == 1:
        crop = crop.convert("L")
    a = np.asarray(crop, dtype=np.float32) / 255.0
    rgb = torch.from_numpy(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1).contiguous()
    return PreparedImage(name=name, input=preprocessing.normalize(rgb), rgb=rgb, original_size=img.size)


def prepare_images(sources, preprocessing: Preprocessing) -> list[PreparedImage]:
    """``prepare_image`` for each source; names made unique (``a``, ``a-2``, ...)."""
    out: list[PreparedImage] = []
    seen: dict[str, int] = {}
    for src in sources:
        item = prepare_image(src, preprocessing)
        count = seen.get(item.name, 0) + 1
        seen[item.name] = count
        if count > 1:
            item.name = f"{item.name}-{count}"
        out.append(item)
    return out
