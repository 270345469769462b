"""PruneGrad (Khakzar et al., "Explaining Neural Networks via Perturbing Important Learned
Features"): the input gradient of the target through the network pruned to its most
important neurons.

1. Score every hidden neuron (an element of an activation, or a whole channel) by its
   first-order Taylor importance |a * dy/da| for the target y.
2. Keep the most important fraction ``keep`` (over all hooked layers at once, or per layer)
   and zero the rest through forward hooks.
3. The attribution is the input gradient of y through that pruned network, reduced over the
   colour channels by max |.|.

Written from the paper. Hooked by default: every activation module (ReLU, ReLU6, SiLU,
GELU, and their kin); a module that runs several times in a forward pass is hooked at each
run. Batched: each image has its own target, its own scores and its own pruned network.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .errors import ChanattrError
from .hooks import LayerHooks, frozen, get_layer, list_layers
from .pixel import as_targets, check_batch

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Mish, nn.Tanh,
               nn.Sigmoid, nn.Hardtanh)
GRANULARITIES = ("neuron", "channel")
SCOPES = ("global", "layer")


def activation_layers(model: nn.Module) -> list[str]:
    """Names of the model's activation modules, in definition order."""
    return [name for name, m in model.named_modules() if name and isinstance(m, ACTIVATIONS)]


@dataclass
class PruneGradResult:
    """``saliency``: N x H x W, max over colour channels of |input gradient| through the
    pruned network. ``gradient``: N x 3 x H x W. ``kept``: for each hooked site (a layer name,
    with ``#k`` for its k-th run when it runs several times), N x C: the fraction of each
    channel's neurons kept (0 or 1 with ``granularity="channel"``)."""

    saliency: torch.Tensor
    gradient: torch.Tensor
    targets: torch.Tensor
    kept: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)

    def kept_counts(self) -> dict[str, list[int]]:
        """Per site and image: the number of channels with at least one neuron kept."""
        return {s: (k > 0).sum(1).tolist() for s, k in self.kept.items()}

    def channel_attribution(self, site: str | None = None) -> tuple[str, torch.Tensor]:
        """The kept fractions of one site (default: the last hooked) as a channel
        attribution: ``(site, N x C values in [0, 1])``."""
        site = site or list(self.kept)[-1]
        return site, self.kept[site]


def _sites(model: nn.Module, layers: list[str], x: torch.Tensor) -> list[tuple[str, int]]:
    calls = {i.name: i.calls for i in list_layers(model, x[:1])}
    sites = []
    for name in layers:
        if name not in calls:
            continue  # did not run for this input
        sites.extend((name, k) for k in range(calls[name]))
    if not sites:
        raise ChanattrError("none of the layers to prune ran in the forward pass: give layers=[...]")
    return sites


def _site_name(name: str, call: int, calls: int) -> str:
    return name if calls == 1 else f"{name}#{call}"


def _hooks(model: nn.Module, sites: list[tuple[str, int]], edits: dict | None, stack: ExitStack) -> dict:
    """One ``LayerHooks`` per call index; returns {(name, call): hooks}."""
    by_call: dict[int, list[str]] = {}
    for name, call in sites:
        by_call.setdefault(call, []).append(name)
    out = {}
    for call, names in by_call.items():
        spec = {n: (edits[(n, call)] if edits else None) for n in names}
        hooks = stack.enter_context(LayerHooks(model, spec, store=edits is None, call=call))
        for n in names:
            out[(n, call)] = hooks
    return out


def _keep_masks(scores: list[torch.Tensor], keep: float, scope: str) -> list[torch.Tensor]:
    """Boolean masks keeping the top ``keep`` fraction of each image's scores (over all
    sites together, or per site). Ties at the threshold are broken by position."""
    n = scores[0].shape[0]
    if scope == "layer":
        return [_top(s.reshape(n, -1), keep).view_as(s) for s in scores]
    flat = torch.cat([s.reshape(n, -1) for s in scores], dim=1)
    kept = _top(flat, keep)
    out, start = [], 0
    for s in scores:
        size = s[0].numel()
        out.append(kept[:, start : start + size].view_as(s))
        start += size
    return out


def _top(flat: torch.Tensor, keep: float) -> torch.Tensor:
    k = max(1, round(keep * flat.shape[1]))
    idx = flat.topk(k, dim=1, sorted=False).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)


def prunegrad(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    keep: float = 0.15,
    granularity: str = "neuron",
    scope: str = "global",
    layers: Sequence[str] | None = None,
) -> PruneGradResult:
    """PruneGrad saliency for N images (``x``: N x 3 x H x W, the model's normalised input).

    ``keep``: fraction of neurons (or channels) kept, in (0, 1]; ``keep=1`` gives the plain
    input gradient. ``layers``: the modules to prune (default: every activation module).
    The model runs in eval mode and is left as found."""
    x = check_batch(x)
    if not 0 < keep <= 1:
        raise ChanattrError(f"keep {keep} is outside (0, 1]: give the fraction of neurons to keep, e.g. 0.15")
    if granularity not in GRANULARITIES:
        raise ChanattrError(f"unknown granularity {granularity!r}: use neuron or channel")
    if scope not in SCOPES:
        raise ChanattrError(f"unknown scope {scope!r}: use global or layer")
    targets = as_targets(target, x.shape[0], x.device)
    names = list(layers) if layers is not None else activation_layers(model)
    for name in names:
        get_layer(model, name)
    with frozen(model):
        sites = _sites(model, names, x)
        calls = {}
        for name, call in sites:
            calls[name] = max(calls.get(name, 0), call + 1)
        # 1. Taylor importance of every neuron (the input needs a gradient for the graph to exist,
        #    since the parameters are frozen)
        xi = x.detach().clone().requires_grad_(True)
        with ExitStack() as stack:
            hooks = _hooks(model, sites, None, stack)
            logits = model(xi)
            acts = [hooks[s][s[0]] for s in sites]
            y = logits.gather(1, targets[:, None]).sum()
            grads = torch.autograd.grad(y, acts)
        scores = []
        for a, g in zip(acts, grads):
            if a.dim() < 2:
                raise ChanattrError("pruned layers must output N x C (x ...) tensors")
            contrib = (a * g).detach()
            if granularity == "channel" and contrib.dim() > 2:
                contrib = contrib.flatten(2).sum(2)
            scores.append(contrib.abs())
        del acts, grads, logits
        # 2. keep the most important
        masks = _keep_masks(scores, keep, scope)
        # 3. the input gradient through the pruned network
        edits = {}
        for site, m in zip(sites, masks):

            def edit(out, mask=m):
                mk = mask.to(out.dtype)
                while mk.dim() < out.dim():
                    mk = mk.unsqueeze(-1)
                return out * mk

            edits[site] = edit
        xi = x.detach().clone().requires_grad_(True)
        with ExitStack() as stack:
            _hooks(model, sites, edits, stack)
            y = model(xi).gather(1, targets[:, None]).sum()
            (gradient,) = torch.autograd.grad(y, xi)
    kept = {}
    for (name, call), m in zip(sites, masks):
        frac = m.float() if m.dim() == 2 else m.flatten(2).float().mean(2)
        kept[_site_name(name, call, calls[name])] = frac.cpu()
    return PruneGradResult(
        saliency=gradient.abs().amax(1).detach(),
        gradient=gradient.detach(),
        targets=targets.cpu(),
        kept=kept,
        info={"keep": keep, "granularity": granularity, "scope": scope, "sites": len(sites)},
    )
