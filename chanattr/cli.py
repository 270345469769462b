"""The ``chanattr`` command line. Each sub-command lives in a ``cmd_*`` function below;
bad input ends with a one-line error on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Callable, Sequence

from .runtime import retain_freed_memory
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
    g.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="normalisation mean: R G B, or one value for a greyscale (one-channel) model (default ImageNet's)")
    g.add_argument("--std", type=float, nargs="+", metavar="S",
                   help="normalisation std: R G B, or one value for a greyscale model (default ImageNet's)")
    g.add_argument("--labels", metavar="FILE", help="class names, one a line (default: indices)")
    g.add_argument("--output", metavar="KEY",
                   help="which of the model's outputs holds the logits: a tuple index or a dict / ModelOutput key "
                        "(default: the tensor it returns, or 'logits')")
    if getattr(p, "run_mode", False):
        g.add_argument("--device", default="auto",
                       help="auto (default): cuda:LOCAL_RANK where CUDA is available, else cpu; or cpu, cuda, cuda:1")
    else:
        g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds --random-weights (the same seed, the same network; recorded in summary.json) and, "
                        "for invert and visualize, the starting image; the attribution methods are deterministic "
                        "(default 0)")


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
        seed=args.seed,
        output=_output_key(args.output),
    )


def _output_key(text: str | None):
    """``--output``: an index (digits) or a key."""
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ChanattrError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChanattrError(f"device {device!r} asked for, but no CUDA GPU is available here: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ChanattrError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                            f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ChanattrError(f"device {device!r} asked for, but Apple's MPS is not available here: use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ChanattrError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")


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


@command("layers", "the model's layers with output shapes, layouts and units", _setup_layers)
def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .hooks import list_layers
    from .units import layer_units

    lm = model_from_args(args)
    size = lm.preprocessing.input_size
    infos = list_layers(lm.model, torch.zeros(1, lm.preprocessing.channels, size, size, device=lm.device),
                        leaves_only=args.leaves)
    units = {i.name: layer_units(lm.model, i) for i in infos}
    if args.json:
        print(json.dumps([{"name": i.name, "type": i.kind, "shape": i.shape, "channels": i.channels,
                           "calls": i.calls, "container": i.container, "layout": units[i.name][0],
                           "units": units[i.name][1]} for i in infos]))
        return 0
    width = max((len(i.name) for i in infos), default=4)
    print(f"{'layer':<{width}}  {'type':<22} {'output shape':<16} {'layout':<6}  units (--unit)")
    for i in infos:
        shape = "x".join(str(s) for s in i.shape[1:]) if i.shape else "(not a tensor)"
        if i.container:
            shape += f" ({i.container}[0])"
        calls = f"  (runs {i.calls}x: {i.name}#0 .. {i.name}#{i.calls - 1})" if i.calls > 1 else ""
        layout, counts = units[i.name]
        described = ", ".join(f"{n} {k}" for k, n in counts.items()) or "-"
        print(f"{i.name:<{width}}  {i.kind:<22} {shape:<16} {layout or '?':<6}  {described}{calls}")
    print(f"({len(infos)} layers; input {lm.preprocessing.channels}x{size}x{size}; layout ? = give --layout)")
    return 0


def add_images_args(p: argparse.ArgumentParser) -> None:
    """IMAGE... and --target (or --target-unit / --target-region), for the commands that attribute images
    (under ``chanattr run``: --images SOURCE instead of IMAGE...)."""
    if getattr(p, "run_mode", False):
        p.add_argument("--images", required=True, metavar="SOURCE",
                       help="a folder of images, a text file of image paths (one a line), or coco:DIR (a COCO-style "
                            "folder such as coco128: its (image, class) pairs, each class's most probable ImageNet "
                            "class as the target, and the pointing game's hit in the results)")
    else:
        p.add_argument("image", nargs="+", help="image files, or bundled samples: chelsea, coffee, astronaut, rocket")
    p.add_argument("--target", default="auto", help="class index, or auto for each image's top-1 class (default)")
    p.add_argument("--target-unit", metavar="LAYER:INDEX",
                   help="explain a unit instead of a class: the mean activation of channel (or hidden unit) INDEX of "
                        "LAYER -- what in the image drives it")
    p.add_argument("--target-region", metavar="CLASS:TOP,LEFT,H,W",
                   help="explain a segmentation class inside a box of the output (N x classes x H x W; pick it with "
                        "--output, e.g. out for torchvision's segmentation models)")


def add_output_args(p: argparse.ArgumentParser, *, per_image: bool = False, progress: bool = True) -> None:
    """--out and --overwrite (and --no-progress where the command has it)."""
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder" + (" (a sub-folder per image when several)" if per_image else ""))
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in DIR")
    if progress or getattr(p, "run_mode", False):
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_run_args(p: argparse.ArgumentParser, *, areas: Sequence[float]) -> None:
    """Arguments shared by the extremal-perturbation commands."""
    add_images_args(p)
    p.add_argument("--areas", type=float, nargs="+", default=list(areas), metavar="A",
                   help=f"areas as fractions in (0, 1) (default {' '.join(str(a) for a in areas)})")
    p.add_argument("--variant", choices=["preserve", "delete", "dual"], default="preserve",
                   help="keep only the region (preserve, default), remove it (delete), or both (dual)")
    p.add_argument("--reward", choices=["simple", "contrastive"], default="simple",
                   help="target logit (simple, default) or target minus the best other logit (contrastive)")
    p.add_argument("--iterations", type=int, metavar="N", help="most iterations (the run stops once the masks settle)")
    add_output_args(p, per_image=True)


def resolve_targets(lm, x, target: str):
    """``auto``: each image's top-1 class; else one class index for every image."""
    import torch

    from .targets import class_index

    index = class_index(target)
    if index is None:
        with torch.no_grad():
            return lm.model(x).argmax(1)
    lm.check_target(index)
    return torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)


