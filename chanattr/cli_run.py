"""``chanattr run METHOD ... --images SOURCE --out DIR`` (a method over a dataset, sharded over
the processes torchrun starts, resumable) and ``chanattr merge DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import (_check_device, _Formatter, _Parser, _setup_channels, _setup_explain, _setup_prunegrad,
                  _with_target, add_images_args, add_model_args, add_output_args, command, model_from_args)
from .errors import ChanattrError


def _score_areas(p: argparse.ArgumentParser) -> None:
    p.add_argument("--score-areas", type=float, nargs="+", default=[0.05, 0.1, 0.2], metavar="A",
                   help="score each map by the target logit with only its top A of the pixels kept (the rest "
                        "blurred), one row per area (default 0.05 0.1 0.2)")


def _batch(p: argparse.ArgumentParser, default: int = 4) -> None:
    if not any("--batch-images" in a.option_strings for a in p._actions):
        p.add_argument("--batch-images", type=int, default=default, metavar="N",
                       help=f"images per batch; a batch is the unit of work and of resuming (default {default})")
    p.add_argument("--rows-only", action="store_true",
                   help="keep only each item's rows (results.parquet), not its masks or maps: small item files")
    p.add_argument("--tolerance", type=float, default=15.0, metavar="PX",
                   help="COCO items: the pointing game's tolerance in pixels at the model's input size (default 15)")


def _setup_saliency(name: str):
    def setup(p: argparse.ArgumentParser) -> None:
        add_images_args(p)
        _score_areas(p)
        if name == "rise":
            p.add_argument("--rise-masks", type=int, default=2000, metavar="N", help="random masks (default 2000)")
        add_output_args(p)
        add_model_args(p)

    return setup


def _setup_run_invert(p: argparse.ArgumentParser) -> None:
    add_images_args(p)
    p.add_argument("--layer", required=True, help="dotted layer name (see chanattr layers)")
    p.add_argument("--channels", default="auto",
                   help="auto (each image's unit extremal perturbation at --area), all, or indices I,J,K (default auto)")
    p.add_argument("--area", type=float, default=0.05, metavar="A", help="with auto: fraction of units kept (default 0.05)")
    p.add_argument("--unit", choices=["channels", "hidden", "heads", "tokens"], default="channels",
                   help="what --channels indexes (default channels)")
    p.add_argument("--layout", choices=["nchw", "ntc", "nhwc"], help="the layer's layout, where chanattr cannot tell")
    p.add_argument("--iterations", type=int, default=300, metavar="N", help="inversion steps (default 300)")
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier", help="image parameterisation")
    add_output_args(p)
    add_model_args(p)


def _setup_class_channels(p: argparse.ArgumentParser) -> None:
    _setup_channels(p)
    p.add_argument("--class", dest="class_", required=True, metavar="C",
                   help="the class: its index (every image of --images is of it), or with coco:DIR a COCO class "
                        "name (its pairs; each image's target is the class's most probable ImageNet class)")


def _run_setups() -> dict:
    from .method_names import MAP_METHODS

    setups = {"explain": (_setup_explain, "extremal perturbations over input pixels"),
              "channels": (_setup_channels, "extremal perturbations over the units of a layer"),
              "class-channels": (_setup_class_channels,
                                 "one unit mask shared by every image of a class (and each image's own)"),
              "prunegrad": (lambda p: (_setup_prunegrad(p), _score_areas(p)), "PruneGrad saliency"),
              "invert": (_setup_run_invert, "feature inversion of each image's salient units")}
    for name in MAP_METHODS:
        setups[name] = (_setup_saliency(name), f"the {name} saliency map")
    return setups


def _setup_run(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="method", metavar="METHOD", parser_class=_Parser)
    for name, (setup, text) in _run_setups().items():
        q = sub.add_parser(name, help=text, description=f"chanattr run {name}: {text}, over a dataset.",
                           formatter_class=_Formatter)
        q.run_mode = True
        setup(q)
        _batch(q)
        q.set_defaults(device="auto")


@command("run", "a method over a dataset: sharded over torchrun's processes, resumable, one results.parquet",
         _setup_run)
def cmd_run(args: argparse.Namespace) -> int:
    from .distributed import process_device, processes_from_environment, start, stop
    from .items import read_items
    from .run_methods import method_function
    from .runs import run_items

    if not getattr(args, "method", None):
        raise ChanattrError("give a METHOD: chanattr run explain|channels|class-channels|prunegrad|invert|gradcam|... "
                            "(see chanattr run --help)")
    _check_run_args(args)
    procs = processes_from_environment()
    args.device = process_device(args.device, procs)
    _check_device(args.device)
    start(procs, args.device)
    try:
        lm = _with_target(model_from_args(args), args)
        coco_class = None
        if args.method == "class-channels":
            coco_class = _class_choice(args)
        source = read_items(args.images, input_size=lm.preprocessing.input_size, coco_class=coco_class)
        summary = run_items(args.method, method_function(args.method), args, lm, source, args.out, procs,
                            device=args.device, batch_size=args.batch_images, overwrite=args.overwrite,
                            progress=not args.no_progress, tolerance=args.tolerance)
        extra = ""
        if args.method == "class-channels":
            from .class_units import run_class_mask

            found = run_class_mask(args, lm, source, Path(args.out), procs, args.device,
                                   progress=not args.no_progress)
            extra = f"; class mask: {found}"
        if procs.main:
            print(f"chanattr run {args.method}: {summary.items} items ({summary.skipped} finished earlier), "
                  f"{procs.world_size} process(es), {summary.seconds:.1f} s -> {Path(args.out) / 'results.parquet'}"
                  f"{extra}")
    finally:
        stop(procs)
    return 0


def _class_choice(args) -> str | None:
    """--class: an index becomes the target of every image; a name picks a COCO class's pairs."""
    if args.target != "auto":
        raise ChanattrError("class-channels takes its target from --class: drop --target")
    if args.class_.isdigit():
        if args.images.startswith("coco:"):
            raise ChanattrError("with coco:DIR give --class a COCO class name (e.g. cat), not an index")
        args.target = args.class_
        return None
    if not args.images.startswith("coco:"):
        raise ChanattrError(f"--class {args.class_!r}: give a class index (a name goes with coco:DIR)")
    return args.class_


