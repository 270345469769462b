"""The smooth mask of extremal perturbations: a smooth max of Gaussian-like bumps.

Parameters p_j in [0, 1] sit on a coarse grid (one every ``step`` pixels). Each is a bump
g_j(u) = p_j k(|u - c_j| / sigma) with k(z) = exp(-2 max(z - 0.5, 0)^2): flat out to half a
sigma, then Gaussian. The bumps covering a pixel are combined by the smooth max
sum_j g_j softmax_j(T g) (T = 20) and clamped to [0, 1].

The mask is smooth on the scale of sigma (21 px at 224 px), so it is computed on a grid
twice as fine as the parameters' (64 x 64 for 224 x 224) and upsampled bilinearly: the
same mask as at full resolution to within interpolation, for a fraction of the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bump(z: torch.Tensor) -> torch.Tensor:
    """The bump profile k(z) = exp(-2 max(z - 0.5, 0)^2); z is distance / sigma."""
    return torch.exp(-2 * (z - 0.5).clamp(min=0) ** 2)


class SmoothMask:
    """Map parameters (B x gh*gw, in [0, 1]) to smooth masks.

    ``size``: (H, W) of the image in pixels; ``step``: parameter spacing in pixels;
    ``sigma``: bump radius in pixels; ``temperature``: of the smooth max;
    ``reach``: bumps further than ``reach * sigma`` from a pixel are left out
    (k(2.5) < 4e-4); ``oversample``: working-grid points per parameter spacing.
    ``self.grid`` is the parameter grid over the image (32 x 32 for 224 px at step 7).
    """

    def __init__(
        self,
        size: tuple[int, int],
        step: float = 7.0,
        sigma: float = 21.0,
        *,
        temperature: float = 20.0,
        reach: float = 2.5,
        oversample: int = 2,
        device: torch.device | str | None = None,
    ) -> None:
        h, w = size
        self.size = (h, w)
        inner = (max(1, math.ceil(h / step)), max(1, math.ceil(w / step)))
        self.work = (inner[0] * oversample, inner[1] * oversample)
        self.temperature = temperature
        radius = reach * sigma
        # The bumps extend past the image by their reach, so that every pixel sees the same
        # neighbourhood of bumps (a uniform parameter gives a uniform mask, with no bias
        # towards the border). Bumps outside the image copy the nearest parameter inside
        # (replicate padding): they are not free parameters of their own.
        margin = (math.ceil(radius / (h / inner[0])), math.ceil(radius / (w / inner[1])))
        self.grid = inner
        self.margin = margin
        gh, gw = inner[0] + 2 * margin[0], inner[1] + 2 * margin[1]
        cy = (torch.arange(gh, dtype=torch.float64) - margin[0] + 0.5) * h / inner[0]
        cx = (torch.arange(gw, dtype=torch.float64) - margin[1] + 0.5) * w / inner[1]
        py = (torch.arange(self.work[0], dtype=torch.float64) + 0.5) * h / self.work[0]
        px = (torch.arange(self.work[1], dtype=torch.float64) + 0.5) * w / self.work[1]

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
        valid = vy[:, None, :, None] & vx[None, :, None, :] & (dist <= reach)
        n_pix = self.work[0] * self.work[1]
        self.index = index.reshape(n_pix, -1).to(device)
        self.weight = torch.where(valid, bump(dist), torch.zeros_like(dist)).reshape(n_pix, -1).float().to(device)
        self.valid = valid.reshape(n_pix, -1).to(device)

    @property
    def num_params(self) -> int:
        return self.grid[0] * self.grid[1]

    def to(self, device) -> "SmoothMask":
        self.index, self.weight, self.valid = self.index.to(device), self.weight.to(device), self.valid.to(device)
        return self

    def work_mask(self, params: torch.Tensor) -> torch.Tensor:
        """B x gh*gw parameters -> B x (work h * work w) mask values in [0, 1]."""
        grid = params.reshape(params.shape[0], 1, *self.grid)
        my, mx = self.margin
        padded = F.pad(grid, (mx, mx, my, my), mode="replicate").flatten(1)
        g = padded[:, self.index] * self.weight  # B x P x n
        logits = (self.temperature * g).masked_fill(~self.valid, float("-inf"))
        return (g * torch.softmax(logits, dim=-1)).sum(-1)  # in [0, max g], so in [0, 1]

    def upsample(self, work: torch.Tensor) -> torch.Tensor:
        """B x (work h * work w) -> B x 1 x H x W (bilinear)."""
        m = work.view(-1, 1, *self.work)
        return F.interpolate(m, size=self.size, mode="bilinear", align_corners=False)
