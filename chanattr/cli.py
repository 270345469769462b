"""The ``chanattr`` command line. Each sub-command lives in a ``cmd_*`` function below;
bad input ends with a one-line error on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Callable, Sequence

from .errors import ChanattrError

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default, bundled), torchvision:ARCH, timm:ARCH, "
                        "path/to/file.py:function or package.module:function")
    g.add_argument("--weights", metavar="PATH", help="a local state-dict file for the model")
    g.add_argument("--random-weights", action="store_true", help="use random weights (no pretrained weights)")
    g.add_argument("--input-size", type=int, metavar="N", help="side of the square input in pixels (default 224)")
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean (default ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std (default ImageNet's)")
    g.add_argument("--labels", metavar="FILE", help="class names, one a line (default: indices)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")


def model_from_args(args: argparse.Namespace):
    from .models import load_model

    _check_device(args.device)
    return load_model(
        args.model,
        weights=args.weights,
        random_weights=args.random_weights,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        labels=args.labels,
        device=args.device,
    )


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ChanattrError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChanattrError(f"device {device!r} asked for, but no CUDA GPU is available here: use --device cpu")


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args)`` as sub-command ``name``; ``setup(parser)`` adds its arguments."""

    def register(fn):
        fn.command_help, fn.command_setup = help, setup
        COMMANDS[name] = fn
        return fn

    return register


def _setup_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file, or a bundled sample: chelsea, coffee, astronaut, rocket")
    p.add_argument("--top", type=int, default=5, metavar="K", help="how many classes (default 5)")
    p.add_argument("--json", action="store_true", help='print [{"index", "name", "probability"}, ...] as JSON')
    add_model_args(p)


@command("predict", "top classes of a model for an image", _setup_predict)
def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .images import prepare_image

    lm = model_from_args(args)
    img = prepare_image(args.image, lm.preprocessing)
    with torch.no_grad():
        probs = lm.model(img.input[None].to(lm.device)).softmax(-1)[0].cpu()
    k = max(1, min(args.top, probs.numel()))
    values, indices = probs.topk(k)
    rows = [{"index": int(i), "name": lm.class_name(int(i)), "probability": float(v)} for v, i in zip(values, indices)]
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{img.name} ({lm.name}):")
        for rank, r in enumerate(rows, 1):
            print(f"  {rank:>2}. {r['probability']:7.2%}  {r['index']:>5}  {r['name']}")
    return 0


def _setup_layers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--leaves", action="store_true", help="only modules without children")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    add_model_args(p)


@command("layers", "the model's layers with output shapes and channel counts", _setup_layers)
def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .hooks import list_layers

    lm = model_from_args(args)
    size = lm.preprocessing.input_size
    infos = list_layers(lm.model, torch.zeros(1, 3, size, size, device=lm.device), leaves_only=args.leaves)
    if args.json:
        print(json.dumps([{"name": i.name, "type": i.kind, "shape": i.shape, "channels": i.channels,
                           "calls": i.calls} for i in infos]))
        return 0
    width = max((len(i.name) for i in infos), default=4)
    print(f"{'layer':<{width}}  {'type':<22} {'output shape':<20} channels")
    for i in infos:
        shape = "x".join(str(s) for s in i.shape[1:]) if i.shape else "(not a tensor)"
        calls = f"  (runs {i.calls}x)" if i.calls > 1 else ""
        print(f"{i.name:<{width}}  {i.kind:<22} {shape:<20} {i.channels if i.channels else '-'}{calls}")
    print(f"({len(infos)} layers; input 3x{size}x{size})")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line: what is wrong and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="chanattr", description="Channel-level attribution and feature inversion for PyTorch models."
    )
    parser.add_argument("--version", action="version", version=f"chanattr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, fn in COMMANDS.items():
        p = sub.add_parser(name, help=fn.command_help, description=fn.command_help[0].upper() + fn.command_help[1:] + ".")
        fn.command_setup(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return int(args.func(args) or 0)
    except ChanattrError as e:
        print(f"chanattr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"chanattr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
