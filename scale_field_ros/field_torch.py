"""The scale-field stage in torch: batched, differentiable, on any device, with the numpy core's math.

Mirrors `solver.solve` (Kalman-form robust ridge toward a prior: Huber IRLS on MAD-normalised residuals,
hard rejection, the full -> scale+shift -> scale -> prior ladder) and `field.anchor_design` over a batch of
frames padded to a common anchor count (`mask` marks real rows). The prior and compose (without the local
residual correction) are not copies: they run `field.prior_moments` / `field.compose_arrays`, written once
against a tiny array namespace (`array_namespace.NUMPY` there, `TorchOps` here). The numpy modules stay the
reference: `test/test_field_torch.py` checks this one against them on real frames. Uses: the GPU path
(weights and depth stay on the device) and training the learned basis head (gradients flow from the loss
through the solve into the basis maps).

Numerical safety with few anchors: the prior precision keeps every normal matrix SPD; solves are Cholesky on
the Jacobi-scaled matrix with a small jitter, retried with a larger one where the factorisation fails.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from .field import PriorConfig, anchor_scale, compose_arrays, fit_relative_factor, misfit_log_var, prior_moments
from .solver import FitLevel, SolverConfig

LADDER = (FitLevel.FULL, FitLevel.SCALE_SHIFT, FitLevel.SCALE, FitLevel.PRIOR)  # index = level code


@dataclass(frozen=True)
class TorchDesign:
    """Batched `solver.Design`: matrix (B, N, K), target / sigma (B, N), mask (B, N) bool (False = padding)."""

    matrix: torch.Tensor
    target: torch.Tensor
    sigma: torch.Tensor
    mask: torch.Tensor
    scale_index: int = 0
    shift_index: int | None = None


@dataclass(frozen=True)
class TorchPrior:
    mean: torch.Tensor  # (B, K)
    covariance: torch.Tensor  # (B, K, K)


@dataclass(frozen=True)
class TorchFit:
    weights: torch.Tensor  # (B, K) posterior mean
    covariance: torch.Tensor  # (B, K, K) posterior covariance
    inliers: torch.Tensor  # (B, N) bool
    level: torch.Tensor  # (B,) long: index into LADDER
    n_inliers: torch.Tensor  # (B,) long

    def levels(self) -> list[FitLevel]:
        return [LADDER[int(i)] for i in self.level.tolist()]


@dataclass(frozen=True)
class TorchFieldEstimate:
    depth_m: torch.Tensor  # (B, H, W), clamped to [min, max]
    std_m: torch.Tensor  # (B, H, W)
    scale_field: torch.Tensor  # (B, H, W)
    inv_depth: torch.Tensor  # (B, H, W), 1/m


def design_from_numpy(designs, dtype=torch.float64, device="cpu") -> TorchDesign:
    """Pad a list of numpy `solver.Design` (same K, same scale/shift columns) into one batch."""
    if not designs:
        raise ValueError("need at least one design")
    k = designs[0].matrix.shape[1]
    n = max(max(len(d) for d in designs), 1)
    b = len(designs)
    matrix = torch.zeros(b, n, k, dtype=dtype)
    target = torch.zeros(b, n, dtype=dtype)
    sigma = torch.ones(b, n, dtype=dtype)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, d in enumerate(designs):
        if d.matrix.shape[1] != k or d.scale_index != designs[0].scale_index or d.shift_index != designs[0].shift_index:
            raise ValueError("designs in one batch must share K and the scale/shift columns")
        m = len(d)
        matrix[i, :m] = torch.as_tensor(d.matrix, dtype=dtype)
        target[i, :m] = torch.as_tensor(d.target, dtype=dtype)
        sigma[i, :m] = torch.as_tensor(d.sigma, dtype=dtype)
        mask[i, :m] = True
    dev = torch.device(device)
    return TorchDesign(
        matrix.to(dev), target.to(dev), sigma.to(dev), mask.to(dev), designs[0].scale_index, designs[0].shift_index
    )


def prior_from_numpy(priors, dtype=torch.float64, device="cpu") -> TorchPrior:
    mean = torch.stack([torch.as_tensor(p.mean, dtype=dtype) for p in priors]).to(device)
    cov = torch.stack([torch.as_tensor(p.covariance, dtype=dtype) for p in priors]).to(device)
    return TorchPrior(mean, cov)


# ----------------------------------------------------------------------------------------------- solve


def usable_rows(design: TorchDesign) -> torch.Tensor:
    """Rows the solver uses: real, finite, positive sigma (as `solver.solve`)."""
    d = design
    return (
        d.mask
        & torch.isfinite(d.matrix).all(dim=-1)
        & torch.isfinite(d.target)
        & torch.isfinite(d.sigma)
        & (d.sigma > 0)
    )


def choose_levels(
    design: TorchDesign,
    usable: torch.Tensor,
    config: SolverConfig,
    level: FitLevel = FitLevel.FULL,
    lowest: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) ladder index per frame, as `solver._choose_level` (no gradient); `lowest` (B,) ladder indices: a
    frame's rung starts no higher than its own (a constant relative map: scale only)."""
    with torch.no_grad():
        n = usable.sum(dim=-1)
        col = torch.where(usable, design.matrix[..., design.scale_index], torch.inf)
        srt = torch.sort(col, dim=-1).values
        changes = ((srt[:, 1:] != srt[:, :-1]) & torch.isfinite(srt[:, 1:])).sum(dim=-1)
        distinct = (n > 0).long() + changes
        nf = n.clamp_min(1).to(col.dtype)
        col0 = torch.where(usable, design.matrix[..., design.scale_index], 0.0)
        mean = col0.sum(-1) / nf
        std = torch.sqrt((torch.where(usable, col0 - mean[:, None], 0.0) ** 2).sum(-1) / nf)
        spread = std / (col0.abs().sum(-1) / nf).clamp_min(1e-12)
        rung = torch.full_like(n, LADDER.index(level))
        if lowest is not None:
            rung = torch.maximum(rung, lowest.to(rung))
        too_few = (n < config.min_anchors_full) | (distinct < config.min_anchors_full)
        rung = torch.where((rung <= 0) & too_few, torch.ones_like(rung), rung)
        if design.shift_index is None:
            rung = torch.where(rung == 1, torch.full_like(rung, 2), rung)
        no_shift = (n < config.min_anchors_shift) | (distinct < 2) | (spread < config.min_relative_spread)
        rung = torch.where((rung == 1) & no_shift, torch.full_like(rung, 2), rung)
        return torch.where(n == 0, torch.full_like(rung, 3), rung)


