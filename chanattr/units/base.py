"""What a unit kind is: which tensor of a layer it reads, how many units that tensor has, and
how a keep mask over the units (B x U, 1 keeps) broadcasts onto it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ChanattrError


@dataclass
class Site:
    """Where a unit kind reads and edits: ``name`` (a layer name, ``NAME#k``/``NAME:key`` allowed)
    and ``port`` (``"output"``, or ``"input"``: the module's first positional input)."""

    name: str
    port: str = "output"


class UnitKind:
    """Base class of the unit kinds (``chanattr.units.UNIT_KINDS``).

    A kind is built for one model and layer (``__init__`` may move the site, e.g. from an
    attention module to its output projection's input), then told the tensor found there and its
    layout (``bind``). Subclasses set ``name`` and ``layouts`` and define ``count`` and
    ``expand``; ``info`` goes into every result."""

    name: str = ""
    layouts: tuple[str, ...] = ()
    #: baselines this kind defines besides a given tensor
    baselines: tuple[str, ...] = ("zero", "mean")

    def __init__(self, model: nn.Module, layer: str, **options) -> None:
        if options:
            raise ChanattrError(f"unit {self.name!r} takes no option {', '.join(options)}")
        self.model, self.layer = model, layer
        self.site = Site(layer)
        self.layout = ""
        self.shape: tuple[int, ...] = ()

    def bind(self, activation: torch.Tensor, layout: str) -> None:
        """Check that the kind applies to this tensor (N x ...) in this layout."""
        if layout not in self.layouts:
            raise ChanattrError(self.wrong_layout(layout, activation))
        self.layout, self.shape = layout, tuple(activation.shape[1:])

    def wrong_layout(self, layout: str, activation: torch.Tensor) -> str:
        return (f"unit {self.name!r} does not fit layer {self.layer!r} ({layout}, {tuple(activation.shape)}): use "
                f"{' or '.join(self.layouts)} layouts (--layout), or another --unit")

    def count(self) -> int:
        """U: the number of units."""
        raise NotImplementedError

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        """``keep`` (B x U) as a tensor broadcastable to B x (the site's shape)."""
        raise NotImplementedError

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        """B x (the site's shape) -> B x U: the sum over what each unit covers (the transpose of
        ``expand``), e.g. a unit's squared activation norm from the squared activation."""
        raise NotImplementedError

    def info(self) -> dict:
        return {"unit": self.name, "layout": self.layout, "units": self.count(), "site": self.site.name,
                "port": self.site.port}


def view_along(keep: torch.Tensor, dim: int, rank: int) -> torch.Tensor:
    """``keep`` (B x U) viewed as B x 1 .. U .. 1 with U at ``dim`` of a ``rank``-D tensor."""
    shape = [keep.shape[0]] + [1] * (rank - 1)
    shape[dim] = keep.shape[1]
    return keep.reshape(shape)