def _prepare_run(args, files: Sequence[str]):
    """Model, images, output folders (checked before any work) and targets of a run."""
    from .extremal import check_areas

    check_areas(args.areas)
    if args.iterations is not None and args.iterations < 1:
        raise ChanattrError("--iterations must be at least 1")
    return _prepare_images(args, files)


def _with_target(lm, args):
    """``lm`` explaining what --target-unit / --target-region name (one output, index 0, named
    after it), or ``lm`` itself."""
    from dataclasses import replace

    unit, region = getattr(args, "target_unit", None), getattr(args, "target_region", None)
    if unit is None and region is None:
        return lm
    if unit is not None and region is not None:
        raise ChanattrError("give --target-unit or --target-region, not both")
    if args.target != "auto":
        raise ChanattrError("--target goes without --target-unit / --target-region (they are the target)")
    from .model_output import target_model, unwrap

    if unit is not None:
        from .targets import unit_target_model

        layer, _, index = unit.rpartition(":")
        if not layer or not index.isdigit():
            raise ChanattrError(f"--target-unit takes LAYER:INDEX, e.g. blocks.5:17; got {unit!r}")
        model, name = unit_target_model(lm.model, layer, int(index), unit="auto"), f"unit {unit}"
    else:
        from .targets import region_target

        cls, _, box = region.partition(":")
        try:
            values = [int(v) for v in box.split(",")]
            cls_index = int(cls)
        except ValueError:
            values, cls_index = [], -1
        if len(values) != 4 or cls_index < 0:
            raise ChanattrError(f"--target-region takes CLASS:TOP,LEFT,H,W, e.g. 15:40,60,80,50; got {region!r}")
        model = target_model(unwrap(lm.model), region_target(cls_index, tuple(values)), _output_key(args.output))[0]
        name = f"class {cls_index} in {values}"
    return replace(lm, model=model, class_names=[name])


def _prepare_images(args, files: Sequence[str]):
    """Model, images, one output folder per image (checked before any work) and targets."""
    import torch

    from .images import prepare_images
    from .outputs import image_dirs, output_dir

    lm = _with_target(model_from_args(args), args)
    images = prepare_images(args.image, lm.preprocessing)
    dirs = [output_dir(d, files, args.overwrite) for d in image_dirs(args.out, [im.name for im in images])]
    x = torch.stack([im.input for im in images]).to(lm.device)
    targets = resolve_targets(lm, x, args.target)
    return lm, images, dirs, x, targets


