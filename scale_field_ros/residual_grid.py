"""Edge-aware local correction: anchors' log residual ratios smoothed on a bilateral grid.

The global field has few degrees of freedom; with dense anchors the remaining error is local. We splat
each inlier anchor's log ratio log(target / fitted) into a 3-D grid over (x, y, log relative inverse
depth), blur the grid a little and slice it back at every pixel. Because one grid axis is depth, a
correction measured on a foreground object does not leak onto the background behind it (the edge-aware
part), and where no anchor is near the correction decays to zero (the global field alone). The grid's
spatial cell follows the anchors' spacing, so more anchors give a finer correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LocalConfig:
    enabled: bool = True
    min_anchors: int = 20
    cell_factor: float = 1.0  # spatial cell = factor * mean anchor spacing (working-res pixels)
    min_cell_px: float = 2.0
    log_depth_cell: float = 0.15  # grid step along log relative inverse depth
    blur_passes: int = 1
    prior_count: float = 0.3  # pseudo-anchors of zero correction: shrinks sparse, isolated corrections
    max_abs_log: float = 1.0


@dataclass(frozen=True)
class LocalGrid:
    """Blurred splat of anchor log residuals: value = num / (den + prior_count)."""

    num: np.ndarray  # gy x gx x gd
    den: np.ndarray
    cell_px: float  # spatial cell, working-res pixels
    log_origin: float
    log_cell: float
    prior_count: float
    residual_var: float  # mean squared inlier log residual before the correction (model misfit)


def cell_size(n_anchors: int, work_shape: tuple[int, int], hull_fraction: float, config: LocalConfig) -> float:
    h, w = work_shape
    spacing = np.sqrt(max(hull_fraction, 1e-3) * h * w / max(n_anchors, 1))
    return float(max(config.min_cell_px, config.cell_factor * spacing))


def fit_local(
    x_work: np.ndarray,
    y_work: np.ndarray,
    log_g: np.ndarray,
    log_ratio: np.ndarray,
    weight: np.ndarray,
    work_shape: tuple[int, int],
    log_range: tuple[float, float],
    config: LocalConfig,
    hull_fraction: float = 1.0,
) -> LocalGrid:
    h, w = work_shape
    cell = cell_size(len(log_ratio), work_shape, hull_fraction, config)
    lo, hi = log_range
    gx = int(np.ceil((w - 1) / cell)) + 2
    gy = int(np.ceil((h - 1) / cell)) + 2
    gd = int(np.ceil((hi - lo) / config.log_depth_cell)) + 2
    value = np.clip(log_ratio, -config.max_abs_log, config.max_abs_log)
    idx, wts = _trilinear(
        x_work / cell, y_work / cell, (np.clip(log_g, lo, hi) - lo) / config.log_depth_cell, (gy, gx, gd)
    )
    size = gy * gx * gd
    den = np.zeros(size)
    num = np.zeros(size)
    for c in range(8):
        den += np.bincount(idx[c], wts[c] * weight, minlength=size)
        num += np.bincount(idx[c], wts[c] * weight * value, minlength=size)
    den = _blur(den.reshape(gy, gx, gd), config.blur_passes)
    num = _blur(num.reshape(gy, gx, gd), config.blur_passes)
    resid_var = float(np.average(value**2, weights=weight)) if weight.sum() > 0 else 0.0
    return LocalGrid(num, den, cell, lo, config.log_depth_cell, config.prior_count, resid_var)


def slice_local(grid: LocalGrid, log_g_work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correction (log ratio) and anchor density at every working-res pixel."""
    h, w = log_g_work.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = (
        np.clip(log_g_work, grid.log_origin, grid.log_origin + (grid.num.shape[2] - 2) * grid.log_cell)
        - grid.log_origin
    ) / grid.log_cell
    idx, wts = _trilinear(xx.ravel() / grid.cell_px, yy.ravel() / grid.cell_px, d.ravel(), grid.num.shape)
    num_flat, den_flat = grid.num.ravel(), grid.den.ravel()
    num = np.zeros(h * w, np.float32)
    den = np.zeros(h * w, np.float32)
    for c in range(8):
        num += wts[c] * num_flat[idx[c]]
        den += wts[c] * den_flat[idx[c]]
    corr = num / (den + grid.prior_count)
    return corr.reshape(h, w).astype(np.float32), den.reshape(h, w)


def _trilinear(x: np.ndarray, y: np.ndarray, d: np.ndarray, shape: tuple[int, int, int]):
    gy, gx, gd = shape
    x = np.clip(x, 0, gx - 1.001)
    y = np.clip(y, 0, gy - 1.001)
    d = np.clip(d, 0, gd - 1.001)
    x0, y0, d0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64), np.floor(d).astype(np.int64)
    fx, fy, fd = (x - x0).astype(np.float32), (y - y0).astype(np.float32), (d - d0).astype(np.float32)
    idx, wts = [], []
    for cy in (0, 1):
        wy = fy if cy else 1 - fy
        for cx in (0, 1):
            wxy = wy * (fx if cx else 1 - fx)
            base = ((y0 + cy) * gx + (x0 + cx)) * gd + d0
            idx.append(base)
            wts.append(wxy * (1 - fd))
            idx.append(base + 1)
            wts.append(wxy * fd)
    return idx, wts


def _blur(a: np.ndarray, passes: int) -> np.ndarray:
    """[1 2 1] / 4 along every axis, `passes` times (edges replicated)."""
    for _ in range(passes):
        for axis in range(3):
            if a.shape[axis] < 3:
                continue
            p = np.pad(a, [(1, 1) if i == axis else (0, 0) for i in range(3)], mode="edge")
            sl = [slice(None)] * 3
            sl[axis] = slice(0, -2)
            left = p[tuple(sl)]
            sl[axis] = slice(1, -1)
            mid = p[tuple(sl)]
            sl[axis] = slice(2, None)
            right = p[tuple(sl)]
            a = 0.25 * left + 0.5 * mid + 0.25 * right
    return a