def free_columns(levels: torch.Tensor, k: int, scale_index: int, shift_index: int | None) -> torch.Tensor:
    """(B, K) bool: the weights each frame's rung fits (the rest stay at the prior)."""
    b = levels.shape[0]
    cols = torch.arange(k, device=levels.device).expand(b, k)
    scale = cols == scale_index
    shift = cols == shift_index if shift_index is not None else torch.zeros_like(scale)
    lv = levels[:, None]
    return (lv == 0) | ((lv == 1) & (scale | shift)) | ((lv == 2) & scale)


def solve(
    design: TorchDesign,
    prior: TorchPrior,
    config: SolverConfig = SolverConfig(),  # noqa: B008 - frozen, immutable default
    level: FitLevel = FitLevel.FULL,
    robust: bool = True,
    lowest: torch.Tensor | None = None,
) -> TorchFit:
    """Batched `solver.solve`: robust posterior of the weights (differentiable in matrix/target/prior).

    robust=False: one weighted ridge solve (weights 1/sigma^2, no outlier rejection), the smooth variant
    used for training. `lowest`: per-frame rungs to start at or below (see `choose_levels`).
    The normal equations are formed and solved in float64 whatever the design's dtype, as numpy's solver does:
    the bases are nearly collinear (condition numbers ~1e8), and in float32 the solve drifted along that
    direction (depth off by up to 18% on KITTI). The weights and covariance come back in the design's dtype.
    """
    dtype = design.matrix.dtype
    exact = torch.float64
    bsz, _, k = design.matrix.shape
    usable = usable_rows(design)
    rung = choose_levels(design, usable, config, level, lowest)
    free = free_columns(rung, k, design.scale_index, design.shift_index)
    fixed = ~free
    a = torch.where(usable[..., None], torch.nan_to_num(design.matrix.to(exact)), 0.0)
    y = torch.where(usable, torch.nan_to_num(design.target.to(exact)), 0.0)
    s = torch.where(usable, design.sigma.to(exact), 1.0)
    mean0 = torch.nan_to_num(prior.mean.to(exact))
    cov0 = torch.nan_to_num(prior.covariance.to(exact))
    # Conditioning on the fixed columns: they stay at the prior mean and move the target; in the batched
    # system they become decoupled unit-variance entries with no data, solved to 0 and replaced afterwards.
    y_f = y - (a @ (mean0 * fixed)[..., None])[..., 0]
    a_f = a * free[:, None, :].to(exact)
    pair = free[:, :, None] & free[:, None, :]
    fixed_pair = fixed[:, :, None] & fixed[:, None, :]
    cov_f = torch.where(pair, cov0, 0.0) + torch.diag_embed(fixed.to(exact))
    prec_prior = inverse_spd(cov_f)
    mean_f = torch.where(free, mean0, 0.0)
    eta_prior = (prec_prior @ mean_f[..., None])[..., 0]

    w = mean_f
    keep = usable
    active = torch.ones(bsz, dtype=torch.bool, device=a.device)
    prec = prec_prior
    iterations = max(config.irls_iterations, 1) + 1 if robust else 1
    for it in range(iterations):
        if robust:
            u = (y_f - (a_f @ w[..., None])[..., 0]) / s
            scale = robust_scale(u, keep & usable if it else usable)
            z = u.abs() / scale[:, None]
            keep_new = (z < config.outlier_sigmas) & usable
            none_kept = keep_new.sum(-1) < 1
            med_z = masked_median(z, usable)
            keep_new = torch.where(none_kept[:, None], (z <= med_z[:, None]) & usable, keep_new)
            huber = torch.clamp(config.huber_k / z.clamp_min(1e-12), max=1.0)
            wt = torch.where(keep_new, huber, 0.0) / (s * scale[:, None]) ** 2
        else:
            keep_new = usable
            wt = torch.where(usable, 1.0 / s**2, 0.0)
        prec_new = prec_prior + a_f.transpose(1, 2) @ (a_f * wt[..., None])
        w_new = solve_spd(prec_new, eta_prior + (a_f.transpose(1, 2) @ (wt * y_f)[..., None])[..., 0])
        finite = torch.isfinite(w_new).all(-1)
        update = active & finite
        converged = (w_new - w).abs().amax(-1) <= config.irls_tolerance * (1e-12 + w_new.abs().amax(-1))
        prec = torch.where(active[:, None, None], prec_new, prec)
        keep = torch.where(active[:, None], keep_new, keep)
        w = torch.where(update[:, None], w_new, w)
        active = active & finite & ~(converged & (it > 0))
        if not bool(active.any()):
            break
    cov_post = inverse_spd(prec)
    weights = torch.where(free, w, mean0)
    cov = torch.where(pair, cov_post, torch.where(fixed_pair, cov0, 0.0))
    ok = torch.isfinite(weights).all(-1) & torch.isfinite(cov).flatten(1).all(-1)
    weights = torch.where(ok[:, None], weights, mean0)
    cov = torch.where(ok[:, None, None], cov, cov0)
    rung = torch.where(ok, rung, torch.full_like(rung, 3))
    inliers = keep & usable & (rung < 3)[:, None]
    return TorchFit(weights.to(dtype), cov.to(dtype), inliers, rung, inliers.sum(-1))


