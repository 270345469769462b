"""Split a model at a named layer: compute everything up to the layer once, then run only
the rest of the network as often as needed.

``split_at(model, layer, x)`` traces the model with ``torch.fx`` (the layer kept as one
call), and cuts the graph in two:

- the *prefix*: every operation that does not depend on the layer's output. It returns the
  layer's output and every other prefix value the rest of the network reads (skip
  connections that jump over the layer, for instance);
- the *suffix*: every operation that depends on the layer's output, as a function of those.

Both run the model's own modules (no copies of parameters). The split is checked on the
example input (``suffix(prefix(x))`` must equal ``model(x)``); where tracing or the check
fails, ``split_at`` returns ``None`` and says why in ``reason``: callers then fall back to
full forward passes with a hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

from .hooks import _check_no_masks, get_element, get_layer, mha_context, parse_element, parse_site


class _Tracer(fx.Tracer):
    """Keeps the target layer (and modules that do not trace, as timm registers them) as leaves."""

    def __init__(self, layer: str, leaf_types: tuple, autowrap: tuple) -> None:
        super().__init__(autowrap_functions=autowrap)
        self.layer = layer
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname == self.layer or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _timm_notrace() -> tuple[tuple, tuple]:
    try:
        from timm.layers import _fx as timm_fx

        return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())
    except Exception:  # timm missing or its private API changed: plain fx
        return (), ()


@dataclass
class Split:
    """``prefix(x) -> (activation, others)``; ``suffix(activation, others) -> output``."""

    layer: str
    prefix_module: fx.GraphModule
    suffix_module: fx.GraphModule

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        out = self.prefix_module(x)
        return out[0], tuple(out[1:])

    def suffix(self, activation: torch.Tensor, others: tuple = ()) -> torch.Tensor:
        return self.suffix_module(activation, *others)


def _descendants(graph: fx.Graph, start: fx.Node) -> set[fx.Node]:
    found = {start}
    for node in graph.nodes:  # topological order
        if node is not start and any(a in found for a in node.all_input_nodes):
            found.add(node)
    return found


def _defaults_after_first(model: nn.Module) -> dict | None:
    """The forward's optional arguments after the input (timm's ``attn_mask=None``, ...), fixed to
    their defaults for tracing, so the traced graph has the one input the split needs."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    fixed = {p.name: p.default for p in params
             if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return fixed or None


def _drop_specialised(graph: fx.Graph) -> None:
    """Remove the placeholders of the arguments fixed to their defaults (see
    ``_defaults_after_first``) with the checks fx adds on them, when nothing else reads them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders[1:]:
        chain = _descendants(graph, p)
        if any(user not in chain for n in chain for user in n.users) or any(n.op == "output" for n in chain):
            continue
        for n in reversed([n for n in graph.nodes if n in chain]):
            graph.erase_node(n)


def _build(model: nn.Module, layer: str) -> Split:
    leaf_types, autowrap = _timm_notrace()
    tracer = _Tracer(layer, leaf_types, autowrap)
    graph = tracer.trace(model, concrete_args=_defaults_after_first(model))
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(nodes) != 1:
        raise RuntimeError(f"layer {layer!r} appears {len(nodes)} times in the traced graph")
    split_node = nodes[0]
    _drop_specialised(graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise RuntimeError("only models with a single input can be split")
    after = _descendants(graph, split_node)
    after.discard(split_node)
    varying = _descendants(graph, placeholders[0])  # everything else is static (weights, constants)
    output = next(n for n in graph.nodes if n.op == "output")
    # input-dependent prefix values read by the suffix, besides the layer's output
    crossing = [
        node for node in graph.nodes
        if node in varying and node not in after and node is not split_node and node.op != "output"
        and any(user in after or user is output for user in node.users)
    ]

    prefix = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in after or node.op == "output":
            continue
        env[node] = prefix.node_copy(node, lambda n: env[n])
    prefix.output(tuple(env[n] for n in [split_node, *crossing]))

    suffix = fx.Graph()
    senv: dict[fx.Node, fx.Node] = {split_node: suffix.placeholder("activation")}
    for i, node in enumerate(crossing):
        senv[node] = suffix.placeholder(f"other_{i}")
    for node in graph.nodes:
        if node in after or (node not in varying and node.op not in ("placeholder", "output")):
            senv[node] = suffix.node_copy(node, lambda n: senv[n])
    suffix.output(fx.map_arg(output.args[0], lambda n: senv[n]))
    modules = []
    for g in (prefix, suffix):
        gm = fx.GraphModule(model, g)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        modules.append(gm)
    return Split(layer, *modules)


def split_at(model: nn.Module, layer: str, example: torch.Tensor) -> tuple[Split | None, str]:
    """Split ``model`` at ``layer``; returns ``(split, "")`` or ``(None, reason)``.

    ``example``: an input batch used to check that the split computes what the model does.
    """
    get_layer(model, layer)  # a clear error for an unknown name
    if "#" in layer:
        return None, f"{layer!r} names one run of a module that runs several times: full forward passes"
    if parse_element(layer)[1] is not None:
        return None, f"{layer!r} names an element of a module's tuple or dict output: full forward passes"
    try:
        split = _build(model, layer)
        with torch.no_grad():
            activation, others = split.prefix(example)
            n = example.shape[0]
            for value in (activation, *others):
                if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != n:
                    return None, "a value that crosses the split is not a batch of tensors"
            expected = model(example)
            got = split.suffix(activation, others)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return None, "the split model's output does not match the model's"
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max().clamp(min=1))):
            return None, "the split model's output differs from the model's"
        return split, ""
    except Exception as e:  # tracing can fail on data-dependent control flow, and more
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"torch.fx could not split the model at {layer!r} ({type(e).__name__}: {first[:160]})"


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer has run."""


def layer_function(model: nn.Module, layer: str, example: torch.Tensor, port: str = "output"):
    """A function ``x -> output of layer`` (differentiable in ``x``) that runs only what the
    layer needs: the split's prefix where the model can be split, else a forward pass with a
    hook that stops the pass once the layer has run. ``port="input"``: the layer's first input
    instead (always the hook). Returns ``(fn, path)``."""
    if port == "output":
        split, _ = split_at(model, layer, example)
        if split is not None:
            return (lambda x: split.prefix(x)[0]), "split"
    module = get_layer(model, layer)
    call = parse_site(layer)[1] or 0  # NAME#k: the k-th run
    element = parse_element(layer)[1]  # NAME:k / NAME:key: an element of a tuple or dict output

    def run(x: torch.Tensor) -> torch.Tensor:
        store = {}
        seen = [0]

        def hook(_m, inputs, *rest):
            kwargs, output = (rest[0], rest[1]) if port == "heads" else ({}, rest[0] if rest else None)
            seen[0] += 1
            if seen[0] <= call:
                return None
            if port == "heads":
                _check_no_masks(inputs, kwargs)
                store["out"] = mha_context(_m, *inputs[:3])
            else:
                store["out"] = inputs[0] if port == "input" else get_element(output, element, layer)
            raise _Stop

        handle = module.register_forward_pre_hook(hook) if port == "input" else module.register_forward_hook(
            hook, with_kwargs=port == "heads")
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "out" not in store:
            raise RuntimeError(f"layer {layer!r} did not run in the forward pass")
        return store["out"]

    return run, "full"
