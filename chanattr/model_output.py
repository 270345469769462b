"""Which of a model's outputs the methods explain: the logits picked from a tensor, a tuple, a
dict or a Hugging Face ``ModelOutput``, or any scalar per image a function computes from them.

``logits_model(model, output)`` returns a module that runs ``model`` and returns one N x classes
tensor (``output``: ``None`` for the default rule, a tuple index, a dict / ``ModelOutput`` key or a
callable). The wrapper shares the model's modules under their own names (``blocks.5`` stays
``blocks.5``), so layer names, hooks and ``torch.fx`` splits work through it; it copies nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Sequence, Union

import torch
from torch import nn

from .errors import ChanattrError
from .hooks import element_names

OutputSpec = Union[None, int, str, Callable]


def pick_output(out, output: OutputSpec = None):
    """The tensor ``output`` names in a model's output ``out`` (any shape): ``None``: ``out``
    itself if it is a tensor, else the ``logits`` entry of a dict / ``ModelOutput``, else the
    first element of a tuple; an int: that element of a tuple; a str: that key; a callable:
    ``output(out)``."""
    if isinstance(out, torch.fx.Proxy):  # being traced (``chanattr.split``): the tensor itself or its element
        return out if output is None else output(out) if callable(output) else out[output]
    if callable(output):
        value = output(out)
    elif output is None:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping) or hasattr(out, "keys"):
            if "logits" not in out.keys():
                raise ChanattrError(f"the model returns {type(out).__name__} without 'logits' (keys: "
                                    f"{', '.join(map(str, out.keys()))}): say which with output= / --output")
            value = out["logits"]
        elif isinstance(out, (tuple, list)) and out:
            value = out[0]
        else:
            raise ChanattrError(f"the model returns {type(out).__name__}: say which output to explain with "
                                f"output= / --output (an index, a key or a function)")
    else:
        try:
            value = out[output]
        except (KeyError, IndexError, TypeError):
            raise ChanattrError(f"the model's output ({type(out).__name__}) has no element {output!r}: use one of "
                                f"{', '.join(map(str, element_names(out))) or 'none (it is a tensor: drop --output)'}"
                                ) from None
    if not isinstance(value, torch.Tensor):
        raise ChanattrError(f"output {output!r} of the model is {type(value).__name__}, not a tensor: pick another")
    return value


def select_output(out, output: OutputSpec = None) -> torch.Tensor:
    """The logits in a model's output ``out`` (``pick_output``), as N x classes: one score per
    image (N) becomes N x 1; anything else refused."""
    value = pick_output(out, output)
    if isinstance(value, torch.fx.Proxy):
        return value
    if value.dim() == 1:  # one scalar per image: a single "class"
        value = value[:, None]
    if value.dim() != 2:
        raise ChanattrError(f"the explained output must be N x classes (or N scores), got {tuple(value.shape)}: "
                            f"pick another output, or reduce it with a function (a target function, "
                            f"--target-region for a segmentation)")
    return value


class SharedModules(nn.Module):
    """A module around ``model`` whose sub-modules, parameters and buffers are the model's, under
    their names in the model (no prefix), so layer names, hooks and torch.fx splits work
    through it; ``run_model`` calls the model's own forward with this wrapper's train/eval mode,
    the model's own flag restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_wrapped", model)  # not a child: names stay the model's
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.training = model.training

    def run_model(self, *args):
        # the model's forward on the model itself, not through __call__: torch.fx then sees only
        # the shared sub-modules, which it finds under their names here
        mode, self._wrapped.training = self._wrapped.training, self.training
        try:
            return type(self._wrapped).forward(self._wrapped, *args)
        finally:
            self._wrapped.training = mode


class LogitsModel(SharedModules):
    """``model`` returning ``select_output(model(x), output)``; its sub-modules are registered
    under their names in ``model`` (the wrapper adds no prefix), parameters shared."""

    def __init__(self, model: nn.Module, output: OutputSpec = None, args: tuple = ()) -> None:
        super().__init__(model)
        object.__setattr__(self, "_output", output)
        object.__setattr__(self, "_args", tuple(args))  # more positional inputs (Captum's additional_forward_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.run_model(x, *self._args), self._output)


def logits_model(model: nn.Module, output: OutputSpec = None, args: tuple = ()) -> nn.Module:
    """``model`` wrapped to return the logits to explain (see ``select_output``), called as
    ``model(x, *args)``; a ``LogitsModel`` is re-wrapped around its inner model, never nested."""
    if isinstance(model, LogitsModel):
        if (output is None or output is model._output) and not args:
            return model
        args = args or model._args
        output = output if output is not None else model._output
        model = model._wrapped
    return LogitsModel(model, output, args)


TargetSpec = Union[int, Sequence[int], torch.Tensor, Callable]


def target_model(model: nn.Module, target, output: OutputSpec = None) -> tuple[nn.Module, object]:
    """The model and target a method explains. A callable ``target`` -- ``fn(out) -> N scores``,
    one per image (the mean of a class over a region of a segmentation, a detector's score for
    one box, a regression output), ``out`` the model's output (or ``pick_output(out, output)``
    when ``output`` is given) -- becomes the wrapped model's only "class", index 0; a class
    index (int, list, tensor) stays as it is, with the model returning its logits."""
    if callable(target):
        fn = target if output is None else (lambda out: target(pick_output(out, output)))
        return logits_model(model, fn), 0
    return logits_model(model, output), target


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a ``LogitsModel`` (or ``model`` itself)."""
    return model._wrapped if isinstance(model, LogitsModel) else model
