"""``hidden``: the last dimension of a token sequence (N x T x C) or channels-last map
(N x H x W x C): the hidden units of a transformer, shared by every token."""

from __future__ import annotations

import torch

from .base import UnitKind, view_along


class Hidden(UnitKind):
    name = "hidden"
    layouts = ("ntc", "nhwc")

    def bind(self, activation, layout):
        if layout == "nchw" and activation.dim() == 2:  # N x C vectors: hidden = channels
            layout = "ntc"
        super().bind(activation, layout)

    def wrong_layout(self, layout, activation):
        return (f"unit 'hidden' needs tokens x hidden (ntc) or channels-last (nhwc) output; layer {self.layer!r} "
                f"returns {tuple(activation.shape)}, read as channels first: use --unit channels, or give --layout")

    def count(self) -> int:
        return int(self.shape[-1])

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        return view_along(keep, len(self.shape), len(self.shape) + 1)

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1, -2).sum(1) if values.dim() > 2 else values
