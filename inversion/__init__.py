"""inversion: from a layer's activations back to images.

- ``invert``: feature inversion of a chosen channel subset of a layer (Mahendran and Vedaldi's
  objective restricted to the channels), on plain pixels or Lucent's Fourier image.
- ``visualize_channels``: activation maximisation of single channels.
- ``plot_inversions`` / ``plot_channel_grid``: the figures.
- Pieces: ``param`` (image parameterisations), ``objectives``, ``transforms``.
"""

from .figures import plot_channel_grid, plot_inversion_grid, plot_inversions
from .invert import InversionResult, InversionSettings, channel_mask, invert
from .objectives import alpha_norm, feature_loss, natural_prior, total_variation
from .param import fourier_image, lucent_device, pixel_image
from .visualize import Visualisation, visualize_channels

__all__ = [
    "InversionResult",
    "InversionSettings",
    "Visualisation",
    "alpha_norm",
    "natural_prior",
    "channel_mask",
    "feature_loss",
    "fourier_image",
    "invert",
    "lucent_device",
    "pixel_image",
    "plot_channel_grid",
    "plot_inversion_grid",
    "plot_inversions",
    "total_variation",
    "visualize_channels",
]
