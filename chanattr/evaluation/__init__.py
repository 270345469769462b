"""Evaluation metrics for attribution maps and masks from any method (ours, Captum's, a user's).

- ``extremal_score``, ``area_curve``: the target logit with only the top-a of a mask kept
- ``pointing_hit``, ``PointingGame``: TorchRay's pointing game (15 px, class-mean accuracy)
- ``insertion_deletion``: insertion / deletion curves and AUCs (blurred baseline)
- ``cascading_randomisation``, ``map_similarity``: the model-randomisation sanity check
- ``remove_top``, ``roar``: remove-and-retrain
"""

from .extremal_score import area_curve, extremal_score, top_fraction
from .insertion_deletion import insertion_deletion, saliency_order
from .pointing import PointingGame, max_point, pointing_hit
from .roar import remove_top, roar
from .sanity import SanityStage, cascading_randomisation, default_stages, map_similarity, randomise_

__all__ = [
    "PointingGame",
    "SanityStage",
    "area_curve",
    "cascading_randomisation",
    "default_stages",
    "extremal_score",
    "insertion_deletion",
    "map_similarity",
    "max_point",
    "pointing_hit",
    "randomise_",
    "remove_top",
    "roar",
    "saliency_order",
    "top_fraction",
]
