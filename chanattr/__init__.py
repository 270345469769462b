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

from typing import TYPE_CHECKING

#: where each public name lives; imported on first use (PEP 562), so that ``chanattr --help`` and
#: the command line's usage errors answer without importing torch
_EXPORTS = {
    "errors": ["ChanattrError", "ChanattrWarning", "LayerNotFoundError"],
    "hooks": ["LayerHooks", "LayerInfo", "capture", "edit", "frozen", "get_layer", "layer_names", "list_layers",
              "model_state", "preserved"],
    "images": ["SAMPLES", "PreparedImage", "load_image", "prepare_image", "prepare_images"],
    "models": ["LoadedModel", "Preprocessing", "load_model"],
    "extremal": ["Schedule"],
    "pixel": ["PixelResult", "extremal_perturbation"],
    "units": ["UNIT_KINDS"],
    "units.space": ["ChannelCurve", "ChannelResult", "ChannelSpace", "UnitResult", "UnitSpace", "channel_curve",
                    "channel_extremal_perturbation", "class_channels", "unit_extremal_perturbation"],
    "model_output": ["logits_model", "select_output"],
    "prunegrad": ["PruneGradResult", "prunegrad"],
    "baselines": ["saliency"],
    "runtime": ["retain_freed_memory"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:  # what static tools and IDEs read
    from .errors import ChanattrError, ChanattrWarning, LayerNotFoundError
    from .hooks import (LayerHooks, LayerInfo, capture, edit, frozen, get_layer, layer_names, list_layers, model_state,
                        preserved)
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


def __getattr__(name: str):
    from importlib import import_module
    from importlib.util import find_spec

    if name in _MODULE_OF:
        value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif not name.startswith("_") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f".{name}", __name__)  # a subpackage: chanattr.evaluation, chanattr.coco, ...
    else:
        raise AttributeError(f"module 'chanattr' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = list(_MODULE_OF)
