"""One frame in, metric depth out: backbone -> bases -> robust solve (-> temporal filter) -> compose.

The ROS node, the CLI and the bag runner all call `Pipeline.process`; evaluation calls
`Pipeline.process_output` to reuse one backbone pass across anchor draws.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .anchors import Anchors, anchors_from_points
from .array_namespace import NUMPY
from .backbone import Backbone, BackboneOutput, DepthKind
from .bases import bases_provider, build_bases
from .basis_set import BasisConfig, BasisSet, family_for_tier, restrict, sample_maps, tier_for
from .camera import Intrinsics
from .deskew import transform_at_times
from .field import (
    PriorConfig,
    anchor_design,
    blend_scale_only,
    compose,
    loose_prior,
    misfit_log_var,
    prior_around,
    relative_to_fit,
)
from .residual_grid import LocalConfig, LocalCorrection, local_correction, neighbour_consistent, with_own_misfit
from .solver import Design, FitLevel, FitResult, Prior, SolverConfig, solve
from .temporal_filter import CorrectionFilter, FilterConfig, ScaleMemory, WeightFilter, combine
from .tier_selection import absrel_scale, gross_outlier_free, select_tier

_FAMILY_FRAMES = 5  # the filter's family: the median pick of this many frames, each on this many frames' anchors
_POOL_MAX_ANCHORS = 5000  # ... at most this many of them, evenly spread (the test's cost is linear in them)


def _default_filter_config() -> FilterConfig:
    return FilterConfig(enabled=False)  # evaluation treats frames independently; the node turns it on


@dataclass(frozen=True)
class PipelineConfig:
    min_depth_m: float = 0.1
    max_depth_m: float = 80.0
    noise_rel: float = 0.02  # assumed relative std of anchor depth
    basis: BasisConfig = field(default_factory=BasisConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    filter: FilterConfig = field(default_factory=_default_filter_config)

    def __post_init__(self) -> None:
        if not (0 < self.min_depth_m < self.max_depth_m) or not np.isfinite(self.max_depth_m):
            raise ValueError(f"need 0 < min_depth_m < max_depth_m, got {self.min_depth_m}, {self.max_depth_m}")
        if not self.noise_rel > 0:
            raise ValueError(f"noise_rel must be positive, got {self.noise_rel}")

    @staticmethod
    def from_dict(d: dict) -> PipelineConfig:
        """Flat keys: top-level fields, or `<section>_<field>` / `<section>.<field>` for basis, solver, prior,
        local and filter fields (e.g. basis_poly_degree). Unknown keys raise ValueError."""
        top = {f.name for f in dataclasses.fields(PipelineConfig)}
        sections = {
            "basis": BasisConfig,
            "solver": SolverConfig,
            "prior": PriorConfig,
            "local": LocalConfig,
            "filter": FilterConfig,
        }
        flat: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for key, value in d.items():
            for sep in (".", "_"):
                head, _, tail = key.partition(sep)
                if head in sections and tail and tail in {f.name for f in dataclasses.fields(sections[head])}:
                    nested[head][tail] = value
                    break
            else:
                if key in top and key not in sections:
                    flat[key] = value
                else:
                    raise ValueError(f"unknown pipeline parameter {key!r}")
        base = PipelineConfig()
        for name, values in nested.items():
            if values:
                cls = sections[name]
                current = getattr(base, name) if getattr(base, name) is not None else cls()
                typed = {k: _like(getattr(current, k), v) for k, v in values.items()}
                flat[name] = dataclasses.replace(current, **typed)
        return dataclasses.replace(base, **flat)


def _like(current: Any, value: Any) -> Any:
    if isinstance(current, tuple):
        return tuple(type(c)(v) for c, v in zip(current, value, strict=True))
    if isinstance(current, bool) or current is None:
        return value
    return type(current)(value)


@dataclass(frozen=True)
class StageTimings:
    backbone: float = 0.0
    bases: float = 0.0
    solve: float = 0.0
    compose: float = 0.0
    filter: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class PipelineResult:
    """One frame's output. With the temporal filter (a stamp and `filter.enabled`): `coasting` when the frame
    had no usable anchors and the estimate was carried, `coast_s` since the last anchored frame,
    `coast_exceeded` past `filter.max_coast_s` (std_m is then at least depth_m), `filter_reset` the reason
    when the filter reset on this frame, `nis_per_dof` the innovation of the frame's own fit (0 without one)."""

    depth_m: np.ndarray
    std_m: np.ndarray
    scale_field: np.ndarray
    backbone: BackboneOutput
    fit: FitResult
    coasting: bool
    timings_ms: StageTimings
    basis_signature: str = ""
    anchors_used: Anchors | None = None
    coast_s: float = 0.0
    coast_exceeded: bool = False
    filter_reset: str = ""
    nis_per_dof: float = 0.0


