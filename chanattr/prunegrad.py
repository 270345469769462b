"""PruneGrad (Khakzar et al., "Explaining Neural Networks via Perturbing Important Learned
Features"): the input gradient of the target through the network pruned to its most
important neurons.

1. Score every hidden neuron (an element of an activation, or a whole channel) by its
   first-order Taylor importance for the target y (Molchanov et al.'s criterion, on which the
   paper builds): ``criterion="abs"`` (default, the paper's: the neurons "whose removal
   minimally affects the output" are pruned) scores |a dy/da|, the estimated size of the
   change in y if the neuron were removed, whichever its sign; ``"signed"`` scores a dy/da and
   keeps the neurons that support the target (those whose removal would lower y).
2. Keep the most important fraction ``keep`` and zero the rest through forward hooks:
   ``scope="global"`` ranks all hooked layers' neurons together (one threshold, so layers keep
   very different fractions: ``result.kept_fraction`` reports them), ``scope="layer"`` keeps
   the fraction ``keep`` of every layer.
3. The attribution is the input gradient of y through that pruned network, reduced over the
   colour channels by max |.|. ``result.pruned_logit`` / ``pruned_probability`` say whether
   the pruned network still predicts the target.

Written from the paper. Hooked by default: the output of every module of a neuron
activation type (``NEURON_TYPES``, matched by class name, so timm's and Hugging Face's own
GELU / SiLU classes count); not gates (the sigmoid of squeeze-excitation), not activations
called as functions in a forward (``F.relu``: no module to hook; give the modules after which
to prune instead). Choose others by name (``layers=``) or by type (``layer_types=``);
``result.info["layers"]`` lists what was pruned. A module that runs several times in a
forward pass is hooked at each run. Batched: each image has its own target, its own scores
and its own pruned network.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .errors import ChanattrError
from .model_output import OutputSpec, target_model
from .hooks import LayerHooks, frozen, get_layer, list_layers
from .batch import as_targets, check_batch

#: Activation types whose outputs are neurons (class names: torch's, timm's, Hugging Face's).
NEURON_TYPES = ("ReLU", "ReLU6", "SiLU", "Swish", "GELU", "GELUTanh", "QuickGELU", "GELUActivation",
                "NewGELUActivation", "FastGELUActivation", "LeakyReLU", "ELU", "CELU", "SELU", "Hardswish",
                "HardSwish", "Mish", "Softplus")
CRITERIA = ("abs", "signed")
GRANULARITIES = ("neuron", "channel", "heads")
SCOPES = ("global", "layer")


def activation_layers(model: nn.Module, types: Sequence[str | type] = NEURON_TYPES) -> list[str]:
    """Names of the model's modules of the given activation ``types`` (classes, or class names
    matched against each module's class and its bases), in definition order."""
    names = {t if isinstance(t, str) else t.__name__ for t in types}
    return [name for name, m in model.named_modules()
            if name and any(c.__name__ in names for c in type(m).__mro__[:-1])]


@dataclass
class PruneGradResult:
    """``saliency``: N x H x W, max over colour channels of |input gradient| through the
    pruned network. ``gradient``: N x C x H x W. ``kept``: for each hooked site (a layer name,
    with ``#k`` for its k-th run when it runs several times), N x C: the fraction of each
    channel's neurons kept (0 or 1 with ``granularity="channel"``) -- at a token layer
    (N x T x C) the channels are the hidden units, each over every token. ``kept_fraction``: per site,
    N: the fraction of its neurons kept. ``logit`` / ``probability``: N, the target's in the
    whole network; ``pruned_logit`` / ``pruned_probability``: the same in the pruned network."""

    saliency: torch.Tensor
    gradient: torch.Tensor
    targets: torch.Tensor
    kept: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    kept_fraction: dict[str, torch.Tensor] = field(default_factory=dict)
    logit: torch.Tensor | None = None
    probability: torch.Tensor | None = None
    pruned_logit: torch.Tensor | None = None
    pruned_probability: torch.Tensor | None = None

    def kept_counts(self) -> dict[str, list[int]]:
        """Per site and image: the number of channels with at least one neuron kept."""
        return {s: (k > 0).sum(1).tolist() for s, k in self.kept.items()}

    def channel_attribution(self, site: str | None = None) -> tuple[str, torch.Tensor]:
        """The kept fractions of one site (default: the last hooked) as a channel
        attribution: ``(site, N x C values in [0, 1])``."""
        site = site or list(self.kept)[-1]
        return site, self.kept[site]