def _warn_if_unresponsive(lm, x, targets, command: str, space=None) -> None:
    """Warn when an image's target output is the same whole and fully removed (the whole image
    blurred, or every channel at the baseline): its explanation would be arbitrary."""
    import torch

    from .errors import ChanattrWarning

    with torch.no_grad():
        full = lm.model(x).gather(1, targets[:, None])[:, 0]
        if space is not None:
            idx = torch.arange(x.shape[0], device=x.device)
            none = space.target_scores(torch.zeros(x.shape[0], space.num_units, device=x.device), idx, targets)
            what = f"all {space.unit} of {space.layer} at the baseline"
        else:
            from .evaluation import extremal_score

            none = extremal_score(lm.model, x, torch.zeros(x.shape[0], 1, *x.shape[-2:], device=x.device), targets,
                                  [1e-9])[:, 0]
            what = "the whole image blurred"
    for i, (a, b) in enumerate(zip(full.cpu().tolist(), none.cpu().tolist())):
        if abs(a - b) <= 1e-6 * max(1.0, abs(a)):
            warnings.warn(f"image {i + 1}: the target output is {a:.4g} for the image and for {what}: the model "
                          f"does not respond to it here (untrained or constant head?), so any mask scores the same "
                          f"and the {command} result says nothing", ChanattrWarning)


def _setup_explain(p: argparse.ArgumentParser) -> None:
    add_run_args(p, areas=(0.05, 0.1, 0.2))
    p.add_argument("--perturbation", choices=["blur", "fade"], default="blur",
                   help="what removing a pixel means: blur (default) or fade to the normalisation mean")
    p.add_argument("--preset", choices=["fast", "feathered", "paper"], default="fast",
                   help="fast (default): binary top-a masks from a disc search, stopped early -- it optimises the "
                        "extremal score itself; feathered: the same masks seen with a 4 px feathered edge, a smaller "
                        "search, at most 80 steps -- it optimises the feathered extremal score; paper: the paper's "
                        "method (soft masks, 800 SGD steps), several minutes an image on a CPU, the one to cite")
    p.add_argument("--feather", type=float, metavar="PX",
                   help="soften the edge of every mask the model sees by a Gaussian of PX pixels (default: the "
                        "preset's, 4 px at 224 px for feathered, else 0); the optimisation then maximises the "
                        "feathered extremal score")
    p.add_argument("--batch-images", type=int, default=4, metavar="N", help="images optimised together (default 4)")
    p.add_argument("--search-side", type=int, metavar="N",
                   help="fast preset: disc candidates per side of the search grid (default: about one blob radius "
                        "apart, at least 7; fewer is faster)")
    p.add_argument("--search-parts", type=int, metavar="K",
                   help="fast preset: the search also tries unions of up to K blobs (default 3; 1: single blobs)")
    add_model_args(p)


def explain_schedule(args: argparse.Namespace):
    """The preset's schedule with --search-side / --search-parts, or None (the preset's own)."""
    from dataclasses import replace

    from .extremal import preset_schedule

    given = {k: getattr(args, k, None) for k in ("search_side", "search_parts")}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    if preset_schedule(args.preset).start != "search":
        raise ChanattrError(f"--search-side / --search-parts set the search of the fast and feathered presets; the "
                            f"{args.preset} preset has none")
    if any(v < (0 if k == "search_side" else 1) for k, v in given.items()):
        raise ChanattrError("--search-side must be at least 0 and --search-parts at least 1")
    return replace(preset_schedule(args.preset), **given)


@command("explain", "extremal perturbations over input pixels", _setup_explain)
def cmd_explain(args: argparse.Namespace) -> int:
    from .outputs import write_explain
    from .pixel import extremal_perturbation

    files = ("masks.npz", "summary.json", "explain.png")
    lm, images, dirs, x, targets = _prepare_run(args, files)
    _warn_if_unresponsive(lm, x, targets, "explain")
    step = max(1, args.batch_images)
    for start in range(0, len(images), step):
        sl = slice(start, start + step)
        result = extremal_perturbation(
            lm.model, x[sl], targets[sl], args.areas, preset=args.preset, variant=args.variant,
            perturbation=args.perturbation, schedule=explain_schedule(args), feather=args.feather,
            reward=args.reward, iterations=args.iterations, seed=args.seed, progress=None if not args.no_progress else False,
        )
        for i, (img, folder) in enumerate(zip(images[sl], dirs[sl])):
            write_explain(folder, lm, img, x[sl][i], result, i)
            print(f"{img.name}: target {int(targets[sl][i])} ({lm.class_name(int(targets[sl][i]))}), "
                  f"{result.iterations} iterations, {result.seconds:.1f} s -> {folder}")
    return 0


