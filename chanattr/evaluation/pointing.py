"""The pointing game (TorchRay's definition): a saliency map's maximum is a hit when it lies
within ``tolerance`` pixels (15 at 224 px) of a ground-truth pixel of the object (a box union
or a mask union). Accuracy is the mean over classes of hits / (hits + misses)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..errors import ChanattrError


def max_point(saliency: torch.Tensor) -> tuple[int, int]:
    """(row, column) of an H x W map's maximum (the first in row-major order on ties)."""
    if saliency.dim() != 2:
        raise ChanattrError(f"a saliency map must be H x W, not {tuple(saliency.shape)}")
    flat = int(torch.as_tensor(saliency).float().flatten().argmax())
    return divmod(flat, saliency.shape[1])


def pointing_hit(saliency: torch.Tensor, ground_truth: torch.Tensor, tolerance: float = 15.0) -> bool:
    """Is the maximum of ``saliency`` (H x W) within ``tolerance`` px of a True pixel of
    ``ground_truth`` (H x W bool)? A map with no finite maximum (all NaN) is a miss."""
    gt = torch.as_tensor(ground_truth).bool().cpu().numpy()
    if gt.shape != tuple(saliency.shape):
        raise ChanattrError(f"ground truth {gt.shape} and saliency {tuple(saliency.shape)} differ in size")
    if not gt.any():
        raise ChanattrError("the ground truth has no pixel inside the image: leave this pair out")
    s = torch.as_tensor(saliency).detach().float().cpu()
    if torch.isnan(s).all():
        return False
    r, c = max_point(torch.nan_to_num(s, nan=-float("inf")))
    distance = ndimage.distance_transform_edt(~gt)  # 0 on the object, else px to the nearest object pixel
    return bool(distance[r, c] <= tolerance)


@dataclass
class PointingGame:
    """Accumulates hits per class; ``accuracy()`` is the mean over classes of the hit rate."""

    tolerance: float = 15.0
    records: list[tuple[str, bool]] = field(default_factory=list)

    def add(self, cls: str, saliency: torch.Tensor, ground_truth: torch.Tensor) -> bool:
        hit = pointing_hit(saliency, ground_truth, self.tolerance)
        self.records.append((cls, hit))
        return hit

    def add_result(self, cls: str, hit: bool) -> None:
        self.records.append((cls, bool(hit)))

    def __len__(self) -> int:
        return len(self.records)

    def per_class(self) -> dict[str, float]:
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for cls, hit in self.records:
            counts[cls][0] += hit
            counts[cls][1] += 1
        return {c: h / n for c, (h, n) in sorted(counts.items())}

    def accuracy(self) -> float:
        """Mean over classes of hits / (hits + misses), in [0, 1]."""
        if not self.records:
            raise ChanattrError("no pointing-game results yet")
        return float(np.mean(list(self.per_class().values())))

    def interval(self, level: float = 0.95, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """A bootstrap percentile interval for ``accuracy()``, resampling pairs."""
        rng = np.random.default_rng(seed)
        classes = sorted({c for c, _ in self.records})
        idx = np.array([classes.index(c) for c, _ in self.records])
        hits = np.array([h for _, h in self.records], dtype=float)
        accs = []
        for _ in range(samples):
            pick = rng.integers(0, len(hits), len(hits))
            n = np.bincount(idx[pick], minlength=len(classes))
            h = np.bincount(idx[pick], weights=hits[pick], minlength=len(classes))
            accs.append(np.mean(h[n > 0] / n[n > 0]))
        lo, hi = np.quantile(accs, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)
