"""Does applying the same random transform to the original (aligned) lower the inversion error?

For each photo and layer, invert all channels and the salient subset (channel extremal
perturbation, area 0.05, mean baseline) with the README's settings (Lucent's Fourier image,
jitter / scale / rotate, 300 steps), once with the transforms applied to the candidate and
the original alike (``align_transforms=True``, the default) and once with the original's
features read untransformed (the previous behaviour). Prints the final relative error
||m (phi(x) - phi(x0))|| / ||m phi(x0)||, untransformed (lower is better).

    python experiments/inversion_alignment.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from chanattr import channel_extremal_perturbation, prepare_image
from inversion import InversionSettings, invert

from _common import add_device_args, model_on_device


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=["chelsea", "coffee"])
    ap.add_argument("--layers", nargs="+", default=["blocks.6"])
    ap.add_argument("--iterations", type=int, default=300)
    add_device_args(ap)
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    rows = []
    for name in args.images:
        x = prepare_image(name, lm.preprocessing).input[None].to(args.device)
        target = int(model(x).argmax())
        for layer in args.layers:
            ch = channel_extremal_perturbation(model, x, target, layer, [0.05], baseline="mean", progress=False)
            c = ch.masks.shape[-1]
            for label, channels in (("all", list(range(c))), ("subset", ch.kept_channels(0, 0))):
                errors = []
                for align in (True, False):
                    start = time.perf_counter()
                    s = InversionSettings(iterations=args.iterations, align_transforms=align)
                    r = invert(model, x, layer, channels, lm.preprocessing, settings=s, progress=False)
                    errors.append(float(r.relative_error[0]))
                    print(f"{name} {layer} {label} aligned={align}: {errors[-1]:.3f} "
                          f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
                rows.append((name, layer, f"{label} ({len(channels)} of {c})", *errors))
    print("| image | layer | channels | relative error, aligned | not aligned |")
    print("|---|---|---|---|---|")
    for name, layer, label, a, b in rows:
        print(f"| {name} | {layer} | {label} | {a:.3f} | {b:.3f} |")
    print(f"\nLucent Fourier image, jitter / scale / rotate, {args.iterations} steps, Mahendran and Vedaldi's "
          f"regularisers; device {args.device}, {torch.get_num_threads()} thread(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
