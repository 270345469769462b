"""The pixel extremal methods ``bench_extremal.py`` compares (its variants included),
as ``chanattr run`` compute functions, and the scores of their masks.

A method is a ``MethodSpec``: TorchRay's ``extremal_perturbation`` with its defaults (800
iterations), or chanattr's with a preset, some of its schedule's fields changed and some
keywords. Every (image, method) result is one item of a run (``chanattr.runs.run_items``),
keyed by the spec, the areas and feathers, the model and the code version of the files the
method runs (``code_files``: this module, the scoring code and, for chanattr's methods, the
optimiser's files): its file keeps the binary top-a masks (bit-packed, for the overlaps between
methods), its rows -- one per area -- the scores:

- ``score_f0``: the extremal score (the top-a pixels kept, the rest blurred; target logit);
- ``score_f2`` / ``f4`` / ``f8``: the same with the kept region's edge feathered by a Gaussian
  of 2, 4 or 8 px;
- ``prob_f0`` ... ``prob_f8``: each as the target probability.

Nothing else lives here, so that editing a table or a script does not refuse a run's resume."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from chanattr.extremal import binary_masks, preset_schedule
from chanattr.run_methods import ItemOutput

AREAS = (0.05, 0.1, 0.2)
FEATHERS = (0.0, 2.0, 4.0, 8.0)
SCORING = ["chanattr/evaluation/extremal_score.py", "chanattr/perturbations.py", "experiments/extremal_methods.py"]
OPTIMISER = ["chanattr/extremal.py", "chanattr/pixel.py", "chanattr/smooth_mask.py"]


@dataclass(frozen=True)
class MethodSpec:
    """``library``: ``"chanattr"`` or ``"torchray"`` (its defaults; the other fields unused).
    ``preset``: chanattr's preset; ``changes``: (field, value) pairs replacing fields of the
    preset's ``Schedule``; ``kwargs``: (name, value) keywords of ``extremal_perturbation``."""

    library: str = "chanattr"
    preset: str = "fast"
    changes: tuple = ()
    kwargs: tuple = ()

    def settings(self) -> dict:
        if self.library == "torchray":
            return {"library": "torchray"}
        return {"library": "chanattr", "preset": self.preset, "changes": dict(self.changes),
                "kwargs": dict(self.kwargs)}

    def code_files(self) -> list[str]:
        return SCORING + ([] if self.library == "torchray" else OPTIMISER)


def masks_of(spec: MethodSpec, model, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """N x K x H x W masks of the method on the batch ``x`` (K = ``AREAS``), and its iteration count."""
    if spec.library == "torchray":
        from torchray.attribution.extremal_perturbation import extremal_perturbation as torchray_ep

        flags = [p.requires_grad for p in model.parameters()]
        out = []
        try:
            for i in range(x.shape[0]):  # TorchRay explains one image at a time
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    masks, _ = torchray_ep(model, x[i : i + 1], int(targets[i]), areas=list(AREAS))
                out.append(masks[:, 0].detach())
        finally:
            for p, f in zip(model.parameters(), flags):  # TorchRay leaves requires_grad off: restore
                p.requires_grad_(f)
        return torch.stack(out), 800
    if spec.library != "chanattr":
        raise ValueError(f"unknown library {spec.library!r}")
    from chanattr.pixel import extremal_perturbation

    kw = dict(spec.kwargs)
    if spec.changes:
        kw["schedule"] = replace(preset_schedule(spec.preset), **dict(spec.changes))
    r = extremal_perturbation(model, x, targets, AREAS, preset=spec.preset, progress=False, **kw)
    return r.masks, int(r.iterations)


def pack(masks: torch.Tensor) -> dict[str, np.ndarray]:
    """The binary top-a masks of K x H x W ``masks`` (area k at ``AREAS[k]``), bit-packed."""
    b = binary_masks(masks[None], AREAS)[0].bool().cpu().numpy()
    return {"top_masks": np.packbits(b), "top_shape": np.array(b.shape)}


def unpack(arrays: dict) -> np.ndarray:
    """K x H x W booleans from ``pack``'s arrays."""
    shape = tuple(int(v) for v in arrays["top_shape"])
    return np.unpackbits(arrays["top_masks"])[: int(np.prod(shape))].reshape(shape).astype(bool)


def score_columns(model, x: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """``score_f{f}`` (logit) and ``prob_f{f}`` (probability), each N x K, for every feather f."""
    from chanattr.evaluation import extremal_score

    out = {}
    for output, prefix in (("logit", "score"), ("probability", "prob")):
        for f in FEATHERS:
            out[f"{prefix}_f{f:g}"] = extremal_score(model, x, masks, targets, AREAS, feather=f, output=output)
    return out


def compute_function(spec: MethodSpec):
    """A ``chanattr.runs`` batch function running ``spec`` and scoring its masks."""

    def compute(lm, x, targets, args) -> list[ItemOutput]:
        masks, iterations = masks_of(spec, lm.model, x, targets)
        columns = score_columns(lm.model, x, masks, targets)
        outputs = []
        for i in range(x.shape[0]):
            rows = [{"area": a, "iterations": iterations, **{k: float(v[i, j]) for k, v in columns.items()}}
                    for j, a in enumerate(AREAS)]
            outputs.append(ItemOutput(pack(masks[i]), rows))
        return outputs

    return compute
