"""Kalman-type temporal filter on the scale-field weights.

Model: the K weights follow a random walk, w_t = w_{t-dt} + q, q ~ N(0, process_noise^2 * dt * P0), with P0
the covariance of the caller's initial prior: the walk is a fraction of the prior's own spread per sqrt(second),
so it is unit-free (the weights are metric inverse depth: indoor and driving scenes differ by 10x) and each
weight wanders in proportion to how uncertain it is a priori.
The measurement update is the per-frame ridge solve toward the predicted state (`Prior`): a weighted
least-squares fit regularised toward a Gaussian prior is exactly a Kalman update with that prior as the
predicted state, so this module only predicts, stores the posterior and decides when to coast or reset;
the update formula lives once, in the solver.

Frames without usable anchors coast: the state is carried forward and its covariance keeps growing, so
the published confidence widens the longer there is no evidence. A measurement that disagrees with the
prediction far beyond its uncertainty (normalised innovation squared, NIS) means the scene changed (a
cut, a bag jumping); so does a stamp going backwards. Both reset to the caller's initial prior.
When the basis family changes (more anchors allow a richer one) `remap` carries the weights by name.

`ScaleMemory` remembers the scale of the frames that stand alone, without a state (their anchors support scale
only: few, or clustered like VIO corners), so that those frames are smoothed and frames without anchors coast on it.

`CorrectionFilter` does the same per pixel for the pipeline's local log-depth correction (image space,
working resolution): the local correction interpolates each frame's anchor residuals, so without it every
frame's anchor noise would reach the output unfiltered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .solver import FitResult, Prior
from .tier_selection import absrel_scale


@dataclass(frozen=True)
class FilterConfig:
    """Settings of `WeightFilter`.

    process_noise: std of the weights' random walk after one second, as a fraction of the initial prior's std
        (variance grows linearly in time).
    max_coast_s: coasting longer than this is reported (`coast_exceeded`) on diagnostics and confidence.
    reset_nis_threshold: reset when NIS / dof exceeds this on one frame, or summed over the last three frames
        with anchors (a consistent filter has NIS / dof near 1).
    enabled: off by default so evaluation treats frames independently.
    backwards_tolerance_s: a stamp older than the last one by more than this resets (bag looped, clock reset);
        smaller reorderings are treated as dt = 0.
    local_process_noise: std of the local log-depth correction's random walk after one second (per pixel, in
        log depth); it also absorbs the small image motion between frames, since that state lives in pixels.
    """

    process_noise: float = 0.02
    max_coast_s: float = 2.0
    reset_nis_threshold: float = 25.0
    enabled: bool = False
    backwards_tolerance_s: float = 0.5
    local_process_noise: float = 0.05

    def __post_init__(self) -> None:
        if not (np.isfinite(self.process_noise) and self.process_noise >= 0):
            raise ValueError(f"process_noise must be finite and >= 0, got {self.process_noise}")
        if not (np.isfinite(self.max_coast_s) and self.max_coast_s > 0):
            raise ValueError(f"max_coast_s must be finite and > 0, got {self.max_coast_s}")
        if not (self.reset_nis_threshold > 0):
            raise ValueError(f"reset_nis_threshold must be > 0 (inf disables resets), got {self.reset_nis_threshold}")
        if not (np.isfinite(self.backwards_tolerance_s) and self.backwards_tolerance_s >= 0):
            raise ValueError(f"backwards_tolerance_s must be finite and >= 0, got {self.backwards_tolerance_s}")
        if not (np.isfinite(self.local_process_noise) and self.local_process_noise >= 0):
            raise ValueError(f"local_process_noise must be finite and >= 0, got {self.local_process_noise}")


def weight_nis(predicted: Prior, measurement_mean: np.ndarray, measurement_covariance: np.ndarray) -> float:
    """Normalised innovation squared of a weight-space measurement against the predicted state.

    y = z - w_pred, S = P_pred + R, NIS = y^T S^-1 y; chi-square with K degrees of freedom when consistent.
    """
    y = np.asarray(measurement_mean, np.float64) - np.asarray(predicted.mean, np.float64)
    S = np.asarray(predicted.covariance, np.float64) + np.asarray(measurement_covariance, np.float64)
    try:
        return float(y @ np.linalg.solve(S, y))
    except np.linalg.LinAlgError:
        return float(y @ np.linalg.pinv(S) @ y)


def combine(a: Prior, b: Prior) -> Prior:
    """The product of two independent Gaussian beliefs about the same weights (information form)."""
    info_a = _inverse(a.covariance)
    info_b = _inverse(b.covariance)
    cov = _inverse(info_a + info_b)
    return Prior(cov @ (info_a @ a.mean + info_b @ b.mean), 0.5 * (cov + cov.T))


def _inverse(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    try:
        return np.linalg.inv(m)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(m)


SUSTAINED_FRAMES = 3  # frames over which a smaller, lasting disagreement adds up to a reset


class WeightFilter:
    """Random-walk Kalman filter on the scale-field weights (see module docstring).

    Usage per frame: `prior = f.predict(stamp, initial)`; solve with `prior`; then `f.update(fit, stamp)`
    or, with no usable anchors, `f.coast(stamp)`. Not thread-safe: one pipeline owns one filter.
    """

    def __init__(self, config: FilterConfig | None = None) -> None:
        self.config = config or FilterConfig()
        self.state: Prior | None = None
        self.coasting: bool = False
        self.coast_duration_s: float = 0.0
        self.last_reset_reason: str = ""
        self.n_resets: int = 0
        self._stamp_s: float | None = None  # stamp of `state`
        self._reference_cov: np.ndarray | None = None  # P0 of the latest initial prior: scale of the random walk
        self._last_update_s: float | None = None
        self._recent_nis: list[float] = []  # NIS / dof of the latest frames with anchors

    @property
    def coast_exceeded(self) -> bool:
        """Coasting for longer than `max_coast_s`."""
        return self.coasting and self.coast_duration_s > self.config.max_coast_s

    def _process_covariance(self, k: int, dt_s: float) -> np.ndarray:
        ref = self._reference_cov
        if ref is None or ref.shape != (k, k):
            ref = np.eye(k)
        return ref * (self.config.process_noise**2 * dt_s)

    def check_stamp(self, stamp_s: float) -> str:
        """Reset when `stamp_s` is older than the state by more than the tolerance (bag looped); returns the
        reset's reason, '' when there was none."""
        if self._stamp_s is not None and stamp_s < self._stamp_s - self.config.backwards_tolerance_s:
            reason = f"stamp went backwards by {self._stamp_s - stamp_s:.3f} s"
            self.reset(reason)
            return reason
        return ""

    def predict(self, stamp_s: float, initial: Prior) -> Prior:
        """Predicted state at `stamp_s`; `initial` on the first frame, after a reset, or on a size change."""
        self.check_stamp(stamp_s)
        if self.state is None or self.state.mean.shape != np.shape(initial.mean):
            # the walk's scale is the prior the state was born from: it does not jump with later frames
            self._reference_cov = np.asarray(initial.covariance, np.float64)
            return initial
        dt = max(0.0, stamp_s - self._stamp_s)
        k = len(self.state.mean)
        return Prior(self.state.mean.copy(), self.state.covariance + self._process_covariance(k, dt))

    def update(self, fit: FitResult, stamp_s: float) -> None:
        """Take the frame's posterior (solved toward `predict`'s prior) as the new state."""
        self.check_stamp(stamp_s)
        mean = np.asarray(fit.weights, np.float64)
        cov = np.asarray(fit.covariance, np.float64)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            # never let a broken fit poison the state: treat the frame as one without evidence
            self.coast(stamp_s)
            return
        self.state = Prior(mean.copy(), 0.5 * (cov + cov.T))
        self._stamp_s = stamp_s if self._stamp_s is None else max(stamp_s, self._stamp_s)
        self._last_update_s = self._stamp_s
        self.coasting = False
        self.coast_duration_s = 0.0

    def coast(self, stamp_s: float) -> None:
        """Frame without usable anchors: carry the state forward with growing covariance."""
        self.check_stamp(stamp_s)
        self.coasting = True
        if self._last_update_s is None:  # no evidence yet: count from the first frame without it
            self._last_update_s = stamp_s
        if self.state is None:
            self.coast_duration_s = max(0.0, stamp_s - self._last_update_s)
            self._stamp_s = stamp_s if self._stamp_s is None else max(stamp_s, self._stamp_s)
            return
        dt = max(0.0, stamp_s - self._stamp_s)
        k = len(self.state.mean)
        self.state = Prior(self.state.mean, self.state.covariance + self._process_covariance(k, dt))
        self._stamp_s = max(stamp_s, self._stamp_s)
        self.coast_duration_s = self._stamp_s - self._last_update_s

    def stand_alone(self, stamp_s: float) -> None:
        """A frame whose anchors gave a result that no state is born from (scale only): evidence all the same,
        so coasting ends and its clock restarts here."""
        self.check_stamp(stamp_s)
        self.coasting = False
        self.coast_duration_s = 0.0
        self._stamp_s = stamp_s if self._stamp_s is None else max(stamp_s, self._stamp_s)
        self._last_update_s = self._stamp_s

    def remap(self, old_index: np.ndarray, initial: Prior) -> None:
        """Re-express the state in another parametrisation: new weight i is old weight `old_index[i]`, or, where
        that is -1, a weight the old model held at `initial`'s mean (independent, with `initial`'s variance).

        Used when the basis family grows: the old field is the new one with the added weights at their prior.
        """
        if self.state is None:
            return
        idx = np.asarray(old_index, np.int64)
        have = idx >= 0
        mean = np.asarray(initial.mean, np.float64).copy()
        cov = np.asarray(initial.covariance, np.float64).copy()
        ref = cov.copy()
        cov[np.ix_(have, ~have)] = 0.0
        cov[np.ix_(~have, have)] = 0.0
        ref[np.ix_(have, ~have)] = 0.0
        ref[np.ix_(~have, have)] = 0.0
        mean[have] = self.state.mean[idx[have]]
        cov[np.ix_(have, have)] = self.state.covariance[np.ix_(idx[have], idx[have])]
        if self._reference_cov is not None and self._reference_cov.shape == self.state.covariance.shape:
            ref[np.ix_(have, have)] = self._reference_cov[np.ix_(idx[have], idx[have])]
        self.state = Prior(mean, cov)
        self._reference_cov = ref

    def should_reset(self, innovation_nis: float, dof: int) -> bool:
        """True when the innovation is too large for the predicted uncertainty: the scene changed."""
        if self.state is None or dof <= 0:
            return False
        if not np.isfinite(innovation_nis):
            return True
        return innovation_nis / dof > self.config.reset_nis_threshold

    def innovation_reset(self, innovation_nis: float, dof: int) -> str:
        """Record a frame's innovation; the reason to reset ('' if none): this frame's NIS / dof is above the
        threshold (a cut), or the last `SUSTAINED_FRAMES` frames' NIS / dof add up above it (the state keeps
        disagreeing with the anchors, by less than a cut: a scene change seen by few anchors, or a drift)."""
        if self.state is None or dof <= 0:
            return ""
        threshold = self.config.reset_nis_threshold
        per_dof = innovation_nis / dof if np.isfinite(innovation_nis) else float("inf")
        self._recent_nis.append(per_dof)
        self._recent_nis = self._recent_nis[-SUSTAINED_FRAMES:]
        if self.should_reset(innovation_nis, dof):
            return f"innovation NIS/dof {per_dof:.1f} > {threshold:g}: scene changed"
        if len(self._recent_nis) == SUSTAINED_FRAMES and sum(self._recent_nis) > threshold:
            last = " + ".join(f"{x:.1f}" for x in self._recent_nis)
            return f"innovation NIS/dof over {SUSTAINED_FRAMES} frames {last} > {threshold:g}: the scene changed"
        return ""

    def reset(self, reason: str = "reset requested") -> None:
        """Forget the state; the next `predict` returns the caller's initial prior."""
        self.state = None
        self._recent_nis = []
        self._stamp_s = None
        self._last_update_s = None
        self.coasting = False
        self.coast_duration_s = 0.0
        self.last_reset_reason = reason
        self.n_resets += 1


