"""The extremal-perturbation optimiser, shared by every perturbation space.

A *space* (pixels: ``chanattr.pixel.PixelSpace``; units of a layer -- channels, hidden
units, heads or tokens: ``chanattr.units.space.UnitSpace``) turns parameters into masks and runs the model on the
input perturbed by a *keep* mask (1 keeps, 0 removes). This module holds what is the same
in every space: the variants, the rewards, the ranking area constraint, the schedule, the
stopping rule and the result.

Mask convention (all variants): a mask marks the salient region, 1 inside. ``preserve``
keeps only the region (keep = m) and maximises the reward; ``delete`` removes the region
(keep = 1 - m) and minimises it; ``dual`` does both and maximises their difference. The
area ``a`` is the fraction of mask entries (pixels or channels) in the region.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from tqdm.auto import tqdm

from .errors import ChanattrError

VARIANTS = ("preserve", "delete", "dual")
STARTS = ("search", "input", "ones", "area")
REWARDS = ("simple", "contrastive")


class PerturbationSpace(Protocol):
    """What the optimiser needs from a space.

    Optional, for ``Schedule(start="search")``: ``candidates(area, variant, side)`` (P x params
    start masks, the same for every image, scored here as binary masks of the area), or
    ``search(image_index, targets, areas, variant, reward_kind, keep, progress=...)`` (the space's
    own search: ``keep`` starts per item, (items * keep) x params; a progress bar when asked). Optional, for ``Schedule.jitter``:
    ``mirrors = True`` and a ``flip`` keyword of ``logits`` (the pixel space mirrors its input;
    other spaces are never asked to)."""

    num_images: int

    def init_params(self, num_items: int, value: float) -> torch.Tensor:
        """num_items x (parameters) tensor filled with ``value``."""

    def masks(self, params: torch.Tensor) -> torch.Tensor:
        """num_items x M mask entries in [0, 1]: what the area constraint counts."""

    def logits(self, keep: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Model outputs (B x classes) with each image ``image_index[b]`` perturbed by ``keep[b]``
        (B x M, as returned by ``masks``)."""


# --- rewards, area constraint -----------------------------------------------------------------


def reward(logits: torch.Tensor, target: torch.Tensor, kind: str = "simple") -> torch.Tensor:
    """Per-row reward: the target logit (``simple``), or the target logit minus the largest
    other logit (``contrastive``). ``logits``: B x classes; ``target``: B class indices."""
    t = logits.gather(1, target.view(-1, 1)).squeeze(1)
    if kind == "simple":
        return t
    if kind == "contrastive":
        others = logits.scatter(1, target.view(-1, 1), float("-inf"))
        return t - others.max(1).values
    raise ChanattrError(f"unknown reward {kind!r}: use {' or '.join(REWARDS)}")


def area_reference(areas: torch.Tensor, size: int) -> torch.Tensor:
    """K x size: for each area a, floor((1 - a) size) zeros followed by ones."""
    zeros = torch.floor((1 - areas.double()) * size).long()
    positions = torch.arange(size, device=areas.device)
    return (positions[None, :] >= zeros[:, None]).to(torch.float32)


def area_loss(masks: torch.Tensor, reference: torch.Tensor, tie_tol: float = 1e-6) -> torch.Tensor:
    """Mean squared difference between each row's sorted values and its reference (B x M -> B).

    Runs of equal values (within ``tie_tol``) are compared with the mean of their reference
    entries, so ties are not broken by memory order: at the start, when every entry is
    equal, the penalty pulls all of them alike and the reward alone decides which rise.
    """
    values = masks.sort(dim=1).values
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = (values[:, 1:] - values[:, :-1]).detach() > tie_tol
    group = starts.long().cumsum(1) - 1
    ref = reference.expand_as(values)
    sums = torch.zeros_like(values).scatter_add_(1, group, ref)
    counts = torch.zeros_like(values).scatter_add_(1, group, torch.ones_like(values))
    ref = (sums / counts.clamp(min=1)).gather(1, group)
    return ((values - ref) ** 2).mean(1)