def _feature_dim(model: nn.Module, name: str, a: torch.Tensor) -> int:
    """The dimension of ``a`` (the output of layer ``name``) that holds channels or hidden units:
    1 for channels-first maps, the last for token sequences and channels-last maps
    (``chanattr.units.detect_layout``; 1 where the layout cannot be told)."""
    from .units import detect_layout
    from .units.layout import feature_dim

    try:
        return feature_dim(detect_layout(model, get_layer(model, name), a, None, name), a.dim())
    except ChanattrError:
        return 1


def _sites(model: nn.Module, layers: list[str], x: torch.Tensor) -> list[tuple[str, int]]:
    calls = {i.name: i.calls for i in list_layers(model, x[:1])}
    sites = []
    for name in layers:
        if name not in calls:
            continue  # did not run for this input
        sites.extend((name, k) for k in range(calls[name]))
    if not sites:
        raise ChanattrError("none of the modules to prune ran in the forward pass (activations called as "
                            "functions, F.relu, have no module to hook): name the modules to prune with "
                            "layers=[...] in Python or --layers on the command line")
    return sites


def _site_name(name: str, call: int, calls: int) -> str:
    return name if calls == 1 else f"{name}#{call}"


def _hooks(model: nn.Module, sites: list[tuple[str, int]], edits: dict | None, stack: ExitStack,
           where: dict | None = None) -> dict:
    """One ``LayerHooks`` per call index (and port); returns {(name, call): (hooks, hooked name)}.
    ``where``: {name: (hooked name, port)} for modules read elsewhere than at their output (the
    heads of an attention module)."""
    by_call: dict[tuple[int, str], list[str]] = {}
    for name, call in sites:
        port = where[name][1] if where else "output"
        by_call.setdefault((call, port), []).append(name)
    out = {}
    for (call, port), names in by_call.items():
        hooked = {n: where[n][0] if where else n for n in names}
        spec = {hooked[n]: (edits[(n, call)] if edits else None) for n in names}
        hooks = stack.enter_context(LayerHooks(model, spec, store=edits is None, call=call, port=port))
        for n in names:
            out[(n, call)] = (hooks, hooked[n])
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


