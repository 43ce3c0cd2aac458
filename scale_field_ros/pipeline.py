"""One frame in, metric depth out: backbone -> bases -> robust solve (-> temporal filter) -> compose.

The ROS node, the CLI and the bag runner all call `Pipeline.process`; evaluation calls
`Pipeline.process_output` to reuse one backbone pass across anchor draws.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .anchors import Anchors
from .backbone import Backbone, BackboneOutput
from .bases import BasisConfig, build_bases
from .field import PriorConfig, anchor_design, compose, loose_prior, prior_around
from .residual_grid import LocalConfig, local_correction, neighbour_consistent
from .solver import FitLevel, FitResult, SolverConfig, solve

try:  # the temporal filter lands from another branch; without it frames are independent
    from .temporal_filter import FilterConfig, WeightFilter
except ImportError:  # pragma: no cover - depends on merge order
    FilterConfig = None  # type: ignore[assignment,misc]
    WeightFilter = None  # type: ignore[assignment,misc]


def _default_filter_config():
    if FilterConfig is None:
        return None
    cfg = FilterConfig()
    return dataclasses.replace(cfg, enabled=False) if hasattr(cfg, "enabled") else cfg


@dataclass(frozen=True)
class PipelineConfig:
    min_depth_m: float = 0.1
    max_depth_m: float = 80.0
    noise_rel: float = 0.02  # assumed relative std of anchor depth
    basis: BasisConfig = field(default_factory=BasisConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    filter: Any = field(default_factory=_default_filter_config)

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
        sections = {"basis": BasisConfig, "solver": SolverConfig, "prior": PriorConfig, "local": LocalConfig}
        if FilterConfig is not None:
            sections["filter"] = FilterConfig
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
    depth_m: np.ndarray
    std_m: np.ndarray
    scale_field: np.ndarray
    backbone: BackboneOutput
    fit: FitResult
    coasting: bool
    timings_ms: StageTimings
    basis_signature: str = ""
    anchors_used: Anchors | None = None


class Pipeline:
    def __init__(self, backbone: Backbone | None, config: PipelineConfig | None = None, bases_fn=None):
        self.backbone = backbone
        self.config = config or PipelineConfig()
        # (BackboneOutput, BasisConfig, n_anchors) -> BasisSet: analytic by default, or basis_head.LearnedBases
        self.bases_fn = bases_fn or build_bases
        self._filter = None
        self._signature = ""
        self.reset()

    def reset(self) -> None:
        cfg = self.config.filter
        self._filter = WeightFilter(cfg) if (WeightFilter is not None and cfg is not None) else None
        self._signature = ""

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
        bases = self.bases_fn(out, cfg.basis, len(clean), clean)
        t1 = time.perf_counter()

        design = anchor_design(bases, clean, cfg.noise_rel)
        # global alignment first (the scale-shift rung from a loose prior), then the field around it
        ga = solve(design, loose_prior(bases, cfg.prior), cfg.solver, FitLevel.SCALE_SHIFT)
        prior = prior_around(bases, ga.weights[0], ga.weights[-1], cfg.prior)
        if bases.constant_relative:
            prior_level, why = FitLevel.SCALE, "relative depth is constant: scale only"
        else:
            prior_level, why = FitLevel.FULL, ""
        coasting = False
        use_filter = stamp_s is not None and self._filter is not None and getattr(cfg.filter, "enabled", False)
        t_filter = 0.0
        if use_filter:
            tf = time.perf_counter()
            if bases.signature != self._signature:
                self._filter.reset()
                self._signature = bases.signature
            prior = self._filter.predict(stamp_s, prior)
            t_filter += time.perf_counter() - tf
        fit = solve(design, prior, cfg.solver, prior_level)
        if why and not fit.fallback_reason:
            fit = dataclasses.replace(fit, fallback_reason=why)
        if fit.level is FitLevel.PRIOR and ga.level is not FitLevel.PRIOR and not use_filter:
            fit = dataclasses.replace(ga, fallback_reason=fit.fallback_reason or "field fit failed")
        local = None
        if cfg.local.enabled and fit.level is FitLevel.FULL and fit.n_anchors >= cfg.local.min_anchors:
            local = self._fit_local(bases, design, fit, clean)
        t2 = time.perf_counter()
        if use_filter:
            tf = time.perf_counter()
            if fit.level is FitLevel.PRIOR:
                self._filter.coast(stamp_s)
            else:
                self._filter.update(fit, stamp_s)
            coasting = bool(getattr(self._filter, "coasting", False))
            t_filter += time.perf_counter() - tf
        misfit = _misfit_log_var(design, fit)
        est = compose(bases, fit.weights, fit.covariance, cfg.min_depth_m, cfg.max_depth_m, local, misfit)
        t3 = time.perf_counter()
        timings = StageTimings(
            backbone=backbone_ms,
            bases=(t1 - t0) * 1e3,
            solve=(t2 - t1) * 1e3 - t_filter * 1e3,
            compose=(t3 - t2) * 1e3,
            filter=t_filter * 1e3,
            total=backbone_ms + (t3 - t0) * 1e3,
        )
        return PipelineResult(
            est.depth_m, est.std_m, est.scale_field, out, fit, coasting, timings, bases.signature, clean
        )

    def _fit_local(self, bases, design, fit: FitResult, anchors: Anchors):
        fitted = design.matrix @ fit.weights
        ok = (fitted > 0) & np.isfinite(design.target)
        if ok.sum() < self.config.local.min_anchors:
            return None
        log_ratio_all = np.log(design.target[ok] / fitted[ok])
        a = anchors.subset(np.flatnonzero(ok))
        # outliers for the local term: anchors that disagree with their neighbours (misfit of the global field
        # is spatially coherent, a wrong anchor is not)
        keep = neighbour_consistent(a.u, a.v, log_ratio_all, self.config.local.outlier_log, log_g=_log_g_at(bases, a))
        if keep.sum() < self.config.local.min_anchors:
            return None
        a = a.subset(np.flatnonzero(keep))
        log_ratio = log_ratio_all[keep]
        fh, fw = bases.full_shape
        h, w = bases.work_shape
        xw = (a.u.astype(np.float64) + 0.5) * (w / fw) - 0.5
        yw = (a.v.astype(np.float64) + 0.5) * (h / fh) - 0.5
        hull = _hull_fraction(xw, yw, (h, w))
        return local_correction(
            xw, yw, log_ratio, a.weight.astype(np.float64), np.log(bases.inv_rel_work), self.config.local, hull
        )


def _log_g_at(bases, anchors: Anchors) -> np.ndarray:
    h, w = bases.full_shape
    col = np.clip(np.round(anchors.u).astype(np.int64), 0, w - 1)
    row = np.clip(np.round(anchors.v).astype(np.int64), 0, h - 1)
    return np.log(bases.inv_rel[row, col].astype(np.float64))


def _misfit_log_var(design, fit: FitResult) -> float:
    if fit.level is FitLevel.PRIOR or not fit.inliers.any():
        return 0.25  # no evidence: a broad relative uncertainty
    keep = fit.inliers
    fitted = design.matrix[keep] @ fit.weights
    ok = fitted > 0
    if not ok.any():
        return 0.25
    return float(np.mean(np.log(design.target[keep][ok] / fitted[ok]) ** 2))


def _hull_fraction(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> float:
    """Fraction of the image inside the anchors' bounding box (cheap stand-in for the hull's area)."""
    h, w = shape
    if len(x) < 2:
        return 1.0
    return float(max((np.ptp(x) + 1) * (np.ptp(y) + 1) / (h * w), 1e-3))


def benchmark_scale_field(
    out: BackboneOutput | None = None,
    n_anchors: int = 1000,
    repeats: int = 30,
    config: PipelineConfig | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Median milliseconds of the scale-field stage (bases, solve, compose, uncertainty) for one frame.

    Without `out`, uses a 640x480 NYU frame's ground truth blurred into a relative map with features taken
    from its image, so it needs only shared/data. Returns per-stage medians and `scale_field` (their sum).
    """
    import cv2

    rng = np.random.default_rng(seed)
    if out is None:
        from .backbone import DepthKind
        from .datasets import load_dataset, shared_root

        frame = load_dataset(shared_root() / "data" / "nyu").frame(0)
        gt = frame.depth_m
        rel = cv2.GaussianBlur(np.where(gt > 0, gt, np.median(gt[gt > 0])), (0, 0), 6).astype(np.float32)
        feats = cv2.resize(frame.rgb, (56, 56), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        feats = np.concatenate([feats, np.stack([cv2.resize(rel, (56, 56))] * 5, -1)], axis=-1)
        out = BackboneOutput(rel, DepthKind.DEPTH, True, {"bench": np.ascontiguousarray(feats.transpose(2, 0, 1))})
        truth = gt
    else:
        truth = np.where(np.isfinite(out.relative), out.relative, 0)
    h, w = out.shape
    flat = np.flatnonzero(truth.ravel() > 0)
    pick = rng.choice(flat, size=min(n_anchors, flat.size), replace=False)
    rows, cols = np.divmod(pick, w)
    anchors = Anchors.from_arrays(cols, rows, truth.ravel()[pick] * rng.uniform(0.9, 1.1, len(pick)))
    pipe = Pipeline(None, config or PipelineConfig(max_depth_m=10.0))
    samples = []
    for _ in range(repeats + 2):
        r = pipe.process_output(out, anchors)
        samples.append((r.timings_ms.bases, r.timings_ms.solve, r.timings_ms.compose))
    arr = np.array(samples[2:])
    med = np.median(arr, axis=0)
    return {
        "bases": float(med[0]),
        "solve": float(med[1]),
        "compose": float(med[2]),
        "scale_field": float(np.median(arr.sum(axis=1))),
        "n_anchors": float(len(anchors)),
        "width": float(w),
        "height": float(h),
    }
