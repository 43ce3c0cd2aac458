"""Robust weighted ridge least squares toward a prior: the per-frame fit of the scale-field weights.

Model: target_i = design_i . w + e_i, e_i ~ N(0, sigma_i^2), w ~ N(prior.mean, prior.covariance).
The posterior (mean, covariance) is exactly a Kalman measurement update with the prior as the predicted
state, so the temporal filter calls `solve` with its prediction as the prior (one implementation).
Robustness: iteratively reweighted least squares with Huber weights on residuals normalised by sigma and
by a MAD estimate of their spread, then hard rejection of gross outliers, so that a tenth of wild anchors
does not move the result. A ladder keeps the fit well posed when anchors are few or degenerate:
full field -> scale and shift -> scale only -> prior only.
The IRLS loop and the small SPD algebra are compiled with numba (`cache=True`: once per install, seconds on a
fresh one; `pipeline.warm_up` does it before the first frame); the level ladder stays in Python.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from numba import njit


class FitLevel(str, enum.Enum):
    FULL = "full"
    SCALE_SHIFT = "scale_shift"
    SCALE = "scale"
    PRIOR = "prior"


_LADDER = (FitLevel.FULL, FitLevel.SCALE_SHIFT, FitLevel.SCALE, FitLevel.PRIOR)


@dataclass(frozen=True)
class Prior:
    mean: np.ndarray  # (K,)
    covariance: np.ndarray  # (K, K)

    def __post_init__(self) -> None:
        k = len(self.mean)
        if self.covariance.shape != (k, k):
            raise ValueError(f"prior covariance must be {k}x{k}, got {self.covariance.shape}")

    @staticmethod
    def diagonal(mean, std) -> Prior:
        mean = np.asarray(mean, np.float64).ravel()
        std = np.broadcast_to(np.asarray(std, np.float64), mean.shape)
        return Prior(mean.copy(), np.diag(std**2))


@dataclass(frozen=True)
class FitResult:
    weights: np.ndarray  # (K,) posterior mean of the weights (the filter state)
    covariance: np.ndarray  # (K, K) posterior covariance
    residuals: np.ndarray  # (N,) per-anchor residual target - design @ weights (inverse depth by default)
    inliers: np.ndarray  # (N,) bool after robust reweighting
    level: FitLevel  # which rung of the ladder produced the result
    n_anchors: int  # anchors used (inliers)
    rms_residual: float  # RMS of inlier residuals normalised by their sigma
    fallback_reason: str  # "" when level is the one asked for; otherwise why we fell back


@dataclass(frozen=True)
class SolverConfig:
    huber_k: float = 1.345  # Huber threshold in robust standard deviations
    outlier_sigmas: float = 3.5  # residuals beyond this many robust sigmas are rejected outright
    irls_iterations: int = 4
    irls_tolerance: float = 1e-4  # stop when no weight moves more than this (relative to the largest)
    min_anchors_full: int = 8  # below this the full field is not fitted
    min_anchors_shift: int = 3  # below this no shift
    min_relative_spread: float = 1e-3  # relative std of the scale column below which the shift is unidentifiable


@dataclass(frozen=True)
class Design:
    """Linear measurement model of one frame's anchors.

    matrix (N, K): d target_i / d w; target (N,); sigma (N,) > 0: measurement std of each target.
    scale_index: the column of the global scale; shift_index: the column of the global shift (or None).
    """

    matrix: np.ndarray
    target: np.ndarray
    sigma: np.ndarray
    scale_index: int = 0
    shift_index: int | None = None

    def __len__(self) -> int:
        return len(self.target)


def solve(
    design: Design,
    prior: Prior,
    config: SolverConfig = SolverConfig(),  # noqa: B008 - frozen, immutable default
    level: FitLevel = FitLevel.FULL,
) -> FitResult:
    """Robust posterior of the weights given the anchors in `design`; never raises on bad data, never NaN."""
    mean0 = _finite(prior.mean)
    cov0 = _finite(prior.covariance)
    a = np.asarray(design.matrix, np.float64)
    y = np.asarray(design.target, np.float64)
    sigma = np.asarray(design.sigma, np.float64)
    n_all = len(y)
    usable = _usable_rows(a, y, sigma)

    asked = level
    level, reason = _choose_level(a[usable, design.scale_index], design, config, level)
    free = _free_columns(level, len(mean0), design)
    if level is FitLevel.PRIOR or not free.any():
        residuals = np.where(usable, y - a @ mean0, 0.0) if n_all else np.zeros(0)
        return _prior_fit(
            mean0, cov0, np.nan_to_num(residuals), reason or ("" if asked is FitLevel.PRIOR else "no usable anchors")
        )

    weights, cov, residuals, inliers, rms = _robust_fit(
        a,
        y,
        sigma,
        np.flatnonzero(usable),
        free,
        mean0,
        cov0,
        float(config.huber_k),
        float(config.outlier_sigmas),
        int(max(config.irls_iterations, 1)),
        float(config.irls_tolerance),
    )
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(cov))):
        return _prior_fit(mean0, cov0, np.zeros(n_all), "numerical failure in the solve")
    return FitResult(weights, cov, residuals, inliers, level, int(inliers.sum()), rms, reason)


def _finite(a) -> np.ndarray:
    """float64, non-finite values zeroed (np.nan_to_num costs ~10x a finiteness check on a small array)."""
    a = np.asarray(a, np.float64)
    return a if np.isfinite(a).all() else np.nan_to_num(a)


def _prior_fit(mean: np.ndarray, cov: np.ndarray, residuals: np.ndarray, reason: str) -> FitResult:
    """The bottom rung: the prior itself, no anchor counted as an inlier, `reason` saying why."""
    return FitResult(mean, cov, residuals, np.zeros(len(residuals), bool), FitLevel.PRIOR, 0, 0.0, reason)


def _choose_level(scale_col: np.ndarray, design: Design, config: SolverConfig, level: FitLevel) -> tuple[FitLevel, str]:
    """Walk down the ladder from `level` until the anchors (their scale column `scale_col`) support the rung."""
    n = len(scale_col)
    if n == 0:
        return FitLevel.PRIOR, "no usable anchors" if level is not FitLevel.PRIOR else ""
    distinct, spread = _column_stats(scale_col, max(config.min_anchors_full, 2))
    reasons = []
    rung = _LADDER.index(level)
    if rung <= 0 and (n < config.min_anchors_full or distinct < config.min_anchors_full):
        reasons.append(f"{n} anchors on {distinct} distinct values, full field needs {config.min_anchors_full}")
        rung = 1
    if rung == 1 and design.shift_index is None:
        rung = 2
    if rung == 1 and (n < config.min_anchors_shift or distinct < 2 or spread < config.min_relative_spread):
        reasons.append(f"anchors do not constrain a shift ({n} anchors, relative spread {spread:.2g})")
        rung = 2
    return _LADDER[rung], "; ".join(reasons)


@njit(cache=True, nogil=True)
def _usable_rows(a, y, sigma):
    """Rows with a finite design row, target and sigma, and a positive sigma (one pass, no temporaries)."""
    n, k = a.shape
    usable = np.empty(n, np.bool_)
    for i in range(n):
        ok = np.isfinite(y[i]) and np.isfinite(sigma[i]) and sigma[i] > 0.0
        for j in range(k):
            ok = ok and np.isfinite(a[i, j])
        usable[i] = ok
    return usable


@njit(cache=True, nogil=True)
def _column_stats(col, needed):
    """(distinct values, relative spread std / mean |x|) of the scale column. The count is exact below
    `needed` (it is only compared with it): with many anchors the first few already have that many, and
    sorting them all three times a frame cost ~0.1 ms."""
    head = np.sort(col[: 4 * needed])
    distinct = np.sum(head[1:] != head[:-1]) + 1
    if distinct < needed and head.size < col.size:
        every = np.sort(col)
        distinct = np.sum(every[1:] != every[:-1]) + 1
    return distinct, np.std(col) / max(np.mean(np.abs(col)), 1e-12)


def _free_columns(level: FitLevel, k: int, design: Design) -> np.ndarray:
    free = np.zeros(k, bool)
    if level is FitLevel.FULL:
        free[:] = True
    elif level is FitLevel.SCALE_SHIFT:
        free[design.scale_index] = True
        if design.shift_index is not None:
            free[design.shift_index] = True
    elif level is FitLevel.SCALE:
        free[design.scale_index] = True
    return free


@njit(cache=True, nogil=True)
def _robust_scale(u: np.ndarray) -> float:
    """MAD-based spread of normalised residuals, at least 1 so that an honest noise model is not inflated."""
    if u.size == 0:
        return 1.0
    mad = 1.4826 * np.median(np.abs(u - np.median(u)))
    return max(mad, 1.0) if np.isfinite(mad) else 1.0


@njit(cache=True, nogil=True)
def _cholesky(m: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a small SPD matrix (K ~ 20: no LAPACK call worth its overhead), NaN when
    `m` is not positive definite."""
    k = m.shape[0]
    low = np.zeros((k, k))
    for j in range(k):
        d = m[j, j] - np.dot(low[j, :j], low[j, :j])
        if not d > 0.0:
            low[:, :] = np.nan
            return low
        low[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            low[i, j] = (m[i, j] - np.dot(low[i, :j], low[j, :j])) / low[j, j]
    return low


@njit(cache=True, nogil=True)
def _cholesky_solve(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with (low low^T) x = b, for b of shape (K,) or (K, M)."""
    x = b.astype(np.float64).copy()
    k = low.shape[0]
    for i in range(k):  # forward: low y = b
        for j in range(i):
            x[i] -= low[i, j] * x[j]
        x[i] /= low[i, i]
    for i in range(k - 1, -1, -1):  # back: low^T x = y
        for j in range(i + 1, k):
            x[i] -= low[j, i] * x[j]
        x[i] /= low[i, i]
    return x


@njit(cache=True, nogil=True)
def _solve_spd(m: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _cholesky_solve(_cholesky(m), b)


@njit(cache=True, nogil=True)
def _inverse_spd(m: np.ndarray) -> np.ndarray:
    """Inverse of an SPD matrix, a relative 1e-12 of its trace added so that a near-singular one still inverts:
    inv(m) = inv(L)^T inv(L) from its Cholesky factor, in scalar loops (solving for the identity's columns with
    row operations allocated a temporary per step, ~3x the time), symmetric by construction."""
    k = m.shape[0]
    low = _cholesky(m + 1e-12 * np.trace(m) / max(k, 1) * np.eye(k))
    low_inv = np.zeros((k, k))
    for j in range(k):
        low_inv[j, j] = 1.0 / low[j, j]
        for i in range(j + 1, k):
            acc = 0.0
            for p in range(j, i):
                acc -= low[i, p] * low_inv[p, j]
            low_inv[i, j] = acc / low[i, i]
    inv = np.empty((k, k))
    for i in range(k):
        for j in range(i + 1):
            acc = 0.0
            for p in range(i, k):
                acc += low_inv[p, i] * low_inv[p, j]
            inv[i, j] = acc
            inv[j, i] = acc
    return inv


@njit(cache=True, nogil=True)
def _irls(a_n, y_n, prec_prior, eta_prior, w0, huber_k, outlier_sigmas, iterations, tolerance):
    """The robust solve's loop, compiled (per iteration it is a few dozen small array steps, whose Python
    call overhead cost ~10x their arithmetic): rows already divided by their sigma. Each pass: residuals u,
    their robust spread (MAD over the previous inliers, at least 1), inliers |u| < outlier_sigmas spreads,
    Huber weights, the weighted normal equations with the prior's precision, solved by Cholesky. Stops after
    `iterations` + 1 passes, when no weight moves more than `tolerance` of the largest, or when the solve fails
    (non-finite weights: the previous ones stay). Returns the weights, their posterior covariance and the
    inlier flags."""
    n, k = a_n.shape
    w = w0.copy()
    keep = np.ones(n, np.bool_)
    prec = prec_prior.copy()
    a_t = np.ascontiguousarray(a_n.T)
    for it in range(iterations + 1):
        u = y_n - a_n @ w
        scale = _robust_scale(u[keep] if it else u)
        z = np.abs(u) * (1.0 / scale)
        keep = z < outlier_sigmas
        if not keep.any():
            keep = z <= np.median(z)
        robust = np.minimum(1.0, huber_k / np.maximum(z, 1e-12)) * (1.0 / scale**2)
        robust[~keep] = 0.0
        weighted_t = a_t * robust
        prec = prec_prior + weighted_t @ a_n
        w_new = _solve_spd(prec, eta_prior + weighted_t @ y_n)
        if not np.all(np.isfinite(w_new)):
            break
        converged = np.max(np.abs(w_new - w)) <= tolerance * (1e-12 + np.max(np.abs(w_new)))
        w = w_new
        if converged and it:
            break
    return w, _inverse_spd(prec), keep


@njit(cache=True, nogil=True)
def _robust_fit(a, y, sigma, rows, free, mean0, cov0, huber_k, outlier_sigmas, iterations, tolerance):
    """The solve on the usable `rows` with the `free` columns (bool), the others held at the prior mean
    (conditioning: they move the target, their covariance stays the prior's, uncoupled). Returns weights,
    covariance, residuals and inlier flags over all rows (0 / False for unusable ones) and the RMS of the
    inliers' residuals in sigmas."""
    n_all, k = a.shape
    cols = np.flatnonzero(free)
    fixed = np.flatnonzero(~free)
    a_u = a[rows]
    inv_s = 1.0 / sigma[rows]
    y_f = y[rows] - a_u[:, fixed] @ mean0[fixed] if fixed.size else y[rows].copy()
    # rows normalised by their sigma once: residuals are then in sigmas, the normal matrix a plain weighted Gram
    a_n = np.ascontiguousarray(a_u[:, cols]) * inv_s.reshape(-1, 1)
    cov_f = np.empty((cols.size, cols.size))
    for i in range(cols.size):
        for j in range(cols.size):
            cov_f[i, j] = cov0[cols[i], cols[j]]
    prec_prior = _inverse_spd(cov_f)
    w, cov_post_f, keep = _irls(
        a_n,
        y_f * inv_s,
        prec_prior,
        prec_prior @ mean0[cols],
        mean0[cols],
        huber_k,
        outlier_sigmas,
        iterations,
        tolerance,
    )
    weights = mean0.copy()
    cov = cov0.copy()
    for i in range(cols.size):
        weights[cols[i]] = w[i]
        for j in range(k):
            cov[cols[i], j] = 0.0
            cov[j, cols[i]] = 0.0
    for i in range(cols.size):
        for j in range(cols.size):
            cov[cols[i], cols[j]] = cov_post_f[i, j]
    fitted = y[rows] - a_u @ weights
    residuals = np.zeros(n_all)
    inliers = np.zeros(n_all, np.bool_)
    total, count = 0.0, 0
    for i in range(rows.size):
        residuals[rows[i]] = fitted[i]
        inliers[rows[i]] = keep[i]
        if keep[i]:
            total += (fitted[i] * inv_s[i]) ** 2
            count += 1
    rms = np.sqrt(total / count) if count else 0.0
    return weights, cov, residuals, inliers, rms
