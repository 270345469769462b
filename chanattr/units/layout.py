"""How a layer's output is laid out, so that a unit kind knows which dimension it masks.

- ``nchw``: channels first, N x C x ... (convolutional maps, and N x C vectors);
- ``ntc``: a token sequence, N x T x C (vision transformers: timm, torchvision, Hugging Face);
- ``nhwc``: channels last, N x ... x C (timm's Swin stages, the insides of ConvNeXt blocks).

``detect_layout`` decides where it is certain (the module's type, the tensor's rank, the model's
token parameters) and otherwise asks for ``layout=`` / ``--layout`` with a one-line error.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ChanattrError

LAYOUTS = ("nchw", "ntc", "nhwc")
#: modules whose output is channels first whatever its rank
_CHANNELS_FIRST = ("Conv1d", "Conv2d", "Conv3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d",
                   "InstanceNorm2d", "GroupNorm", "LayerNorm2d", "ConvTranspose2d", "AdaptiveAvgPool2d",
                   "MaxPool2d", "AvgPool2d")
#: modules that act on the last dimension: their rank >= 3 outputs are channels (hidden) last
_LAST_DIM = ("Linear", "LayerNorm", "RMSNorm", "Mlp", "MLP", "MLPBlock", "GELU", "Attention",
             "MultiheadAttention", "ViTSelfAttention", "ViTAttention", "ViTIntermediate", "ViTOutput")
#: parameters that hold prefix tokens (class, distillation, register tokens)
_PREFIX_PARAMS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens")


def _class_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__[:-1]}


def is_transformer(model: nn.Module) -> bool:
    """Whether the model embeds patches as tokens (timm, torchvision and Hugging Face ViTs)."""
    if any(n.rsplit(".", 1)[-1] in _PREFIX_PARAMS or n.endswith("pos_embed") or n.endswith("pos_embedding")
           or n.endswith("position_embeddings") for n, _ in model.named_parameters()):
        return True
    return any(hasattr(model, a) for a in ("patch_embed", "num_prefix_tokens")) or any(
        name.endswith("patch_embeddings") or name.endswith("patch_embed") for name, _ in model.named_modules())


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens precede the patch tokens (class, distillation, register tokens): timm's
    ``num_prefix_tokens``, else counted from the model's token parameters, else 0."""
    for m in (model, getattr(model, "_wrapped", None)):
        n = getattr(m, "num_prefix_tokens", None)
        if isinstance(n, int):
            return n
    count = 0
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in _PREFIX_PARAMS:
            count += int(p.shape[-2]) if p.dim() >= 3 else 1
    return count


def prefix_tokens_at(model: nn.Module, tokens: int) -> int:
    """The prefix tokens in a sequence of ``tokens`` at some layer: ``prefix_tokens(model)``, or 0
    where the sequence is the bare patch grid (a square count that the prefix would break: the
    output of the patch embedding, before the class token joins)."""
    p = prefix_tokens(model)

    def square(n: int) -> bool:
        return n > 0 and int(round(n ** 0.5)) ** 2 == n

    return 0 if p and square(tokens) and not square(tokens - p) else p


def detect_layout(model: nn.Module, module: nn.Module, activation: torch.Tensor, layout: str | None,
                  name: str) -> str:
    """The layout of ``activation`` (the output of ``module``, called ``name``, in ``model``)."""
    rank = activation.dim()
    if layout is not None:
        if layout not in LAYOUTS:
            raise ChanattrError(f"unknown layout {layout!r}: use {', '.join(LAYOUTS)}")
        need = {"nchw": rank >= 2, "ntc": rank == 3, "nhwc": rank >= 3}[layout]
        if not need:
            raise ChanattrError(f"layer {name!r} returns a {rank}-D tensor {tuple(activation.shape)}, which cannot "
                                f"be {layout}: give another --layout or layer")
        return layout
    if rank < 2:
        raise ChanattrError(f"layer {name!r} returns a {rank}-D tensor: pick a layer with units (N x C ...)")
    if rank == 2:
        return "nchw"
    names = _class_names(module)
    if names & set(_CHANNELS_FIRST):
        return "nchw"
    if names & set(_LAST_DIM):
        return "ntc" if rank == 3 else "nhwc"
    if rank == 3 and is_transformer(model):
        return "ntc"
    if rank >= 4:
        kinds = {type(m).__name__.lower() for m in model.modules()}
        if any("swin" in k for k in kinds) and rank == 4:
            return "nhwc"
        if not is_transformer(model):  # a CNN's maps
            return "nchw"
    raise ChanattrError(f"cannot tell how layer {name!r}'s {tuple(activation.shape)} output is laid out: give "
                        f"--layout nchw (channels first), ntc (tokens x hidden) or nhwc (channels last)")


def position_dims(layout: str, rank: int) -> tuple[int, ...]:
    """The dimensions that index positions (pixels, tokens): not the batch, not the features."""
    if layout == "nchw":
        return tuple(range(2, rank))
    return tuple(range(1, rank - 1))


def feature_dim(layout: str, rank: int) -> int:
    """The dimension of the features (channels, hidden units)."""
    return 1 if layout == "nchw" else rank - 1
