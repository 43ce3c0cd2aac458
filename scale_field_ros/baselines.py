"""Established ways to make relative depth metric from sparse anchors, for comparison with the field.

Every baseline has the same interface: `(BackboneOutput, Anchors, min_depth_m, max_depth_m) -> depth_m`.
- median: one scale, the median anchor ratio (Eigen et al.'s median scaling);
- ga_depth / ga_inv: least-squares scale and shift in depth or in inverse depth (Marigold, VI-Depth global
  alignment); fitted with the project's robust solver so that outliers are treated as in the field;
- scaffold: VI-Depth's scale scaffold: the ratios of the anchors to the globally aligned inverse depth,
  interpolated linearly inside the anchors' convex hull (Delaunay) and 1 outside.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .anchors import Anchors
from .backbone import BackboneOutput
from .bases import relative_inverse_depth
from .solver import Design, FitLevel, Prior, SolverConfig, solve

Baseline = Callable[[BackboneOutput, Anchors, float, float], np.ndarray]
NOISE_REL = 0.02


def _at_anchors(img: np.ndarray, anchors: Anchors) -> np.ndarray:
    h, w = img.shape
    col = np.clip(np.round(anchors.u).astype(np.int64), 0, w - 1)
    row = np.clip(np.round(anchors.v).astype(np.int64), 0, h - 1)
    return img[row, col].astype(np.float64)


def _finish(inv: np.ndarray, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    inv = np.nan_to_num(inv, nan=1.0 / max_depth_m, posinf=1.0 / min_depth_m, neginf=1.0 / max_depth_m)
    return (1.0 / np.clip(inv, 1.0 / max_depth_m, 1.0 / min_depth_m)).astype(np.float32)


def _clean(anchors: Anchors, shape: tuple[int, int], min_depth_m: float, max_depth_m: float) -> Anchors:
    h, w = shape
    return anchors.sanitized(w, h, min_depth_m, max_depth_m)


def global_alignment(x: np.ndarray, target: np.ndarray, sigma: np.ndarray) -> tuple[float, float, FitLevel]:
    """Robust least-squares target ~ scale * x + shift; degrades to scale only or identity when ill-posed."""
    scale0 = float(np.median(target / np.maximum(x, 1e-12))) if len(x) else 1.0
    scale0 = scale0 if np.isfinite(scale0) and scale0 > 0 else 1.0
    design = Design(np.stack([x, np.ones_like(x)], axis=1), target, sigma, scale_index=0, shift_index=1)
    prior = Prior.diagonal([scale0, 0.0], [1e3 * scale0, 1e3 * scale0 * max(float(np.median(x)) if len(x) else 1, 1)])
    fit = solve(design, prior, SolverConfig(min_anchors_full=2), FitLevel.SCALE_SHIFT)
    return float(fit.weights[0]), float(fit.weights[1]), fit.level


def median_scaling(out: BackboneOutput, anchors: Anchors, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    g, med, _ = relative_inverse_depth(out)
    a = _clean(anchors, g.shape, min_depth_m, max_depth_m)
    if len(a) == 0:  # the backbone's own scale, as the other baselines (g is normalised to median 1)
        return _finish(g * np.float32(med), min_depth_m, max_depth_m)
    scale = float(np.median((1.0 / a.depth_m) / _at_anchors(g, a)))
    return _finish(g * np.float32(scale), min_depth_m, max_depth_m)


def ga_inverse_depth(out: BackboneOutput, anchors: Anchors, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    return _finish(_ga_inv_map(out, anchors, min_depth_m, max_depth_m)[0], min_depth_m, max_depth_m)


def _ga_inv_map(out, anchors, min_depth_m, max_depth_m):
    g, med, _ = relative_inverse_depth(out)
    a = _clean(anchors, g.shape, min_depth_m, max_depth_m)
    if len(a) == 0:
        return g * np.float32(med), a
    target = 1.0 / a.depth_m.astype(np.float64)
    scale, shift, _ = global_alignment(_at_anchors(g, a), target, NOISE_REL * target)
    return g * np.float32(scale) + np.float32(shift), a


def ga_depth(out: BackboneOutput, anchors: Anchors, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    g, med, _ = relative_inverse_depth(out)
    rel_depth = 1.0 / g
    a = _clean(anchors, g.shape, min_depth_m, max_depth_m)
    if len(a) == 0:
        return _finish(g * np.float32(med), min_depth_m, max_depth_m)
    target = a.depth_m.astype(np.float64)
    scale, shift, _ = global_alignment(_at_anchors(rel_depth, a), target, NOISE_REL * target)
    depth = rel_depth * np.float32(scale) + np.float32(shift)
    with np.errstate(divide="ignore"):
        return _finish(np.where(depth > 0, 1.0 / depth, 1.0 / max_depth_m), min_depth_m, max_depth_m)


def scaffold(out: BackboneOutput, anchors: Anchors, min_depth_m: float, max_depth_m: float) -> np.ndarray:
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import QhullError

    inv_ga, a = _ga_inv_map(out, anchors, min_depth_m, max_depth_m)
    inv_ga = np.maximum(inv_ga, np.float32(1.0 / max_depth_m))
    if len(a) < 3:
        return _finish(inv_ga, min_depth_m, max_depth_m)
    ratio = (1.0 / a.depth_m.astype(np.float64)) / _at_anchors(inv_ga, a)
    pts = np.stack([a.u, a.v], axis=1).astype(np.float64)
    pts, first = np.unique(pts, axis=0, return_index=True)
    h, w = inv_ga.shape
    try:
        interp = LinearNDInterpolator(pts, ratio[first], fill_value=1.0)
    except (QhullError, ValueError):  # collinear or coincident anchors: no hull
        return _finish(inv_ga, min_depth_m, max_depth_m)
    yy, xx = np.mgrid[0:h, 0:w]
    field = interp(xx.ravel(), yy.ravel()).reshape(h, w)
    return _finish(inv_ga * field.astype(np.float32), min_depth_m, max_depth_m)


BASELINES: dict[str, Baseline] = {
    "median": median_scaling,
    "ga_depth": ga_depth,
    "ga_inv": ga_inverse_depth,
    "scaffold": scaffold,
}