def _setup_channels(p: argparse.ArgumentParser) -> None:
    add_run_args(p, areas=(0.02, 0.05, 0.1))
    p.add_argument("--layer", required=True,
                   help="dotted layer name (see chanattr layers); NAME#k: its k-th run; NAME:k / NAME:key: an element "
                        "of its tuple or dict output")
    p.add_argument("--unit", choices=["channels", "hidden", "heads", "tokens"], default="channels",
                   help="what a mask value switches: channels (dim 1 of a CNN map, default), hidden (the last dim of "
                        "a token sequence or channels-last map), heads (of an attention module) or tokens")
    p.add_argument("--layout", choices=["nchw", "ntc", "nhwc"],
                   help="how the layer's output is laid out, where chanattr cannot tell: nchw (channels first), "
                        "ntc (tokens x hidden), nhwc (channels last)")
    p.add_argument("--class-token", action="store_true",
                   help="with --unit tokens: mask the class (and other prefix) tokens too (default: kept)")
    p.add_argument("--baseline", choices=["zero", "mean"], default="zero",
                   help="what a removed unit becomes: zero (default) or its mean over the positions (pixels or "
                        "tokens) in this image")
    p.add_argument("--full-path", action="store_true", help="run the whole network every iteration (no split)")
    add_model_args(p)


@command("channels", "extremal perturbations over the units of a layer: channels, hidden units, heads or tokens",
         _setup_channels)
def cmd_channels(args: argparse.Namespace) -> int:
    from .units.space import UnitSpace, unit_extremal_perturbation
    from .outputs import write_channels

    if args.class_token and args.unit != "tokens":
        raise ChanattrError("--class-token goes with --unit tokens")
    files = ("channels.npz", "summary.json", "channels.png")
    lm, images, dirs, x, targets = _prepare_run(args, files)
    options = {"class_token": True} if args.class_token else {}
    # UnitSpace and the optimiser run the model frozen themselves, and leave it as found
    space = UnitSpace(lm.model, x, args.layer, unit=args.unit, layout=args.layout, baseline=args.baseline,
                      split="full" if args.full_path else "auto", **options)
    _warn_if_unresponsive(lm, x, targets, "channels", space)
    result = unit_extremal_perturbation(
        lm.model, x, targets, args.layer, args.areas, unit=args.unit, variant=args.variant, reward=args.reward,
        iterations=args.iterations, seed=args.seed, progress=None if not args.no_progress else False, space=space,
    )
    write_channels(dirs, lm, images, x, result, space)
    for img, folder, t in zip(images, dirs, targets.tolist()):
        print(f"{img.name}: target {t} ({lm.class_name(t)}), layer {args.layer} ({space.num_units} {space.unit}, "
              f"{space.layout}, {space.path} path), {result.iterations} iterations, {result.seconds:.1f} s -> {folder}")
    return 0