@torch.enable_grad()  # input gradients even when called under torch.no_grad()
def prunegrad(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    keep: float = 0.15,
    granularity: str = "neuron",
    scope: str = "global",
    layers: Sequence[str] | None = None,
    criterion: str = "abs",
    layer_types: Sequence[str | type] | None = None,
    output: OutputSpec = None,
) -> PruneGradResult:
    """PruneGrad saliency for N images (``x``: N x C x H x W, the model's normalised input).

    ``keep``: fraction of neurons (or channels, or heads) kept, in (0, 1]; ``keep=1`` gives the
    plain input gradient. ``granularity``: ``"neuron"``, ``"channel"`` (whole channels, or hidden
    units at a token layer) or ``"heads"`` (whole attention heads of every attention module, or
    of those named in ``layers``; ``kept`` then holds N x heads per module). ``criterion``: ``"abs"`` (the paper's, |a dy/da|) or ``"signed"`` (a dy/da:
    only neurons supporting the target). ``scope``: ``"global"`` (one threshold over all
    layers) or ``"layer"`` (``keep`` of each layer). ``layers``: the modules to prune by name;
    ``layer_types``: by type (default ``NEURON_TYPES``). ``output``: which of the model's outputs
    holds the logits (``chanattr.model_output.select_output``). The model runs in eval mode and
    is left as found."""
    x = check_batch(x)
    model, target = target_model(model, target, output)
    if criterion not in CRITERIA:
        raise ChanattrError(f"unknown criterion {criterion!r}: use abs (the paper's) or signed")
    if layers is not None and layer_types is not None:
        raise ChanattrError("give the modules to prune by name (layers) or by type (layer_types), not both")
    if not 0 < keep <= 1:
        raise ChanattrError(f"keep {keep} is outside (0, 1]: give the fraction of neurons to keep, e.g. 0.15")
    if granularity not in GRANULARITIES:
        raise ChanattrError(f"unknown granularity {granularity!r}: use neuron, channel or heads")
    if scope not in SCOPES:
        raise ChanattrError(f"unknown scope {scope!r}: use global or layer")
    targets = as_targets(target, x.shape[0], x.device)
    where, kinds = None, {}
    if granularity == "heads":  # whole attention heads, at each attention module's heads site
        from .units.heads import Heads, is_attention

        if layer_types is not None:
            raise ChanattrError("granularity='heads' prunes attention modules: name them with layers=, not types")
        names = list(layers) if layers is not None else [n for n, m in model.named_modules() if n and is_attention(m)]
        if not names:
            raise ChanattrError("the model has no attention module with heads (timm, Hugging Face or torch's "
                                "MultiheadAttention): use granularity neuron or channel")
        kinds = {n: Heads(model, n) for n in names}
        where = {n: (k.site.name, k.site.port) for n, k in kinds.items()}
    else:
        names = list(layers) if layers is not None else activation_layers(model, layer_types or NEURON_TYPES)
    if not names:
        kinds = ", ".join(str(t if isinstance(t, str) else t.__name__) for t in (layer_types or NEURON_TYPES)[:6])
        raise ChanattrError(f"the model has no module of type {kinds}, ... (activations called as functions, "
                            f"F.relu, have no module to hook): name the modules to prune with layers=[...] "
                            f"(--layers) or give layer_types=[...] (--layer-types)")
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
            hooks = _hooks(model, sites, None, stack, where)
            logits = model(xi)
            acts = [hooks[s][0][hooks[s][1]] for s in sites]
            y = logits.gather(1, targets[:, None]).sum()
            grads = torch.autograd.grad(y, acts)
        full_logits = logits.detach()
        scores, fdims = [], []
        for (name, _), a, g in zip(sites, acts, grads):
            if a.dim() < 2:
                raise ChanattrError("pruned layers must output N x C (x ...) tensors")
            if name in kinds:  # heads: each head's contributions summed, N x heads
                kinds[name].bind(a, "ntc")
                contrib = kinds[name].pool((a * g).detach())
                scores.append(contrib.abs() if criterion == "abs" else contrib)
                fdims.append(None)
                continue
            fdim = _feature_dim(model, name, a)  # 1, or the last for token sequences / channels last
            contrib = (a * g).detach().movedim(fdim, 1)
            if granularity == "channel" and contrib.dim() > 2:
                contrib = contrib.flatten(2).sum(2)
            scores.append(contrib.abs() if criterion == "abs" else contrib)
            fdims.append(fdim)
        del acts, grads, logits
        # 2. keep the most important
        masks = _keep_masks(scores, keep, scope)
        # 3. the input gradient through the pruned network
        edits = {}
        for site, m, fdim in zip(sites, masks, fdims):

            def edit(out, mask=m, fdim=fdim, kind=kinds.get(site[0])):
                if kind is not None:  # heads
                    return out * kind.expand(mask.to(out.dtype))
                mk = mask.to(out.dtype)
                while mk.dim() < out.dim():
                    mk = mk.unsqueeze(-1)
                return out * mk.movedim(1, fdim)

            edits[site] = edit
        xi = x.detach().clone().requires_grad_(True)
        with ExitStack() as stack:
            _hooks(model, sites, edits, stack, where)
            pruned_logits = model(xi)
            y = pruned_logits.gather(1, targets[:, None]).sum()
            (gradient,) = torch.autograd.grad(y, xi)
        pruned_logits = pruned_logits.detach()
    kept, fractions = {}, {}
    for (name, call), m in zip(sites, masks):
        frac = m.float() if m.dim() == 2 else m.flatten(2).float().mean(2)
        site = _site_name(name, call, calls[name])
        kept[site] = frac.cpu()
        fractions[site] = m.flatten(1).float().mean(1).cpu()

    def read(logits):
        return (logits.gather(1, targets[:, None])[:, 0].float().cpu(),
                logits.float().softmax(1).gather(1, targets[:, None])[:, 0].cpu())

    (logit, prob), (pruned, pruned_prob) = read(full_logits), read(pruned_logits)
    return PruneGradResult(
        saliency=gradient.abs().amax(1).detach(),
        gradient=gradient.detach(),
        targets=targets.cpu(),
        kept=kept,
        info={"keep": keep, "granularity": granularity, "scope": scope, "criterion": criterion,
              "sites": len(sites), "layers": names},
        kept_fraction=fractions,
        logit=logit,
        probability=prob,
        pruned_logit=pruned,
        pruned_probability=pruned_prob,
    )