def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) median over the last axis where `mask`, averaging the two middle values like numpy; 0 if empty."""
    if x.shape[-1] == 0:  # no rows at all (a batch without anchors): nothing to gather from
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    n = mask.sum(-1)
    srt = torch.sort(torch.where(mask, x, torch.inf), dim=-1).values
    lo = ((n - 1) // 2).clamp_min(0)[:, None]
    hi = (n // 2).clamp(max=x.shape[-1] - 1)[:, None]
    mid = 0.5 * (srt.gather(-1, lo) + srt.gather(-1, hi))[:, 0]
    return torch.where(n > 0, mid, torch.zeros_like(mid))


def robust_scale(u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) MAD spread of normalised residuals, at least 1 (as `solver._robust_scale`)."""
    med = masked_median(u, mask)
    mad = 1.4826 * masked_median((u - med[:, None]).abs(), mask)
    mad = torch.where(torch.isfinite(mad), mad, torch.ones_like(mad))
    return torch.where(mask.any(-1), mad.clamp_min(1.0), torch.ones_like(mad))


def _jitter(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def solve_spd(m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with m x = b for SPD m (B, K, K); b (B, K) or (B, K, M). Jacobi-scaled Cholesky with jitter."""
    vec = b.dim() == m.dim() - 1
    rhs = b[..., None] if vec else b
    d = torch.diagonal(m, dim1=-2, dim2=-1).abs().clamp_min(torch.finfo(m.dtype).tiny).rsqrt()
    ms = m * d[..., :, None] * d[..., None, :]
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    chol, info = torch.linalg.cholesky_ex(ms + _jitter(m.dtype) * eye)
    if bool((info > 0).any()):
        # indefinite from round-off (near-collinear bases): retry those frames with a visible ridge
        chol2, _ = torch.linalg.cholesky_ex(ms + 1e-4 * eye)
        chol = torch.where((info > 0)[..., None, None], chol2, chol)
    x = torch.cholesky_solve(rhs * d[..., :, None], chol) * d[..., :, None]
    return x[..., 0] if vec else x


def inverse_spd(m: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)
    inv = solve_spd(m, eye)
    return 0.5 * (inv + inv.transpose(-1, -2))


# --------------------------------------------------------------------------------------- field model


def sample_maps(maps: torch.Tensor, u: torch.Tensor, v: torch.Tensor, full_shape: tuple[int, int]) -> torch.Tensor:
    """(B, N, K) bilinear samples of (B, K, h, w) maps at full-resolution pixels, as `basis_set.sample_maps`."""
    bsz, k, h, w = maps.shape
    fh, fw = full_shape
    x = ((u.to(maps.dtype) + 0.5) * (w / fw) - 0.5).clamp(0, w - 1)
    y = ((v.to(maps.dtype) + 0.5) * (h / fh) - 0.5).clamp(0, h - 1)
    x0 = torch.floor(x).clamp(max=max(w - 2, 0)).long()
    y0 = torch.floor(y).clamp(max=max(h - 2, 0)).long()
    fx = (x - x0.to(x.dtype))[:, None, :]
    fy = (y - y0.to(y.dtype))[:, None, :]
    flat = maps.reshape(bsz, k, h * w)
    i00 = (y0 * w + x0)[:, None, :].expand(bsz, k, -1)
    dx = 1 if w > 1 else 0
    dy = w if h > 1 else 0

    def at(offset: int) -> torch.Tensor:
        return flat.gather(2, i00 + offset)

    out = at(0) * (1 - fx) * (1 - fy) + at(dx) * fx * (1 - fy) + at(dy) * (1 - fx) * fy + at(dx + dy) * fx * fy
    return out.transpose(1, 2)


def pixel_values(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, N) values of (B, H, W) at the rounded pixels (u, v), clamped to the image."""
    bsz, h, w = image.shape
    col = torch.round(u).clamp(0, w - 1).long()
    row = torch.round(v).clamp(0, h - 1).long()
    return image.reshape(bsz, -1).gather(1, row * w + col)


def anchor_design(
    maps: torch.Tensor,
    inv_rel: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    depth_m: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    noise_rel: float,
) -> TorchDesign:
    """Batched `field.anchor_design`: rows [B_k(x) g(x) ..., 1], target 1/depth, sigma noise_rel*target/sqrt(wt)."""
    h, w = inv_rel.shape[-2:]
    g = pixel_values(inv_rel, u, v).to(maps.dtype)
    b = sample_maps(maps, u, v, (h, w))
    matrix = torch.cat([b * g[..., None], torch.ones_like(g)[..., None]], dim=-1)
    depth = depth_m.to(maps.dtype)
    wt = weight.to(maps.dtype)
    ok = mask & (depth > 0) & (wt > 0) & torch.isfinite(depth) & torch.isfinite(wt)
    target = torch.where(ok, 1.0 / torch.where(ok, depth, 1.0), 0.0)
    sigma = torch.where(ok, noise_rel * target / torch.sqrt(torch.where(ok, wt, 1.0)), 1.0)
    return TorchDesign(matrix, target, sigma, ok, scale_index=0, shift_index=maps.shape[1])


def prior_around(
    scale: torch.Tensor,
    shift: torch.Tensor,
    scale_inv_rel: torch.Tensor,
    k: int,
    config: PriorConfig,
    coverage: float | torch.Tensor = 1.0,
    shift_free: bool | torch.Tensor = True,
    scale_hint: float | torch.Tensor = 0.0,
    spread_floor: float | torch.Tensor = 0.0,
) -> TorchPrior:
    """Batched `field.prior_around` over K bases (+1 shift weight); `loose_prior` is scale=scale_inv_rel, shift=0,
    spread_floor the anchors' scale.

    coverage, shift_free and scale_hint are the `BasisSet` fields of the same names (a value or one per frame).
    """
    xp = TorchOps(scale.dtype, scale.device)
    mean, std = prior_moments(
        xp,
        scale.detach(),
        xp.work(shift).detach(),
        xp.work(scale_inv_rel).detach(),
        k,
        config,
        xp.work(coverage),
        torch.as_tensor(shift_free, dtype=torch.bool, device=scale.device),
        xp.work(scale_hint),
        xp.work(spread_floor).detach(),
    )
    return TorchPrior(mean, torch.diag_embed(std**2))


def fit_field(
    design: TorchDesign,
    scale_inv_rel: torch.Tensor,
    prior_config: PriorConfig = PriorConfig(),  # noqa: B008 - frozen
    solver_config: SolverConfig = SolverConfig(),  # noqa: B008 - frozen
    robust: bool = True,
    coverage: float | torch.Tensor = 1.0,
    shift_free: bool | torch.Tensor = True,
    scale_hint: float | torch.Tensor = 0.0,
    constant_relative: bool | torch.Tensor = False,
) -> TorchFit:
    """The pipeline's two solves: global scale+shift from a loose prior, then the field around it.

    coverage, shift_free, scale_hint: the frames' `BasisSet` fields (tier chosen by cross-validation);
    constant_relative (a value or one per frame): relative depth without structure, fitted by scale only (as the
    pipeline does: the other bases would bend a flat map into whatever the anchors say)."""
    k = design.matrix.shape[-1] - 1
    scale_inv_rel = scale_inv_rel.to(design.matrix.dtype)
    family = (coverage, shift_free, scale_hint)
    flat = torch.as_tensor(constant_relative, dtype=torch.bool, device=design.matrix.device)
    lowest = torch.where(flat, LADDER.index(FitLevel.SCALE), 0).expand(design.matrix.shape[0])
    # as `field.loose_prior`: the backbone's median, its spread at least the anchors' scale
    xp = TorchOps(design.matrix.dtype, design.matrix.device)
    column = torch.where(design.mask, design.matrix[..., design.scale_index], 0.0)
    floor = torch.nan_to_num(anchor_scale(xp, column, torch.where(design.mask, design.target, 0.0)))
    zero = torch.zeros_like(scale_inv_rel)
    loose = prior_around(scale_inv_rel, zero, scale_inv_rel, k, prior_config, *family, spread_floor=floor)
    ga = solve(design, loose, solver_config, FitLevel.SCALE_SHIFT, robust)
    prior = prior_around(ga.weights[:, 0], ga.weights[:, -1], scale_inv_rel, k, prior_config, *family)
    fit = solve(design, prior, solver_config, FitLevel.FULL, robust, lowest)
    # as the pipeline: refit with sigma relative to the fitted inverse depth (field.relative_to_fit)
    fitted = (design.matrix @ fit.weights[..., None])[..., 0]
    factor = fit_relative_factor(xp, fitted, design.target)  # fitted: the design's dtype and device
    relative = dataclasses.replace(design, sigma=design.sigma * factor)
    refit = solve(relative, prior, solver_config, FitLevel.FULL, robust, lowest)
    keep = fit.level == 3  # the field fit fell to the prior: nothing to refit
    fit = TorchFit(
        torch.where(keep[:, None], fit.weights, refit.weights),
        torch.where(keep[:, None, None], fit.covariance, refit.covariance),
        torch.where(keep[:, None], fit.inliers, refit.inliers),
        torch.where(keep, fit.level, refit.level),
        torch.where(keep, fit.n_inliers, refit.n_inliers),
    )
    # as the pipeline: a failed field fit falls back to the global alignment
    use_ga = (fit.level == 3) & (ga.level != 3)
    return TorchFit(
        torch.where(use_ga[:, None], ga.weights, fit.weights),
        torch.where(use_ga[:, None, None], ga.covariance, fit.covariance),
        torch.where(use_ga[:, None], ga.inliers, fit.inliers),
        torch.where(use_ga, ga.level, fit.level),
        torch.where(use_ga, ga.n_inliers, fit.n_inliers),
    )


class TorchOps:
    """The torch side of `array_namespace`: batched, in `dtype` on `device`, never in place (autograd-safe)."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str) -> None:
        self.dtype = dtype
        self.device = torch.device(device)

    def __getattr__(self, name: str):
        return getattr(torch, name)  # sqrt, abs, exp, where, isfinite, einsum, nan_to_num, ...

    def work(self, a) -> torch.Tensor:
        return torch.as_tensor(a, dtype=self.dtype, device=self.device)

    exact = work  # one precision for the per-pixel math and the small linear algebra

    @staticmethod
    def clip(a, lo=None, hi=None):
        return torch.clamp(a, lo, hi)

    @staticmethod
    def cat(arrays, axis: int):
        return torch.cat(arrays, dim=axis)

    def stack(self, values, axis: int = -1):
        return torch.stack(torch.broadcast_tensors(*(self.work(v) for v in values)), dim=axis)

    @staticmethod
    def eigh(a):
        return torch.linalg.eigh(a)

    @staticmethod
    def combine(weights: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...k,...khw->...hw", weights, maps)

    @staticmethod
    def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_median(x, mask)

    @staticmethod
    def upsample(a: torch.Tensor, shape) -> torch.Tensor:
        return upsample(a, shape)

    @staticmethod
    def mul_into(a, b):
        return a * b

    @staticmethod
    def add_into(a, b):
        return a + b

    @staticmethod
    def clip_into(a, lo, hi):
        return torch.clamp(a, lo, hi)


def upsample(a: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) bilinear with half-pixel centres (cv2.INTER_LINEAR when enlarging)."""
    shape = tuple(int(x) for x in shape)
    if tuple(a.shape[-2:]) == shape:
        return a
    lead = a.shape[:-2]
    flat = a.reshape(-1, 1, *a.shape[-2:])
    return F.interpolate(flat, size=shape, mode="bilinear", align_corners=False).reshape(*lead, *shape)


def fit_misfit(design: TorchDesign, fit: TorchFit) -> torch.Tensor:
    """(B,) the fitted field's model misfit (`field.misfit_log_var`), the pipeline's floor of the log-depth
    variance that `compose` publishes."""
    xp = TorchOps(design.matrix.dtype, design.matrix.device)
    return misfit_log_var(xp, design.matrix, design.target, fit.weights, fit.inliers, fit.level == 3)


def compose(
    maps: torch.Tensor,
    inv_rel: torch.Tensor,
    inv_rel_work: torch.Tensor,
    weights: torch.Tensor,
    covariance: torch.Tensor,
    min_depth_m: float,
    max_depth_m: float,
    misfit_log_var: float | torch.Tensor = 0.0,
) -> TorchFieldEstimate:
    """Batched `field.compose` without the local correction: depth, per-pixel std, scale field (never NaN).

    maps (B, K, h, w) at working resolution, inv_rel (B, H, W), inv_rel_work (B, h, w), weights (B, K+1),
    covariance (B, K+1, K+1); misfit_log_var a float or (B,) added to the log-depth variance. Computed in
    maps.dtype (numpy composes in float32).
    """
    xp = TorchOps(maps.dtype, maps.device)
    misfit = xp.work(misfit_log_var)
    misfit = misfit.reshape(-1, 1, 1) if misfit.dim() else misfit
    depth, std_m, scale_field, inv = compose_arrays(
        xp,
        maps,
        xp.work(inv_rel),
        xp.work(inv_rel_work),
        weights,
        covariance,
        min_depth_m,
        max_depth_m,
        None,
        misfit,
    )
    return TorchFieldEstimate(depth, std_m, scale_field, inv)


# ------------------------------------------------------------------------------------------ benchmark


def benchmark_scale_field_torch(
    device: str = "cpu",
    n_anchors: int = 1000,
    repeats: int = 30,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    out=None,
) -> dict[str, float | list[float]]:
    """Median milliseconds of the torch scale-field stage (bases, anchor design, both solves, compose) on
    `device`, and each timed call's total under "scale_field_samples".

    Input: `pipeline.benchmark_input(out)` (the numpy benchmark's frame and anchors); its relative map and feature
    map are uploaded once, as the backbone would leave them on the device. The bases are the full analytic
    family (`bases_torch.analytic_bases`; the numpy stage picks the same family for these anchors), so the
    timed part is what the GPU path runs per frame after the backbone. The device is synchronised around
    each stage.
    """
    import numpy as np

    from .bases import pick_feature
    from .bases_torch import analytic_bases
    from .basis_set import BasisConfig
    from .pipeline import benchmark_anchors_used, benchmark_input, stage_report

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    out, anchors = benchmark_input(out, n_anchors, seed)
    benchmark_anchors_used(out, anchors, 0.1, 10.0)  # the range compose is given below
    config = BasisConfig()

    def put(a):
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=dev)[None]

    relative, feature = put(out.relative), put(pick_feature(out, config.feature_name))
    u, v, depth = put(anchors.u), put(anchors.v), put(anchors.depth_m)
    wt = torch.ones_like(depth)
    mask = torch.ones_like(depth, dtype=torch.bool)
    samples = []
    with torch.no_grad():
        for _ in range(repeats + 3):
            sync()
            t0 = time.perf_counter()
            bases = analytic_bases(relative, out.kind, feature, config, dtype)
            sync()
            t1 = time.perf_counter()
            design = anchor_design(bases.maps, bases.inv_rel, u, v, depth, wt, mask, 0.02)
            fit = fit_field(design, bases.scale_inv_rel, constant_relative=bases.constant_relative)
            misfit = fit_misfit(design, fit)
            sync()
            t2 = time.perf_counter()
            compose(bases.maps, bases.inv_rel, bases.inv_rel_work, fit.weights, fit.covariance, 0.1, 10.0, misfit)
            sync()
            t3 = time.perf_counter()
            samples.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
    arr = np.array(samples[3:])
    return {
        **stage_report(arr, len(anchors), out.shape),
        "scale_field_samples": [float(x) for x in arr.sum(axis=1)],  # per timed call, for LatencyStats
        **{f"{part}_samples": [float(x) for x in arr[:, i]] for i, part in enumerate(("bases", "solve", "compose"))},
        "k": float(bases.maps.shape[1]),
    }
