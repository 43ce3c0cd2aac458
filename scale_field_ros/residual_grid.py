"""Edge-aware local correction: anchors' log residual ratios smoothed on a bilateral grid.

The global field has few degrees of freedom; with dense anchors the remaining error is local. We splat
each inlier anchor's log ratio log(target / fitted) into a 3-D grid over (x, y, log relative inverse
depth), blur the grid a little and slice it back at every pixel. Because one grid axis is depth, a
correction measured on a foreground object does not leak onto the background behind it (the edge-aware
part), and where no anchor is near the correction decays to zero (the global field alone). The grid's
spatial cell follows the anchors' spacing, so more anchors give a finer correction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from numba import njit

LOCAL_METHODS = ("pushpull", "delaunay", "grid")


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
    outlier_log: float = 0.45  # |log ratio - neighbours median| beyond this (and 4 MADs) marks an outlier
    neighbours: int = 6
    method: str = "pushpull"  # "pushpull" (Gaussian pyramid), "delaunay" (linear on triangles) or "grid" (bilateral)
    pushpull_tau: float = 0.02  # push-pull: anchor weight at which a level trusts itself and the coarser level equally

    def __post_init__(self) -> None:
        if self.method not in LOCAL_METHODS:
            raise ValueError(f"local.method must be one of {', '.join(LOCAL_METHODS)}, got {self.method!r}")
        # each divides: 0 made the grid's correction NaN (depth at max_depth_m everywhere) or raised mid-frame
        for name in ("prior_count", "log_depth_cell", "min_cell_px"):
            if not getattr(self, name) > 0:
                raise ValueError(f"local.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class LocalCorrection:
    """Per-pixel log correction at working resolution, with the anchor density behind it.

    The anchors' misfit before the correction is split in two (`edge_misfit`): a part that depends on the
    relative map's log-depth gradient there (`edge_var`: at a depth edge the network's blurred or shifted edge
    misses the true one by a fraction of a pixel or more, and the correction, smooth between anchors, does not
    mend it) and the rest (`residual_var`), which the correction removes where anchors are dense."""

    log_ratio: np.ndarray  # h x w float32
    density: np.ndarray  # h x w, anchors (weight) per working-res pixel neighbourhood
    residual_var: float  # mean squared inlier log residual before the correction, less its edge part
    prior_count: float
    edge_var: np.ndarray | float = 0.0  # h x w float32: the misfit's edge part (log-depth variance), or 0
    edge_var_at_anchors: float = 0.0  # its mean over the anchors (the part of their misfit it explains)
    edge_map: np.ndarray | None = None  # h x w: the `edge_strength` the split was made against (None: no split)

    def variance(self) -> np.ndarray:
        """Remaining log-depth variance: the misfit where no anchor is near, shrinking with density, plus the
        edge part, which does not."""
        off_edge = self.residual_var * self.prior_count / (self.density + self.prior_count)
        return (off_edge + self.edge_var).astype(np.float32)

    def with_misfit(self, misfit_log_var: float) -> LocalCorrection:
        """The correction with its residual variance raised to the field's misfit (`misfit_log_var`, the mean
        squared log residual of the solver's inliers) less the part of that the edge term explains."""
        return replace(self, residual_var=max(self.residual_var, misfit_log_var - self.edge_var_at_anchors))


