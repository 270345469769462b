"""Saliency maps from every method the evaluation compares, behind one call:
``saliency(method, model, x, target) -> N x H x W``.

Baselines come from Captum (the maintained library for them): gradient, gradient x input,
integrated gradients, guided backprop and Grad-CAM. Two fixes on top of Captum: its guided
backprop only overrides ``nn.ReLU`` modules, so on networks with ``nn.ReLU6`` (MobileNets,
EfficientNet-Lite) it silently returns the plain gradient -- ours covers ReLU6 too; and
Grad-CAM's layer defaults to the last layer with a spatial output. RISE (Petsiuk et al.,
BMVC 2018) is written here (it is short), and so is the centre-point baseline. The
toolkit's own methods (extremal perturbation, PruneGrad) are registered alongside.

Pixel maps are reduced over colour channels by max |.|; every map is N x H x W on the CPU.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ChanattrError
from .model_output import target_model
from .hooks import capture, frozen, get_layer, list_layers
from .batch import as_targets, check_batch


def _captum():
    try:
        import captum.attr as ca
    except ImportError:
        raise ChanattrError("this method needs Captum, a dependency of chanattr: pip install captum") from None
    return ca


def _reduce(attr: torch.Tensor) -> torch.Tensor:
    return attr.detach().abs().amax(1).cpu()


def gradient(model, x, target):
    return _reduce(_captum().Saliency(model).attribute(x, target=target, abs=False))


def gradient_x_input(model, x, target):
    return _reduce(_captum().InputXGradient(model).attribute(x, target=target))


def integrated_gradients(model, x, target, steps: int = 32):
    """Integrated gradients from a zero (normalisation-mean) baseline, ``steps`` steps."""
    ig = _captum().IntegratedGradients(model)
    return _reduce(ig.attribute(x, target=target, n_steps=steps, internal_batch_size=max(steps, 8)))


def guided_backprop(model, x, target):
    """Captum's guided backprop, with the guided rule on ReLU6 as well as ReLU."""
    ca = _captum()

    class _GuidedBackprop(ca.GuidedBackprop):
        def _register_hooks(self, module: nn.Module) -> None:
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                from captum._utils.common import _register_backward_hook

                self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _reduce(_GuidedBackprop(model).attribute(x, target=target))


