"""``channels``: dimension 1 of a channels-first output (N x C x ...), as in CNNs."""

from __future__ import annotations

import torch

from .base import UnitKind, view_along


class Channels(UnitKind):
    name = "channels"
    layouts = ("nchw",)

    def wrong_layout(self, layout, activation):
        return (f"layer {self.layer!r} returns {'tokens x hidden' if layout == 'ntc' else 'channels last'} "
                f"{tuple(activation.shape)}: use --unit hidden (or tokens / heads), or --layout nchw if its "
                f"dimension 1 really is channels")

    def count(self) -> int:
        return int(self.shape[0])

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        return view_along(keep, 1, len(self.shape) + 1)

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(2).sum(2) if values.dim() > 2 else values
