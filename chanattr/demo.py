"""The demo: the whole pipeline on the bundled model and photo, into one HTML report.

explain (pixel extremal perturbations, areas 0.05 / 0.1 / 0.2) -> channels (channel
extremal perturbations at a late layer) -> invert (the salient channels, all of them, and
the rest) -> ``report.html``. Iteration counts are cut so that the whole run takes a few
minutes on 2 CPU cores; the page says which.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .outputs import output_dir, write_channels, write_explain, write_inversion
from .report import Section, render

DEMO_IMAGE = "chelsea"
DEMO_LAYER = "blocks.6"
AREAS = (0.05, 0.1, 0.2)
CHANNEL_AREAS = (0.02, 0.05, 0.1)


def run_demo(out: str | Path, *, overwrite: bool = False, explain_iterations: int = 200,
             channel_iterations: int = 300, invert_iterations: int = 200, explorer_iterations: int = 48,
             progress: bool | None = None, preset: str = "fast") -> Path:
    """Run the pipeline into ``out`` and return the path of ``report.html``; ``explorer.html``
    beside it explores the salient channels of the top three classes (``chanattr report``) with
    ``explorer_iterations`` steps for each search, visualisation and inversion (0: no explorer).
    ``preset``: the pixel extremal perturbation's (``chanattr.extremal.PRESETS``)."""
    from .units.space import ChannelSpace, channel_extremal_perturbation
    from .images import prepare_image
    from .models import load_model
    from .pixel import extremal_perturbation

    root = output_dir(out, ("report.html",), overwrite)
    # leftovers of a demo that did not finish (no report.html) are replaced without asking
    dirs = {k: output_dir(root / k, files, True) for k, files in (
        ("explain", ("masks.npz", "summary.json", "explain.png")),
        ("channels", ("channels.npz", "summary.json", "channels.png")),
        ("invert", ("inversions.npz", "inversion.png", "summary.json")))}
    seconds = {}
    t0 = time.perf_counter()
    lm = load_model()
    img = prepare_image(DEMO_IMAGE, lm.preprocessing)
    x = img.input[None]
    with torch.no_grad():
        probs = lm.model(x).softmax(1)[0]
    top_p, top_i = probs.topk(5)
    target = int(top_i[0])
    seconds["load model and photo"] = time.perf_counter() - t0

    t = time.perf_counter()
    pixel = extremal_perturbation(lm.model, x, target, AREAS, iterations=explain_iterations, progress=progress,
                                  preset=preset)
    explain = write_explain(dirs["explain"], lm, img, x[0], pixel, 0)
    seconds["explain (pixels)"] = time.perf_counter() - t

    t = time.perf_counter()
    space = ChannelSpace(lm.model, x, DEMO_LAYER, baseline="mean")  # runs the model frozen itself
    channel = channel_extremal_perturbation(lm.model, x, target, DEMO_LAYER, CHANNEL_AREAS,
                                            iterations=channel_iterations, progress=progress, space=space)
    (channels,) = write_channels([dirs["channels"]], lm, [img], x, channel, space)
    seconds["channels (layer %s)" % DEMO_LAYER] = time.perf_counter() - t

    t = time.perf_counter()
    subset = channel.kept_channels(0, 1)  # the 5 % area
    inverted = write_inversion(dirs["invert"], lm, img, x, DEMO_LAYER, subset,
                               f"channel extremal perturbation, area {CHANNEL_AREAS[1]}",
                               iterations=invert_iterations, progress=progress)
    seconds["invert (salient, all, rest)"] = time.perf_counter() - t

    if explorer_iterations > 0:
        from .explorer import build_report

        t = time.perf_counter()
        build_report(root, lm, top_classes=3, units=6, iterations=explorer_iterations,
                     vis_iterations=explorer_iterations, invert_iterations=explorer_iterations,
                     out=root / "explorer.html")
        seconds["explorer (top 3 classes)"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0

    sections = [
        Section("Prediction", [f"Model {lm.name} (bundled ImageNet weights), photo '{img.name}'."],
                tables=[(["rank", "class", "index", "probability"],
                         [[r + 1, lm.class_name(int(i)), int(i), float(p)] for r, (p, i) in
                          enumerate(zip(top_p, top_i))])]),
        Section("Which pixels: extremal perturbations",
                [f"Smallest smooth regions that keep the '{explain['class_name']}' logit "
                 f"({explain['target_logit_full_image']:.2f} on the whole photo) as high as possible when the rest is "
                 "blurred, at three areas. Extremal score: the logit with exactly that fraction of pixels kept."],
                tables=[(["area", "reward (binary mask)", "extremal score", "soft mask area (> 0.5)"],
                         [[a, r, s, m] for a, r, s, m in zip(explain["areas"], explain["binary_reward"],
                                                             explain["extremal_score"], explain["mask_area"])])],
                figures=[(dirs["explain"] / "explain.png", "Masks, what the model saw, and the score against area.")]),
        Section(f"Which channels: extremal perturbations at layer {DEMO_LAYER}",
                [f"{channels['channels']} channels; a removed channel is replaced by its spatial mean "
                 f"({channels['path']} path: the layer's input is computed once)."],
                tables=[(["area", "channels kept", "score, only these kept", "score, these removed"],
                         [[a["area"], ", ".join(str(c) for c in a["channels"]), a["score_only_these_kept"],
                           a["score_these_removed"]] for a in channels["areas"]])],
                figures=[(dirs["channels"] / "channels.png", "Channel mask values and the channel curve.")]),
        Section("What those channels see: feature inversion",
                [f"Images whose {DEMO_LAYER} activations match the photo's on all channels, on the "
                 f"{inverted['counts'].get('subset')} salient channels only, and on the others only "
                 f"(Lucent's Fourier parameterisation, {invert_iterations} steps)."],
                tables=[(["inversion", "channels", "relative error on them"],
                         [[k, inverted["counts"][k], inverted["relative_error"][k]] for k in inverted["counts"]])],
                figures=[(dirs["invert"] / "inversion.png", "Original | all | salient | the rest.")]),
        *([Section("Explore further",
                   ["explorer.html, beside this page: for each of the top three classes, the salient channels of "
                    f"{DEMO_LAYER} with their mask values, their activations over the photo, the logit with each "
                    "removed alone, their feature visualisations and the inversion of each class's set "
                    "(chanattr report DIR makes it for any channels folder)."])] if explorer_iterations > 0 else []),
        Section("Settings and time",
                [f"Iterations cut for a quick demo: explain ({preset} preset) at most {explain_iterations} (it "
                 f"stops once the masks settle; ran {explain['iterations']}), channels at most {channel_iterations} "
                 f"(ran {channels['iterations']}), inversion {invert_iterations}. The commands chanattr explain / channels "
                 "/ invert run the same steps with their defaults."],
                tables=[(["step", "seconds"], [[k, v] for k, v in seconds.items()])]),
    ]
    page = render("chanattr demo", sections, meta=f"torch {torch.__version__}, device cpu")
    path = root / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
