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
from .heads import Heads, attention_heads, is_attention
from .hidden import Hidden
from .layout import LAYOUTS, detect_layout, is_transformer, prefix_tokens, prefix_tokens_at
from .tokens import Tokens

UNIT_KINDS: dict[str, type[UnitKind]] = {k.name: k for k in (Channels, Hidden, Heads, Tokens)}


def unit_kind(name: str) -> type[UnitKind]:
    """The ``UnitKind`` class called ``name``."""
    if name not in UNIT_KINDS:
        raise ChanattrError(f"unknown unit {name!r}: use {', '.join(UNIT_KINDS)}")
    return UNIT_KINDS[name]


def layer_units(model, info) -> tuple[str | None, dict[str, int]]:
    """For a ``chanattr.hooks.LayerInfo``: the detected layout (``None`` if it must be given) and
    the count of each unit kind that fits ({"channels": C} or {"hidden": C, "tokens": T, "heads": H})."""
    import torch

    from ..hooks import get_layer

    if info.shape is None:
        return None, {}
    module = get_layer(model, info.name)
    try:
        layout = detect_layout(model, module, torch.empty(info.shape, device="meta"), None, info.name)
    except ChanattrError:
        return None, {}
    counts: dict[str, int] = {}
    if layout == "nchw":
        counts["channels"] = info.shape[1]
    else:
        counts["hidden"] = info.shape[-1]
        if layout == "ntc":
            counts["tokens"] = info.shape[1] - prefix_tokens_at(model, info.shape[1])
    if is_attention(module):
        counts["heads"] = int(attention_heads(module))
    return layout, counts


__all__ = [
    "layer_units","LAYOUTS", "UNIT_KINDS", "Channels", "Heads", "Hidden", "Site", "Tokens", "UnitKind", "detect_layout",
           "is_attention", "is_transformer", "prefix_tokens", "unit_kind"]