class Pipeline:
    def __init__(self, backbone: Backbone | None, config: PipelineConfig | None = None, bases_fn=None):
        self.backbone = backbone
        self.config = config or PipelineConfig()
        # (BackboneOutput, BasisConfig, n_anchors, anchors) -> BasisSet: as configured (basis.source), unless given
        self.bases_fn = bases_fn or bases_provider(self.config.basis, getattr(backbone, "name", None))
        self._filter = None
        self._local_filter = None
        self._pooled_tier: int | None = None  # this frame's family for the filter (`_pool_anchors`; None: none)
        self.reset()

    def reset(self) -> None:
        cfg = self.config.filter
        self._filter = WeightFilter(cfg) if (WeightFilter is not None and cfg is not None) else None
        self._local_filter = CorrectionFilter(cfg) if self._filter is not None else None
        # the scale's random walk as the weight filter's on the scale weight (a fraction of its prior's spread)
        walk = cfg.process_noise * self.config.prior.scale_rel_std if cfg is not None else 0.0
        self._scale_memory = ScaleMemory(walk, self.config.noise_rel, cfg, _FAMILY_FRAMES)
        self._forget_family()

    def _forget_family(self, keep_pool: bool = False, keep_local: bool = False) -> None:
        """Drop what belongs to the filter state's family; `keep_pool`: the latest frames' anchors and picks, their
        scale and misfit stay (the same scene and timeline, only the state went); `keep_local`: the local
        correction's filter too (the caller decides once the frame's family is known)."""
        self._names: tuple[str, ...] = ()  # basis names of the filter state's weights
        self._tier = 0  # basis tier of the filter state
        if not keep_pool:
            self._misfit: float | None = None  # model misfit of the last anchored frame (kept while coasting)
            self._scale_memory.clear()  # the latest frames' scale (`_remembered_scale`)
            self._pool: deque[Anchors] = deque(maxlen=_FAMILY_FRAMES)  # the latest frames' anchors
            self._picks: deque[int] = deque(maxlen=_FAMILY_FRAMES)  # the tiers their pooled anchors chose
            self._pool_shape: tuple[int, int] | None = None  # the image size the pooled anchors belong to
        # per anchored frame with a state: squared relative errors of the state's prediction and of scale only
        self._prediction_errors: deque[tuple[float, float]] = deque(maxlen=_FAMILY_FRAMES)
        if not keep_local:
            if self._local_filter is not None:
                self._local_filter.reset()
            self._local_scale_only = False  # the local filter holds the correction of frames on the remembered scale

    def process(self, rgb: np.ndarray, anchors: Anchors, stamp_s: float | None = None) -> PipelineResult:
        if self.backbone is None:
            raise ValueError("Pipeline has no backbone; use process_output with a BackboneOutput")
        t0 = time.perf_counter()
        out = self.backbone.infer(rgb)
        t_backbone = (time.perf_counter() - t0) * 1e3
        return self.process_output(out, anchors, stamp_s, t_backbone)

    def process_output(
        self, out: BackboneOutput, anchors: Anchors, stamp_s: float | None = None, backbone_ms: float = 0.0
    ) -> PipelineResult:
        cfg = self.config
        t0 = time.perf_counter()
        h, w = out.shape
        clean = anchors.sanitized(w, h, cfg.min_depth_m, cfg.max_depth_m)
        use_filter = stamp_s is not None and self._filter is not None and getattr(cfg.filter, "enabled", False)
        stamp_reset = ""
        if use_filter:
            stamp_reset = self._filter.check_stamp(stamp_s)  # a bag looping resets before the family is chosen
            if self._filter.state is None:
                # the pooled anchors go only with the timeline: frames standing alone still add to them
                self._forget_family(keep_pool=not stamp_reset, keep_local=not stamp_reset)
        bases, own = self._bases(out, clean, use_filter)
        t1 = time.perf_counter()

        design = anchor_design(bases, clean, cfg.noise_rel)
        initial, fit, level, why, design = self._frame_fit(bases, design)
        t_filter = 0.0
        reset_reason, nis_per_dof = "", 0.0
        alone = True  # the published fit is this frame's own (no filter, or its state born or reborn here)
        if use_filter:
            tf = time.perf_counter()
            alone = self._filter.state is None
            step = self._filter_weights(design, bases, own, clean, initial, fit, level, why, stamp_s)
            bases, design, fit, reset_reason, nis_per_dof = step
            if len(clean):
                self._scale_memory.add(stamp_s, _raw_ratios(own, clean))
            if alone:
                bases, design, fit = self._without_state(bases, own, design, fit, clean, stamp_s)
            alone = alone or bool(reset_reason)
            reset_reason = reset_reason or stamp_reset
            t_filter += time.perf_counter() - tf
        local = local_alone = None
        carried = self._local_filter.current(bases.work_shape) if use_filter and cfg.local.enabled else None
        if cfg.local.enabled and fit.level is FitLevel.FULL and fit.n_anchors >= cfg.local.min_anchors:
            # with a carried correction, what the anchors add to it (the innovation), else the whole correction;
            # the weights themselves are fitted to the raw anchors, so the field, not the correction, explains
            # what it can (fitted to anchors with the correction taken out, the first frame's split between
            # field and correction would stick)
            residual_of = design if carried is None else _decorrected(design, bases, clean, carried)
            local, local_alone = self._fit_local(bases, residual_of, fit, clean, raw_design=design)
        misfit = _misfit_log_var(design, fit)
        t2 = time.perf_counter()
        t_filter_in_solve = t_filter  # the weight filter ran inside the solve's span, the local one runs below
        if use_filter:
            tf = time.perf_counter()
            if fit.level is FitLevel.PRIOR and self._misfit is not None:
                misfit = self._misfit  # no anchors: the field's misfit is what it was, not unknown
            elif fit.level is not FitLevel.PRIOR:
                self._misfit = misfit
            if cfg.local.enabled:
                local = self._filter_local(local, local_alone, carried, misfit, bases.work_shape, stamp_s)
            t_filter += time.perf_counter() - tf
        est = compose(bases, fit.weights, fit.covariance, cfg.min_depth_m, cfg.max_depth_m, local, misfit)
        if alone and local is None:
            # the frame on its own: its pick averaged with scale only (`select_tier`); not with a local
            # correction, which changes the output beyond the rung whose held-out error sets the weights
            est = blend_scale_only(est, bases, cfg.min_depth_m, cfg.max_depth_m)
        std_m = est.std_m
        coasting = coast_exceeded = False
        coast_s = 0.0
        if use_filter:
            coasting, coast_s = self._filter.coasting, self._filter.coast_duration_s
            coast_exceeded = self._filter.coast_exceeded
            if coast_exceeded:
                # no evidence for too long: at least 100 % relative uncertainty, so nothing downstream trusts it
                std_m = np.maximum(std_m, est.depth_m)
        t3 = time.perf_counter()
        timings = StageTimings(
            backbone=backbone_ms,
            bases=(t1 - t0) * 1e3,
            solve=(t2 - t1 - t_filter_in_solve) * 1e3,
            compose=(t3 - t2 - (t_filter - t_filter_in_solve)) * 1e3,
            filter=t_filter * 1e3,
            total=backbone_ms + (t3 - t0) * 1e3,
        )
        return PipelineResult(
            est.depth_m,
            std_m,
            est.scale_field,
            out,
            fit,
            coasting,
            timings,
            bases.signature,
            clean,
            coast_s,
            coast_exceeded,
            reset_reason,
            nis_per_dof,
        )

    def _bases(self, out: BackboneOutput, clean: Anchors, use_filter: bool) -> tuple[BasisSet, BasisSet]:
        """The frame's basis family: its own choice (what evaluation uses), or with the filter on, the family
        the filter's frames choose together (`_pool_anchors`).

        The family only grows while the state lives. Frames with few anchors keep it: the prediction is the
        prior and the ridge solve toward it copes with few anchors, so the frame coasts or nudges the estimate
        instead of losing its shape. Dropping weights changes the field, since the kept ones were estimated
        together with them, and their small covariance keeps the next anchors from repairing it (KITTI, 200
        LiDAR anchors whose own choice flips between tiers 2 and 3: AbsRel 0.05 per frame, 0.15 filtered on
        the frame after a drop). Scale only is the exception: the state goes and the frames stand alone
        (`_filter_weights`). Returns the family to use and the frame's own choice.
        """
        cfg = self.config
        own = self.bases_fn(out, cfg.basis, len(clean), clean)
        if not use_filter:
            return own, own
        self._pooled_tier = self._pool_anchors(own, clean)
        if self._pooled_tier is None:
            tier = own.tier if self._filter.state is None else self._tier
        else:
            tier = self._pooled_tier
        if tier < 0 and self._filter.state is not None and not self._state_predicts_worse():
            tier = self._tier  # the state predicts the anchors better than scale only: it stays, whole
        if tier < 0:
            return own, own
        if self._filter.state is not None and tier < self._tier:
            tier = self._tier  # the held family stays (see above)
        if own.tier == tier and (own.names == self._names or tier != self._tier):
            return own, own
        # analytic bases: the held tier is cut from this frame's full family (the maps build_bases would build)
        held = family_for_tier(own, tier) if self.bases_fn is build_bases else None
        if held is None:
            held = self.bases_fn(out, cfg.basis, _anchor_count_for_tier(tier, len(clean), cfg.basis), None)
        if hasattr(held, "coverage") and hasattr(own, "coverage"):
            held = dataclasses.replace(held, coverage=own.coverage)  # how far these anchors reach
        return held, own

    def _pool_anchors(self, own: BasisSet, clean: Anchors) -> int | None:
        """The filter's basis tier for this frame (-1: scale only, no state), or None where the frames give none
        (learned bases, or too few anchors for a tier): the median of the latest `_FAMILY_FRAMES` frames' picks,
        each `select_tier`'s blocked cross-validation on the anchors of the latest `_FAMILY_FRAMES` frames
        together, on this frame's maps (a static scene's anchors pool exactly; a moving camera's earlier
        anchors sit a little off, which only makes a richer family look worse).

        One frame's choice is the wrong judge of a state that accumulates anchors over frames. 100 VIO corners
        a frame land on the same textured places every frame, and a field fitted to them bends the walls
        between them however many frames add up: on static NYU one frame's tier-3 choice among scale-only ones
        started a state at AbsRel 0.125 against 0.064 per frame; pooled, the corners pick scale only. Fresh
        LiDAR lines pool into more evidence than one frame's. The median of the picks keeps one frame's flip
        from ending a state that the others support (KITTI's own LiDAR: t3 and scale only within the
        tolerance of each other, and the state accumulated over frames beats both)."""
        full = own.full_family
        if self.bases_fn is not build_bases or tier_for(len(clean), self.config.basis) < 1 or full.tier < 1:
            return self._median_pick()
        if self._pool_shape != full.full_shape:  # pixels of another image size do not pool
            self._pool.clear()
            self._picks.clear()
            self._pool_shape = full.full_shape
        self._pool.append(clean)
        pooled = Anchors.concatenate(self._pool)
        if len(pooled) > _POOL_MAX_ANCHORS:
            pooled = pooled.subset(np.linspace(0, len(pooled) - 1, _POOL_MAX_ANCHORS).astype(np.int64))
        self._picks.append(select_tier(full, pooled, self.config.basis).tier)
        return self._median_pick()

    def _median_pick(self) -> int | None:
        return sorted(self._picks)[len(self._picks) // 2] if self._picks else None

    def _frame_fit(self, bases, design) -> tuple[Prior, FitResult, FitLevel, str, Design]:
        """The frame on its own (the result without the filter): global alignment, then the field around it,
        refitted once with the anchors' errors relative to that fit (`relative_to_fit`: AbsRel's error).
        Returns the field's prior, the fit, the level asked for, why it is not FULL, and the design the fit
        was solved with (what the filter and the innovation test must use with it)."""
        cfg = self.config
        # global alignment first (the scale-shift rung from a loose prior), then the field around it
        ga = solve(design, loose_prior(bases, cfg.prior, design), cfg.solver, FitLevel.SCALE_SHIFT)
        initial = prior_around(bases, ga.weights[0], ga.weights[-1], cfg.prior)
        if bases.constant_relative:
            level, why = FitLevel.SCALE, "relative depth is constant: scale only"
        else:
            level, why = FitLevel.FULL, ""
        fit = _explained(solve(design, initial, cfg.solver, level), why)
        if fit.level is not FitLevel.PRIOR:
            design = relative_to_fit(design, fit.weights)
            fit = _explained(solve(design, initial, cfg.solver, level), why)
        if fit.level is FitLevel.PRIOR and ga.level is not FitLevel.PRIOR:
            fit = dataclasses.replace(ga, fallback_reason=fit.fallback_reason or "field fit failed")
        return initial, fit, level, why, design

    def _filter_weights(
        self,
        design,
        bases,
        own,
        clean: Anchors,
        initial: Prior,
        frame_fit: FitResult,
        level: FitLevel,
        why: str,
        stamp_s: float,
    ):
        """Kalman step on the weights: predict, check the innovation, update (the solve toward the prediction)
        or coast. After a reset the frame stands alone, in its own basis family (`own`). Returns the family and
        design used, the fit to publish, the reset reason ('' if none) and the innovation's NIS per degree
        of freedom."""
        f = self._filter
        dropped = ""
        scale_only = self._pooled_tier is not None and self._pooled_tier < 0
        if f.state is not None and scale_only and self._state_predicts_worse():
            dropped = "the latest frames' anchors choose scale only, which predicts them better: the state goes"
            f.reset(dropped)
            self._forget_family(keep_pool=True)
        if f.state is not None and self._names != bases.names:
            f.remap(_name_index(self._names, bases.names), initial)
        had_state = f.state is not None
        if not had_state and (scale_only or not getattr(bases, "shift_free", True)):
            # scale only (the frames' together, or this frame's: few or clustered anchors, shift pinned, scale held
            # at the anchors' absrel_scale): no state is born from it, its pinned spreads would freeze the random
            # walk; the frame stands alone
            self._stood_alone(frame_fit, stamp_s)
            return bases, design, frame_fit, dropped, 0.0
        predicted = f.predict(stamp_s, initial)
        fit, reason, nis_per_dof = frame_fit, "", 0.0
        if had_state and frame_fit.level is not FitLevel.PRIOR:
            nis, dof = _innovation(predicted, frame_fit, initial, design, clean, bases.full_shape)
            errors = _prediction_errors(predicted.mean, design)
            if errors is not None:
                self._prediction_errors.append(errors)
            nis_per_dof = nis / dof if dof > 0 else 0.0
            reason = f.innovation_reset(nis, dof)
            if reason:
                f.reset(reason)
                pooled_here = bool(self._pool) and self._pool[-1] is clean
                self._forget_family()  # the local correction and the old scene's anchors go too
                if own is not bases:  # the held family belonged to the old scene
                    bases, design = own, anchor_design(own, clean, self.config.noise_rel)
                    initial, fit, level, why, design = self._frame_fit(own, design)
                if pooled_here:  # the new scene's pool starts with this frame and its own choice
                    self._pool_shape = bases.full_shape
                    self._pool.append(clean)
                    self._picks.append(own.tier)
                if not getattr(own, "shift_free", True):
                    self._stood_alone(fit, stamp_s)
                    return bases, design, fit, reason, nis_per_dof  # scale only: no state is born (see above)
                f.predict(stamp_s, initial)  # born again from this frame alone
        if had_state and not reason:
            # the field's model prior (identity correction around this frame's global alignment) holds on
            # every frame, so it joins the prediction in every update; counted only at birth, the anchors
            # accumulated over frames outweigh it and the field over-fits where they cluster (40 corner
            # anchors on a static scene: AbsRel 0.23 per frame, 0.55 filtered without it)
            prior = predicted if frame_fit.level is FitLevel.PRIOR else combine(predicted, initial)
            # with the prediction as prior every anchor count is well posed: no ladder down to scale and shift,
            # which would hold the other weights fixed and move the scale alone onto a few anchors' local misfit
            # (the scale's marginal spread is wide, its spread given the other weights is not)
            solver = dataclasses.replace(self.config.solver, min_anchors_full=1, min_anchors_shift=1)
            fit = _explained(solve(_with_misfit(design, self._misfit), prior, solver, level), why)
        if fit.level is FitLevel.PRIOR:
            f.coast(stamp_s)
        else:
            f.update(fit, stamp_s)
        if f.state is not None:
            self._names, self._tier = bases.names, bases.tier
        return bases, design, fit, reason, nis_per_dof

    def _without_state(self, bases, own, design, fit: FitResult, clean: Anchors, stamp_s: float):
        """A frame that began without a weight state: one was born here, or it stands alone, on the remembered
        scale where it is scale only (`_remembered_scale`). Its local correction is its own, except that a
        frame without anchors after one on the remembered scale keeps that frame's. (Carried through a run of
        anchored scale-only frames, the correction of clustered VIO corners added up over frames: in a trial,
        `scripts/filter_static_scenes.py` gave sun3d frame 3 with 100 corners AbsRel 0.104 against 0.090.)"""
        scale_only = False
        if self._filter.state is None:
            bases, design, fit = self._remembered_scale(bases, own, design, fit, clean, stamp_s)
            scale_only = bases.tier == -1
        if not (scale_only and fit.level is FitLevel.PRIOR and self._local_scale_only):
            self._local_filter.reset()
        self._local_scale_only = scale_only
        return bases, design, fit

    def _remembered_scale(self, bases, own, design, fit: FitResult, clean: Anchors, stamp_s: float):
        """A frame without a weight state on the latest frames' scale (`ScaleMemory`): a scale-only frame takes
        it, so that the scale of few or clustered anchors is averaged over frames instead of jumping with each
        frame's draw; a frame without usable anchors coasts on it in scale only (the network's own scale, the
        prior, is no scale at all for an affine-invariant model). Frames whose own choice is a field keep it,
        as do depth-affine alignments (their map is not the raw one the memory is in). Returns the family,
        design and fit to publish."""
        family = own.full_family
        coast = fit.level is FitLevel.PRIOR
        if not coast and (bases.tier != -1 or bases.inv_rel is not family.inv_rel):
            return bases, design, fit
        remembered = self._scale_memory.scale(stamp_s)
        if remembered is None:
            return bases, design, fit
        scale = remembered.raw_scale * family.scale_inv_rel  # in the units of the family's map (bases share it)
        why = f"no usable anchors: the scale of the latest {remembered.frames} anchored frames"
        if coast:
            bases = restrict(family, -1, why)
            design = anchor_design(bases, clean, self.config.noise_rel)
            weights = np.array([scale, 0.0])  # scale only: the constant map's weight, then the shift, pinned at 0
            cov = np.diag([(remembered.log_std * scale) ** 2, (1e-6 * scale) ** 2])
        else:
            weights = np.asarray(fit.weights, np.float64).copy()
            weights[design.scale_index] = scale
            cov = np.asarray(fit.covariance, np.float64).copy()
            cov[design.scale_index, :] = cov[:, design.scale_index] = 0.0
            cov[design.scale_index, design.scale_index] = (remembered.log_std * scale) ** 2
        with np.errstate(invalid="ignore"):
            residuals = np.nan_to_num(design.target - design.matrix @ weights)
        inliers = fit.inliers if len(fit.inliers) == len(residuals) else np.zeros(len(residuals), bool)
        reason = why if coast else fit.fallback_reason
        remembered_fit = dataclasses.replace(
            fit, weights=weights, covariance=cov, residuals=residuals, inliers=inliers, fallback_reason=reason
        )
        return bases, design, remembered_fit

    def _state_predicts_worse(self) -> bool:
        """Over the latest frames, the state's prediction erred more at their anchors than scale only (mean
        squared relative error in depth, `_prediction_errors`). Where frames flip between a field and scale only
        (KITTI's own LiDAR: tier 3 and scale only within the selection's tolerance) the state accumulated over
        frames predicts new anchors better than both and stays."""
        if not self._prediction_errors:
            return False
        state, scale_only = np.sum(np.asarray(self._prediction_errors), axis=0)
        return bool(state > scale_only)

    def _stood_alone(self, fit: FitResult, stamp_s: float) -> None:
        """The filter's bookkeeping for a frame published on its own, without a state: anchors that gave a fit
        end coasting (else the coasting flag and its clock stayed as the last frame without anchors left them)."""
        if fit.level is FitLevel.PRIOR:
            self._filter.coast(stamp_s)
        else:
            self._filter.stand_alone(stamp_s)

    def _filter_local(
        self,
        local: LocalCorrection | None,
        local_alone: LocalCorrection | None,
        carried: np.ndarray | None,
        misfit_log_var: float,
        shape: tuple[int, int],
        stamp_s: float,
    ):
        """The local correction through the per-pixel filter. The frame measures the carried correction plus
        what its anchors add to it (innovation form: between sparse anchors the carried detail stays), with
        the anchors' noise plus the added correction's own remaining variance (large far from anchors). The
        published variance stays at least what the frame alone would publish: `local_alone`, the correction's
        variance from the frame's own residuals (not the innovation's, near 0 when the anchors repeat), raised
        to `misfit_log_var`, the anchors' squared log residual under the fitted field."""
        if local is None:
            return self._local_filter.step(shape, stamp_s)
        measured = local.log_ratio if carried is None else carried + local.log_ratio
        noise = np.float32(self.config.noise_rel**2)
        alone = local_alone.with_misfit(misfit_log_var).variance()  # None only with local None
        return self._local_filter.step(shape, stamp_s, measured, local.variance() + noise, alone)

    def _fit_local(self, bases, design, fit: FitResult, anchors: Anchors, raw_design):
        """(correction, the same with its misfit from the raw residuals) from the residuals of `design`'s targets
        under `fit`, or (None, None) with too few anchors left. `raw_design`: the same rows as the frame measured
        them (`design` may be them with a carried correction taken out; `with_own_misfit`); the pair's two are
        one where `design` is `raw_design`."""
        fitted = design.matrix @ fit.weights
        ok = (fitted > 0) & np.isfinite(design.target) & np.isfinite(raw_design.target)
        if ok.sum() < self.config.local.min_anchors:
            return None, None
        log_ratio_all = np.log(design.target[ok] / fitted[ok])
        a = anchors.subset(np.flatnonzero(ok))
        # outliers for the local term: anchors that disagree with their neighbours (misfit of the global field
        # is spatially coherent, a wrong anchor is not)
        keep = neighbour_consistent(a.u, a.v, log_ratio_all, self.config.local.outlier_log, log_g=_log_g_at(bases, a))
        if keep.sum() < self.config.local.min_anchors:
            return None, None
        a = a.subset(np.flatnonzero(keep))
        log_ratio = log_ratio_all[keep]
        fh, fw = bases.full_shape
        h, w = bases.work_shape
        xw = (a.u.astype(np.float64) + 0.5) * (w / fw) - 0.5
        yw = (a.v.astype(np.float64) + 0.5) * (h / fh) - 0.5
        hull = _hull_fraction(xw, yw, (h, w))
        weight, log_g_work = a.weight.astype(np.float64), np.log(bases.inv_rel_work)
        local = local_correction(xw, yw, log_ratio, weight, log_g_work, self.config.local, hull)
        if raw_design is design:
            return local, local
        raw_log_ratio = np.log(raw_design.target[ok][keep] / fitted[ok][keep])
        return local, with_own_misfit(local, xw, yw, raw_log_ratio, weight, self.config.local)


def _raw_ratios(own: BasisSet, anchors: Anchors) -> np.ndarray:
    """The anchors' (1 / depth) / the backbone's raw relative inverse depth (not normalised by the frame's median,
    which moves with the view): a scale in units that frames share (`ScaleMemory`). From the family `own` was
    cut from, whose map is the raw one even where `own` is a depth-affine alignment."""
    family = own.full_family
    return np.exp(-_log_g_at(family, anchors)) / (family.scale_inv_rel * anchors.depth_m.astype(np.float64))


def _prediction_errors(weights: np.ndarray, design: Design) -> tuple[float, float] | None:
    """(the field `weights`', scale only's) mean squared relative depth error at `design`'s anchors, gross
    outliers left out (`gross_outlier_free`); None with fewer than 3 anchors to judge on. Scale only is the
    anchors' own `absrel_scale`: one weight, so its in-sample error is close to a held-out one."""
    y = design.target
    g = design.matrix[:, design.scale_index]  # the constant map times the relative inverse depth
    fitted = design.matrix @ weights
    ok = np.isfinite(y) & (y > 0) & (g > 0) & (fitted > 0)
    if ok.sum() < 3:
        return None
    ratio = y[ok] / g[ok]
    s0 = absrel_scale(ratio)
    if not (np.isfinite(s0) and s0 > 0):
        return None
    good = gross_outlier_free(np.log(ratio / s0))
    field_err = y[ok][good] / fitted[ok][good] - 1.0  # d_fitted / d - 1
    scale_err = ratio[good] / s0 - 1.0
    return float(np.mean(field_err**2)), float(np.mean(scale_err**2))


def _explained(fit: FitResult, why: str) -> FitResult:
    return dataclasses.replace(fit, fallback_reason=why) if why and not fit.fallback_reason else fit


def _with_misfit(design, misfit_log_var: float | None):
    """The anchors' sigma widened by the field's model misfit (relative variance): what the weights cannot
    explain at an anchor is noise to them. The frame's robust scale does this for many anchors; with the
    misfit known from earlier frames a few anchors cannot pull the field onto their local detail."""
    if not misfit_log_var:
        return design
    sigma = np.sqrt(design.sigma**2 + misfit_log_var * design.target**2)
    return dataclasses.replace(design, sigma=sigma)


def _decorrected(design, bases, anchors: Anchors, log_corr: np.ndarray):
    """The anchors' targets (inverse depth) with a local log-depth correction taken out: inv = field * exp(corr)."""
    corr = sample_maps(log_corr[None], anchors.u, anchors.v, bases.full_shape)[:, 0]
    factor = np.exp(-corr)
    return dataclasses.replace(design, target=design.target * factor, sigma=design.sigma * factor)


def _anchor_count_for_tier(tier: int, n_anchors: int, config: BasisConfig) -> int:
    """An anchor count for which `build_bases` builds basis tier `tier` (n_anchors itself when it does)."""
    if tier <= 0:
        return 0
    if tier == tier_for(n_anchors, config):
        return n_anchors
    return int(config.tier_anchors[min(tier, len(config.tier_anchors)) - 1])


def _name_index(old: tuple[str, ...], new: tuple[str, ...]) -> np.ndarray:
    """For each weight of the `new` family (bases, then the shift), its index in the `old` one or -1."""
    where = {name: i for i, name in enumerate(old)}
    idx = [where.get(name, -1) for name in new]
    return np.asarray([*idx, len(old)], np.int64)  # the shift is last in both


def _innovation(
    predicted: Prior, frame_fit: FitResult, frame_prior: Prior, design, anchors: Anchors, shape: tuple[int, int]
) -> tuple[float, int]:
    """NIS of the frame's anchors against the predicted state, in weight space, and its degrees of freedom.

    Over the frame's inlier anchors: y = target - A w_pred, S = A P_pred A^T + R, NIS_anchors = y^T S^-1 y
    (by the Woodbury identity: K x K solves). R is each anchor's sigma^2 scaled by the frame's own residual
    variance per residual degree of freedom (its model misfit, at least 1), so the part of NIS_anchors that
    no weights could explain is (anchors - p), p the parameters the frame's own fit spent. The rest,
    NIS_anchors - (anchors - p) with p degrees of freedom, is how far the prediction is from what this frame
    says about the weights: about 1 per degree of freedom when they agree, far above when the scene changed.
    R is further scaled by the misfit's design effect (`_misfit_design_effect`, at least 1): misfit shared by
    neighbouring anchors moves the frame's weights by more than independent errors would, and the next
    frame's anchors sample it elsewhere.
    """
    keep = frame_fit.inliers & np.isfinite(design.target) & (design.sigma > 0)
    n = int(keep.sum())
    if n == 0:
        return 0.0, 0
    a = design.matrix[keep]
    sigma = design.sigma[keep]
    # parameters the frame's fit spent: trace of its hat matrix = K - tr(C_prior^-1 C_post)
    try:
        p_eff = len(frame_fit.weights) - float(np.trace(np.linalg.solve(frame_prior.covariance, frame_fit.covariance)))
    except np.linalg.LinAlgError:
        p_eff = float(len(frame_fit.weights))
    dof_resid = n - p_eff
    if dof_resid < 1.0 or p_eff < 0.5:
        return 0.0, 0  # the frame's anchors are all spent on its own fit: nothing left to judge with
    own = frame_fit.residuals[keep] / sigma
    misfit = max(float(own @ own) / dof_resid, 1.0)
    u, v = anchors.u[keep], anchors.v[keep]
    effect = _misfit_design_effect(a / sigma[:, None], own, u, v, shape, frame_fit.covariance, misfit)
    r_inv = 1.0 / (sigma**2 * misfit * effect)
    y = design.target[keep] - a @ predicted.mean
    b = a.T @ (r_inv * y)
    try:
        m = np.linalg.inv(predicted.covariance) + (a * r_inv[:, None]).T @ a
        nis_anchors = float(y @ (r_inv * y) - b @ np.linalg.solve(m, b))
    except np.linalg.LinAlgError:
        return float("inf"), 1
    dof = max(int(round(p_eff)), 1)
    return max(nis_anchors - dof_resid / effect, 0.0), dof


_MISFIT_CLUSTER_GRID = 8  # the design effect's clusters: cells of an 8 x 8 grid over the image


def _misfit_design_effect(rows, residuals, u, v, shape: tuple[int, int], covariance, misfit: float) -> float:
    """How much more the weights vary than independent anchor errors say: the clustered sandwich over cells of
    a grid against the model-based information, in the metric of the fit's covariance C (unit-free),
    tr(C sum_g t_g t_g^T) / (misfit tr(C A^T A)), t_g the score sum_{i in g} a_i e_i of cell g; at least 1.
    `rows` A and `residuals` e are whitened by the anchors' sigma. The field's misfit is spatially coherent
    (an object the bases cannot follow), so anchors of one cell err together; independent errors give ~1,
    KITTI's LiDAR-line anchors several times that (with it, a static street with fresh scan lines every
    frame no longer resets the filter every few frames)."""
    h, w = shape
    g = _MISFIT_CLUSTER_GRID
    cell = np.clip((v * g / h).astype(np.int64), 0, g - 1) * g + np.clip((u * g / w).astype(np.int64), 0, g - 1)
    k = rows.shape[1]
    scores = rows * residuals[:, None]
    # all cells' score sums in one bincount: bin (cell, column)
    bins = (cell[:, None] * k + np.arange(k)).ravel()
    t = np.bincount(bins, weights=scores.ravel(), minlength=g * g * k).reshape(g * g, k)
    clustered = float(np.sum((t @ covariance) * t))
    model = misfit * float(np.sum((rows @ covariance) * rows))
    return max(clustered / model, 1.0) if model > 0 and np.isfinite(clustered) else 1.0


def _log_g_at(bases, anchors: Anchors) -> np.ndarray:
    h, w = bases.full_shape
    col = np.clip(np.round(anchors.u).astype(np.int64), 0, w - 1)
    row = np.clip(np.round(anchors.v).astype(np.int64), 0, h - 1)
    return np.log(bases.inv_rel[row, col].astype(np.float64))


def _misfit_log_var(design, fit: FitResult) -> float:
    no_fit = fit.level is FitLevel.PRIOR
    return float(misfit_log_var(NUMPY, design.matrix, design.target, fit.weights, fit.inliers, no_fit))


def _hull_fraction(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> float:
    """Fraction of the image inside the anchors' bounding box (cheap stand-in for the hull's area)."""
    h, w = shape
    if len(x) < 2:
        return 1.0
    return float(max((np.ptp(x) + 1) * (np.ptp(y) + 1) / (h * w), 1e-3))


def warm_up(config: PipelineConfig | None = None) -> float:
    """Run the scale field once on a small synthetic frame (anchors from points, analytic bases, cross-validated
    tier, local correction), so that numba compiles the anchors', solver's and bases' kernels, or loads them
    from its cache, here rather than on the first real frame: ~10-20 s once on a fresh install, ~0.1 s after.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    cfg = config or PipelineConfig()
    cfg = dataclasses.replace(
        cfg, filter=FilterConfig(enabled=False), basis=dataclasses.replace(cfg.basis, source="analytic")
    )
    h, w = 48, 64
    rows, cols = np.mgrid[0:h, 0:w]
    rel = (1.0 + rows / h + 0.3 * np.sin(cols / 7.0)).astype(np.float32)
    feats = np.stack([np.sin(cols / (3.0 + i)) * np.cos(rows / (5.0 + i)) for i in range(8)]).astype(np.float32)
    out = BackboneOutput(rel, DepthKind.DEPTH, True, {"warm_up": feats})
    pick = np.random.default_rng(0).choice(h * w, 80, replace=False)
    depth = np.sqrt(cfg.min_depth_m * cfg.max_depth_m) * rel.ravel()[pick] / float(rel.mean())
    depth = np.clip(depth, cfg.min_depth_m * 1.01, cfg.max_depth_m * 0.99)
    # the anchors as a point cloud through the deskew blend (identity knots) and `anchors_from_points`, so
    # that their kernels compile here too
    camera = Intrinsics(float(w), float(w), w / 2.0, h / 2.0, w, h)
    x, y = (pick % w - camera.cx) / camera.fx, (pick // w - camera.cy) / camera.fy
    points = np.stack([x * depth, y * depth, depth], axis=1)
    points = transform_at_times(points, np.zeros(len(points)), np.array([0.0, 1.0]), np.stack([np.eye(4)] * 2))
    anchors = anchors_from_points(points, np.eye(4), camera, cfg.min_depth_m, cfg.max_depth_m)
    Pipeline(None, cfg).process_output(out, anchors)
    return time.perf_counter() - t0


def benchmark_input(
    out: BackboneOutput | None = None, n_anchors: int = 1000, seed: int = 0
) -> tuple[BackboneOutput, Anchors]:
    """The scale-field benchmarks' frame and anchors (numpy and torch stages time the same input).

    The frame is NYU's first (the benchmarks' input image). Without `out`: its ground truth blurred into a relative
    map, with features taken from its image, so only shared/data is needed. Anchors: `n_anchors` pixels of its
    metric ground truth (resized to `out`'s size) with 10 % multiplicative noise; not the backbone's own output,
    which for Depth Anything is inverse depth in arbitrary units (anchors of 1e-5 m, all dropped by the range).
    """
    import cv2

    rng = np.random.default_rng(seed)
    frame = _benchmark_frame()
    gt = frame.depth_m
    if out is None:
        rel = cv2.GaussianBlur(np.where(gt > 0, gt, np.median(gt[gt > 0])), (0, 0), 6).astype(np.float32)
        feats = cv2.resize(frame.rgb, (56, 56), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        feats = np.concatenate([feats, np.stack([cv2.resize(rel, (56, 56))] * 5, -1)], axis=-1)
        out = BackboneOutput(rel, DepthKind.DEPTH, True, {"bench": np.ascontiguousarray(feats.transpose(2, 0, 1))})
    h, w = out.shape
    truth = gt if gt.shape == (h, w) else cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST)
    flat = np.flatnonzero(truth.ravel() > 0)
    pick = rng.choice(flat, size=min(n_anchors, flat.size), replace=False)
    rows, cols = np.divmod(pick, w)
    return out, Anchors.from_arrays(cols, rows, truth.ravel()[pick] * rng.uniform(0.9, 1.1, len(pick)))


@functools.lru_cache(maxsize=1)
def _benchmark_frame():
    """NYU's first frame, read once per process (the one-core child builds a benchmark input per repeat)."""
    from .datasets import load_dataset, shared_root

    return load_dataset(shared_root() / "data" / "nyu").frame(0)


def benchmark_scale_field(
    out: BackboneOutput | None = None,
    n_anchors: int = 1000,
    repeats: int = 30,
    config: PipelineConfig | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Median milliseconds of the scale-field stage (bases, solve, compose, uncertainty) for one frame.

    The frame and anchors are `benchmark_input(out, n_anchors, seed)`. Returns per-stage medians and
    `scale_field` (their sum).
    """
    out, anchors = benchmark_input(out, n_anchors, seed)
    cfg = config or PipelineConfig(max_depth_m=10.0)
    used = benchmark_anchors_used(out, anchors, cfg.min_depth_m, cfg.max_depth_m)
    pipe = Pipeline(None, cfg)
    samples = []
    for _ in range(repeats + 2):
        r = pipe.process_output(out, anchors)
        samples.append((r.timings_ms.bases, r.timings_ms.solve, r.timings_ms.compose))
    return stage_report(np.array(samples[2:]), used, out.shape)


def benchmark_filtered(
    out: BackboneOutput | None = None, n_anchors: int = 1000, repeats: int = 30, config: PipelineConfig | None = None
) -> dict[str, list[float]]:
    """The stage as the node runs it: the benchmark frame as a 30 Hz stream through the temporal filter, its
    anchors drawn afresh each frame (`benchmark_input` seeds 0, 1, ...). Returns per-frame milliseconds of the
    whole stage ("scale_field_filtered": bases, solve, filter, compose) and of the filter's share of it
    ("filter"); the first two frames (the filter's birth) are not timed."""
    cfg = dataclasses.replace(config or PipelineConfig(max_depth_m=10.0), filter=FilterConfig(enabled=True))
    pipe = Pipeline(None, cfg)
    stage, filt = [], []
    for i in range(repeats + 2):
        frame_out, anchors = benchmark_input(out, n_anchors, seed=i)
        benchmark_anchors_used(frame_out, anchors, cfg.min_depth_m, cfg.max_depth_m)
        t = pipe.process_output(frame_out, anchors, stamp_s=i / 30.0).timings_ms
        if i >= 2:
            stage.append(t.bases + t.solve + t.filter + t.compose)
            filt.append(t.filter)
    return {"scale_field_filtered": stage, "filter": filt}


def benchmark_anchors_used(out: BackboneOutput, anchors: Anchors, min_depth_m: float, max_depth_m: float) -> int:
    """How many of the benchmark's anchors the stage uses; ValueError when the range drops any (the report would
    label a run on fewer anchors with the count asked for)."""
    h, w = out.shape
    used = len(anchors.sanitized(w, h, min_depth_m, max_depth_m))
    if used < len(anchors):
        raise ValueError(f"only {used} of the {len(anchors)} benchmark anchors are in range: the stage would not run")
    return used


def stage_report(samples_ms: np.ndarray, n_anchors: int, shape_hw: tuple[int, int]) -> dict[str, float]:
    """A scale-field benchmark's report from its timed calls (rows of bases, solve, compose milliseconds):
    per-stage medians, `scale_field` (median of the sums) and the input's anchor count and size."""
    med = np.median(samples_ms, axis=0)
    return {
        "bases": float(med[0]),
        "solve": float(med[1]),
        "compose": float(med[2]),
        "scale_field": float(np.median(samples_ms.sum(axis=1))),
        "n_anchors": float(n_anchors),
        "width": float(shape_hw[1]),
        "height": float(shape_hw[0]),
    }
