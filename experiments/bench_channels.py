"""Channel extremal perturbations: the split path (the layer's activation computed once,
only the rest of the network run per iteration) against full forward passes with a hook.

For the default model (EfficientNet-Lite0) at an early, a middle and a late layer, on the
four bundled photos in one batch (area 0.05, preserve), run the same fixed number of
iterations on both paths from the same seed and print seconds per iteration, the speed-up,
and whether the masks agree.

    python experiments/bench_channels.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from chanattr import SAMPLES
from chanattr.units.space import CHANNEL_SCHEDULE, channel_extremal_perturbation

from _common import add_device_args, model_on_device, photos_with_targets

LAYERS = {"early": "blocks.1", "middle": "blocks.4", "late": "blocks.6"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--layers", nargs="+", default=[f"{k}={v}" for k, v in LAYERS.items()], metavar="ROLE=NAME")
    add_device_args(ap)
    args = ap.parse_args(argv)
    lm, model = model_on_device(args)
    _, x, targets = photos_with_targets(lm, model, SAMPLES, args.device)
    # the gradient loop: a fixed number of iterations (no early stop) from the whole activation, so
    # both paths do the same work; the default's greedy-elimination start is timed on its own
    schedule = replace(CHANNEL_SCHEDULE, start="input", harden=1.0, iterations=args.iterations,
                       min_iterations=args.iterations, stall=args.iterations, patience=10**9)
    search = replace(CHANNEL_SCHEDULE, iterations=0)
    rows = ["| layer | channels | split s/it | full s/it | speed-up | same masks (max abs diff) | search alone, split s |",
            "|---|---|---|---|---|---|---|"]
    for spec in args.layers:
        role, layer = spec.split("=")
        out = {}
        for path in ("auto", "full"):
            start = time.perf_counter()
            r = channel_extremal_perturbation(model, x, targets, layer, [0.05], split=path, schedule=schedule,
                                              progress=False)
            out[path] = (r, (time.perf_counter() - start) / r.iterations)
        (rs, ts), (rf, tf) = out["auto"], out["full"]
        assert rs.info["path"] == "split", f"{layer}: {rs.info['split_reason']}"
        diff = float((rs.masks - rf.masks).abs().max())
        start = time.perf_counter()
        channel_extremal_perturbation(model, x, targets, layer, [0.05], schedule=search, progress=False)
        ts_search = time.perf_counter() - start
        rows.append(f"| {role}: {layer} | {rs.info['channels']} | {ts:.4f} | {tf:.4f} | {tf / ts:.1f}x | "
                    f"{'yes' if diff < 1e-3 else 'no'} ({diff:.1e}) | {ts_search:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    print(f"\n{len(SAMPLES)} images in one batch, area 0.05, {args.iterations} iterations of the gradient loop each "
          f"(from the whole activation, no early stop), including the one-off prefix pass; the last column: the "
          f"default's greedy-elimination start alone (iterations=0) for the 4 images, split path; device "
          f"{args.device}, {torch.get_num_threads()} thread(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
