"""Which basis family a frame's anchors can support: spatially blocked cross-validation over the candidates
(scale only, scale and shift, the tiers of `bases`, a depth-affine alignment), and the blend of a richer
pick with scale only (`bases.ScaleOnlyBlend`). `bases.build_bases` calls `select_tier` on the full family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from .bases import BasisConfig, BasisSet, ScaleOnlyBlend, _restrict, _tier_columns, sample_maps


def select_tier(full: BasisSet, anchors, config: BasisConfig, basis_rel_std: float = 0.3) -> BasisSet:
    """Choose scale only, scale+shift or tier 1..full.tier by spatially blocked cross-validation.

    The anchors are grouped by the cell of a 4x4 image grid they fall in and cells are dealt to (up to) 5
    folds, so clustered anchors (VIO corners) are held out together and a family that only fits where the
    anchors are, and extrapolates badly elsewhere, scores badly. Each rung is a ridge fit of the same model
    as the solver (relative residuals, weight prior `basis_rel_std`), with gross outliers of a median-scale
    fit left out; scale only is held out as the anchors' AbsRel-optimal scale it stands for (`absrel_scale`),
    and a last candidate, scale and shift in depth, as the robust depth-space alignment it stands for.
    Held-out errors are AbsRel in depth. The simplest rung within `select_tolerance` of the best held-out error
    wins. Many anchors covering every cell skip the test (the full family is then always supported).

    A richer pick is not trusted alone: few or clustered anchors score it on a handful of held-out points, and
    a tilt that fits them can still extrapolate badly over the image. The frame's output (where no local
    correction is added, `pipeline.py`: the output is then the rung that was scored) averages it with
    scale only, weighted by the inverse of each one's held-out mean squared error (Bates and Granger's
    forecast combination: no weight to tune, and scale only fades as the pick's held-out error drops below
    its own). The weights are the frame's own; the temporal filter keeps the single pick (`ScaleOnlyBlend`).
    """
    cv = cross_validate(full, anchors, config, basis_rel_std)
    if isinstance(cv, BasisSet):
        return cv
    errors = cv.errors.mean(axis=1) if cv.errors.shape[1] else np.zeros(len(cv.labels))
    tolerance = config.select_tolerance + config.coverage_penalty * (1.0 - cv.coverage)
    pick = next(i for i, e in enumerate(errors) if e <= errors.min() * (1.0 + tolerance) + 1e-12)
    chosen = candidate(full, cv, pick)
    if pick == 0 or not cv.errors.shape[1]:
        return chosen
    mse = np.maximum(np.mean(cv.errors[[0, pick]] ** 2, axis=1), 1e-12)
    weight = float(mse[1] / (mse[0] + mse[1]))  # (1 / mse_scale) / (1 / mse_scale + 1 / mse_pick)
    return dataclasses.replace(chosen, blend=ScaleOnlyBlend(weight, cv.s0, float(np.sqrt(mse[0]))))


@dataclass(frozen=True)
class HeldOut:
    """The candidates of `select_tier` scored on one frame's anchors by blocked cross-validation.

    labels: "-1" (scale only, `absrel_scale`), "0" (scale and shift), "1".."3" (tiers), "affine" (depth-affine
    alignment). errors: (candidates, anchors) each anchor's held-out AbsRel (gross outliers left out).
    s0: the anchors' `absrel_scale` of the ratios (1/depth) / g. g, depth_m: g and depth at the anchors kept."""

    labels: tuple[str, ...]
    errors: np.ndarray
    coverage: float
    s0: float
    g: np.ndarray
    depth_m: np.ndarray

    def why(self) -> str:
        errors = self.errors.mean(axis=1) if self.errors.shape[1] else np.zeros(len(self.labels))
        return f"cv (coverage {self.coverage:.2f}) " + " ".join(
            f"{t}:{e:.4f}" for t, e in zip(self.labels, errors, strict=True)
        )


def candidate(full: BasisSet, cv: HeldOut, index: int) -> BasisSet:
    """The basis set of candidate `index` of `cv` (see `HeldOut.labels`), fitted on all anchors."""
    why = cv.why()
    if cv.labels[index] == "affine":
        aa, bb = _depth_affine(cv.g, cv.depth_m)
        return dataclasses.replace(_depth_aligned(full, aa, bb, why + " -> depth affine"), coverage=cv.coverage)
    return dataclasses.replace(_restrict(full, int(cv.labels[index]), why, cv.s0), coverage=cv.coverage)


