"""The scale-field model, forward at anchors (design) and at every pixel (compose).

In inverse depth:  inv_depth_m(x) = S(x) * g(x) + c,   S(x) = sum_k w_k B_k(x)
with g the relative inverse depth normalised to median 1, B_k the bases (B_1 = 1) and c a global shift.
The weight vector (w_1..w_K, c) is the solver's and the temporal filter's state. An optional local
correction (residual_grid) multiplies the result: inv_depth_m *= exp(R(x)).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from .anchors import Anchors
from .array_namespace import NUMPY
from .basis_set import BasisSet, sample_maps
from .residual_grid import LocalCorrection
from .solver import Design, Prior

SCALE_ONLY_REL_STD = 1e-3  # tier -1 (scale only): the scale stays at the anchors' `absrel_scale`


@dataclass(frozen=True)
class PriorConfig:
    scale_rel_std: float = 3.0  # loose: the global scale/shift prior before any anchor (relative to the scale)
    basis_rel_std: float = 0.3  # std of a non-constant basis weight, relative to the global scale
    shift_rel_std: float = 3.0


@dataclass(frozen=True)
class FieldEstimate:
    depth_m: np.ndarray  # H x W float32, clamped
    std_m: np.ndarray  # H x W float32
    scale_field: np.ndarray  # H x W float32: metric inverse depth / normalised relative inverse depth
    inv_depth: np.ndarray  # H x W float32, 1/m


def anchor_design(bases: BasisSet, anchors: Anchors, noise_rel: float) -> Design:
    """Rows of the model at the anchors: target 1/depth, sigma = noise_rel * target / sqrt(weight)."""
    h, w = bases.full_shape
    col = np.clip(np.round(anchors.u).astype(np.int64), 0, w - 1)
    row = np.clip(np.round(anchors.v).astype(np.int64), 0, h - 1)
    g = bases.inv_rel[row, col].astype(np.float64)
    b = sample_maps(bases.maps, anchors.u, anchors.v, bases.full_shape)
    matrix = np.concatenate([b * g[:, None], np.ones((len(g), 1))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = 1.0 / anchors.depth_m.astype(np.float64)
        sigma = noise_rel * target / np.sqrt(anchors.weight.astype(np.float64))
    return Design(matrix, target, sigma, scale_index=0, shift_index=bases.k)


def relative_to_fit(design: Design, weights: np.ndarray) -> Design:
    """The anchors' sigma relative to the fitted inverse depth p instead of the anchor's own y: the residual
    (y - p) / p = d_fit / d - 1 is then the relative error in depth (the AbsRel the output is judged by).
    Relative to the anchor, (y - p) / y = 1 - d / d_fit costs at most 1 however far the fit overestimates a
    depth, so a model that cannot fit the anchors (few of them, a poor relative map) drifts to far depths.
    The pipeline refits once with it; where the model fits, both are the same to first order."""
    return dataclasses.replace(
        design, sigma=design.sigma * fit_relative_factor(NUMPY, design.matrix @ weights, design.target)
    )


def fit_relative_factor(xp, fitted, target):
    """fitted / target, bounded to [1e-2, 1e2] (1 where the target is not positive): see `relative_to_fit`."""
    safe = xp.where(target > 0, target, 1.0)
    return xp.where(target > 0, xp.clip(fitted / safe, 1e-2, 1e2), 1.0)


def loose_prior(bases: BasisSet, config: PriorConfig, design: Design | None = None) -> Prior:
    """Before the fit: the backbone's own inverse depth (scale = its median, shift 0), loosely held: its spread
    is relative to that median, or to the scale the anchors of `design` give (`anchor_scale`) where that is
    larger. Relative to the median alone it tied the fit to an affine-invariant model's arbitrary units: a Depth
    Anything map of median 1e-5 held the scale thousands of sigmas from the anchors' 0.3 (depth 10 m everywhere).
    Centred on the anchors' scale instead, KITTI's few-anchor rows lost up to 28% (FastDepth's own scale is the
    better centre there), so the anchors only widen it."""
    floor = anchor_scale(NUMPY, design.matrix[:, design.scale_index], design.target) if design is not None else 0.0
    return prior_around(bases, bases.scale_inv_rel, 0.0, config, floor if np.isfinite(floor) else 0.0)


def anchor_scale(xp, scale_column, target):
    """(...,) the median of target / scale column over the rows where both are positive and finite: the scale
    weight median scaling gives (the column is the relative inverse depth g at the anchors, B_1 = 1); 0 without
    such rows. numpy, or batched torch (`field_torch.masked_median`'s rule)."""
    ok = xp.isfinite(scale_column) & xp.isfinite(target) & (scale_column > 0) & (target > 0)
    ratio = xp.where(ok, target / xp.where(ok, scale_column, 1.0), 0.0)
    return xp.masked_median(ratio, ok)


def prior_around(bases: BasisSet, scale: float, shift: float, config: PriorConfig, spread_floor: float = 0.0) -> Prior:
    """Identity correction over a global alignment (scale, shift): the per-frame prior of the field."""
    mean, std = prior_moments(
        NUMPY,
        scale,
        shift,
        bases.scale_inv_rel,
        bases.k,
        config,
        getattr(bases, "coverage", 1.0),
        getattr(bases, "shift_free", True),
        getattr(bases, "scale_hint", 0.0),
        spread_floor,
    )
    return Prior.diagonal(mean, std)


def prior_moments(
    xp, scale, shift, fallback_scale, k: int, config: PriorConfig, coverage, shift_free, scale_hint, spread_floor=0.0
):
    """Mean and std (..., k+1) of the prior `prior_around` describes, for numpy (`xp` = NUMPY) or batched torch.

    Stds are relative to s = |scale| (`fallback_scale` where the scale is 0 or not finite), and s is at least
    `spread_floor`. The non-constant bases get `basis_rel_std` times the anchors' reach: anchors that cover
    little of the image may only bend the field a little (it would extrapolate the bend over the uncovered part).
    The shift is pinned near 0 when the family is scale only (tier -1, not `shift_free`), and a positive
    `scale_hint` (scale only chosen) holds the scale at the anchors' `absrel_scale`."""
    s = xp.clip(xp.where(xp.isfinite(scale) & (scale != 0), xp.abs(scale), fallback_scale), spread_floor, None)
    reach = xp.clip(coverage, 0.1, 1.0)
    hinted = scale_hint > 0
    mean0 = xp.where(hinted, scale_hint, scale)
    std0 = xp.where(hinted, SCALE_ONLY_REL_STD * scale_hint, config.scale_rel_std * s)
    std_shift = xp.where(shift_free, config.shift_rel_std * s, 1e-6 * s)
    basis = [config.basis_rel_std * reach * s] * (k - 1)
    mean = xp.stack([mean0] + [0.0 * s] * (k - 1) + [shift])
    return mean, xp.stack([std0, *basis, std_shift])


def misfit_log_var(xp, matrix, target, weights, inliers, no_fit):
    """The field's model misfit, a relative variance of depth: the mean squared log ratio of target to fitted
    value over the inliers (rows `matrix` (..., N, K+1), `weights` (..., K+1)); 0.25 (a broad relative
    uncertainty) where there is no fit (`no_fit`) or no inlier with a positive fitted value. numpy or torch."""
    fitted = (matrix @ weights[..., None])[..., 0]
    ok = inliers & (fitted > 0) & (target > 0)
    ratio = xp.where(ok, target / xp.where(ok, fitted, 1.0), 1.0)
    squared = xp.where(ok, xp.log(ratio) ** 2, 0.0)
    n = ok.sum(-1)
    return xp.where(no_fit | (n == 0), 0.25, squared.sum(-1) / xp.clip(n, 1, None))


def compose(
    bases: BasisSet,
    weights: np.ndarray,
    covariance: np.ndarray,
    min_depth_m: float,
    max_depth_m: float,
    local: LocalCorrection | None = None,
    misfit_log_var: float = 0.0,
) -> FieldEstimate:
    """Metric depth, per-pixel std and scale field at full resolution (never NaN); see `compose_arrays`."""
    if local is not None:
        log_factor, var_log_work = local.log_ratio, local.variance()
    else:
        log_factor, var_log_work = None, np.float32(misfit_log_var)
    depth, std_m, scale_field, inv = compose_arrays(
        NUMPY,
        bases.maps,
        bases.inv_rel,
        bases.inv_rel_work,
        weights,
        covariance,
        min_depth_m,
        max_depth_m,
        log_factor,
        var_log_work,
    )
    return FieldEstimate(depth, std_m, scale_field, inv)


def blend_scale_only(est: FieldEstimate, bases: BasisSet, min_depth_m: float, max_depth_m: float) -> FieldEstimate:
    """The frame's estimate averaged with scale only in depth (`bases.blend`, see `select_tier`); the std is
    the mixture's: each part's own variance (scale only: its held-out relative RMS error) plus the spread
    between them. Without a blend, `est` itself. The arrays of `est` are reused in place (fresh full-resolution
    arrays cost page faults), so `est` must not be used afterwards."""
    blend = getattr(bases, "blend", None)
    if blend is None or not (blend.weight > 0 and np.isfinite(blend.scale) and blend.scale > 0):
        return est
    w = min(float(blend.weight), 1.0)
    g = bases.full_family.inv_rel
    depth_med = np.multiply(g, np.float32(blend.scale))
    np.clip(depth_med, np.float32(1.0 / max_depth_m), np.float32(1.0 / min_depth_m), out=depth_med)
    np.divide(1.0, depth_med, out=depth_med)  # not np.reciprocal: see NumpyOps.reciprocal
    var = np.square(est.std_m, out=est.std_m)
    var *= np.float32(1.0 - w)
    tmp = np.multiply(depth_med, np.float32(blend.rel_rms * np.sqrt(w)))
    var += np.square(tmp, out=tmp)
    spread = np.subtract(est.depth_m, depth_med, out=tmp)
    depth = est.depth_m
    depth -= np.multiply(spread, np.float32(w), out=depth_med)  # (1 - w) field + w median
    var += np.square(spread, out=spread) * np.float32(w * (1.0 - w))
    inv = np.divide(1.0, depth, out=est.inv_depth)
    return FieldEstimate(depth, np.sqrt(var, out=var), np.divide(inv, bases.inv_rel, out=est.scale_field), inv)


def compose_arrays(
    xp, maps, inv_rel, inv_rel_work, weights, covariance, min_depth_m, max_depth_m, log_factor_work, var_log_work
):
    """(depth_m, std_m, scale_field, inv_depth) for numpy (`xp` = NUMPY, one frame) or batched torch.

    Everything smooth is done at working resolution: the field S, the local factor exp(R) folded into
    A = S exp(R) and B = c exp(R), and the uncertainty (sampled on every 4th working pixel); only
    inv = up(A) * g + up(B) and the outputs derived from it touch full-resolution pixels."""
    h, w = inv_rel.shape[-2:]
    k = maps.shape[-3]
    wk = xp.work(xp.nan_to_num(xp.exact(weights)))
    s_work = xp.combine(wk[..., :k], maps)
    shift = wk[..., k, None, None]
    lo, hi = 1.0 / max_depth_m, 1.0 / min_depth_m
    if log_factor_work is not None:
        factor = xp.exp(xp.work(log_factor_work))
        a_work, b_work = s_work * factor, shift * factor
    else:
        a_work, b_work = s_work, shift
    # finite weights, maps and g give a finite result; a degenerate fit is caught here, at working resolution
    ok = (xp.isfinite(a_work.sum((-2, -1))) & xp.isfinite(b_work.sum((-2, -1))))[..., None, None]
    a_work, b_work, shift = xp.where(ok, a_work, 0.0), xp.where(ok, b_work, lo), xp.where(ok, shift, lo)
    # in place where the namespace allows: every fresh full-resolution array costs page faults
    inv = xp.mul_into(xp.upsample(a_work, (h, w)), inv_rel)
    inv = xp.add_into(inv, b_work if log_factor_work is None else xp.upsample(b_work, (h, w)))
    inv = xp.clip_into(inv, lo, hi)
    depth = xp.reciprocal(inv)
    std_rel = _relative_std(xp, maps, inv_rel_work, covariance, s_work, shift, lo, var_log_work)
    std_rel = xp.where(ok, std_rel, 1.0)  # the degenerate fit's max_depth_m fill is not to be trusted: std = depth
    std_m = xp.mul_into(xp.upsample(std_rel, (h, w)), depth)
    scale_field = inv / inv_rel  # inv_rel is clipped to >= 1e-3
    return depth, std_m, scale_field, inv


def _relative_std(xp, maps, inv_rel_work, covariance, s_work, shift, lo, var_log_work):
    """Std of log depth at working resolution: the weights' posterior covariance propagated through the
    model, plus the misfit / local-correction variance.

    The propagated part is computed on every 4th pixel (4i + 2) and interpolated back as the relative variance
    var(inv) / inv^2: where the scale dominates the uncertainty g cancels from it, so it is smooth across the
    depth edges that var(inv) itself carries (upsampling var(inv) gave a std off by up to 4x there). The
    interpolation puts each sample where it was taken (`sample_upsampler`): a half-pixel resize of the coarse
    grid would shift it by half a working pixel, and stretch it where a side is not 4 times the sample count
    (1280 x 720: working 160 x 90, 22 rows of samples; ten full-resolution pixels at the bottom)."""
    cov = xp.nan_to_num(xp.exact(covariance))
    evals, evecs = xp.eigh(0.5 * (cov + cov.mT))
    root = xp.work(evecs * xp.sqrt(xp.clip(evals, 0.0, None))[..., None, :])  # cov = root @ root.T
    h, w = inv_rel_work.shape[-2:]
    oy, ox = min(2, h - 1), min(2, w - 1)
    g2 = inv_rel_work[..., oy::4, ox::4]
    m = xp.cat([maps[..., oy::4, ox::4] * g2[..., None, :, :], xp.ones_like(g2)[..., None, :, :]], -3)
    z = root.mT @ m.reshape(m.shape[:-2] + (-1,))
    var_inv = xp.einsum("...kp,...kp->...p", z, z).reshape(g2.shape)
    inv2 = xp.clip(xp.abs(s_work[..., oy::4, ox::4] * g2 + shift), lo, None)
    up_h, up_w = (xp.work(sample_upsampler(n, c, o, 4)) for n, c, o in ((h, g2.shape[-2], oy), (w, g2.shape[-1], ox)))
    var_rel = up_h @ (var_inv / (inv2 * inv2)) @ up_w.mT
    std_rel = xp.sqrt(var_rel + var_log_work)
    return xp.clip(xp.nan_to_num(std_rel, nan=1.0, posinf=1.0), None, 1e3)


@functools.lru_cache(maxsize=64)
def sample_upsampler(n_fine: int, n_coarse: int, offset: int, step: int) -> np.ndarray:
    """(n_fine, n_coarse) linear interpolation from samples taken at fine pixels offset + step * i to every fine
    pixel (held constant beyond the first and the last sample); float32, cached per size."""
    t = np.clip((np.arange(n_fine) - offset) / step, 0.0, n_coarse - 1)
    i0 = np.minimum(np.floor(t).astype(np.int64), max(n_coarse - 2, 0))
    frac = t - i0
    rows = np.arange(n_fine)
    m = np.zeros((n_fine, n_coarse))
    m[rows, i0] += 1.0 - frac
    m[rows, np.minimum(i0 + 1, n_coarse - 1)] += frac
    return m.astype(np.float32)  # shared between calls: read, never written (torch refuses read-only arrays)
