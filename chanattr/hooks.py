"""Layer hooks: the one mechanism every method uses to read or change a layer's output.

- ``get_layer(model, "blocks.5")``: a module by its dotted name (close names on a typo).
- ``list_layers(model, x)``: every named module with its output shape and channel count.
- ``LayerHooks`` (and the shorthands ``capture`` / ``edit``): a context manager that captures
  the outputs of named layers, or replaces them with a function of themselves, for every
  forward pass run inside the ``with``. Hooks are removed on exit, exceptions included.
- ``preserved(model)``: restores train/eval modes, ``requires_grad`` flags and buffers on exit;
  ``frozen(model)``: the same, with eval mode and no parameter gradients inside.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import ChanattrError, LayerNotFoundError

EditFn = Callable[[torch.Tensor], torch.Tensor]


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module (the root, named ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def parse_site(name: str) -> tuple[str, int | None]:
    """``"blocks.2#1"`` -> ``("blocks.2", 1)``: a module and which of its runs in one forward
    pass (0-based); ``"blocks.2"`` -> ``("blocks.2", None)``. An element suffix (``:k``,
    ``:key``, see ``parse_element``) is dropped."""
    name = parse_element(name)[0]
    if "#" in name:
        base, _, k = name.rpartition("#")
        if k.isdigit():
            return base, int(k)
        raise LayerNotFoundError(f"{name!r}: after '#' give which run of the module, 0, 1, ... (e.g. {base}#0)")
    return name, None


def parse_element(name: str) -> tuple[str, int | str | None]:
    """``"encoder.layer.0.attention:0"`` -> ``("encoder.layer.0.attention", 0)``: which element of
    a module's tuple output (``:k``) or dict / Hugging Face ``ModelOutput`` output (``:key``) a
    site means; ``None`` (no suffix): the output itself, or its first tensor."""
    if ":" not in name:
        return name, None
    base, _, element = name.rpartition(":")
    if not element:
        raise LayerNotFoundError(f"{name!r}: after ':' give an element of the layer's output, an index or a key")
    return base, int(element) if element.isdigit() else element


def get_element(output, element: int | str | None, name: str = "layer"):
    """The tensor a site reads from a module's output: the output itself if it is a tensor
    (and ``element`` is None), else element ``element`` of a tuple / list / dict /
    ``ModelOutput``, or (``None``) its first tensor."""
    if isinstance(output, torch.Tensor):
        if element is None:
            return output
        raise ChanattrError(f"{name!r} returns a tensor, not a tuple or dict: drop the ':{element}' suffix")
    if element is None:
        values = list(output.values()) if isinstance(output, Mapping) else list(output) if isinstance(
            output, (tuple, list)) else []
        for v in values:
            if isinstance(v, torch.Tensor):
                return v
        raise ChanattrError(f"{name!r} returns {type(output).__name__} without a tensor: pick another layer")
    try:
        value = output[element]
    except (KeyError, IndexError, TypeError):
        raise ChanattrError(f"{name!r} returns {type(output).__name__} with no element {element!r}: use one of "
                            f"{', '.join(map(str, element_names(output))) or 'none'}") from None
    if not isinstance(value, torch.Tensor):
        raise ChanattrError(f"element {element!r} of {name!r} is {type(value).__name__}, not a tensor: pick another")
    return value


def element_names(output) -> list:
    """The keys of a dict / ``ModelOutput``, the indices of a tuple or list, else none."""
    if hasattr(output, "keys"):
        return list(output.keys())
    return list(range(len(output))) if isinstance(output, (tuple, list)) else []


def set_element(output, element: int | str | None, value: torch.Tensor):
    """``output`` with the element ``get_element`` reads replaced by ``value`` (a new tuple /
    list; a shallow copy of a dict / ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return value
    if element is None:
        keys = list(output.keys()) if isinstance(output, Mapping) else range(len(output))
        element = next(k for k in keys if isinstance(output[k], torch.Tensor))
    if isinstance(output, Mapping):
        import copy

        out = copy.copy(output)
        out[element] = value
        return out
    items = list(output)
    items[element] = value
    return type(output)(items) if isinstance(output, list) else tuple(items) if type(output) is tuple else type(
        output)(*items)


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (dotted, e.g. ``layer3.1.conv2``; ``NAME#k`` names the
    module too, at its k-th run in a forward pass).

    Raises ``LayerNotFoundError`` naming the closest layer names.
    """
    name, _ = parse_site(name)
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:  # a prefix match helps with "blocks" -> "blocks.0", ...
        close = [n for n in names if n.startswith(name.rstrip("."))][:5]
    hint = f"; close names: {', '.join(close)}" if close else "; `chanattr layers` lists them"
    raise LayerNotFoundError(f"the model has no layer {name!r}{hint}")


@dataclass
class LayerInfo:
    """One named module and what it returned for an example input."""

    name: str
    kind: str  # the module's class name
    shape: tuple[int, ...] | None  # output shape, batch included; None if not a tensor
    calls: int  # times the module ran in one forward pass
    container: str | None = None  # the output's type when not a tensor (``shape`` is its first tensor's)

    @property
    def channels(self) -> int | None:
        """Channels of a channels-first output (dim 1), else None."""
        return self.shape[1] if self.shape is not None and len(self.shape) >= 2 else None


def list_layers(model: nn.Module, x: torch.Tensor, *, leaves_only: bool = False) -> list[LayerInfo]:
    """Every named module (in definition order) with its output shape for input ``x``.

    Modules that did not run for ``x`` are left out. The model is left as found.
    """
    infos: dict[str, LayerInfo] = {}
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(_module, _inputs, output):
            info = infos.get(name)
            if info is None:
                try:
                    shape = tuple(get_element(output, None, name).shape)
                except ChanattrError:
                    shape = None
                container = None if isinstance(output, torch.Tensor) else type(output).__name__
                infos[name] = LayerInfo(name, type(module).__name__, shape, 1, container)
            else:
                info.calls += 1

        return hook

    order = []
    for name, module in model.named_modules():
        if not name or (leaves_only and any(True for _ in module.children())):
            continue
        order.append(name)
        handles.append(module.register_forward_hook(make_hook(name, module)))
    try:
        with preserved(model), torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [infos[n] for n in order if n in infos]


class LayerHooks:
    """Capture and/or edit the outputs of named layers while the ``with`` block runs.

    ``layers``: a name, a list of names (capture only), or a mapping from names to an edit
    function ``fn(output) -> new_output`` (or ``None`` to capture only). After each forward
    pass, ``hooks[name]`` holds that layer's output (after its edit) from the last pass.

    - ``store=False`` keeps nothing (edit only): no activations are kept alive.
    - ``detach=True`` stores detached copies (no graph kept alive). Otherwise the stored
      tensor is part of the graph, so ``torch.autograd.grad(y, hooks[name])`` works.
    - A module that runs more than once in one forward pass is refused unless ``call`` says
      which run (0-based) to hook, or its name does (``NAME#k``); the count restarts with every
      call of ``model``.
    - A module that returns a tuple, dict or Hugging Face ``ModelOutput`` is read (and edited)
      at its first tensor, or at the element its name gives (``NAME:k``, ``NAME:key``).
    - ``port="input"``: the first positional input of the modules instead of their output
      (a forward pre-hook), e.g. the input of an attention's output projection.
    - ``port="heads"``: for torch's ``nn.MultiheadAttention`` (which never calls its output
      projection as a module): the concatenated per-head context (N x T x E, before the output
      projection), recomputed from the module's inputs and weights (``mha_context``); an edit
      of it replaces the module's output by the projection of the edited context.

    Stored outputs are protected from in-place operations downstream (``nn.ReLU(inplace=True)``):
    the network continues with a copy.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | Mapping[str, EditFn | None],
        *,
        store: bool = True,
        detach: bool = False,
        call: int | None = None,
        port: str = "output",
    ) -> None:
        if port not in ("output", "input", "heads"):
            raise ChanattrError(f"unknown port {port!r}: use output, input or heads")
        if isinstance(layers, str):
            layers = {layers: None}
        elif not isinstance(layers, Mapping):
            layers = {name: None for name in layers}
        self.model = model
        self.edits: dict[str, EditFn | None] = dict(layers)
        self.modules = {name: get_layer(model, name) for name in self.edits}
        self.store = store
        self.detach = detach
        self.call = call
        self.port = port
        self.outputs: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise KeyError(f"no output captured for {name!r}: did the forward pass run inside the `with`?")
        return self.outputs[name]

    def _make_hook(self, name: str):
        fn = self.edits[name]
        call = parse_site(name)[1]
        call = self.call if call is None else call
        element = parse_element(name)[1]

        def hook(_module, inputs, *rest):
            kwargs, output = (rest[0], rest[1]) if self.port == "heads" else ({}, rest[0] if rest else None)
            if self.port == "heads":  # recompute the heads' context, edit it, project it
                _check_no_masks(inputs, kwargs)
                ctx = mha_context(_module, *inputs[:3])
                new = tensor_hook(ctx)
                return None if new is None else (mha_project(_module, new), None)
            if self.port == "input":  # a pre-hook: edit the first positional input
                if not inputs or not isinstance(inputs[0], torch.Tensor):
                    raise ChanattrError(f"layer {name!r} has no tensor input to hook")
                new = tensor_hook(inputs[0])
                return None if new is None else (new, *inputs[1:])
            if isinstance(output, torch.Tensor) and element is None:
                return tensor_hook(output)
            new = tensor_hook(get_element(output, element, name))
            return None if new is None else set_element(output, element, new)

        def tensor_hook(output):
            index = self._calls.get(name, 0)
            self._calls[name] = index + 1
            if call is None and index > 0:
                raise ChanattrError(
                    f"layer {name!r} runs more than once in a forward pass: name the run, {name}#0, {name}#1, ... "
                    f"(call=k in Python)"
                )
            if call is not None and index != call:
                return None
            out = fn(output) if fn is not None else output
            if not self.store:
                return out if fn is not None else None
            if self.detach:
                self.outputs[name] = out.detach().clone()
                return out if fn is not None else None
            self.outputs[name] = out
            return out.clone()  # downstream in-place ops act on the copy, not on the stored tensor

        return hook

    def _reset(self, *_args) -> None:
        self._calls.clear()

    def __enter__(self) -> "LayerHooks":
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset))
            for name, module in self.modules.items():
                hook = self._make_hook(name)
                self._handles.append(module.register_forward_pre_hook(hook) if self.port == "input" else
                                     module.register_forward_hook(hook, with_kwargs=self.port == "heads"))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook this object registered (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()


def mha_context(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
    """The concatenated per-head attention context of torch's ``nn.MultiheadAttention`` (N x T x E,
    batch first), what its output projection receives, recomputed from its inputs and weights (in
    eval mode: no dropout). Masks, bias_k/bias_v and add_zero_attn are not supported."""
    import torch.nn.functional as F

    if not isinstance(module, nn.MultiheadAttention):
        raise ChanattrError(f"port 'heads' needs torch's nn.MultiheadAttention, not {type(module).__name__}")
    if module.bias_k is not None or module.add_zero_attn:
        raise ChanattrError("nn.MultiheadAttention with bias_k/bias_v or add_zero_attn: heads are not supported")
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h = module.embed_dim, module.num_heads
    if module._qkv_same_embed_dim:
        wq, wk, wv = module.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    bq, bk, bv = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
    n, t, s = query.shape[0], query.shape[1], key.shape[1]
    q = F.linear(query, wq, bq).view(n, t, h, e // h).transpose(1, 2)
    k = F.linear(key, wk, bk).view(n, s, h, e // h).transpose(1, 2)
    v = F.linear(value, wv, bv).view(n, s, h, e // h).transpose(1, 2)
    attn = (q @ k.transpose(-2, -1) / (e // h) ** 0.5).softmax(-1)
    return (attn @ v).transpose(1, 2).reshape(n, t, e)


def _check_no_masks(inputs: tuple, kwargs: dict) -> None:
    """Refuse an attention call with masks: the recomputed context would ignore them."""
    named = {k: v for k, v in kwargs.items() if k in ("key_padding_mask", "attn_mask") and v is not None}
    if named or any(v is not None for v in inputs[3:4] + inputs[5:6]) or kwargs.get("is_causal"):
        raise ChanattrError("the attention is called with a mask: heads of nn.MultiheadAttention are supported "
                            "without masks only; use --unit hidden")


def mha_project(module: nn.MultiheadAttention, context: torch.Tensor) -> torch.Tensor:
    """The module's output from a (possibly edited) context: its output projection, in its own
    batch layout."""
    out = torch.nn.functional.linear(context, module.out_proj.weight, module.out_proj.bias)
    return out if module.batch_first else out.transpose(0, 1)


def capture(model: nn.Module, layers: str | Sequence[str], **kwargs) -> LayerHooks:
    """``with capture(model, ["blocks.5"]) as acts: model(x)``; then ``acts["blocks.5"]``."""
    return LayerHooks(model, layers, **kwargs)


def edit(model: nn.Module, edits: Mapping[str, EditFn], *, store: bool = False, **kwargs) -> LayerHooks:
    """``with edit(model, {"blocks.5": lambda a: a * m}): y = model(x)``: replaced outputs."""
    return LayerHooks(model, edits, store=store, **kwargs)


# --- leaving the model as found -------------------------------------------------------------

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def model_state(model: nn.Module) -> dict:
    """A snapshot to compare with ``==``: every module's train/eval mode, every parameter's
    ``requires_grad`` and whether its ``.grad`` is None, the number of hooks of each kind on
    every module, and a fingerprint (SHA-1 of the bytes) of every parameter and buffer, by name."""
    import hashlib

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha1(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()

    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "hooks": [sum(len(getattr(m, d, {})) for d in _HOOK_DICTS) for m in model.modules()],
        "parameters": {n: digest(p) for n, p in model.named_parameters()},
        "buffers": {n: digest(b) for n, b in model.named_buffers()},
    }


@contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's train/eval mode, every parameter's ``requires_grad`` and every
    buffer's values (e.g. BatchNorm's running statistics) on exit, exceptions included."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                if b.shape == saved.shape and not torch.equal(b, saved):
                    b.copy_(saved)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter inside, restored on exit.

    Methods that differentiate only with respect to an input or a mask use this, so no
    parameter gradient is computed and nothing of the user's model changes.
    """
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
