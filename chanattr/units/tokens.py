"""``tokens``: the token positions of a sequence (N x T x C), the transformer's counterpart of
pixel masks at a layer. The prefix tokens (class, distillation, register tokens) are kept as
they are unless ``class_token=True`` makes them units too."""

from __future__ import annotations

import torch

from .base import UnitKind
from .layout import prefix_tokens_at


class Tokens(UnitKind):
    name = "tokens"
    layouts = ("ntc",)

    def __init__(self, model, layer, *, class_token: bool = False) -> None:
        super().__init__(model, layer)
        self.class_token = bool(class_token)
        self.prefix = 0

    def wrong_layout(self, layout, activation):
        return (f"unit 'tokens' needs a token sequence (N x T x C); layer {self.layer!r} returns "
                f"{tuple(activation.shape)} ({layout}): pick a transformer block, or --layout ntc")

    def bind(self, activation, layout):
        super().bind(activation, layout)
        self.prefix = prefix_tokens_at(self.model, int(activation.shape[1]))

    def count(self) -> int:
        return int(self.shape[0]) - (0 if self.class_token else self.prefix)

    @property
    def first(self) -> int:
        """The sequence position of unit 0."""
        return 0 if self.class_token else self.prefix

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        if self.first:
            keep = torch.cat([keep.new_ones(keep.shape[0], self.first), keep], dim=1)
        return keep[:, :, None]

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(2)[:, self.first :]

    def info(self) -> dict:
        return {**super().info(), "prefix_tokens": self.prefix, "class_token_masked": self.class_token}
