"""inversion: from a layer's activations back to images (feature inversion of channel
subsets, and feature visualisation of channels)."""
