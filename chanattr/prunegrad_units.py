"""PruneGrad's kept units read as a unit attribution: which channels (hidden units, heads) of
the last pruned layer the pruned network keeps, ranked, with their unit curve -- what
``chanattr prunegrad`` writes as ``channels.npz`` for ``invert --from``. Kept apart from
``chanattr.prunegrad`` (the method itself)."""

from __future__ import annotations

import torch
from torch import nn

from .prunegrad import PruneGradResult


@torch.no_grad()
def kept_unit_scores(model: nn.Module, x: torch.Tensor, result: PruneGradResult, index: int) -> dict | None:
    """The kept units of the last pruned site that runs once, as a unit attribution of image
    ``index`` (``x``: its 3 x H x W input): ``site``, ``unit`` (channels, a token layer's hidden
    units, or heads), ``layout``, ``values`` (U: the fraction of each unit's neurons kept),
    ``ranking`` (units by value, best first), ``count`` (units with a neuron kept), ``curve``
    (``ChannelCurve.to_dict``: the target logit with the top k of the ranking kept / removed) and
    ``path``. None when every pruned module runs several times (no single output to read)."""
    from .units.space import UnitSpace, channel_curve

    single = [site for site in result.kept if "#" not in site]
    if not single:
        return None
    site = single[-1]
    values = result.kept[site][index]
    ranking = torch.argsort(-values, stable=True)
    target = int(result.targets[index])
    space = UnitSpace(model, x[None], site, unit="heads" if result.info["granularity"] == "heads" else "auto")
    return {"site": site, "unit": space.unit, "layout": space.layout, "values": values, "ranking": ranking,
            "count": int((values > 0).sum()), "curve": channel_curve(space, ranking, target).to_dict(0),
            "path": space.path}
