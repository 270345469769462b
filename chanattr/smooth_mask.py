"""The smooth mask of extremal perturbations: a smooth max of Gaussian-like bumps.

Parameters p_j in [0, 1] sit on a coarse grid (one every ``step`` pixels). Each is a bump
g_j(u) = p_j k(|u - c_j| / sigma) with k(z) = exp(-2 max(z - 0.5, 0)^2): flat out to half a
sigma, then Gaussian. The bumps at a pixel are combined by the smooth max
sum_j g_j softmax_j(T g) (T = 20) and clamped to [0, 1].

Two forms (both used by ``chanattr.pixel``):

- the paper's (``padding="none"``): the smooth max runs over *every* bump of the grid, the
  formula of Fong et al. (2019), Sec. 3.3; bumps exist at the parameters' grid points only,
  so a uniform parameter gives a mask that falls off slightly at the border. Bumps beyond
  ``reach * sigma`` of a pixel are taken as 0 there (each then adds exactly 1 to the smooth
  max's denominator and nothing to its numerator): the formula to within k(2.5) = 3.4e-4 of
  each far bump's value, at the cost of the window; ``reach=None`` computes every bump;
- the windowed one (``padding="replicate", reach=2.5``): only bumps within ``reach * sigma``
  of a pixel take part, and the grid is extended past the border by copies of the nearest
  parameter, so every pixel sees the same neighbourhood (no pull towards the border).

The mask is smooth on the scale of sigma (21 px at 224 px), so it is computed on a grid
twice as fine as the parameters' (64 x 64 for 224 x 224) and upsampled bilinearly: the same
mask as at full resolution to within interpolation, for a fraction of the cost.
``margin`` (px) extends that grid past the image on every side: the mask over the image
and a frame around it, which is what TorchRay's area constraint counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PADDINGS = ("replicate", "none")


def bump(z: torch.Tensor) -> torch.Tensor:
    """The bump profile k(z) = exp(-2 max(z - 0.5, 0)^2); z is distance / sigma."""
    return torch.exp(-2 * (z - 0.5).clamp(min=0) ** 2)


def smooth_max_mask(params: torch.Tensor, centres: torch.Tensor, points: torch.Tensor, sigma: float,
                    temperature: float = 20.0) -> torch.Tensor:
    """The paper's formula evaluated directly (for tests and small sizes): B x J parameters at
    ``centres`` (J x 2, px) -> B x P mask values at ``points`` (P x 2, px), the smooth max over
    every bump, clamped to [0, 1]."""
    dist = torch.cdist(points.double(), centres.double()) / sigma  # P x J
    g = params.double()[:, None, :] * bump(dist)[None]  # B x P x J
    return (g * torch.softmax(temperature * g, dim=-1)).sum(-1).clamp(0, 1).to(params.dtype)


class SmoothMask:
    """Map parameters (B x gh*gw, in [0, 1]) to smooth masks.

    ``size``: (H, W) of the image in pixels; ``step``: parameter spacing in pixels;
    ``sigma``: bump radius in pixels; ``temperature``: of the smooth max;
    ``padding``: ``"replicate"`` (bumps past the border copy the nearest parameter; bumps
    beyond the reach are left out) or ``"none"`` (bumps at the grid points only, every one in
    the smooth max: the paper's; those beyond the reach count as 0); ``reach``: in sigmas
    (k(2.5) < 4e-4), ``None``: every bump computed; ``margin``: pixels of frame past the image
    that the mask is also computed on (``upsample`` returns H + 2 margin rows);
    ``oversample``: working-grid points per parameter spacing.
    ``self.grid`` is the parameter grid over the image (32 x 32 for 224 px at step 7).
    """

    def __init__(
        self,
        size: tuple[int, int],
        step: float = 7.0,
        sigma: float = 21.0,
        *,
        temperature: float = 20.0,
        reach: float | None = 2.5,
        padding: str = "replicate",
        margin: int = 0,
        oversample: int = 2,
        device: torch.device | str | None = None,
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}: use {' or '.join(PADDINGS)}")
        h, w = size
        self.size = (h, w)
        self.margin_px = int(margin)
        self.padding = padding
        inner = (max(1, math.ceil(h / step)), max(1, math.ceil(w / step)))
        # the working grid covers the image and its frame, about step / oversample apart
        full = (h + 2 * self.margin_px, w + 2 * self.margin_px)
        self.work = (math.ceil(full[0] / step) * oversample, math.ceil(full[1] / step) * oversample)
        self.temperature = temperature
        self.grid = inner
        radius = math.inf if reach is None else reach * sigma
        if padding == "replicate":
            # The bumps extend past the image by their reach (and the frame), so that every
            # pixel sees the same neighbourhood of bumps. Bumps outside the image copy the
            # nearest parameter inside: they are not free parameters of their own.
            reach_px = (radius if reach is not None else 3 * sigma) + self.margin_px
            pad = (math.ceil(reach_px / (h / inner[0])), math.ceil(reach_px / (w / inner[1])))
        else:
            pad = (0, 0)
        self.margin = pad  # parameter cells of padding on each side
        gh, gw = inner[0] + 2 * pad[0], inner[1] + 2 * pad[1]
        cy = (torch.arange(gh, dtype=torch.float64) - pad[0] + 0.5) * h / inner[0]
        cx = (torch.arange(gw, dtype=torch.float64) - pad[1] + 0.5) * w / inner[1]
        py = (torch.arange(self.work[0], dtype=torch.float64) + 0.5) * full[0] / self.work[0] - self.margin_px
        px = (torch.arange(self.work[1], dtype=torch.float64) + 0.5) * full[1] / self.work[1] - self.margin_px
        self.centres = torch.stack(torch.meshgrid(cy, cx, indexing="ij"), -1).reshape(-1, 2)
        self.points = torch.stack(torch.meshgrid(py, px, indexing="ij"), -1).reshape(-1, 2)

        def neighbours(p, c):  # the grid indices within reach along one axis, padded
            inside = (p[:, None] - c[None, :]).abs() <= radius
            count = int(inside.sum(1).max())
            order = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)[:, :count]
            return order, inside.gather(1, order)

        iy, vy = neighbours(py, cy)
        ix, vx = neighbours(px, cx)
        # all pairs (y neighbour, x neighbour) for every working pixel
        index = iy[:, None, :, None] * gw + ix[None, :, None, :]  # Hw x Ww x ny x nx
        dy = py[:, None, None, None] - cy[iy][:, None, :, None]
        dx = px[None, :, None, None] - cx[ix][None, :, None, :]
        dist = torch.sqrt(dy**2 + dx**2) / sigma
        valid = vy[:, None, :, None] & vx[None, :, None, :] & (dist <= radius / sigma)
        n_pix = self.work[0] * self.work[1]
        self.index = index.reshape(n_pix, -1).to(device)
        self.weight = torch.where(valid, bump(dist), torch.zeros_like(dist)).reshape(n_pix, -1).float().to(device)
        self.valid = valid.reshape(n_pix, -1).to(device)
        self.all_valid = bool(self.valid.all())
        # the paper's form: bumps outside the window count as value 0 (logit 0) in the smooth max
        far = self.centres.shape[0] - valid.reshape(n_pix, -1).sum(1) if padding == "none" else torch.zeros(n_pix)
        self.far = far.float().to(device) if bool((far > 0).any()) else None

    @property
    def num_params(self) -> int:
        return self.grid[0] * self.grid[1]

    def to(self, device) -> "SmoothMask":
        self.index, self.weight, self.valid = self.index.to(device), self.weight.to(device), self.valid.to(device)
        self.far = None if self.far is None else self.far.to(device)
        return self

    def work_mask(self, params: torch.Tensor) -> torch.Tensor:
        """B x gh*gw parameters -> B x (work h * work w) mask values in [0, 1]."""
        grid = params.reshape(params.shape[0], 1, *self.grid)
        my, mx = self.margin
        if my or mx:
            grid = F.pad(grid, (mx, mx, my, my), mode="replicate")
        g = grid.flatten(1)[:, self.index] * self.weight  # B x P x n
        logits = self.temperature * g
        if not self.all_valid:
            logits = logits.masked_fill(~self.valid, float("-inf"))
        if self.far is None:
            return (g * torch.softmax(logits, dim=-1)).sum(-1)  # in [0, max g], so in [0, 1]
        top = logits.amax(-1, keepdim=True).clamp(min=0)  # the far bumps' logit is 0
        e = torch.exp(logits - top)
        return (g * e).sum(-1) / (e.sum(-1) + self.far * torch.exp(-top[..., 0]))

    def upsample(self, work: torch.Tensor) -> torch.Tensor:
        """B x (work h * work w) -> B x 1 x (H + 2 margin) x (W + 2 margin) (bilinear)."""
        m = work.view(-1, 1, *self.work)
        size = (self.size[0] + 2 * self.margin_px, self.size[1] + 2 * self.margin_px)
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)

    def crop(self, full: torch.Tensor) -> torch.Tensor:
        """B x 1 x (H + 2 margin) x (W + 2 margin) -> B x 1 x H x W: the mask over the image."""
        m = self.margin_px
        return full[..., m : m + self.size[0], m : m + self.size[1]] if m else full