def cross_validate(full: BasisSet, anchors, config: BasisConfig, basis_rel_std: float = 0.3) -> HeldOut | BasisSet:
    """The held-out errors of `select_tier`'s candidates, or the set itself where no test is needed (many
    anchors over every cell: the full family) or possible (anchors in one cell: scale only)."""
    h, w = full.full_shape
    u = np.asarray(anchors.u, np.float64)
    v = np.asarray(anchors.v, np.float64)
    n = len(u)
    cell = np.clip((v * 4 / h).astype(np.int64), 0, 3) * 4 + np.clip((u * 4 / w).astype(np.int64), 0, 3)
    occupied = np.flatnonzero(np.bincount(cell, minlength=16))  # sorted, as np.unique; no sort of n values
    coverage = anchor_coverage(u, v, (h, w))
    if n >= config.select_skip_anchors and len(occupied) == 16 and coverage > 0.9:
        return dataclasses.replace(full, coverage=coverage)
    col = np.clip(np.round(u).astype(np.int64), 0, w - 1)
    row = np.clip(np.round(v).astype(np.int64), 0, h - 1)
    g = full.inv_rel[row, col].astype(np.float64)
    y = 1.0 / np.asarray(anchors.depth_m, np.float64)
    ratio = y / g
    s0 = absrel_scale(ratio)
    if len(occupied) < 2 or not (np.isfinite(s0) and s0 > 0):
        hint = s0 if np.isfinite(s0) and s0 > 0 else 0.0
        return _restrict(full, -1, "scale only: anchors in one grid cell", hint)
    log_r = np.log(ratio / s0)
    mad = 1.4826 * float(np.median(np.abs(log_r - np.median(log_r))))
    good = np.abs(log_r - np.median(log_r)) <= max(4.0 * mad, np.log(1.5))
    b = sample_maps(full.maps, u, v, full.full_shape)
    # rows in relative units: pred / y; weights in units of s0 (basis columns) and s0 (shift)
    a = np.concatenate([b * (g * s0 / y)[:, None], (s0 / y)[:, None]], axis=1)[good]
    fold = np.searchsorted(occupied, cell[good]) % min(5, len(occupied))
    k = full.k
    rungs = [(-1, np.array([0])), (0, np.array([0, k]))]
    for t in range(1, full.tier + 1):
        rungs.append((t, np.append(_tier_columns(full.names, t), k)))
    noise_prec = 1.0 / 0.02**2
    prior_prec = np.full(k + 1, 1.0 / basis_rel_std**2)
    prior_prec[0] = prior_prec[k] = 1.0 / 9.0
    prior_mean = np.zeros(k + 1)
    prior_mean[0] = 1.0
    n_folds = int(fold.max()) + 1
    member = (fold[None, :] == np.arange(n_folds)[:, None]).astype(np.float64)  # (F, n) one-hot of the folds
    gram_fold = noise_prec * ((a.T[None] * member[:, None, :]) @ a)  # (F, K+1, K+1), each fold's own rows
    rhs_fold = noise_prec * (member @ a)  # (F, K+1)
    gram_train = gram_fold.sum(axis=0) - gram_fold  # each fold's training set: every other fold
    rhs_train = rhs_fold.sum(axis=0) - rhs_fold
    held = np.zeros((len(rungs), len(a)))  # each anchor's held-out error under each rung
    for r, (_, cols) in enumerate(rungs[1:], start=1):  # rung -1 is held out as scale only below
        m = gram_train[:, cols[:, None], cols] + np.diag(prior_prec[cols])
        rhs_f = rhs_train[:, cols] + prior_prec[cols] * prior_mean[cols]
        try:
            wts = np.linalg.solve(m, rhs_f[..., None])[..., 0]  # (F, cols): all folds in one batched solve
        except np.linalg.LinAlgError:
            held[r] = np.inf
            continue
        held[r] = _held_out_error(np.einsum("nk,nk->n", a[:, cols], wts[fold]))
    labels = [str(t) for t, _ in rungs]
    d_good = 1.0 / y[good]
    r_good, g_good = ratio[good], g[good]
    # scale only is the anchors' AbsRel-optimal scale (the scale the field then keeps): held out as such
    for f in range(n_folds):
        test = fold == f
        held[0, test] = _held_out_error(absrel_scale(r_good[~test]) / r_good[test])
    # scale and shift in depth, d = a / g + b (the relative map aligned in depth, then scaled): weighted
    # least squares per fold like the rungs' ridge fits (the gross outliers are out already); chosen, it is fitted
    # robustly on all anchors (`_depth_affine`). Last in the order, so it is chosen only where it beats every rung
    # of the field's own family by the tolerance (a relative map that is affine in depth rather than in inverse
    # depth, or carries no usable structure)
    rows = np.stack([1.0 / (g_good * d_good), 1.0 / d_good], axis=1)  # (a, b) -> predicted depth / depth
    a0 = float(np.median(d_good * g_good))
    prior_affine = np.array([1.0 / (1e3 * a0) ** 2, 1.0 / (1e3 * a0) ** 2])  # as global_alignment's: barely there
    gram2 = (rows.T[None] * member[:, None, :]) @ rows
    m2 = gram2.sum(axis=0) - gram2 + np.diag(prior_affine)
    rhs2 = (rows.sum(axis=0) - member @ rows) + prior_affine * np.array([a0, 0.0])
    try:
        ab = np.linalg.solve(m2, rhs2[..., None])[..., 0][fold]  # (n, 2): each anchor's training-fold fit
        d_pred = ab[:, 0] / g_good + ab[:, 1]
        row_affine = _held_out_error(np.where(d_pred > 0, d_good / np.maximum(d_pred, 1e-9), 1e-3))
    except np.linalg.LinAlgError:
        row_affine = np.full(len(a), np.inf)
    held = np.vstack([held, row_affine])
    labels.append("affine")
    return HeldOut(tuple(labels), held, coverage, s0, g[good], d_good)


