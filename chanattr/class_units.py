"""Class-level unit masks (the paper's class analysis): one mask at a layer shared by every
image of a class, found by the same optimiser as the per-image masks.

The reward of a shared mask is the mean, over the class's images, of each image's reward with
the mask applied (the sum of their rewards, divided by their count: the same optimum, and the
area penalty weighs as much as for one image). Under several processes each one holds its
share of the images; the rewards are summed over the processes in the forward pass and the
mask's gradients in the backward pass, so every process takes the same steps and ends with the
same mask."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .batch import as_targets, check_batch
from .distributed import Processes, SumGradients, sum_over_processes
from .errors import ChanattrError
from .extremal import Schedule, check_areas, optimise, reward, result_fields, with_iterations
from .hooks import frozen
from .model_output import OutputSpec, target_model
from .units.space import CHANNEL_SCHEDULE, UnitResult, UnitSpace


class SharedUnitSpace:
    """A ``UnitSpace``'s images seen as one item: a mask (B x U) gives one reward per row, the
    mean over every image (of every process) of its ``reward_kind`` reward for its own target.
    ``logits`` returns it as a one-column output (target 0, reward ``simple``)."""

    num_images = 1

    def __init__(self, space: UnitSpace, targets: torch.Tensor, reward_kind: str, procs: Processes,
                 batch_size: int = 64) -> None:
        self.space, self.targets, self.reward_kind, self.procs = space, targets, reward_kind, procs
        self.batch_size = batch_size
        self.total = int(sum_over_processes(torch.tensor([float(space.num_images)]), procs)[0])
        # the greedy search of the unit space, run on the shared reward
        self.activation = space.activation
        self.unit, self.layer = space.unit, space.layer

    @property
    def num_channels(self) -> int:
        return self.space.num_units

    num_units = num_channels

    def init_params(self, num_items: int, value: float) -> torch.Tensor:
        return self.space.init_params(num_items, value)

    def masks(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def logits(self, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        n, b = self.space.num_images, keep.shape[0]
        keep = SumGradients.apply(keep, self.procs)  # this process's share of the gradient -> the whole sum's
        flat = keep.repeat_interleave(n, 0)  # row r * n + i: mask r on image i
        images = torch.arange(n, device=keep.device).repeat(b)
        values = []
        for s in range(0, flat.shape[0], self.batch_size):
            idx = images[s : s + self.batch_size]
            values.append(reward(self.space.logits(flat[s : s + self.batch_size], idx), self.targets[idx],
                                 self.reward_kind))
        local = torch.cat(values).view(b, n).sum(1)
        # the sum over processes in the forward pass; gradients stay local here (SumGradients sums them)
        whole = local + (sum_over_processes(local.detach(), self.procs) - local.detach())
        return (whole / self.total)[:, None]

    search = UnitSpace.search
    _greedy = UnitSpace._greedy


def class_unit_mask(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    layer: str,
    areas: Sequence[float] | float = (0.02, 0.05, 0.1),
    *,
    unit: str = "channels",
    layout: str | None = None,
    variant: str = "preserve",
    reward_kind: str = "simple",
    baseline: str | torch.Tensor = "zero",
    split: str = "auto",
    output: OutputSpec = None,
    schedule: Schedule | None = None,
    iterations: int | None = None,
    procs: Processes | None = None,
    progress: bool | None = None,
    **unit_options,
) -> UnitResult:
    """One unit mask per area shared by the N images ``x`` (N x C x H x W) of a class: the
    fraction ``a`` of ``layer``'s units that keeps (``preserve``) the mean target output over
    the images, or whose removal destroys it (``delete``). ``target``: one class index for all,
    or one per image (e.g. a COCO class's most probable ImageNet class in each image). Under
    torchrun, pass ``procs`` (``chanattr.distributed``) and each process's own images: the
    result is the mask of all of them, the same in every process. Returns a ``UnitResult`` with
    masks 1 x K x U; ``binary_reward``: the mean target output with each binary mask."""
    x = check_batch(x)
    procs = procs or Processes()
    model, target = target_model(model, target, output)
    areas = check_areas(areas)
    targets = as_targets(target, x.shape[0], x.device)
    if x.shape[0] == 0:
        raise ChanattrError("a process holds no image of the class: use fewer processes than images")
    schedule = schedule or CHANNEL_SCHEDULE
    if iterations is not None:
        schedule = with_iterations(schedule, iterations, allow_zero=schedule.start == "search")
    with frozen(model):
        space = UnitSpace(model, x.detach(), layer, unit=unit, layout=layout, baseline=baseline, split=split,
                          **unit_options)
        shared = SharedUnitSpace(space, targets, reward_kind, procs)
        params, out = optimise(shared, torch.zeros(1, dtype=torch.long, device=x.device), areas, variant=variant,
                               reward_kind="simple", schedule=schedule, progress=progress,
                               description=f"class {space.unit} at {layer} ({variant})")
    result = UnitResult(masks=params.view(1, len(areas), -1).cpu(),
                        **result_fields(out, torch.zeros(1, dtype=torch.long), variant, reward_kind),
                        info={"space": space.unit, **space.info(), "images": shared.total,
                              "processes": procs.world_size})
    result.info["image_targets"] = targets.cpu().tolist()
    return result


def run_class_mask(args, lm, source, out, procs: Processes, device: str, *, progress: bool = True) -> str:
    """``chanattr run class-channels``: after the per-image masks (the run's items), the class
    mask over all the items, each process holding its share of the images; the main process
    writes ``class_channels.npz`` (the shared masks, K x U, and the mean and standard deviation
    of the per-image masks), ``channels.npz`` (the shared masks, for ``chanattr invert --from``
    and ``visualize --from``) and ``class_summary.json``. Skipped when already written by this
    run (the manifest is checked before). Returns a one-line description."""
    import json

    import numpy as np

    from .distributed import barrier
    from .images import prepare_images
    from .outputs import write_json, write_npz
    from .runs import item_targets, read_item

    path = out / "class_channels.npz"
    if path.is_file():
        return f"already in {path}"
    mine = source.items[procs.rank :: procs.world_size]
    if not mine:
        raise ChanattrError(f"{len(source.items)} images for {procs.world_size} processes: use at most "
                            f"{len(source.items)} processes")
    images = prepare_images([it.source for it in mine], lm.preprocessing)
    x = torch.stack([im.input for im in images]).to(device)
    with torch.no_grad():
        targets = item_targets(lm.model(x).float(), mine, args)  # as the per-image masks had them
    options = {"class_token": True} if getattr(args, "class_token", False) else {}
    result = class_unit_mask(lm.model, x, targets.to(device), args.layer, args.areas, unit=args.unit,
                             layout=args.layout, variant=args.variant, reward_kind=args.reward,
                             baseline=args.baseline, split="full" if args.full_path else "auto",
                             iterations=args.iterations, procs=procs, progress=progress and procs.main, **options)
    barrier(procs)
    if not procs.main:
        return ""
    per_image = np.stack([read_item(out, it)[0]["masks"] for it in source.items])  # N x K x U
    shared = result.masks[0].numpy()
    areas = result.areas.numpy()
    info = result.info
    write_npz(out / "channels.npz", masks=shared, areas=areas, layer=np.array(args.layer), unit=np.array(info["unit"]),
              layout=np.array(info["layout"]))
    tmp = out / f".class_channels.{__import__('os').getpid()}.tmp.npz"
    write_npz(tmp, masks=shared, image_mean=per_image.mean(0), image_std=per_image.std(0), areas=areas,
              layer=np.array(args.layer), unit=np.array(info["unit"]), layout=np.array(info["layout"]))
    __import__("os").replace(tmp, path)
    kept = [result.kept_units(0, k) for k in range(len(areas))]
    summary = {"class": args.class_, "images": len(source.items), "processes": procs.world_size, "layer": args.layer,
               "unit": info["unit"], "layout": info["layout"], "units": int(shared.shape[-1]),
               "model": lm.name, "weights": lm.extra.get("weights"), "random_weights": lm.extra.get("random_weights"),
               "seed": lm.extra.get("seed"), "model_fingerprint": lm.fingerprint(),
               "areas": [{"area": float(a), "kept": kept[k], "mean_target_output": float(result.binary_reward[0, k]),
                          "per_image_agreement": float((per_image[:, k] > 0.5)[:, kept[k]].mean())}
                         for k, a in enumerate(areas)],
               "iterations": result.iterations, "seconds": result.seconds}
    write_json(out / "class_summary.json", summary)
    first = summary["areas"][0]
    return (f"{len(kept[0])} {info['unit']} at area {first['area']:g} keep a mean target output of "
            f"{first['mean_target_output']:.3g} -> {path}")
