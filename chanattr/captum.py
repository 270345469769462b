"""chanattr's methods as Captum attribution classes, so they work wherever Captum's do: its
visualisation helpers, ``captum.metrics`` (``infidelity``, ``sensitivity_max``) and Quantus's
``explain_func``.

- ``ExtremalPerturbation(model)``: ``PerturbationAttribution``; ``attribute`` returns the input's
  shape (N x C x H x W): the extremal perturbation's saliency (the mean over the areas of the
  top-a masks, ``PixelResult.saliency``), the same for every colour channel.
- ``LayerExtremalPerturbation(model, layer, unit=...)``: ``LayerAttribution``; returns the layer's
  output shape: each unit's mask value (mean over the areas) spread over what the unit covers.
- ``PruneGrad(model)``: ``GradientAttribution``; the input gradient through the pruned network
  (absolute by default, as Captum's ``Saliency``).

Captum's conventions: ``inputs`` a tensor (or a 1-tuple), ``target`` an int, a list or a tensor
(one per image), ``additional_forward_args`` passed to the model after the input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

try:
    from captum.attr import GradientAttribution, LayerAttribution, PerturbationAttribution
except ImportError as e:  # captum is a dependency; say so if it is missing
    raise ImportError("chanattr.captum needs captum: pip install captum") from e

from .errors import ChanattrError
from .model_output import logits_model


def _one_input(inputs) -> tuple[torch.Tensor, bool]:
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise ChanattrError("chanattr's attributions take one input tensor (N x C x H x W)")
        return inputs[0], True
    return inputs, False


def _model(forward_func, additional_forward_args) -> nn.Module:
    if not isinstance(forward_func, nn.Module):
        raise ChanattrError("give the model itself (an nn.Module), not a function: chanattr hooks its layers")
    args = () if additional_forward_args is None else (
        tuple(additional_forward_args) if isinstance(additional_forward_args, tuple) else (additional_forward_args,))
    return logits_model(forward_func, None, args) if args else forward_func


def _target(target, n: int):
    if target is None:
        raise ChanattrError("give a target (class index, one per image, or a tensor)")
    return target


class ExtremalPerturbation(PerturbationAttribution):
    """Pixel extremal perturbation (``chanattr.extremal_perturbation``) as a Captum attribution."""

    def __init__(self, forward_func: nn.Module) -> None:
        super().__init__(forward_func)

    def attribute(self, inputs, target=None, additional_forward_args=None, *, areas: Sequence[float] = (0.05, 0.1, 0.2),
                  **kwargs):
        """N x C x H x W (the inputs' shape): the mean over ``areas`` of the binary top-a masks,
        smoothed as ``PixelResult.saliency``, repeated over the colour channels. ``kwargs`` go to
        ``extremal_perturbation`` (``preset``, ``variant``, ``iterations``, ``schedule``, ...)."""
        from .pixel import extremal_perturbation

        x, tupled = _one_input(inputs)
        model = _model(self.forward_func, additional_forward_args)
        kwargs.setdefault("progress", False)
        r = extremal_perturbation(model, x, _target(target, x.shape[0]), list(areas), **kwargs)
        out = r.saliency().to(x.device, x.dtype)[:, None].expand_as(x).contiguous()
        return (out,) if tupled else out


class LayerExtremalPerturbation(LayerAttribution):
    """Unit extremal perturbation at ``layer`` (a name or the module itself) as a Captum layer
    attribution; ``unit``: channels, hidden, heads or tokens."""

    def __init__(self, forward_func: nn.Module, layer: str | nn.Module, unit: str = "channels") -> None:
        if isinstance(layer, nn.Module):
            names = [n for n, m in forward_func.named_modules() if m is layer and n]
            if not names:
                raise ChanattrError("the layer is not a sub-module of the model: pass it, or its name")
            layer = names[0]
        super().__init__(forward_func, forward_func.get_submodule(layer))
        self.layer_name, self.unit = layer, unit

    def attribute(self, inputs, target=None, additional_forward_args=None, *, areas: Sequence[float] = (0.05, 0.1),
                  return_masks: bool = False, **kwargs):
        """The layer's output shape: each unit's mask value (mean over ``areas``) spread over what
        it covers; ``return_masks=True``: the N x K x U masks themselves."""
        from .units.space import UnitSpace, unit_extremal_perturbation

        x, tupled = _one_input(inputs)
        model = _model(self.forward_func, additional_forward_args)
        kwargs.setdefault("progress", False)
        space = UnitSpace(model, x, self.layer_name, unit=self.unit, **{k: kwargs.pop(k) for k in ("layout", "baseline")
                                                                        if k in kwargs})
        r = unit_extremal_perturbation(model, x, _target(target, x.shape[0]), self.layer_name, list(areas),
                                       unit=self.unit, space=space, **kwargs)
        if return_masks:
            return r.masks
        values = r.masks.mean(1).to(space.activation.device)
        spread = space.kind.expand(values) - space.kind.expand(torch.zeros_like(values))
        out = spread.expand_as(space.activation).contiguous()
        return (out,) if tupled else out


class PruneGrad(GradientAttribution):
    """PruneGrad (``chanattr.prunegrad``) as a Captum gradient attribution."""

    def __init__(self, forward_func: nn.Module) -> None:
        super().__init__(forward_func)

    def attribute(self, inputs, target=None, additional_forward_args=None, *, abs: bool = True, **kwargs):
        """N x C x H x W: the input gradient of the target through the pruned network (its
        absolute value unless ``abs=False``). ``kwargs`` go to ``prunegrad`` (``keep``, ...)."""
        from .prunegrad import prunegrad

        x, tupled = _one_input(inputs)
        model = _model(self.forward_func, additional_forward_args)
        g = prunegrad(model, x, _target(target, x.shape[0]), **kwargs).gradient.to(x.device)
        out = g.abs() if abs else g
        return (out,) if tupled else out


__all__ = ["ExtremalPerturbation", "LayerExtremalPerturbation", "PruneGrad"]