def last_spatial_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last layer whose output is a spatial map (N x C x h x w, h and w > 1): where
    Grad-CAM is usually computed ("the last convolutional layer")."""
    found = [i.name for i in list_layers(model, x[:1]) if i.shape is not None and len(i.shape) == 4
             and i.shape[2] > 1 and i.shape[3] > 1 and i.calls == 1]
    if not found:
        raise ChanattrError("no layer with a spatial output found: give gradcam a layer=")
    return found[-1]


def last_token_block(model: nn.Module, x: torch.Tensor) -> str | None:
    """For a vision transformer, the input of its last block (the output of the one before):
    the usual Grad-CAM layer for ViTs -- after the last block only the class token reaches the
    head, so the patch tokens there get no gradient. The blocks: the longest run of numbered
    modules (``blocks.0``, ``blocks.1``, ...) with token-sequence outputs. None for other models."""
    from .units import detect_layout, is_transformer

    if not is_transformer(model):
        return None
    groups: dict[str, list[str]] = {}
    for info in list_layers(model, x[:1]):
        prefix, _, last = info.name.rpartition(".")
        if not last.isdigit() and "_" in last and last.rpartition("_")[2].isdigit():  # torchvision: encoder_layer_3
            prefix, last = f"{prefix}.{last.rpartition('_')[0]}", last.rpartition("_")[2]
        if not last.isdigit() or info.shape is None or len(info.shape) != 3 or info.calls != 1:
            continue
        try:
            if detect_layout(model, get_layer(model, info.name), torch.empty(info.shape, device="meta"), None,
                             info.name) != "ntc":
                continue
        except ChanattrError:
            continue
        groups.setdefault(prefix, []).append(info.name)
    if not groups:
        return None
    blocks = max(groups.values(), key=len)
    return blocks[-2] if len(blocks) > 1 else blocks[-1]


def gradcam(model, x, target, layer: str | None = None):
    """Grad-CAM at ``layer`` (default: the last spatial layer; for a vision transformer the input
    of its last block), upsampled to the input, ReLU'd. At a token layer (N x T x C) the patch
    tokens are reshaped to their grid and the prefix (class) tokens dropped, as for ViTs in
    pytorch-grad-cam."""
    from .units import detect_layout
    from .units.layout import prefix_tokens_at

    name = layer or last_token_block(model, x) or last_spatial_layer(model, x)
    with capture(model, name, detach=True) as probe, torch.no_grad():
        model(x[:1])
    a = probe[name]
    if a.dim() == 3 and detect_layout(model, get_layer(model, name), a, None, name) == "ntc":
        return _token_gradcam(model, x, target, name, prefix_tokens_at(model, a.shape[1]))
    ca = _captum()
    cam = ca.LayerGradCam(model, get_layer(model, name)).attribute(x, target=target, relu_attributions=True)
    up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[:, 0].detach().cpu()


def _token_gradcam(model, x, target, name: str, prefix: int) -> torch.Tensor:
    """Grad-CAM over the patch tokens of a token layer: weights = the mean gradient of each
    hidden unit over the patch tokens, map = ReLU(sum of weighted activations), on the grid."""
    xi = x.detach().clone().requires_grad_(True)  # the parameters are frozen: give the graph an input
    with capture(model, name) as acts:
        y = model(xi).gather(1, target.view(-1, 1)).sum()
        a = acts[name]
        (g,) = torch.autograd.grad(y, a)
    a, g = a[:, prefix:].detach(), g[:, prefix:]
    side = int(round(a.shape[1] ** 0.5))
    if side * side != a.shape[1]:
        raise ChanattrError(f"{name!r} has {a.shape[1]} patch tokens, not a square grid: give gradcam another layer=")
    cam = torch.relu((g.mean(1, keepdim=True) * a).sum(2)).view(-1, 1, side, side)
    up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[:, 0].cpu()


@torch.no_grad()
def rise(model, x, target, masks: int = 2000, cells: int = 7, p: float = 0.5, batch_size: int = 64,
         seed: int = 0):
    """RISE: the expected target probability under random masks, each pixel weighted by
    whether it was kept. ``masks`` random binary ``cells`` x ``cells`` grids, upsampled with
    a random shift; masked pixels go to the model's zero input (the normalisation mean).
    Rows of ``x`` that are the same image (several targets) share their forward passes."""
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    ch, cw = -(-h // cells), -(-w // cells)
    out = torch.zeros(n, h, w)
    targets = torch.as_tensor(target, device=x.device).view(-1).expand(n)
    first = [next(j for j in range(i + 1) if torch.equal(x[j], x[i])) for i in range(n)]
    for s in range(0, masks, batch_size):
        b = min(batch_size, masks - s)
        grid = (torch.rand(b, 1, cells, cells, generator=g) < p).float()
        up = F.interpolate(grid, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear", align_corners=False)
        dy = torch.randint(0, ch, (b,), generator=g)
        dx = torch.randint(0, cw, (b,), generator=g)
        m = torch.stack([up[i, 0, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])  # b x h x w
        md = m.to(x.device)
        probs = {}
        for i in range(n):
            if first[i] not in probs:
                probs[first[i]] = model(x[i : i + 1] * md[:, None]).softmax(1).cpu()
            out[i] += (probs[first[i]][:, int(targets[i])][:, None, None] * m).sum(0)
    return out / (masks * p)


def centre(model, x, target):
    """The centre-point baseline: a map peaked at the image centre."""
    n, _, h, w = x.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2
    return (-d.float()).expand(n, h, w).clone()


def extremal(model, x, target, areas=(0.018, 0.025, 0.05, 0.1), **kw):
    """The saliency of extremal perturbations (preserve): the smoothed sum of the masks at ``areas``."""
    from .pixel import extremal_perturbation

    return extremal_perturbation(model, x, target, areas, progress=False, **kw).saliency().cpu()


def prunegrad_map(model, x, target, keep: float = 0.15, **kw):
    from .prunegrad import prunegrad

    return prunegrad(model, x, target, keep=keep, **kw).saliency.cpu()


#: every saliency method behind ``saliency()``, in ``chanattr.method_names.SALIENCY_METHODS``'s order
METHODS: dict[str, Callable] = {
    "extremal": extremal,
    "prunegrad": prunegrad_map,
    "gradient": gradient,
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": integrated_gradients,
    "guided_backprop": guided_backprop,
    "gradcam": gradcam,
    "rise": rise,
    "centre": centre,
}


def _options(method: str) -> list[str]:
    """The keyword options ``method`` takes (those of the function it forwards to included)."""
    import inspect

    from .pixel import extremal_perturbation
    from .prunegrad import prunegrad

    forwards = {"extremal": extremal_perturbation, "prunegrad": prunegrad}
    names = []
    for fn in (METHODS[method], forwards.get(method)):
        if fn is None:
            continue
        for p in list(inspect.signature(fn).parameters.values())[3:]:
            if p.kind is not p.VAR_KEYWORD and p.name not in names and p.name not in ("progress", "output"):
                names.append(p.name)
    return names


def saliency(method: str, model: nn.Module, x: torch.Tensor, target, *, output=None, **kwargs) -> torch.Tensor:
    """An N x H x W saliency map of ``method`` (one of ``METHODS``) for N images (the model's
    normalised input) and their targets. ``kwargs``: the method's options (e.g. ``steps`` for
    integrated gradients, ``layer`` for Grad-CAM); an option the method does not take is
    refused. ``output``: which of the model's outputs holds the logits (an index, a key, a
    callable: ``chanattr.model_output.select_output``). The model runs in eval mode and is left
    as found."""
    if method not in METHODS:
        raise ChanattrError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    unknown = sorted(set(kwargs) - set(_options(method)))
    if unknown:
        takes = ", ".join(_options(method)) or "no options"
        raise ChanattrError(f"{method} takes no option {', '.join(map(repr, unknown))}: it takes {takes}")
    x = check_batch(x)
    model, target = target_model(model, target, output)
    targets = as_targets(target, x.shape[0], x.device)
    with frozen(model):
        return METHODS[method](model, x, targets, **kwargs)
