"""``heads``: the attention heads of an attention module. Each head's slice of the tensor the
heads are concatenated into (the input of the output projection) is one unit.

The site, from the module named: a module with a head count (``num_heads``: timm's
``Attention``; ``num_attention_heads``: Hugging Face's) and a linear output projection called as
a module (``proj``: timm; ``o_proj``: Hugging Face transformers 5; ``out_proj``): the input of
that projection; a module with ``num_attention_heads`` and no projection (Hugging Face 4's
``ViTSelfAttention``): its output context (first element); a module holding one of those as
``attention`` (Hugging Face 4's ``ViTAttention``): that one. torch's ``nn.MultiheadAttention``
(torchvision's ViT) never calls its output projection as a module: its heads' context is
recomputed from its inputs in a hook (``LayerHooks(port="heads")``)."""

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
        if isinstance(module, nn.MultiheadAttention):  # torchvision's ViT: no projection module to hook
            self.heads = module.num_heads
            self.site = Site(layer, "heads")
            return
        if not hasattr(module, "num_attention_heads") and hasattr(getattr(module, "attention", None),
                                                                  "num_attention_heads"):
            base, module = f"{base}.attention", module.attention
        count, projection = head_count(module), output_projection(module)
        if count is not None and projection is not None:
            self.heads = count
            self.site = Site(f"{base}.{projection}{suffix}", "input")
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

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        return values.flatten(1, -2).sum(1).view(values.shape[0], self.heads, -1).sum(2)

    def info(self) -> dict:
        return {**super().info(), "head_dim": self.shape[-1] // self.heads}


PROJECTIONS = ("proj", "o_proj", "out_proj")


def head_count(module: nn.Module) -> int | None:
    """The module's number of attention heads (``num_heads`` or ``num_attention_heads``), or None."""
    for name in ("num_heads", "num_attention_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def output_projection(module: nn.Module) -> str | None:
    """The name of the module's linear output projection (``PROJECTIONS``), or None. torch's
    ``nn.MultiheadAttention`` has an ``out_proj`` that it never calls as a module: None."""
    if isinstance(module, nn.MultiheadAttention):
        return None
    for name in PROJECTIONS:
        if isinstance(getattr(module, name, None), nn.Linear):
            return name
    return None


def attention_heads(module: nn.Module) -> int | None:
    """The heads ``--unit heads`` finds at this module, or None."""
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads
    if head_count(module) is not None and (output_projection(module) is not None or
                                           isinstance(getattr(module, "num_attention_heads", None), int)):
        return head_count(module)
    inner = getattr(module, "attention", None)
    return inner.num_attention_heads if isinstance(getattr(inner, "num_attention_heads", None), int) else None


def is_attention(module: nn.Module) -> bool:
    """Whether ``--unit heads`` can use this module."""
    return attention_heads(module) is not None
