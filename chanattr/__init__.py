"""chanattr: which pixels and which channels a PyTorch model's output rests on.

The public API, re-exported here:

- models: ``load_model``, ``LoadedModel``, ``Preprocessing``
- images: ``load_image``, ``prepare_image``, ``prepare_images``, ``PreparedImage``, ``SAMPLES``
- hooks: ``get_layer``, ``list_layers``, ``LayerHooks``, ``capture``, ``edit``, ``preserved``
"""

__version__ = "0.1.0"

from .errors import ChanattrError, LayerNotFoundError
from .hooks import LayerHooks, LayerInfo, capture, edit, frozen, get_layer, layer_names, list_layers, model_state, preserved
from .images import SAMPLES, PreparedImage, load_image, prepare_image, prepare_images
from .models import LoadedModel, Preprocessing, load_model

__all__ = [
    "ChanattrError",
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
