"""Targets beyond a class index: any scalar per image a method can explain.

- a function ``fn(output) -> N scores`` (``chanattr.model_output.target_model``) passed as the
  target of any method;
- ``region_target(cls, box)``: a segmentation class's mean score inside a box (the model returns
  N x classes x H x W, e.g. torchvision's ``{"out": ...}`` with ``output="out"``);
- ``unit_target_model(model, layer, index)``: the model cut at a layer, returning one unit's mean
  activation ("what in the image drives channel k of layer L"), N x 1: explain its index 0.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import ChanattrError
from .hooks import LayerHooks, get_layer
from .model_output import SharedModules


def class_index(target: str) -> int | None:
    """A ``--target`` value: ``None`` for ``auto`` (each image's top-1 class), else the class
    index it names; a clear error for anything else. (Whether the index is one of the model's
    classes is the caller's check: it knows the model.)"""
    if target == "auto":
        return None
    try:
        return int(target)
    except ValueError:
        raise ChanattrError(f"--target must be a class index or auto, not {target!r}") from None


def region_target(cls: int, box: tuple[int, int, int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(out) -> N``: the mean of ``out[:, cls]`` (N x classes x H x W scores) over the box
    (top, left, height, width, in the output's pixels)."""
    top, left, h, w = (int(v) for v in box)
    if h < 1 or w < 1 or top < 0 or left < 0:
        raise ChanattrError(f"region {box}: give top, left, height, width with height and width >= 1")

    def score(out: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ChanattrError(f"a region target needs N x classes x H x W scores, got "
                                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}: pick "
                                f"the segmentation output with --output / output=")
        if not 0 <= cls < out.shape[1] or top + h > out.shape[2] or left + w > out.shape[3]:
            raise ChanattrError(f"class {cls} / region {box} is outside the {tuple(out.shape[1:])} output")
        return out[:, cls, top : top + h, left : left + w].mean((1, 2))

    return score


class UnitTargetModel(SharedModules):
    """``model`` returning, for each image, the mean activation of unit ``index`` of ``layer``
    (N x 1; a channel over its pixels, a hidden unit over every token, ...). Its sub-modules
    are the model's, under the same names."""

    def __init__(self, model: nn.Module, layer: str, index: int, unit: str = "channels",
                 layout: str | None = None) -> None:
        from .units import unit_kind

        get_layer(model, layer)
        super().__init__(model)
        self.layer, self.index, self.layout = layer, int(index), layout
        self.auto = unit == "auto"  # channels of a channels-first map, else hidden units
        self.kind = unit_kind("channels" if self.auto else unit)(model, layer)
        self._bound = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .units import detect_layout

        site = self.kind.site
        with LayerHooks(self._wrapped, site.name, port=site.port) as hooks:
            self.run_model(x)
        a = hooks[site.name]
        if not self._bound:
            from .units import unit_kind

            layout = detect_layout(self._wrapped, get_layer(self._wrapped, site.name), a, self.layout, site.name)
            if self.auto and layout != "nchw":
                self.kind = unit_kind("hidden")(self._wrapped, self.layer)
            self.kind.bind(a, layout)
            if not 0 <= self.index < self.kind.count():
                raise ChanattrError(f"{self.layer!r} has {self.kind.name} 0..{self.kind.count() - 1}; got {self.index}")
            self._bound = True
        covered = self.kind.pool(torch.ones_like(a[:1]))[0, self.index]
        return (self.kind.pool(a)[:, self.index] / covered)[:, None]


def unit_target_model(model: nn.Module, layer: str, index: int, unit: str = "channels",
                      layout: str | None = None) -> nn.Module:
    """See ``UnitTargetModel``: explain its target 0 to find what drives the unit."""
    if isinstance(model, SharedModules):
        model = model._wrapped
    return UnitTargetModel(model, layer, index, unit, layout)