def _setup_prunegrad(p: argparse.ArgumentParser) -> None:
    add_images_args(p)
    p.add_argument("--keep", type=float, default=0.15, metavar="F", help="fraction of neurons kept, in (0, 1] (default 0.15)")
    p.add_argument("--granularity", choices=["neuron", "channel", "heads"], default="neuron",
                   help="prune single neurons (default), whole channels (hidden units at token layers), or whole "
                        "attention heads (of every attention module, or of those named by --layers)")
    p.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="keep the top fraction over all layers at once (default) or in each layer")
    p.add_argument("--criterion", choices=["abs", "signed"], default="abs",
                   help="neuron importance: |a dy/da| (abs, the paper's, default) or a dy/da (signed: keep only "
                        "neurons that support the target)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="modules to prune, by name (default: every module of a neuron activation type)")
    p.add_argument("--layer-types", nargs="+", metavar="TYPE",
                   help="modules to prune, by class name (e.g. GELU SiLU; default: ReLU, ReLU6, SiLU, GELU and kin, "
                        "not gates such as Sigmoid)")
    add_output_args(p, per_image=True, progress=False)
    add_model_args(p)


@command("prunegrad", "PruneGrad: the input gradient through the network pruned to its important neurons",
         _setup_prunegrad)
def cmd_prunegrad(args: argparse.Namespace) -> int:
    from .outputs import write_prunegrad
    from .prunegrad import prunegrad
    from .prunegrad_units import kept_unit_scores

    if not 0 < args.keep <= 1:
        raise ChanattrError(f"--keep {args.keep} is outside (0, 1]: give the fraction of neurons to keep, e.g. 0.15")
    files = ("saliency.npz", "summary.json", "prunegrad.png", "channels.npz")
    lm, images, dirs, x, targets = _prepare_images(args, files)
    result = prunegrad(lm.model, x, targets, keep=args.keep, granularity=args.granularity, scope=args.scope,
                       layers=args.layers, criterion=args.criterion, layer_types=args.layer_types)
    plain = prunegrad(lm.model, x, targets, keep=1.0, granularity=args.granularity, layers=args.layers,
                      layer_types=args.layer_types).saliency
    for i, (img, folder) in enumerate(zip(images, dirs)):
        summary = write_prunegrad(folder, lm, img, x[i], result, i, plain[i],
                                  units=kept_unit_scores(lm.model, x[i], result, i))
        ch = summary["channel_attribution"]
        extra = f", {len(ch['channels'])} {ch['unit']} kept at {ch['layer']}" if ch else ""
        print(f"{img.name}: target {int(targets[i])} ({lm.class_name(int(targets[i]))}), "
              f"{len(result.info['layers'])} modules pruned, target logit {summary['target_logit']:.2f} -> "
              f"{summary['pruned_target_logit']:.2f} in the pruned network{extra} -> {folder}")
    return 0


def _parse_channels(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ChanattrError(f"--channels takes auto, all or indices like 3,17,42; got {text!r}") from None


def _setup_invert(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image file, or a bundled sample: chelsea, coffee, astronaut, rocket")
    p.add_argument("--layer", required=True, help="dotted layer name (see chanattr layers)")
    p.add_argument("--channels", default="auto",
                   help="auto (run the channel extremal perturbation first), all, or indices I,J,K (default auto)")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="take the salient channels from a `chanattr channels` (or prunegrad) output folder")
    p.add_argument("--area", type=float, metavar="A",
                   help="fraction of channels in the salient subset (default: 0.05, or the smallest area in --from)")
    p.add_argument("--unit", choices=["channels", "hidden", "heads", "tokens"],
                   help="what --channels indexes: channels (default), or a transformer's hidden units, heads or "
                        "tokens (with --from: the folder's unit)")
    p.add_argument("--layout", choices=["nchw", "ntc", "nhwc"], help="the layer's layout, where chanattr cannot tell")
    p.add_argument("--iterations", type=int, default=300, metavar="N", help="inversion steps (default 300)")
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier",
                   help="image parameterisation: Lucent's Fourier image (default) or plain pixels")
    add_output_args(p)
    add_model_args(p)


@command("invert", "feature inversion of a layer's salient channels (and of all, and of the rest)", _setup_invert)
def cmd_invert(args: argparse.Namespace) -> int:
    from .images import prepare_image
    from .outputs import output_dir, salient_channels, write_inversion

    if args.iterations < 1:
        raise ChanattrError("--iterations must be at least 1")
    if args.area is not None and not 0 < args.area < 1:
        raise ChanattrError(f"--area {args.area} is outside (0, 1)")
    folder = output_dir(args.out, ("inversion.png", "inversions.npz"), args.overwrite)
    lm = model_from_args(args)
    img = prepare_image(args.image, lm.preprocessing)
    x = img.input[None].to(lm.device)
    subset, how, unit = salient_channels(lm, x, args.layer, args.channels, args.from_dir, args.area,
                                         progress=not args.no_progress, parse=_parse_channels, unit=args.unit,
                                         layout=args.layout)
    summary = write_inversion(folder, lm, img, x, args.layer, subset, how, iterations=args.iterations,
                              param=args.param, seed=args.seed, progress=None if not args.no_progress else False,
                              unit=unit, layout=args.layout)
    print(f"{img.name}: inverted {args.layer} from {summary['counts']} {unit} ({how}), "
          f"{summary['seconds']:.1f} s -> {folder}")
    return 0


def _setup_visualize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", required=True, help="dotted layer name (see chanattr layers)")
    p.add_argument("--channels", help="channel indices I,J,K")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="visualise the top channels of a `chanattr channels` (or prunegrad) output folder")
    p.add_argument("--top", type=int, default=12, metavar="N", help="with --from: how many channels (default 12)")
    p.add_argument("--unit", choices=["channels", "hidden", "heads", "tokens"],
                   help="what --channels indexes: channels (default) or a transformer's hidden units, heads or tokens "
                        "(with --from: the folder's unit)")
    p.add_argument("--iterations", type=int, default=256, metavar="N", help="optimisation steps (default 256)")
    add_output_args(p)
    add_model_args(p)


