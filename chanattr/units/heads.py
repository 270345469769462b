"""``heads``: the attention heads of an attention module. Each head's slice of the tensor the
heads are concatenated into (the input of the output projection) is one unit.

The site, from the module named: timm's ``Attention`` (and any module with ``num_heads`` and a
linear ``proj``): the input of ``proj``; Hugging Face's ``ViTSelfAttention`` (and any module with
``num_attention_heads``): its output context (first element); a module holding one of those as
``attention`` (Hugging Face's ``ViTAttention``): that one. torchvision's
``nn.MultiheadAttention`` never calls its output projection as a module, so its heads cannot be
reached by a hook: it is refused with what to use instead."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ChanattrError
from ..hooks import get_layer, parse_site
from .base import Site, UnitKind, view_along


class Heads(UnitKind):
    name = "heads"
    layouts = ("ntc", "nhwc")
    baselines = ("zero", "mean")

    def __init__(self, model, layer) -> None:
        super().__init__(model, layer)
        base, _ = parse_site(layer)
        suffix = layer[len(base):]
        module = get_layer(model, layer)
        if isinstance(module, nn.MultiheadAttention):
            raise ChanattrError(f"{layer!r} is torch's nn.MultiheadAttention, whose heads no hook can reach: use "
                                f"--unit hidden on its block, or a timm / Hugging Face ViT for heads")
        if not hasattr(module, "num_attention_heads") and hasattr(getattr(module, "attention", None),
                                                                  "num_attention_heads"):
            base, module = f"{base}.attention", module.attention
        if isinstance(getattr(module, "num_heads", None), int) and isinstance(getattr(module, "proj", None), nn.Linear):
            self.heads = module.num_heads
            self.site = Site(f"{base}.proj{suffix}", "input")
        elif isinstance(getattr(module, "num_attention_heads", None), int):
            self.heads = module.num_attention_heads
            self.site = Site(f"{base}{suffix}")
        else:
            raise ChanattrError(f"layer {layer!r} ({type(module).__name__}) is not an attention module with heads: "
                                f"name one, e.g. blocks.0.attn (`chanattr layers` marks them)")

    def bind(self, activation, layout):
        if activation.dim() != 3:
            raise ChanattrError(f"the heads of {self.layer!r} are concatenated into a {tuple(activation.shape)} tensor "
                                f"(windowed attention?): only N x T x (heads x dim) is supported; use --unit hidden")
        super().bind(activation, "ntc")
        if self.shape[-1] % self.heads:
            raise ChanattrError(f"{self.layer!r}: {self.shape[-1]} features do not split into {self.heads} heads")

    def count(self) -> int:
        return self.heads

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        width = self.shape[-1] // self.heads
        return view_along(keep.repeat_interleave(width, dim=1), len(self.shape), len(self.shape) + 1)

    def info(self) -> dict:
        return {**super().info(), "head_dim": self.shape[-1] // self.heads}


def is_attention(module: nn.Module) -> bool:
    """Whether ``--unit heads`` can use this module."""
    inner = getattr(module, "attention", None)
    return (isinstance(getattr(module, "num_heads", None), int) and isinstance(getattr(module, "proj", None), nn.Linear)
            ) or isinstance(getattr(module, "num_attention_heads", None), int) or isinstance(
        getattr(inner, "num_attention_heads", None), int)
