"""chanattr: which pixels and which channels a PyTorch model's output rests on.

The public API, re-exported here:

- models: ``load_model``, ``LoadedModel``, ``Preprocessing``
- images: ``load_image``, ``prepare_image``, ``prepare_images``, ``PreparedImage``, ``SAMPLES``
- hooks: ``get_layer``, ``list_layers``, ``LayerHooks``, ``capture``, ``edit``, ``preserved``
- extremal perturbations: ``extremal_perturbation`` (pixels), ``unit_extremal_perturbation``
  (channels, hidden units, heads or tokens of a layer: ``UnitSpace``, ``UNIT_KINDS``;
  ``channel_extremal_perturbation`` is its channel case), ``channel_curve``, ``class_channels``,
  ``Schedule``
- model outputs: ``logits_model``, ``select_output`` (tuples, dicts, Hugging Face outputs)
- other methods: ``prunegrad``, ``saliency`` (every method behind one call, Captum baselines)
- metrics: ``chanattr.evaluation``; COCO data: ``chanattr.coco``; figures: ``chanattr.plotting``
"""

__version__ = "0.1.0"

from .errors import ChanattrError, ChanattrWarning, LayerNotFoundError
from .hooks import LayerHooks, LayerInfo, capture, edit, frozen, get_layer, layer_names, list_layers, model_state, preserved
from .images import SAMPLES, PreparedImage, load_image, prepare_image, prepare_images
from .models import LoadedModel, Preprocessing, load_model
from .extremal import Schedule
from .pixel import PixelResult, extremal_perturbation
from .units import UNIT_KINDS
from .units.space import (ChannelCurve, ChannelResult, ChannelSpace, UnitResult, UnitSpace, channel_curve,
                          channel_extremal_perturbation, class_channels, unit_extremal_perturbation)
from .model_output import logits_model, select_output
from .prunegrad import PruneGradResult, prunegrad
from .baselines import saliency
from .runtime import retain_freed_memory

__all__ = [
    "retain_freed_memory",
    "ChannelCurve",
    "ChannelResult",
    "ChannelSpace",
    "UNIT_KINDS",
    "UnitResult",
    "UnitSpace",
    "logits_model",
    "select_output",
    "unit_extremal_perturbation",
    "PixelResult",
    "PruneGradResult",
    "Schedule",
    "channel_curve",
    "channel_extremal_perturbation",
    "class_channels",
    "extremal_perturbation",
    "prunegrad",
    "saliency",
    "ChanattrError",
    "ChanattrWarning",
    "LayerHooks",
    "LayerInfo",
    "LayerNotFoundError",
    "LoadedModel",
    "PreparedImage",
    "Preprocessing",
    "SAMPLES",
    "capture",
    "edit",
    "frozen",
    "get_layer",
    "layer_names",
    "list_layers",
    "load_image",
    "load_model",
    "model_state",
    "prepare_image",
    "prepare_images",
    "preserved",
]
