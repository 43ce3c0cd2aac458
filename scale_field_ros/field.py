"""The scale-field model, forward at anchors (design) and at every pixel (compose).

In inverse depth:  inv_depth_m(x) = S(x) * g(x) + c,   S(x) = sum_k w_k B_k(x)
with g the relative inverse depth normalised to median 1, B_k the bases (B_1 = 1) and c a global shift.
The weight vector (w_1..w_K, c) is the solver's and the temporal filter's state. An optional local
correction (residual_grid) multiplies the result: inv_depth_m *= exp(R(x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .anchors import Anchors
from .bases import BasisSet, sample_maps
from .residual_grid import LocalCorrection
from .solver import Design, Prior

MEDIAN_SCALE_REL_STD = 1e-3  # tier -1 (median scaling): the scale stays at the median ratio


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


def n_weights(bases: BasisSet) -> int:
    return bases.k + 1  # bases, then the shift


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


def loose_prior(bases: BasisSet, config: PriorConfig) -> Prior:
    """Before any anchor: the backbone's own inverse depth (scale = its median, shift 0), loosely held."""
    k = n_weights(bases)
    s = bases.scale_inv_rel
    mean = np.zeros(k)
    mean[0] = s
    std = np.full(k, config.basis_rel_std * _reach(bases) * s)
    std[0] = config.scale_rel_std * s
    std[-1] = _shift_std(bases, config) * s
    hint = getattr(bases, "scale_hint", 0.0)
    if hint > 0:  # median scaling chosen: hold the scale at the median anchor ratio
        mean[0], std[0] = hint, MEDIAN_SCALE_REL_STD * hint
    return Prior.diagonal(mean, std)


def prior_around(bases: BasisSet, scale: float, shift: float, config: PriorConfig) -> Prior:
    """Identity correction over a global alignment (scale, shift): the per-frame prior of the field."""
    k = n_weights(bases)
    s = abs(scale) if np.isfinite(scale) and scale != 0 else bases.scale_inv_rel
    mean = np.zeros(k)
    mean[0] = scale
    mean[-1] = shift
    std = np.full(k, config.basis_rel_std * _reach(bases) * s)
    std[0] = config.scale_rel_std * s
    std[-1] = _shift_std(bases, config) * s
    hint = getattr(bases, "scale_hint", 0.0)
    if hint > 0:
        mean[0], std[0] = hint, MEDIAN_SCALE_REL_STD * hint
    return Prior.diagonal(mean, std)


def _reach(bases: BasisSet) -> float:
    """Prior std factor of the non-constant bases: anchors that cover little of the image may only bend the
    field a little (it would extrapolate the bend over the uncovered part)."""
    return float(np.clip(getattr(bases, "coverage", 1.0), 0.1, 1.0))


def _shift_std(bases: BasisSet, config: PriorConfig) -> float:
    """Relative prior std of the shift: pinned near 0 when the family is scale only (tier -1)."""
    return config.shift_rel_std if getattr(bases, "shift_free", True) else 1e-6


def anchor_fitted(design: Design, weights: np.ndarray) -> np.ndarray:
    return design.matrix @ weights


def compose(
    bases: BasisSet,
    weights: np.ndarray,
    covariance: np.ndarray,
    min_depth_m: float,
    max_depth_m: float,
    local: LocalCorrection | None = None,
    misfit_log_var: float = 0.0,
) -> FieldEstimate:
    """Metric depth, per-pixel std and scale field at full resolution (never NaN).

    Everything smooth is done at working resolution: the field S, the local factor exp(R) folded into
    A = S exp(R) and B = c exp(R), and the uncertainty (at half the working resolution); only
    inv = up(A) * g + up(B) and the outputs derived from it touch full-resolution pixels (float32, cv2)."""
    h, w = bases.full_shape
    k = bases.k
    wk = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(wk)):
        wk = np.nan_to_num(wk)
    s_work = np.tensordot(wk[:k].astype(np.float32), bases.maps, axes=1)
    shift = np.float32(wk[k])
    lo, hi = np.float32(1.0 / max_depth_m), np.float32(1.0 / min_depth_m)
    if local is not None:
        factor = np.exp(local.log_ratio.astype(np.float32))
        a_work, b_work = s_work * factor, shift * factor
        var_log_work = local.variance()
    else:
        a_work, b_work = s_work, None
        var_log_work = np.float32(misfit_log_var)
    # finite weights, maps and g give a finite result; a degenerate fit is caught here, at working resolution
    if not (np.isfinite(float(a_work.sum())) and (b_work is None or np.isfinite(float(b_work.sum())))):
        a_work, b_work, shift = np.zeros_like(s_work), None, lo
    # in place where possible: every fresh full-resolution array costs page faults
    inv = _upsample(a_work, (h, w))
    np.multiply(inv, bases.inv_rel, out=inv)
    if b_work is None:
        inv += shift
    else:
        inv += _upsample(b_work, (h, w))
    np.clip(inv, lo, hi, out=inv)
    depth = np.reciprocal(inv)
    std_rel = _relative_std(bases, wk, covariance, s_work, shift, lo, var_log_work)
    std_rel = np.minimum(np.nan_to_num(std_rel, nan=1.0, posinf=1.0), np.float32(1e3))
    std_m = _upsample(std_rel, (h, w))
    np.multiply(std_m, depth, out=std_m)
    scale_field = np.divide(inv, bases.inv_rel)  # inv_rel is clipped to >= 1e-3
    return FieldEstimate(depth, std_m, scale_field, inv)


def _relative_std(bases, wk, covariance, s_work, shift, lo, var_log_work) -> np.ndarray:
    """Std of log depth at working resolution: the weights' posterior covariance propagated through the
    model (on a 2x coarser grid, it is smooth), plus the misfit / local-correction variance."""
    k = bases.k
    cov = np.asarray(covariance, np.float64)
    if not np.all(np.isfinite(cov)):
        cov = np.nan_to_num(cov)
    evals, evecs = np.linalg.eigh(0.5 * (cov + cov.T))
    root = (evecs * np.sqrt(np.maximum(evals, 0.0))).astype(np.float32)  # cov = root @ root.T
    g2 = bases.inv_rel_work[::2, ::2]
    m = np.concatenate([(bases.maps[:, ::2, ::2] * g2).reshape(k, -1), np.ones((1, g2.size), np.float32)])
    z = root.T @ m
    var_inv = np.einsum("kp,kp->p", z, z).reshape(g2.shape)
    var_inv = _upsample(var_inv, bases.work_shape)
    inv_work = np.maximum(np.abs(s_work * bases.inv_rel_work + shift), lo)
    return np.sqrt(var_inv / (inv_work * inv_work) + var_log_work).astype(np.float32)


def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if a.shape == (h, w):
        return a.astype(np.float32)  # a copy: callers write into the result
    return cv2.resize(a.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
