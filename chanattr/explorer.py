"""An explorer page for one image and one layer (``chanattr report DIR``), in the spirit of Olah
et al.'s "Building Blocks of Interpretability": for each of the model's top classes, the layer's
salient units (from a unit extremal perturbation), and for each unit its mask value, its
activation over the photo, the target logit with that unit alone removed, its feature
visualisation; and the inversion of the selected set. One self-contained HTML file: images
embedded, no scripts (the class selector is plain CSS), so it opens offline anywhere."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ChanattrError


@dataclass
class UnitRow:
    unit: int
    mask_value: float
    logit_without: float
    activation_png: bytes | None  # the unit's activation over the photo (channels-first layers)
    visualisation_png: bytes | None


@dataclass
class ClassView:
    target: int
    name: str
    probability: float
    logit: float
    area: float
    kept_logit: float  # the target logit with only the salient units kept
    kept_count: int = 0
    rows: list[UnitRow] = field(default_factory=list)
    inversion_png: bytes | None = None
    source: str = ""  # where the mask came from
    baseline: str = "zero"


def _png(array: np.ndarray, cmap: str | None = None, overlay: np.ndarray | None = None) -> bytes:
    """A small PNG of an H x W x 3 image in [0, 1], or of an H x W map (over ``overlay``)."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone

    fig = Figure(figsize=(1.6, 1.6), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    if overlay is not None:
        ax.imshow(overlay)
        ax.imshow(array, cmap=cmap or "magma", alpha=0.6, extent=(0, overlay.shape[1], overlay.shape[0], 0),
                  interpolation="bilinear")
    else:
        ax.imshow(np.clip(array, 0, 1), cmap=cmap)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def photo(lm, x: torch.Tensor) -> np.ndarray:
    """The first image of ``x`` (the model's input) as H x W x 3 RGB in [0, 1] (greyscale repeated)."""
    rgb = lm.preprocessing.denormalize(x[0].detach().cpu()).clamp(0, 1)
    return rgb.expand(3, -1, -1).permute(1, 2, 0).numpy()


def explore(lm, x: torch.Tensor, layer: str, *, saved: dict | None = None, top_classes: int = 3, units: int = 8,
            area: float | None = None, unit: str = "channels", layout: str | None = None, baseline: str = "zero",
            iterations: int = 100,
            vis_iterations: int = 64, invert_iterations: int = 100, seed: int = 0) -> list[ClassView]:
    """The explorer's content for one image (``x``: 1 x 3 x H x W): one ``ClassView`` per top
    class. ``saved``: a unit result already computed for one class (``read_channel_result`` plus
    ``target``), used for that class instead of a new search; the other classes get a unit
    extremal perturbation at ``area`` (default: the saved result's smallest, else 0.05)."""
    from inversion import InversionSettings, invert, visualize_channels
    from inversion.invert import channel_mask

    from .units.space import UnitSpace, unit_extremal_perturbation

    if x.dim() != 4 or x.shape[0] != 1:
        raise ChanattrError("the explorer takes one image: x must be 1 x 3 x H x W")
    with torch.no_grad():
        logits = lm.model(x)[0].float()
    probs = logits.softmax(0)
    order = probs.argsort(descending=True).tolist()
    classes = ([int(saved["target"])] if saved is not None else []) + order
    classes = list(dict.fromkeys(classes))[: max(1, top_classes)]
    space = UnitSpace(lm.model, x, layer, unit=unit, layout=layout, baseline=baseline)
    n_units = space.num_units
    if area is None:
        area = float(min(saved["areas"])) if saved is not None else 0.05
    rgb = photo(lm, x)
    activation = unit_maps(lm.model, x, layer, space)  # U x h x w, or None
    views = []
    for c in classes:
        if saved is not None and c == int(saved["target"]):
            k = int(np.argmin([abs(a - area) for a in saved["areas"]]))
            values = torch.as_tensor(saved["masks"][k]).float()
            source = f"saved result, area {float(saved['areas'][k]):g}"
        else:
            r = unit_extremal_perturbation(lm.model, x, c, layer, [area], unit=unit, layout=layout, space=space,
                                           iterations=iterations, progress=False)
            values = r.masks[0, 0].float()
            source = f"unit extremal perturbation, area {area:g}, {r.iterations} iterations"
        count = max(1, int(round(area * n_units)))
        kept = values.argsort(descending=True, stable=True)[:count].tolist()
        shown = kept[:units]
        target = torch.tensor([c], device=x.device)
        keep = torch.ones(len(shown) + 1, n_units, device=x.device)
        for j, u in enumerate(shown):
            keep[j, u] = 0  # one unit removed
        keep[-1] = 0
        keep[-1, kept] = 1  # only the salient set kept
        scores = space.target_scores(keep, torch.zeros(keep.shape[0], dtype=torch.long, device=x.device), target)
        view = ClassView(c, lm.class_name(c), float(probs[c]), float(logits[c]), area, float(scores[-1]),
                         len(kept), source=source, baseline=baseline)
        vis = visualize_channels(lm.model, layer, shown, lm.preprocessing, iterations=vis_iterations, seed=seed,
                                 progress=False, unit=unit, layout=layout) if vis_iterations > 0 else None
        for j, u in enumerate(shown):
            act_png = None
            if activation is not None:
                act_png = _png(activation[u].numpy(), overlay=rgb)
            vis_png = _png(vis.images[j].permute(1, 2, 0).cpu().numpy()) if vis is not None else None
            view.rows.append(UnitRow(u, float(values[u]), float(scores[j]), act_png, vis_png))
        if invert_iterations > 0:
            inv = invert(lm.model, x, layer, channel_mask(kept, n_units)[None], lm.preprocessing,
                         settings=InversionSettings(iterations=invert_iterations), seed=seed, progress=False,
                         unit=unit, layout=layout)
            view.inversion_png = _png(inv.images[0].permute(1, 2, 0).cpu().numpy())
        views.append(view)
    return views


def unit_maps(model, x: torch.Tensor, layer: str, space) -> torch.Tensor | None:
    """Each unit's activation over the image, U x h x w: a channels-first map's channels, a
    channels-last map's channels, or a token sequence's hidden units over the patch tokens laid
    out on their grid (prefix tokens dropped); None for heads, tokens, or a sequence whose patch
    count is not a square."""
    import math

    from .hooks import capture
    from .units import prefix_tokens_at

    if space.unit not in ("channels", "hidden"):
        return None
    with capture(model, layer) as acts, torch.no_grad():
        model(x)
    a = acts[layer][0].detach().float().cpu()
    if space.layout == "nchw":
        return a
    if space.layout == "nhwc":
        return a.permute(2, 0, 1)
    patches = a[prefix_tokens_at(model, a.shape[0]):]  # T' x C
    side = math.isqrt(patches.shape[0])
    if side * side != patches.shape[0]:
        return None
    return patches.T.reshape(-1, side, side)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } .meta { color: #666; font-size: 0.9em; }
.tabs > input { display: none; }
.tabs > label { display: inline-block; padding: 0.4em 0.9em; margin-right: 0.3em; border: 1px solid #bbb;
                border-bottom: none; border-radius: 6px 6px 0 0; background: #f3f5f8; cursor: pointer; }
.tabs > .panel { display: none; border-top: 1px solid #bbb; padding-top: 0.8em; }
%s
table { border-collapse: collapse; font-size: 0.92em; } th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f3f5f8; } td img { display: block; width: 128px; height: 128px; }
.top { display: flex; gap: 1.5em; align-items: flex-start; } .top img { width: 192px; }
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return "&ndash;"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def render_explorer(title: str, photo_png: bytes, layer: str, unit: str, views: list[ClassView], meta: str = "") -> str:
    """The page: one tab per class (CSS radio buttons; no scripts), each with its units' table."""
    rules = "\n".join(f"#c{i}:checked ~ #p{i} {{ display: block; }} #c{i}:checked + label {{ background: #fff; "
                      f"font-weight: bold; }}" for i in range(len(views)))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{CSS % rules}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    if meta:
        out.append(f'<p class="meta">{html.escape(meta)}</p>')
    out.append('<div class="tabs">')
    for i, v in enumerate(views):
        checked = " checked" if i == 0 else ""
        out.append(f'<input type="radio" name="cls" id="c{i}"{checked}><label for="c{i}">'
                   f"{html.escape(v.name)} ({v.probability:.2f})</label>")
    for i, v in enumerate(views):
        out.append(f'<div class="panel" id="p{i}">')
        out.append('<div class="top"><figure>' + _img(photo_png, "photo") + "<figcaption>photo</figcaption></figure>")
        if v.inversion_png is not None:
            out.append("<figure>" + _img(v.inversion_png, "inversion") +
                       f"<figcaption>inversion of the {v.kept_count} salient {html.escape(unit)}"
                       "</figcaption></figure>")
        out.append(f"<p>Class <b>{html.escape(v.name)}</b> ({v.target}): logit {v.logit:.2f}, probability "
                   f"{v.probability:.3f}. The {html.escape(unit)} of <code>{html.escape(layer)}</code> that keep it "
                   f"at area {v.area:g} ({v.kept_count} of them; {html.escape(v.source)}): with only them kept "
                   f"({html.escape(v.baseline)} baseline for the rest) the logit is "
                   f"{v.kept_logit:.2f}. Below, the strongest of them: each one's mask value, its activation over "
                   f"the photo, the logit with that {html.escape(unit[:-1] if unit.endswith('s') else unit)} alone "
                   "removed, and its feature visualisation.</p></div>")
        out.append("<table><thead><tr><th>unit</th><th>mask value</th><th>logit without it</th>"
                   "<th>activation</th><th>visualisation</th></tr></thead><tbody>")
        for r in v.rows:
            out.append(f"<tr><td>{r.unit}</td><td>{r.mask_value:.3f}</td><td>{r.logit_without:.2f} "
                       f"({r.logit_without - v.logit:+.2f})</td><td>{_img(r.activation_png, f'activation {r.unit}')}"
                       f"</td><td>{_img(r.visualisation_png, f'visualisation {r.unit}')}</td></tr>")
        out.append("</tbody></table></div>")
    out.append("</div></body></html>")
    return "\n".join(out)


def _from_channels_folder(folder: Path, lm) -> tuple[torch.Tensor, dict, str, str]:
    """(input, saved result, baseline, what) of a ``chanattr channels`` folder (one image)."""
    import json

    from .outputs import check_provenance, read_channel_result

    source = folder / "channels" if (folder / "channels" / "channels.npz").is_file() else folder
    with np.load(source / "channels.npz") as data:
        if "input" not in data.files:
            raise ChanattrError(f"{source} holds no input image (a class mask or a prunegrad folder): give a folder "
                                f"written by `chanattr channels` for one image")
        x = torch.from_numpy(data["input"]).float()[None].to(lm.device)
        target = int(data["target"])
    check_provenance(source, lm, x)
    found = read_channel_result(source, unit=None)
    summary = source / "summary.json"
    baseline = json.loads(summary.read_text()).get("baseline", "zero") if summary.is_file() else "zero"
    return x, {**found, "target": target}, baseline, str(source)


def _from_run(folder: Path, lm, item: str | None) -> tuple[torch.Tensor, dict, str, str]:
    """(input, saved result, baseline, what) of one item of a ``chanattr run channels`` folder."""
    import json

    from .images import prepare_image
    from .items import Item
    from .runs import item_path, read_item

    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["method"] not in ("channels", "class-channels"):
        raise ChanattrError(f"{folder} is a `chanattr run {manifest['method']}` folder: the explorer needs unit masks "
                            f"(chanattr run channels or class-channels)")
    if manifest["model"]["fingerprint"] != lm.fingerprint():
        raise ChanattrError(f"{folder} was made with another network ({manifest['model']['name']}): give the same "
                            f"--model/--weights/--random-weights/--seed")
    ids = manifest["items"]
    ident = item if item is not None else ids[0]
    if ident not in ids:
        raise ChanattrError(f"{folder} has no item {ident!r}: give one of its items (e.g. {ids[0]})")
    it = Item(ident, "", "")
    if not item_path(folder, it).is_file():
        raise ChanattrError(f"item {ident!r} of {folder} is unfinished: run the same command again to finish it")
    arrays, rows = read_item(folder, it)
    if "masks" not in arrays:
        raise ChanattrError(f"{folder} was run with --rows-only: the explorer needs the items' masks")
    settings = manifest["settings"]
    x = prepare_image(rows[0]["source"], lm.preprocessing).input[None].to(lm.device)
    saved = {"masks": arrays["masks"], "areas": np.array([r["area"] for r in rows]), "layer": settings["layer"],
             "unit": rows[0]["unit"], "layout": settings.get("layout") or "", "target": int(rows[0]["target"])}
    return x, saved, settings.get("baseline", "zero"), f"{folder}, item {ident}"


def build_report(folder: str | Path, lm, *, top_classes: int = 3, units: int = 8, iterations: int = 100,
                 vis_iterations: int = 64, invert_iterations: int = 100, seed: int = 0,
                 out: str | Path | None = None, item: str | None = None, overwrite: bool = False) -> Path:
    """``explorer.html`` for a folder written by ``chanattr channels`` (one image), by the demo
    (its ``channels/`` folder) or by ``chanattr run channels`` (one of its items: ``item``, default
    the first). Returns the page's path (``out``, default ``folder/explorer.html``, or
    ``folder/explorer-ITEM.html`` for a run); an existing page is replaced only with ``overwrite``."""
    folder = Path(folder)
    run = (folder / "manifest.json").is_file()
    if run and item is None:
        import json

        item = json.loads((folder / "manifest.json").read_text())["items"][0]
    path = Path(out) if out is not None else folder / (f"explorer-{item}.html" if run else "explorer.html")
    if path.exists() and not overwrite:
        raise ChanattrError(f"{path} already exists: pass --overwrite to replace it, or give another --out")
    if run:
        x, found, baseline, what = _from_run(folder, lm, item)
    elif (folder / "channels.npz").is_file() or (folder / "channels" / "channels.npz").is_file():
        if item is not None:
            raise ChanattrError("--item goes with a `chanattr run` folder")
        x, found, baseline, what = _from_channels_folder(folder, lm)
    else:
        raise ChanattrError(f"{folder} holds no channels.npz or run: give a folder written by `chanattr channels`, "
                            f"`chanattr demo` or `chanattr run channels`")
    if baseline not in ("zero", "mean"):
        raise ChanattrError(f"{what} was made with a {baseline} baseline the explorer cannot rebuild: rerun with "
                            f"--baseline zero or mean")
    saved = found
    views = explore(lm, x, found["layer"], saved=saved, top_classes=top_classes, units=units, unit=found["unit"],
                    layout=found["layout"] if found["layout"] != "" else None, baseline=baseline, iterations=iterations,
                    vis_iterations=vis_iterations, invert_iterations=invert_iterations, seed=seed)
    rgb = photo(lm, x)
    page = render_explorer(f"chanattr explorer: {found['layer']}", _png(rgb), found["layer"], found["unit"], views,
                           meta=f"model {lm.name}; {len(views)} classes; feature visualisations {vis_iterations} "
                                f"steps, inversions {invert_iterations} steps")
    path.write_text(page, encoding="utf-8")
    return path
