"""Units: what a mask value at a layer switches, one kind per file, registered here.

- ``channels``: dimension 1 of a channels-first map (CNNs);
- ``hidden``: the last dimension of a token sequence or channels-last map (transformers);
- ``heads``: the attention heads of an attention module;
- ``tokens``: the token positions of a sequence.

A new kind: a ``UnitKind`` subclass in its own file (``count``, ``expand``, its ``layouts``),
added to ``UNIT_KINDS``. ``UnitSpace`` (``chanattr.units.space``) runs any of them.
"""

from __future__ import annotations

from ..errors import ChanattrError
from .base import Site, UnitKind
from .channels import Channels
from .heads import Heads, is_attention
from .hidden import Hidden
from .layout import LAYOUTS, detect_layout, is_transformer, prefix_tokens
from .tokens import Tokens

UNIT_KINDS: dict[str, type[UnitKind]] = {k.name: k for k in (Channels, Hidden, Heads, Tokens)}


def unit_kind(name: str) -> type[UnitKind]:
    """The ``UnitKind`` class called ``name``."""
    if name not in UNIT_KINDS:
        raise ChanattrError(f"unknown unit {name!r}: use {', '.join(UNIT_KINDS)}")
    return UNIT_KINDS[name]


__all__ = ["LAYOUTS", "UNIT_KINDS", "Channels", "Heads", "Hidden", "Site", "Tokens", "UnitKind", "detect_layout",
           "is_attention", "is_transformer", "prefix_tokens", "unit_kind"]
