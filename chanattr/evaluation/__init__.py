"""Evaluation metrics for attribution maps and masks from any method."""

from .extremal_score import area_curve, extremal_score, top_fraction

__all__ = ["area_curve", "extremal_score", "top_fraction"]