@command("visualize", "feature visualisation (activation maximisation) of channels, as a grid", _setup_visualize)
def cmd_visualize(args: argparse.Namespace) -> int:
    from .outputs import output_dir, read_channel_result, write_visualisation

    if (args.channels is None) == (args.from_dir is None):
        raise ChanattrError("give either --channels I,J,K or --from DIR")
    if args.iterations < 1:
        raise ChanattrError("--iterations must be at least 1")
    folder = output_dir(args.out, ("channels.png", "visualizations.npz"), args.overwrite)
    lm = model_from_args(args)
    unit = args.unit or "channels"
    if args.channels is not None:
        channels, labels = _parse_channels(args.channels), None
        if not channels:
            raise ChanattrError("--channels is empty: give indices like 3,17,42")
    else:
        from .outputs import check_provenance

        check_provenance(args.from_dir, lm)
        found = read_channel_result(args.from_dir, args.layer, unit=None)
        if args.unit is not None and args.unit != found["unit"]:
            raise ChanattrError(f"{args.from_dir} holds {found['unit']}, not {args.unit}: drop --unit")
        unit = found["unit"]
        order = found["ranking"][: max(1, args.top)]
        channels = [int(c) for c in order]
        labels = [f"#{c}  m={found['values'][c]:.2f}" for c in channels]
    summary = write_visualisation(folder, lm, args.layer, channels, labels, iterations=args.iterations,
                                  seed=args.seed, progress=None if not args.no_progress else False, unit=unit)
    print(f"visualised {len(channels)} {unit} of {args.layer} in {summary['seconds']:.1f} s -> {folder}")
    return 0


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="chanattr-demo", metavar="DIR", help="output folder (default chanattr-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@command("demo", "the whole pipeline on the bundled model and photo, as one HTML report", _setup_demo)
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    path = run_demo(args.out, overwrite=args.overwrite, progress=None if not args.no_progress else False)
    print(f"demo report: {path.resolve()}")
    print(f"figures and arrays: {path.parent.resolve()}/{{explain,channels,invert}}")
    return 0


class _Formatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default {value})"


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
        p = sub.add_parser(name, help=fn.command_help, description=fn.command_help[0].upper() + fn.command_help[1:] + ".",
                           formatter_class=_Formatter)
        fn.command_setup(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files, never shown
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    _one_line_warnings(args.command)
    retain_freed_memory()  # our own process: no page faults on every iteration's buffers
    if getattr(args, "threads", None):
        if args.threads < 1:
            print(f"chanattr {args.command}: error: --threads must be at least 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    from .outputs import remove_empty_created

    try:
        return int(args.func(args) or 0)
    except ChanattrError as e:
        remove_empty_created()
        print(f"chanattr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_empty_created()
        print(f"chanattr {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        remove_empty_created()
        raise


def _one_line_warnings(command: str) -> None:
    """Show chanattr's own warnings as one line on stderr: ``chanattr CMD: warning: ...``."""
    from .errors import ChanattrWarning

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ChanattrWarning):
            print(f"chanattr {command}: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show


from . import cli_run  # noqa: E402,F401  (registers run and merge)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