def _check_run_args(args) -> None:
    from .extremal import check_areas

    for name in ("areas", "score_areas"):
        if getattr(args, name, None) is not None:
            check_areas(getattr(args, name))
    if getattr(args, "iterations", None) is not None and args.iterations < 1:
        raise ChanattrError("--iterations must be at least 1")
    if args.batch_images < 1:
        raise ChanattrError("--batch-images must be at least 1")
    if getattr(args, "keep", None) is not None and not 0 < args.keep <= 1:
        raise ChanattrError(f"--keep {args.keep} is outside (0, 1]")
    if args.method == "invert" and not 0 < args.area < 1:
        raise ChanattrError(f"--area {args.area} is outside (0, 1)")
    if args.method == "class-channels" and args.rows_only:
        raise ChanattrError("class-channels keeps each image's mask (for the spread beside the class mask): drop "
                            "--rows-only")
    if getattr(args, "class_token", False) and args.unit != "tokens":
        raise ChanattrError("--class-token goes with --unit tokens")


def _setup_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="a folder written by chanattr run")


@command("merge", "merge a run's finished items into DIR/results.parquet", _setup_merge)
def cmd_merge(args: argparse.Namespace) -> int:
    from .runs import merge_run, read_results

    path = merge_run(args.folder)
    rows = read_results(args.folder)
    print(f"{len(rows)} rows -> {path}")
    return 0


def _setup_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR",
                   help="a folder written by `chanattr channels` (one image), `chanattr demo` or `chanattr run channels`")
    p.add_argument("--top-classes", type=int, default=3, metavar="N", help="classes to explore, the model's top N "
                   "(the folder's own target first; default 3)")
    p.add_argument("--units", type=int, default=8, metavar="N", help="salient units shown per class (default 8)")
    p.add_argument("--iterations", type=int, default=100, metavar="N",
                   help="unit extremal perturbation steps for the other classes (default 100)")
    p.add_argument("--vis-iterations", type=int, default=64, metavar="N",
                   help="feature visualisation steps per unit, 0 for none (default 64)")
    p.add_argument("--invert-iterations", type=int, default=100, metavar="N",
                   help="inversion steps for each class's salient set, 0 for none (default 100)")
    p.add_argument("--item", metavar="ID", help="with a `chanattr run channels` folder: which item (default the first)")
    p.add_argument("--out", metavar="FILE", help="the page (default DIR/explorer.html, or DIR/explorer-ID.html for a run)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier page")
    add_model_args(p)


@command("report", "an explorer page (one HTML file) of a layer's salient units for the top classes", _setup_report)
def cmd_report(args: argparse.Namespace) -> int:
    from .explorer import build_report

    for name in ("top_classes", "units"):
        if getattr(args, name) < 1:
            raise ChanattrError(f"--{name.replace('_', '-')} must be at least 1")
    lm = model_from_args(args)
    path = build_report(args.folder, lm, top_classes=args.top_classes, units=args.units, iterations=args.iterations,
                        vis_iterations=args.vis_iterations, invert_iterations=args.invert_iterations, seed=args.seed,
                        out=args.out, item=args.item, overwrite=args.overwrite)
    print(f"explorer: {path.resolve()}")
    return 0