def edge_strength(log_g_work: np.ndarray) -> np.ndarray:
    """Squared log-depth gradient per working pixel (Sobel, scaled to the slope: 1 on a ramp of 1 per pixel), the
    largest over each 3 x 3 neighbourhood: an edge's misplacement reaches the pixels beside it."""
    gx = cv2.Sobel(log_g_work, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(log_g_work, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return cv2.dilate(gx * gx + gy * gy, np.ones((3, 3), np.uint8))


def edge_misfit(squared: np.ndarray, edge: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """(v0, k) of the weighted least-squares line squared ~ v0 + k * edge, both >= 0: the anchors' squared log
    residuals against the edge strength at each (`edge_strength`). k is 0 where the residuals do not grow with
    the gradient, or no two anchors differ in it."""
    total = float(weight.sum())
    if total <= 0:
        return 0.0, 0.0
    mean_sq = float(weight @ squared) / total
    mean_e = float(weight @ edge) / total
    var_e = float(weight @ (edge - mean_e) ** 2) / total
    if var_e <= 1e-12 * max(mean_e * mean_e, 1e-30):
        return mean_sq, 0.0
    k = float(weight @ ((edge - mean_e) * (squared - mean_sq))) / total / var_e
    if k <= 0:
        return mean_sq, 0.0
    v0 = mean_sq - k * mean_e
    if v0 < 0:  # the line through the origin instead
        return 0.0, float(weight @ (edge * squared)) / float(weight @ (edge * edge))
    return v0, k


def local_correction(
    x_work: np.ndarray,
    y_work: np.ndarray,
    log_ratio: np.ndarray,
    weight: np.ndarray,
    log_g_work: np.ndarray,
    config: LocalConfig,
    hull_fraction: float = 1.0,
) -> LocalCorrection:
    """The local correction field from the anchors' log residual ratios."""
    h, w = log_g_work.shape
    edge = edge_strength(log_g_work)
    value, xi, yi, (resid_var, edge_var, edge_at_anchors) = _misfit_split(
        x_work, y_work, log_ratio, weight, edge, config
    )
    pc = max(config.prior_count, 1e-3)
    if config.method == "grid":
        lo, hi = float(log_g_work.min()), float(log_g_work.max())
        grid = fit_local(x_work, y_work, log_g_work[yi, xi], value, weight, (h, w), (lo, hi), config, hull_fraction)
        corr, density = slice_local(grid, log_g_work)
    elif config.method == "delaunay":
        corr = linear_interpolation(x_work, y_work, value, (h, w))
        _, density = push_pull(x_work, y_work, value, weight, (h, w))
        density = cv2.blur(density, (5, 5)) * 25.0
    else:
        corr, density = push_pull(x_work, y_work, value, weight, (h, w), config.prior_count, config.pushpull_tau)
        density = cv2.boxFilter(density, -1, (5, 5), normalize=False)
    return LocalCorrection(corr, density.astype(np.float32), resid_var, pc, edge_var, edge_at_anchors, edge)


def with_own_misfit(
    local: LocalCorrection,
    x_work: np.ndarray,
    y_work: np.ndarray,
    log_ratio: np.ndarray,
    weight: np.ndarray,
    config: LocalConfig,
) -> LocalCorrection:
    """`local` (its correction and density) with the misfit split redone on `log_ratio`, other residuals at the
    same anchors, against the same edge map. With a carried correction, `local` is fitted to what the anchors add
    to it, and its misfit is that innovation's, near 0 when the anchors repeat; the frame's own residuals give
    the variance the frame alone would publish, the temporal filter's floor."""
    edge = local.edge_map if local.edge_map is not None else np.zeros(local.log_ratio.shape, np.float32)
    *_, (resid_var, edge_var, edge_at_anchors) = _misfit_split(x_work, y_work, log_ratio, weight, edge, config)
    return replace(local, residual_var=resid_var, edge_var=edge_var, edge_var_at_anchors=edge_at_anchors)


def _misfit_split(x_work, y_work, log_ratio, weight, edge: np.ndarray, config: LocalConfig):
    """The anchors' clipped log residuals, their working pixels (xi, yi), and `LocalCorrection`'s misfit split of
    them against the edge strength `edge` (`edge_strength`, h x w): (residual_var, edge_var map or 0,
    edge_var_at_anchors)."""
    h, w = edge.shape
    value = np.clip(log_ratio, -config.max_abs_log, config.max_abs_log)
    yi = np.clip(np.round(y_work).astype(np.int64), 0, h - 1)
    xi = np.clip(np.round(x_work).astype(np.int64), 0, w - 1)
    edge_at = edge[yi, xi].astype(np.float64)
    resid_var, k_edge = edge_misfit(value**2, edge_at, weight)
    edge_at_anchors = k_edge * float(np.average(edge_at, weights=weight)) if weight.sum() > 0 else 0.0
    edge_var = edge * np.float32(k_edge) if k_edge > 0 else 0.0
    return value, xi, yi, (resid_var, edge_var, edge_at_anchors)


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


def push_pull(
    x_work: np.ndarray,
    y_work: np.ndarray,
    value: np.ndarray,
    weight: np.ndarray,
    work_shape: tuple[int, int],
    prior_count: float = 0.0,
    tau: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Scattered-data interpolation by push-pull (Gortler et al.'s lumigraph hole filling) on a Gaussian
    pyramid: splat bilinearly, pull weight and weighted value sums down with cv2.pyrDown, then push back up,
    each level blending its own average with the coarser estimate by confidence W / (W + tau). A small tau
    keeps the anchors' own values (close to interpolation), coarse levels fill the gaps smoothly.
    Returns (interpolated value, sample density) at working resolution; both float32."""
    h, w = work_shape
    wsum, vsum = splat_bilinear(x_work, y_work, weight, value, (h, w))
    levels = [(wsum, vsum)]
    while min(levels[-1][0].shape) > 2:
        wl, vl = levels[-1]
        levels.append((cv2.pyrDown(wl) * 4.0, cv2.pyrDown(vl) * 4.0))
    wl, vl = levels[-1]
    total = float(wl.sum())
    est = np.full(wl.shape, float(vl.sum()) / (total + prior_count) if total > 0 else 0.0, np.float32)
    tau32 = np.float32(max(tau, 1e-6))
    for wl, vl in reversed(levels[:-1]):
        # pyrUp is pyrDown's pair: coarse pixel i sits at fine pixel 2i (a resize puts it at 2i + 0.5, and the
        # half-pixel shift per level accumulated to a drift of the correction towards +x, +y)
        up = cv2.pyrUp(est, dstsize=(wl.shape[1], wl.shape[0]))
        est = (vl + tau32 * up) / (wl + tau32)
    return est, wsum


def splat_bilinear(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, value: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of weight and weight * value, each sample spread bilinearly over its 4 nearest pixels (float32).
    Coordinates must be finite (the compiled scatter has no bounds check; a NaN one is refused here)."""
    h, w = shape
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("splat_bilinear: sample coordinates must be finite")
    x = np.clip(np.asarray(x, np.float64), 0, w - 1.001)
    y = np.clip(np.asarray(y, np.float64), 0, h - 1.001)
    wsum, vsum = _splat(x, y, np.asarray(weight, np.float64), np.asarray(value, np.float64), h, w)
    return wsum.astype(np.float32), vsum.astype(np.float32)


@njit(cache=True, nogil=True)
def _splat(x, y, weight, value, h, w):
    """The sums of `splat_bilinear` (x, y already clipped inside the grid), compiled: with numpy it was
    four gathers, two bincounts and their index arrays, several times the arithmetic."""
    wsum = np.zeros((h, w))
    vsum = np.zeros((h, w))
    for i in range(x.size):
        x0, y0 = int(x[i]), int(y[i])
        fx, fy = x[i] - x0, y[i] - y0
        wt = weight[i]
        wv = wt * value[i]
        for dy, cy in ((0, 1.0 - fy), (1, fy)):
            for dx, cx in ((0, 1.0 - fx), (1, fx)):
                c = cy * cx
                wsum[y0 + dy, x0 + dx] += wt * c
                vsum[y0 + dy, x0 + dx] += wv * c
    return wsum, vsum


def linear_interpolation(x: np.ndarray, y: np.ndarray, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear interpolation on the anchors' Delaunay triangulation, 0 outside their convex hull."""
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import QhullError

    h, w = shape
    pts = np.stack([x, y], axis=1)
    pts, first = np.unique(pts, axis=0, return_index=True)
    if len(pts) < 3:
        return np.zeros(shape, np.float32)
    try:
        interp = LinearNDInterpolator(pts, value[first], fill_value=0.0)
    except (QhullError, ValueError):
        return np.zeros(shape, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    return interp(xx.ravel(), yy.ravel()).reshape(h, w).astype(np.float32)


def neighbour_consistent(
    u: np.ndarray,
    v: np.ndarray,
    log_ratio: np.ndarray,
    threshold: float,
    k: int = 6,
    log_g: np.ndarray | None = None,
) -> np.ndarray:
    """Anchors whose log ratio agrees with the weighted mean of the about k anchors around them.

    With `log_g` (log relative inverse depth at the anchors) the test is edge-aware: an anchor whose
    relative depth differs from its neighbours' by d may differ by d more in log ratio, because the
    backbone's blurred depth edges legitimately change the ratio there, while a wrong anchor sits on
    the same surface as its neighbours.

    Leave-one-out Gaussian average on a coarse raster (kernel width from the anchors' mean spacing, so it
    covers about k neighbours), done twice: the second pass ignores the anchors the first one flagged, so a
    wrong neighbour does not condemn a good anchor. Cost: two small blurs instead of a KD-tree.
    """
    n = len(log_ratio)
    if n <= k:
        return np.ones(n, bool)
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    value = np.asarray(log_ratio, np.float64)
    x_lo, y_lo = float(u.min()), float(v.min())
    area = max((float(u.max()) - x_lo + 1.0) * (float(v.max()) - y_lo + 1.0), 1.0)
    spacing = np.sqrt(area / n)
    cell = max(spacing / 2.0, 1e-3)  # raster cell; the kernel spans ~sqrt(k) spacings
    sigma_cells = np.sqrt(k / np.pi) * spacing / cell
    gw = int(min((float(u.max()) - x_lo) / cell, 4096)) + 1
    gh = int(min((float(v.max()) - y_lo) / cell, 4096)) + 1
    xi = np.clip(((u - x_lo) / cell).astype(np.int64), 0, gw - 1)
    yi = np.clip(((v - y_lo) / cell).astype(np.int64), 0, gh - 1)
    flat = yi * gw + xi
    ksize = 2 * int(np.ceil(2.5 * sigma_cells)) + 1
    kern = cv2.getGaussianKernel(ksize, sigma_cells).ravel()
    centre = float(kern[ksize // 2] ** 2)

    def loo_mean(weight: np.ndarray, what: np.ndarray) -> np.ndarray:
        """Each anchor's neighbours' weighted mean of `what`, itself left out."""
        sums = _raster_sums(flat, weight, what, gh, gw)  # weight and weighted value: one 2-channel blur
        blurred = cv2.sepFilter2D(sums, -1, kern, kern, borderType=cv2.BORDER_CONSTANT).reshape(-1, 2)[flat]
        # remove each anchor's own contribution (it shares its cell's centre weight with cell-mates)
        den = blurred[:, 0] - centre * weight
        num = blurred[:, 1] - centre * weight * what
        return np.where(den > 1e-6 * centre, num / np.maximum(den, 1e-12), what)

    ones = np.ones(n)
    slack = np.zeros(n) if log_g is None else np.abs(log_g - loo_mean(ones, np.asarray(log_g, np.float64)))
    dev = np.abs(value - loo_mean(ones, value))
    first = dev <= max(threshold, 4.0 * 1.4826 * float(np.median(dev))) + slack
    dev = np.abs(value - loo_mean(first.astype(np.float64), value))
    mad = 1.4826 * float(np.median(dev))
    return dev <= max(threshold, 4.0 * mad) + slack


@njit(cache=True, nogil=True)
def _raster_sums(flat, weight, value, h, w):
    """(h, w, 2) float32 raster of the sums of weight and weight * value per cell (`flat`: each sample's cell)."""
    sums = np.zeros(h * w * 2)
    for i in range(flat.size):
        sums[2 * flat[i]] += weight[i]
        sums[2 * flat[i] + 1] += weight[i] * value[i]
    return sums.astype(np.float32).reshape(h, w, 2)