@dataclass(frozen=True)
class RememberedScale:
    """`ScaleMemory.scale`: the scale of inverse depth over the backbone's raw relative inverse depth, the std of
    its log, and how many frames it pools."""

    raw_scale: float
    log_std: float
    frames: int


class ScaleMemory:
    """The scale of the latest anchored frames, for frames that have no weight state (see module docstring).

    Each anchored frame adds its anchors' ratios (1 / depth) / raw relative inverse depth, against its own map,
    so a moving camera pools as well as a still one; raw units, since each frame's normalised map has its own
    median. The scale is `absrel_scale` of the latest `frames` frames' ratios together (robust, AbsRel-optimal).
    The std of its log is a median's, 1.25 x 1.4826 MAD / sqrt(n) (the spread at least `noise_rel`), grown by
    the random walk `walk_log_std` (log scale per sqrt(second)) since the newest frame: a frame without anchors
    coasts on it, less sure the longer it goes. The newest frame restarts the memory when its own scale
    disagrees with the earlier frames' by more than `reset_nis_threshold` in normalised squared units (a cut,
    another room); a stamp going back by more than `backwards_tolerance_s` empties it.
    """

    def __init__(
        self, walk_log_std: float, noise_rel: float, config: FilterConfig | None = None, frames: int = 5
    ) -> None:
        self.config = config or FilterConfig()
        self.walk_log_std = float(walk_log_std)
        self.noise_rel = float(noise_rel)  # the anchors' own noise: the floor of a frame's spread (one anchor: 0)
        self.frames = int(frames)
        self._ratios: list[np.ndarray] = []  # oldest first
        self._stamps: list[float] = []

    def __len__(self) -> int:
        return len(self._ratios)

    def clear(self) -> None:
        self._ratios, self._stamps = [], []

    def _clear_if_back(self, stamp_s: float) -> None:
        if self._stamps and stamp_s < self._stamps[-1] - self.config.backwards_tolerance_s:
            self.clear()  # another timeline (a bag looped)

    def add(self, stamp_s: float, raw_ratio: np.ndarray) -> None:
        """Remember one anchored frame's ratios (non-finite and non-positive ones are dropped; none left: no frame)."""
        self._clear_if_back(stamp_s)
        r = np.asarray(raw_ratio, np.float64)
        r = r[np.isfinite(r) & (r > 0)]
        if r.size == 0:
            return
        self._ratios = [*self._ratios, r][-self.frames :]
        self._stamps = [*self._stamps, float(stamp_s)][-self.frames :]

    def scale(self, stamp_s: float) -> RememberedScale | None:
        """The remembered scale at `stamp_s`, None when no frame is remembered (or a stamp went far back)."""
        self._clear_if_back(stamp_s)
        if not self._ratios:
            return None
        if len(self._ratios) > 1:
            newest = _pooled_scale(self._ratios[-1:], self.noise_rel)
            earlier = _pooled_scale(self._ratios[:-1], self.noise_rel)
            step = self.walk_log_std**2 * max(0.0, self._stamps[-1] - self._stamps[-2])
            gap = (np.log(newest[0]) - np.log(earlier[0])) ** 2 / (newest[1] ** 2 + earlier[1] ** 2 + step)
            if not gap <= self.config.reset_nis_threshold:
                self._ratios, self._stamps = self._ratios[-1:], self._stamps[-1:]
        raw_scale, log_std = _pooled_scale(self._ratios, self.noise_rel)
        coast_s = max(0.0, stamp_s - self._stamps[-1])
        log_std = float(np.sqrt(log_std**2 + self.walk_log_std**2 * coast_s))
        return RememberedScale(raw_scale, log_std, len(self._ratios))


