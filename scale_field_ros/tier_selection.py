"""Which basis family a frame's anchors can support: spatially blocked cross-validation over the candidates
(scale only, scale and shift, the tiers of `bases`, a depth-affine alignment), and the blend of a richer
pick with scale only (`basis_set.ScaleOnlyBlend`). `bases.build_bases` calls `select_tier` on the full family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from .basis_set import BasisConfig, BasisSet, ScaleOnlyBlend, restrict, sample_maps, tier_columns
from .solver import _solve_spd


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
    errors = np.where(np.isnan(errors), np.inf, errors)  # a rung that could not be scored; all inf: scale only
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
    return dataclasses.replace(restrict(full, int(cv.labels[index]), why, cv.s0), coverage=cv.coverage)


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
        return restrict(full, -1, "scale only: anchors in one grid cell", hint)
    good = gross_outlier_free(np.log(ratio / s0))
    # folds are dealt from the cells of the anchors kept: the outlier test can empty all but one cell, and a
    # single fold leaves nothing to fit on
    kept_cells = np.flatnonzero(np.bincount(cell[good], minlength=16))
    if len(kept_cells) < 2:
        return restrict(full, -1, "scale only: the anchors kept after the outlier test lie in one grid cell", s0)
    b = sample_maps(full.maps, u, v, full.full_shape)
    # rows in relative units: pred / y; weights in units of s0 (basis columns) and s0 (shift)
    a = np.concatenate([b * (g * s0 / y)[:, None], (s0 / y)[:, None]], axis=1)[good]
    fold = np.searchsorted(kept_cells, cell[good]) % min(5, len(kept_cells))
    k = full.k
    rungs = [np.array([0, k])]  # scale and shift, then the tiers (scale only, rung -1, is held out below)
    rungs += [np.append(tier_columns(full.names, t), k) for t in range(1, full.tier + 1)]
    cols = np.full((len(rungs), k + 1), -1, np.int64)
    for r, c in enumerate(rungs):
        cols[r, : len(c)] = c
    prior_prec = np.full(k + 1, 1.0 / basis_rel_std**2)
    prior_prec[0] = prior_prec[k] = 1.0 / 9.0
    prior_mean = np.zeros(k + 1)
    prior_mean[0] = 1.0
    n_folds = int(fold.max()) + 1
    d_good = 1.0 / y[good]
    # scale only is held out as the anchors' AbsRel-optimal scale (the scale the field then keeps); scale and
    # shift in depth, d = a / g + b (the relative map aligned in depth, then scaled), comes last in the order, so
    # it is chosen only where it beats every rung of the field's own family by the tolerance (a relative map that
    # is affine in depth rather than in inverse depth, or carries no usable structure)
    held = np.vstack(
        [
            _held_out_rungs(a, fold, n_folds, cols, 1.0 / 0.02**2, prior_prec, prior_mean, ratio[good]),
            _held_out_affine(g[good], d_good, fold, n_folds)[None],
        ]
    )
    labels = ["-1", "0"] + [str(t) for t in range(1, full.tier + 1)] + ["affine"]
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


def gross_outlier_free(log_ratio: np.ndarray) -> np.ndarray:
    """Which anchors are not gross outliers of a one-scale fit: log ratio to the scale within 4 robust sigmas
    (MAD) of the median, and always those within a factor 1.5."""
    dev = np.abs(log_ratio - np.median(log_ratio))
    return dev <= max(4.0 * 1.4826 * float(np.median(dev)), np.log(1.5))


@njit(cache=True, nogil=True)
def _absrel_scale(ratio):
    ok = ratio[np.isfinite(ratio) & (ratio > 0)]  # compiled: it runs once per fold and candidate
    if ok.size == 0:
        return np.nan
    t = np.sort(1.0 / ok)
    return _absrel_scale_sorted(t, np.median(ok))


@njit(cache=True, nogil=True)
def _absrel_scale_sorted(t, median_ratio):
    """`absrel_scale` from t = 1 / ratio sorted ascending and the ratios' median (the one place of its rule)."""
    wts = np.minimum(np.maximum(1.0 / t, 0.5 * median_ratio), 2.0 * median_ratio)
    position = (np.cumsum(wts) - 0.5 * wts) / wts.sum()
    return 1.0 / np.interp(0.5, position, t)


