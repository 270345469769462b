"""Feature inversion of salient channel subsets: the four bundled photos at two layers.

For each photo and layer, the channel extremal perturbation (preserve, area 0.05, mean
baseline, top-1 target) picks the salient channels; the layer is then inverted (Lucent's
Fourier image with jitter / scale / rotate) from all channels, from the salient subset and
from the rest. Writes one figure (a row per photo and layer) and prints each inversion's
relative activation error on its channels.

    python experiments/inversion_figures.py --out docs/inversions.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from chanattr import SAMPLES, channel_extremal_perturbation, prepare_image
from inversion import InversionSettings, invert, plot_inversion_grid
from inversion.invert import channel_mask

from _common import add_device_args, model_on_device


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="+", default=["blocks.4", "blocks.6"])
    ap.add_argument("--images", nargs="+", default=list(SAMPLES))
    ap.add_argument("--area", type=float, default=0.05)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("docs/inversions.png"))
    ap.add_argument("--overwrite", action="store_true")
    add_device_args(ap)
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"inversion_figures: {args.out} exists; pass --overwrite to replace it")
    lm, model = model_on_device(args)
    rows, lines = [], ["| image | layer | channels kept | rel. error all / subset / rest | seconds |", "|---|---|---|---|---|"]
    for name in args.images:
        img = prepare_image(name, lm.preprocessing)
        x = img.input[None].to(args.device)
        with torch.no_grad():
            target = int(model(x).argmax())
        for layer in args.layers:
            ch = channel_extremal_perturbation(model, x, target, layer, [args.area], baseline="mean", progress=False)
            subset = ch.kept_channels(0, 0)
            c = ch.masks.shape[-1]
            masks = {"all": torch.ones(c), "subset": channel_mask(subset, c)}
            masks["rest"] = 1 - masks["subset"]
            res = invert(model, x.expand(3, -1, -1, -1), layer, torch.stack(list(masks.values())), lm.preprocessing,
                         settings=InversionSettings(iterations=args.iterations), progress=True)
            rows.append({"label": f"{name} ({lm.class_name(target).split(',')[0]})\n{layer}", "original": img.rgb,
                         "inversions": dict(zip(masks, res.images.cpu())),
                         "counts": {k: int(m.sum()) for k, m in masks.items()}, "total": c})
            err = " / ".join(f"{e:.2f}" for e in res.relative_error.tolist())
            lines.append(f"| {name} | {layer} | {len(subset)} of {c} | {err} | {ch.seconds + res.seconds:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_inversion_grid(rows, title="Inverting EfficientNet-Lite0 from all, the salient, and the other channels")
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print("\n".join(lines))
    print(f"\nfigure: {args.out}; {args.iterations} Fourier steps per inversion, salient channels from the channel "
          f"extremal perturbation at area {args.area}; relative error = ||m (phi(x) - phi(x0))|| / ||m phi(x0)|| "
          f"on each inversion's own channels.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