def top_fraction(masks: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Binary masks with exactly round(f * P) ones at the highest values of each mask.

    ``masks``: B x (any shape) with P entries each; ``fractions``: B fractions in [0, 1]."""
    flat = masks.reshape(masks.shape[0], -1)
    count = torch.round(fractions.to(flat.device, torch.float64) * flat.shape[1]).long()
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return (ranks < count[:, None]).to(masks.dtype).view_as(masks)


def harden(masks: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """The top-``fraction`` binary masks in the forward pass, the soft masks' gradient in the
    backward pass (straight-through)."""
    return top_fraction(masks.detach(), fractions) + masks - masks.detach()


def check_areas(areas: Sequence[float] | float) -> list[float]:
    """Areas as a list of fractions, each strictly inside (0, 1)."""
    values = [float(areas)] if isinstance(areas, (int, float)) else [float(a) for a in areas]
    if not values:
        raise ChanattrError("give at least one area")
    for a in values:
        if not 0 < a < 1:
            raise ChanattrError(f"area {a} is outside (0, 1): give fractions, e.g. 0.05 0.1 0.2")
    return values


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ChanattrError(f"unknown {what} {value!r}: use {', '.join(choices)}")
    return value


def show_progress(progress: bool | None) -> bool:
    """Progress bars: on when asked, or by default when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


# --- the schedule ---------------------------------------------------------------------------


@dataclass
class Schedule:
    """How the optimisation runs. ``PRESETS`` holds the named ones (``"fast"``, ``"paper"``);
    the defaults here are the ``fast`` preset's (``chanattr.units.space`` has its own).

    *Start.* ``"search"``: each mask starts from the best of the space's candidate masks for
    its area (pixel space: round blobs on a grid, scored as binary masks of exactly that
    area); ``"input"``: where the model sees the whole input (preserve 1, delete 0, dual 0.5);
    ``"ones"``: every parameter at 1 (the paper's start, for every variant); ``"area"``: every
    entry at the area. ``init_noise`` adds seeded Gaussian noise.
    ``restarts``: with a search (or noise), each mask is optimised from that many starts at
    once (the best candidates), and the best binary result is kept. ``search_pairs`` and
    ``search_parts``: the search also tries, for every k from 2 to ``search_parts``, the unions
    of k of the best ``search_pairs`` candidates at 1/k of the area (evidence in k places).
    ``search_side``: candidates per side of the search grid (0: about one blob radius apart,
    at least 7; small areas then mean many candidates -- cap it to trade quality for time).

    *Steps.* SGD with momentum (and dampening equal to the momentum) or Adam at learning rate
    ``lr``, decayed by the factor ``lr_decay`` over the run. The ranking area penalty's weight
    is ``area_weight * area_growth ** t`` when ``area_growth`` is set (the paper: 300 and
    1.0035), else it grows geometrically from ``area_weight`` to ``area_weight_final`` over the
    run. ``jitter``: mirror the input on every other iteration (pixel space).
    ``iterations=0`` (with a search): no gradient steps, the search's best start is the result.

    *Binary phase.* From the fraction ``harden`` of the iterations on, the model sees the
    binary masks (the top a of each mask; straight-through gradients) -- what the extremal
    score measures. Each mask's best binary reward is kept, and its parameters are what the
    run returns; so with ``harden=0`` the result is never worse than the start.
    ``harden=1``: soft masks throughout, the last ones returned.

    *Stopping* (``early_stop``), after ``min_iterations``: in the binary phase, once no mask's
    best binary reward improved for ``stall`` iterations; before it, once fewer than ``tol`` of
    the binarised (> 0.5) mask entries changed between checks ``check_every`` iterations apart,
    ``patience`` checks in a row. ``early_stop=False`` runs every iteration.
    """

    iterations: int = 200
    optimiser: str = "sgd"
    lr: float = 0.03
    lr_decay: float = 1.0
    momentum: float = 0.9
    area_weight: float = 300.0
    area_weight_final: float = 5000.0
    area_growth: float | None = None
    start: str = "search"
    init_noise: float = 0.0
    restarts: int = 1
    search_pairs: int = 8
    search_parts: int = 3
    search_side: int = 0
    jitter: bool = True
    harden: float = 0.0
    min_iterations: int = 60
    stall: int = 50
    check_every: int = 10
    tol: float = 0.002
    patience: int = 3
    early_stop: bool = True

    def weight_at(self, t: int) -> float:
        if self.area_growth is not None:
            return self.area_weight * self.area_growth**t
        if self.iterations <= 1:
            return self.area_weight_final
        growth = (self.area_weight_final / self.area_weight) ** (1 / (self.iterations - 1))
        return self.area_weight * growth**t


#: The named schedules. ``fast``: our variant -- binary level sets of a smooth field (the model
#: sees the top-a binary masks from the first step, straight-through gradients), started by a
#: disc search and stopped early; it optimises the exact-area binary score (the extremal score)
#: directly, so judge it also on scores it does not optimise. ``paper``: the method as Fong,
#: Patrick and Vedaldi (ICCV 2019) describe it -- soft smooth masks seen by the model
#: throughout, parameters starting at 1, SGD (lr 0.01, momentum and dampening 0.9), 800
#: iterations, area weight 300 x 1.0035^t, the input mirrored every other iteration.
#: ``feathered``: the fast preset's binary level sets with their edge feathered by a Gaussian of
#: 4 px (at 224 px; ``chanattr.pixel.PRESET_FEATHER``) in what the model sees, a smaller search
#: (5 x 5 discs, unions of two) and at most 80 steps: it optimises the feathered extremal score.
PRESETS: dict[str, Schedule] = {
    "fast": Schedule(),
    "feathered": Schedule(iterations=80, search_side=5, search_parts=2, min_iterations=30, stall=25),
    "paper": Schedule(iterations=800, optimiser="sgd", lr=0.01, momentum=0.9, area_weight=300.0,
                      area_growth=1.0035, start="ones", jitter=True, harden=1.0, early_stop=False),
}


def preset_schedule(preset: str) -> Schedule:
    """A copy of the named schedule (``PRESETS``)."""
    from dataclasses import replace

    return replace(PRESETS[check_choice(preset, tuple(PRESETS), "preset")])


# --- the result -----------------------------------------------------------------------------


@dataclass
class ExtremalResult:
    """Masks and diagnostics of one extremal-perturbation run over N images and K areas.

    ``masks``: N x K x (mask shape) in [0, 1], 1 = the salient region (see module docs).
    ``reward_history`` / ``area_history``: T x N x K, per iteration. The reward is that of
    the perturbed input: high is good for ``preserve``, low for ``delete``; for ``dual``,
    the preserved input's minus the deleted input's.
    ``final_reward``: N x K, the reward of the returned soft masks (no mirroring);
    ``binary_reward``: N x K, that of their binary top-a versions (the extremal score's
    keep set, with this run's perturbation).
    """

    masks: torch.Tensor
    areas: torch.Tensor
    targets: torch.Tensor
    variant: str
    reward_kind: str
    reward_history: torch.Tensor
    area_history: torch.Tensor
    final_reward: torch.Tensor
    binary_reward: torch.Tensor
    iterations: int
    seconds: float
    info: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.masks.shape[0]

    def mask_area(self) -> torch.Tensor:
        """N x K: the fraction of each mask's entries above 0.5 (the soft masks' area; it can
        fall short of the asked area where the optimiser kept a mask's order but not its level)."""
        return (self.masks > 0.5).flatten(2).float().mean(2)

    def binary_masks(self) -> torch.Tensor:
        """The masks as the optimiser scored them: 1 on the top round(a M) entries of each mask
        at area a, 0 elsewhere (same shape as ``masks``)."""
        return binary_masks(self.masks, self.areas)


def result_fields(out: dict, targets: torch.Tensor, variant: str, reward_kind: str) -> dict:
    """The ``ExtremalResult`` fields every space fills the same way from ``optimise``'s output."""
    return {"areas": out["areas"], "targets": targets.cpu(), "variant": variant, "reward_kind": reward_kind,
            "reward_history": out["reward_history"], "area_history": out["area_history"],
            "final_reward": out["final_reward"], "binary_reward": out["binary_reward"],
            "iterations": out["iterations"], "seconds": out["seconds"]}


def binary_masks(masks: torch.Tensor, areas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """N x K x (mask shape) masks -> their binary versions: 1 on the top round(a M) entries of
    mask k, a = ``areas[k]`` (K fractions), 0 elsewhere."""
    n, k = masks.shape[:2]
    fractions = torch.as_tensor(areas, dtype=torch.float64).repeat(n)
    return top_fraction(masks.reshape(n * k, -1), fractions).view_as(masks)


# --- the loop -------------------------------------------------------------------------------


@torch.enable_grad()  # gradients to the masks even when called under torch.no_grad() (Captum's metrics do)
def optimise(
    space: PerturbationSpace,
    targets: torch.Tensor,
    areas: Sequence[float],
    *,
    variant: str = "preserve",
    reward_kind: str = "simple",
    schedule: Schedule | None = None,
    progress: bool | None = None,
    description: str = "extremal perturbation",
) -> tuple[torch.Tensor, dict]:
    """Optimise one mask per (image, area), all in one batch.

    Returns the parameters (N*K x ...) and a dict with the histories, the final reward
    (N x K), the iterations run and the seconds taken. Items are ordered image-major: item b
    is image ``b // K`` at area ``b % K``. With ``schedule.restarts`` R > 1, each item is
    optimised from R starts at once and the start with the best binary reward is returned.
    """
    schedule = schedule or Schedule()
    check_choice(variant, VARIANTS, "variant")
    check_choice(reward_kind, REWARDS, "reward")
    areas = check_areas(areas)
    if schedule.start not in STARTS:
        raise ChanattrError(f"unknown start {schedule.start!r}: use {', '.join(STARTS)}")
    searching = schedule.start == "search" and (hasattr(space, "search") or hasattr(space, "candidates"))
    if schedule.iterations < (0 if searching else 1):
        raise ChanattrError("iterations must be at least 1 (0 only with a search start: the search alone)")
    start = time.perf_counter()
    n, k = space.num_images, len(areas)
    device = targets.device
    area_t = torch.tensor(areas, dtype=torch.float64)  # exact fractions, on the CPU
    r = max(1, schedule.restarts) if (searching or schedule.init_noise > 0) else 1
    # expanded items: b = (image * K + area) * R + restart
    image_index = torch.arange(n, device=device).repeat_interleave(k * r)
    item_targets = targets.to(device)[image_index]
    item_areas = area_t.repeat_interleave(r).repeat(n)
    shown = show_progress(progress)
    if searching and hasattr(space, "search"):  # a space that owns its search (units: greedy elimination)
        params = space.search(image_index[::r], item_targets[::r], item_areas[::r], variant, reward_kind, r,
                              progress=shown)
    elif searching:
        params = _search(space, image_index[::r], item_targets[::r], item_areas[::r], variant, reward_kind, r,
                         schedule.search_pairs, schedule.search_side, schedule.search_parts,
                         progress=shown, description=f"{description}: search")
    elif schedule.start == "input":  # the unperturbed input: keep = 1 everywhere
        params = space.init_params(n * k * r, {"preserve": 1.0, "delete": 0.0, "dual": 0.5}[variant])
    elif schedule.start == "ones":
        params = space.init_params(n * k * r, 1.0)
    else:  # every entry at its area's level
        params = space.init_params(n * k * r, 0.0) + item_areas.to(device, torch.float32)[:, None]
    if schedule.init_noise > 0:  # seeded by the caller (torch's global generator)
        params = (params + schedule.init_noise * torch.randn_like(params)).clamp(0, 1)
    params.requires_grad_(True)
    size = space.masks(params.detach()[:1]).shape[1]
    reference = area_reference(item_areas, size).to(device)
    if schedule.optimiser == "adam":
        optimiser = torch.optim.Adam([params], lr=schedule.lr)
    elif schedule.optimiser == "sgd":
        optimiser = torch.optim.SGD([params], lr=schedule.lr, momentum=schedule.momentum, dampening=schedule.momentum)
    else:
        raise ChanattrError(f"unknown optimiser {schedule.optimiser!r}: use adam or sgd")
    decay = schedule.lr_decay ** (1 / max(1, schedule.iterations - 1))
    sign = -1.0 if variant == "delete" else 1.0  # delete makes the reward low
    hard_from = schedule.iterations if schedule.harden >= 1 else int(schedule.harden * schedule.iterations)
    best_params = params.detach().clone()
    best = torch.full((params.shape[0],), float("-inf"), device=device)  # best objective of a binary mask
    rewards, penalties = [], []
    previous, calm, last_better = None, 0, 0
    mirrors = schedule.jitter and getattr(space, "mirrors", False)  # the space owns mirroring
    bar = tqdm(total=schedule.iterations, desc=description, disable=not shown, leave=False)
    t = 0
    for t in range(schedule.iterations):
        flip = mirrors and t % 2 == 1
        mask = space.masks(params)
        binary = t >= hard_from
        value = _variant_reward(space, harden(mask, item_areas) if binary else mask, image_index, item_targets,
                                variant, reward_kind, flip)
        penalty = area_loss(mask, reference)
        if binary and not flip:  # the exact binary score of the current parameters
            objective = sign * value.detach()
            margin = torch.where(torch.isfinite(best), 1e-6 * best.abs().clamp(min=1), torch.zeros_like(best))
            better = objective > best + margin
            if bool(better.any()):
                last_better = t
            best = torch.where(better, objective, best)
            best_params[better] = params.detach()[better]
        loss = (schedule.weight_at(t) * penalty - sign * value).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        for group in optimiser.param_groups:
            group["lr"] *= decay
        with torch.no_grad():
            params.clamp_(0, 1)
        rewards.append(value.detach())
        penalties.append(penalty.detach())
        bar.update(1)
        if not schedule.early_stop:
            continue
        if t + 1 >= schedule.min_iterations and binary and t - max(last_better, hard_from) >= schedule.stall:
            break
        if (t + 1) % schedule.check_every == 0 and not binary:
            now = mask.detach() > 0.5
            if previous is not None and t + 1 >= schedule.min_iterations:
                changed = (now != previous).float().mean().item()
                calm = calm + 1 if changed < schedule.tol else 0
                if calm >= schedule.patience:
                    break
            previous = now
    bar.close()
    iterations_run = t + 1 if schedule.iterations else 0
    params = params.detach()
    with torch.no_grad():
        if hard_from < schedule.iterations:  # the best binary masks found (the last ones included)
            last = sign * _variant_reward(space, harden(space.masks(params), item_areas), image_index, item_targets,
                                          variant, reward_kind, False)
            better = last > best
            best = torch.where(better, last, best)
            best_params[better] = params[better]
            params = best_params
        else:
            best = sign * _variant_reward(space, harden(space.masks(params), item_areas), image_index,
                                          item_targets, variant, reward_kind, False)
        # keep each item's best restart
        choice = best.view(n * k, r).argmax(1)
        rows = torch.arange(n * k, device=device) * r + choice
        params = params[rows]
        masks = space.masks(params)
        final = _variant_reward(space, masks, image_index[rows], item_targets[rows], variant, reward_kind, False)
        final_binary = _variant_reward(space, harden(masks, item_areas[rows.cpu()]), image_index[rows],
                                       item_targets[rows], variant, reward_kind, False)
    history_rows = rows.cpu()
    seconds = time.perf_counter() - start
    empty = torch.zeros(0, n * k * r)
    return params, {
        "reward_history": (torch.stack(rewards).cpu() if rewards else empty)[:, history_rows].view(-1, n, k),
        "area_history": (torch.stack(penalties).cpu() if penalties else empty)[:, history_rows].view(-1, n, k),
        "final_reward": final.view(n, k).cpu(),
        "binary_reward": final_binary.view(n, k).cpu(),
        "iterations": iterations_run,
        "seconds": seconds,
        "areas": area_t,
    }


@torch.no_grad()
def _search(space, image_index, targets, areas, variant, kind, keep: int = 1, pairs: int = 8, side: int = 0,
            parts: int = 3, batch_size: int = 32, progress: bool = False,
            description: str = "search") -> torch.Tensor:
    """Each item's ``keep`` best starts among the space's candidate masks, scored as binary
    masks of exactly the item's area (like the extremal score): the candidates at that area,
    and, for k = 2 .. ``parts``, the unions of k of the ``pairs`` best candidates at 1/k of the
    area (for evidence in k places). A coarse global search that puts the gradient descent in
    good basins.
    Returns (items * keep) x params."""
    sign = -1.0 if variant == "delete" else 1.0

    def binarise(cands: torch.Tensor, area: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates' binary masks at ``area`` (P x ..., bool) and whether each one's
        soft mask is far from the area (a start that would not stay there: ranked last)."""
        hard, off = [], []
        for s in range(0, cands.shape[0], batch_size):
            soft = space.masks(cands[s : s + batch_size])
            hard.append(harden(soft, torch.full((soft.shape[0],), area, dtype=torch.float64)) > 0.5)
            off.append(((soft > 0.5).float().mean(1) - area).abs() > 0.15 * area)
        return torch.cat(hard), torch.cat(off)

    prepared: dict = {}  # (candidate area, area) -> binarise(...): the same for every image

    def candidate_masks(cand_area: float, area: float):
        key = (cand_area, area)
        if key not in prepared:
            prepared[key] = binarise(space.candidates(cand_area, variant, side), area)
        return prepared[key]

    def score(hard: torch.Tensor, off: torch.Tensor, item: int) -> torch.Tensor:
        out = []
        for s in range(0, hard.shape[0], batch_size):
            m = hard[s : s + batch_size].float()
            b = m.shape[0]
            value = sign * _variant_reward(space, m, image_index[item].expand(b), targets[item].expand(b), variant,
                                           kind, False)
            out.append(torch.where(off[s : s + batch_size], value - 1e9, value))
        return torch.cat(out)

    memo: dict = {}  # the part-area scores of one image, target and area (shared across items)

    def part_scores(item: int, area: float) -> torch.Tensor:
        key = (int(image_index[item]), int(targets[item]), area)
        if key not in memo:
            memo[key] = score(*candidate_masks(area, area), item)
        return memo[key]

    chosen = []
    for item in tqdm(range(image_index.shape[0]), desc=description, unit="mask", disable=not progress, leave=False):
        area = float(areas[item])
        cands = space.candidates(area, variant, side)  # P x params
        hard, off = candidate_masks(area, area)
        for k in range(2, parts + 1) if pairs >= 2 else ():
            part = space.candidates(area / k, variant, side)
            top = part[part_scores(item, area / k).argsort(descending=True)[:pairs]]
            combos = torch.combinations(torch.arange(top.shape[0], device=top.device), k)
            if combos.numel() == 0:
                continue
            unions = top[combos].amax(1)
            hard_u, off_u = binarise(unions, area)
            cands = torch.cat([cands, unions])
            hard, off = torch.cat([hard, hard_u]), torch.cat([off, off_u])
        order = score(hard, off, item).argsort(descending=True)
        picks = order[:keep]
        if picks.numel() < keep:  # fewer candidates than restarts: repeat the best
            picks = torch.cat([picks, picks[:1].expand(keep - picks.numel())])
        chosen.append(cands[picks])
    return torch.cat(chosen)


def _logits(space, keep, image_index, flip: bool) -> torch.Tensor:
    return space.logits(keep, image_index, flip=True) if flip else space.logits(keep, image_index)


def _variant_reward(space, mask, image_index, targets, variant, kind, flip) -> torch.Tensor:
    if variant == "preserve":
        return reward(_logits(space, mask, image_index, flip), targets, kind)
    if variant == "delete":
        return reward(_logits(space, 1 - mask, image_index, flip), targets, kind)
    both = _logits(space, torch.cat([mask, 1 - mask]), torch.cat([image_index, image_index]), flip)
    r = reward(both, torch.cat([targets, targets]), kind)
    return r[: mask.shape[0]] - r[mask.shape[0] :]


def with_iterations(schedule: Schedule, iterations: int, allow_zero: bool = False) -> Schedule:
    """A copy of ``schedule`` with at most ``iterations`` steps (0: the search alone, where allowed)."""
    from dataclasses import replace

    if iterations < (0 if allow_zero else 1):
        raise ChanattrError("iterations must be at least 1" + (" (0: the search alone)" if allow_zero else ""))
    return replace(schedule, iterations=iterations, min_iterations=min(schedule.min_iterations, iterations))