def _pooled_scale(ratios: list[np.ndarray], noise_rel: float) -> tuple[float, float]:
    """(absrel_scale, the std of its log) of the ratios of some frames together; their spread is at least
    `noise_rel`, the anchors' assumed noise. The std is that of one frame's worth of them: the frames' anchors
    are mostly the same points (VIO landmarks, one LiDAR scan for three camera frames), so pooling them steadies
    the scale but is no more evidence than one frame."""
    r = np.concatenate(ratios) if len(ratios) > 1 else ratios[0]
    s = absrel_scale(r)
    spread = max(1.4826 * float(np.median(np.abs(np.log(r) - np.log(s)))), noise_rel)
    return s, 1.2533 * spread / np.sqrt(r.size / len(ratios))


@dataclass(frozen=True)
class FilteredCorrection:
    """The filtered local log-depth correction at working resolution and its variance (what `compose` uses)."""

    log_ratio: np.ndarray  # h x w float32
    var: np.ndarray  # h x w float32, log-depth variance of the corrected depth beyond the weights' own

    def variance(self) -> np.ndarray:
        return self.var


class CorrectionFilter:
    """Per-pixel random-walk Kalman filter on the local log-depth correction (see module docstring).

    Per frame: `step(shape, stamp_s, measurement, measurement_var, floor_var)` with the frame's working shape,
    its correction, the correction's variance as a measurement and the frame's own remaining variance (predict,
    then update), or `step(shape, stamp_s)` to coast. The published variance is the Kalman variance but never below
    the latest frame's own remaining variance (grown while coasting): the misfit between anchors is the same
    from frame to frame, so averaging frames does not shrink it the way the Kalman variance assumes.
    The state lives in image space, so it assumes the image moves little between frames;
    `local_process_noise` bounds how long a correction is kept.
    """

    def __init__(self, config: FilterConfig | None = None) -> None:
        self.config = config or FilterConfig()
        self.log_ratio: np.ndarray | None = None
        self.var: np.ndarray | None = None
        self.floor: np.ndarray | None = None
        self._stamp_s: float | None = None

    def reset(self) -> None:
        self.log_ratio = None
        self.var = None
        self.floor = None
        self._stamp_s = None

    def current(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The carried correction (the random walk predicts no change) if there is one of this shape."""
        if self.log_ratio is None or self.log_ratio.shape != tuple(shape):
            return None
        return self.log_ratio

    def step(
        self,
        shape: tuple[int, int],
        stamp_s: float,
        measurement: np.ndarray | None = None,
        measurement_var: np.ndarray | None = None,
        floor_var: np.ndarray | None = None,
    ) -> FilteredCorrection | None:
        """The filtered correction at `stamp_s` for a frame of working shape `shape`, or None while nothing of
        that shape was measured."""
        if self.log_ratio is not None and self.log_ratio.shape != tuple(shape):
            self.reset()  # another image size: the pixels no longer correspond, also for a frame that coasts
        if self.log_ratio is not None:
            dt = max(0.0, stamp_s - self._stamp_s) if self._stamp_s is not None else 0.0
            growth = np.float32(self.config.local_process_noise**2 * dt)
            self.var = self.var + growth
            self.floor = self.floor + growth
        if measurement is not None:
            z = np.nan_to_num(np.asarray(measurement, np.float32))
            r = np.maximum(np.nan_to_num(np.asarray(measurement_var, np.float32), nan=1.0, posinf=1.0), 1e-8)
            floor = r if floor_var is None else np.nan_to_num(np.asarray(floor_var, np.float32), nan=1.0, posinf=1.0)
            self.floor = floor.copy()
            if self.log_ratio is None:
                self.log_ratio, self.var = z.copy(), r.copy()
            else:
                gain = self.var / (self.var + r)
                self.log_ratio = self.log_ratio + gain * (z - self.log_ratio)
                self.var = (1.0 - gain) * self.var
        self._stamp_s = stamp_s if self._stamp_s is None else max(stamp_s, self._stamp_s)
        if self.log_ratio is None:
            return None
        published = np.maximum(self.var, self.floor)
        return FilteredCorrection(self.log_ratio.astype(np.float32), published.astype(np.float32))