def absrel_scale(ratio: np.ndarray) -> float:
    """The scale s of inverse depth s * g that minimises the anchors' AbsRel in depth, mean |r_i / s - 1| for
    r_i = ratio = (1 / depth) / g: with t = 1 / s that is sum r_i |t - 1 / r_i|, so 1 / s is the r-weighted
    median of 1 / r. Plain median scaling fits the median ratio; AbsRel charges an overestimated depth more
    than an underestimated one, so where the ratios spread (a relative map far from metric, anchors on two
    surfaces) this scale leans to the nearer depths: the smaller error and, for a robot, the safer one.
    Weights are held within half and twice the median ratio's so that a near-zero-depth outlier cannot take it;
    equal weights give the plain median (each sample sits at the middle of its weight)."""
    return float(_absrel_scale(np.asarray(ratio, np.float64)))


@njit(cache=True, nogil=True)
def _absrel_scale(ratio):
    ok = ratio[np.isfinite(ratio) & (ratio > 0)]  # compiled: it runs once per fold and candidate
    if ok.size == 0:
        return np.nan
    t = np.sort(1.0 / ok)
    med = np.median(ok)
    wts = np.minimum(np.maximum(1.0 / t, 0.5 * med), 2.0 * med)
    position = (np.cumsum(wts) - 0.5 * wts) / wts.sum()
    return 1.0 / np.interp(0.5, position, t)


def _depth_affine(g: np.ndarray, depth_m: np.ndarray) -> tuple[float, float]:
    """Robust least squares depth_m ~ a / g + b (relative errors in depth): global alignment in depth."""
    from .baselines import NOISE_REL, global_alignment

    a, b, _ = global_alignment(1.0 / g, depth_m, NOISE_REL * depth_m)
    return a, b


def _depth_aligned(full: BasisSet, a: float, b: float, why: str) -> BasisSet:
    """Scale only over the relative map aligned in depth: inverse depth g / (a + b g), the positive part of the
    affine depth a / g + b (depth at the median g, a + b, bounds it below: a negative shift must not send
    near pixels to zero depth)."""
    floor = 0.05 * (a + b)
    inv = full.inv_rel / np.maximum(a + b * full.inv_rel, np.float32(floor))
    med = float(np.median(inv[::4, ::4]))
    inv_rel = (inv / np.float32(med)).astype(np.float32)
    h, w = full.work_shape
    work = cv2.resize(inv_rel, (w, h), interpolation=cv2.INTER_AREA)
    restricted = _restrict(full, -1, why, med)
    return dataclasses.replace(restricted, inv_rel=inv_rel, inv_rel_work=work, scale_inv_rel=med)


def _held_out_error(pred_rel: np.ndarray) -> np.ndarray:
    """AbsRel of held-out anchors, |d_pred / d - 1| = |1 / pred_rel - 1| with pred_rel = predicted inverse depth
    over the anchor's: the metric the output is judged by, which penalises depth overestimates without bound
    (a clipped log error saturates on a bad frame and no longer tells the rungs apart). Capped at 1 so that one
    gross outlier among few anchors does not decide the choice."""
    return np.minimum(np.abs(1.0 / np.maximum(pred_rel, 1e-3) - 1.0), 1.0)


def anchor_coverage(u: np.ndarray, v: np.ndarray, shape: tuple[int, int], cells: int = 8) -> float:
    """Occupied cells of a cells x cells image grid over the number n uniformly random anchors would occupy
    on average (capped at 1): about 1 for spread anchors, small for clustered ones (corners, one object)."""
    h, w = shape
    n = len(u)
    if n == 0:
        return 0.0
    cx = np.clip((np.asarray(u) * cells / w).astype(np.int64), 0, cells - 1)
    cy = np.clip((np.asarray(v) * cells / h).astype(np.int64), 0, cells - 1)
    occupied = np.count_nonzero(np.bincount(cy * cells + cx, minlength=cells * cells))
    expected = cells * cells * (1.0 - (1.0 - 1.0 / (cells * cells)) ** n)
    return float(min(1.0, occupied / expected))