@njit(cache=True, nogil=True)
def _held_out_scale_only(fold, n_folds, ratio):
    """Each anchor's held-out error under the `absrel_scale` of the other folds' ratios, from one sort of all
    of them: a fold's training set is the sorted whole with that fold's entries skipped (sorting each training
    set anew was most of the cross-validation's time with the temporal filter's pooled anchors). The same
    numbers as `_absrel_scale` on each training set: its ratios' median is read off the same order, since
    1 / ratio falls as the ratio rises."""
    n = ratio.size
    pred_rel = np.empty(n)
    ok = np.isfinite(ratio) & (ratio > 0)
    order = np.argsort(1.0 / ratio)  # ascending t; non-finite and non-positive ratios are skipped below
    t = np.empty(n)
    r = np.empty(n)
    for f in range(n_folds):
        m = 0
        for j in range(n):
            i = order[j]
            if ok[i] and fold[i] != f:
                t[m] = 1.0 / ratio[i]
                r[m] = ratio[i]
                m += 1
        if m == 0:
            scale = np.nan
        else:
            # r runs from the largest ratio down: the median of the ascending order, mirrored
            median = r[(m - 1) // 2] if m % 2 else (r[m // 2 - 1] + r[m // 2]) / 2.0
            scale = _absrel_scale_sorted(t[:m], median)
        for i in range(n):
            if fold[i] == f:  # numpy's x / 0 (numba's scalar division would raise)
                pred_rel[i] = scale / ratio[i] if ratio[i] != 0.0 else np.inf * scale
    return _held_out_error(pred_rel)


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
    restricted = restrict(full, -1, why, med)
    return dataclasses.replace(restricted, inv_rel=inv_rel, inv_rel_work=work, scale_inv_rel=med)


@njit(cache=True, nogil=True)
def _held_out_rungs(a, fold, n_folds, cols, noise_prec, prior_prec, prior_mean, ratio):
    """(1 + rungs, n) held-out errors: row 0 scale only (`absrel_scale` of the training folds' `ratio`), then
    one row per ridge rung (its columns `cols[r]`, -1 padded; weights of the prior `prior_prec`, `prior_mean`),
    fitted on the other folds, rows `a` in relative units (prediction / anchor). Compiled: each fold's Gram is
    built once (`_fold_grams`), each training set is the total minus its fold, and the small solves are
    Cholesky (as numpy batches it was some fifty array calls, ~0.4 ms a frame for 200 anchors); a rung whose
    system is singular scores inf."""
    n, k1 = a.shape
    gram, rhs = _fold_grams(a, fold, n_folds)
    total_gram = gram.sum(axis=0)
    total_rhs = rhs.sum(axis=0)
    n_rungs = cols.shape[0]
    held = np.zeros((1 + n_rungs, n))
    held[0] = _held_out_scale_only(fold, n_folds, ratio)
    fitted = np.zeros((n_rungs * n_folds, k1))  # row r * n_folds + f: rung r's weights fitted without fold f
    solved = np.zeros(n_rungs, np.bool_)
    for r in range(n_rungs):
        c = cols[r][cols[r] >= 0]
        m = c.size
        wts = np.zeros((n_folds, m))
        for f in range(n_folds):
            normal = np.empty((m, m))
            b = np.empty(m)
            for p in range(m):
                b[p] = noise_prec * (total_rhs[c[p]] - rhs[f, c[p]]) + prior_prec[c[p]] * prior_mean[c[p]]
                for q in range(m):
                    lo, hi = min(c[p], c[q]), max(c[p], c[q])
                    normal[p, q] = noise_prec * (total_gram[lo, hi] - gram[f, lo, hi])
                normal[p, p] += prior_prec[c[p]]
            wts[f] = _solve_spd(normal, b)
        if not np.all(np.isfinite(wts)):
            held[1 + r] = np.inf
            continue
        solved[r] = True
        for f in range(n_folds):
            for p in range(m):
                fitted[r * n_folds + f, c[p]] = wts[f, p]
    every = np.ascontiguousarray(a) @ fitted.T  # each anchor under every rung and fold's fit: one BLAS product
    for r in range(n_rungs):
        if solved[r]:
            pred = np.empty(n)
            for i in range(n):
                pred[i] = every[i, r * n_folds + fold[i]]
            held[1 + r] = _held_out_error(pred)
    return held


@njit(cache=True, nogil=True)
def _fold_grams(a, fold, n_folds):
    """Each fold's Gram matrix a_f^T a_f and column sums: the rows grouped by fold into one buffer, then one
    BLAS product per fold (a scalar loop over rows took 3x as long with the temporal filter's pooled anchors)."""
    n, k1 = a.shape
    start = np.zeros(n_folds + 1, np.int64)
    start[1:] = np.cumsum(np.bincount(fold, minlength=n_folds))
    fill = start[:-1].copy()
    grouped = np.empty((n, k1))
    for i in range(n):
        grouped[fill[fold[i]]] = a[i]
        fill[fold[i]] += 1
    gram = np.zeros((n_folds, k1, k1))
    rhs = np.zeros((n_folds, k1))
    for f in range(n_folds):
        rows = grouped[start[f] : start[f + 1]]
        if rows.shape[0]:
            gram[f] = rows.T @ rows
            rhs[f] = rows.sum(axis=0)
    return gram, rhs


@njit(cache=True, nogil=True)
def _held_out_affine(g, depth_m, fold, n_folds):
    """Held-out errors of scale and shift in depth, depth ~ a / g + b: per fold a weighted least-squares fit
    on the other folds, rows in relative units like the ridge rungs' (the gross outliers are out already), with
    a prior as `global_alignment`'s, barely there, around a = median(depth g), b = 0. Chosen, it is fitted
    robustly on all anchors (`_depth_affine`). A fold whose 2 x 2 system is singular scores inf."""
    n = g.size
    a0 = np.median(depth_m * g)
    prior = 1.0 / (1e3 * a0) ** 2
    gram = np.zeros((n_folds, 3))  # per fold: sums of r0 r0, r0 r1, r1 r1 ...
    rhs = np.zeros((n_folds, 2))  # ... and of r0, r1 (the target is 1: predicted depth / depth)
    for i in range(n):
        r0, r1 = 1.0 / (g[i] * depth_m[i]), 1.0 / depth_m[i]
        f = fold[i]
        gram[f, 0] += r0 * r0
        gram[f, 1] += r0 * r1
        gram[f, 2] += r1 * r1
        rhs[f, 0] += r0
        rhs[f, 1] += r1
    total_gram, total_rhs = gram.sum(axis=0), rhs.sum(axis=0)
    coef = np.empty((n_folds, 2))
    for f in range(n_folds):
        m00 = total_gram[0] - gram[f, 0] + prior
        m01 = total_gram[1] - gram[f, 1]
        m11 = total_gram[2] - gram[f, 2] + prior
        b0 = total_rhs[0] - rhs[f, 0] + prior * a0
        b1 = total_rhs[1] - rhs[f, 1]
        det = m00 * m11 - m01 * m01
        if not (det > 0.0 and np.isfinite(det)):
            return np.full(n, np.inf)
        coef[f, 0] = (m11 * b0 - m01 * b1) / det
        coef[f, 1] = (m00 * b1 - m01 * b0) / det
    pred_rel = np.empty(n)
    for i in range(n):
        d_pred = coef[fold[i], 0] / g[i] + coef[fold[i], 1]
        pred_rel[i] = depth_m[i] / max(d_pred, 1e-9) if d_pred > 0 else 1e-3
    return _held_out_error(pred_rel)


@njit(cache=True, nogil=True)
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
