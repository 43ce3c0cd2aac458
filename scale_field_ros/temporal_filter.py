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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .solver import FitResult, Prior


@dataclass(frozen=True)
class FilterConfig:
    """Settings of `WeightFilter`.

    process_noise: std of the weights' random walk after one second, as a fraction of the initial prior's std
        (variance grows linearly in time).
    max_coast_s: coasting longer than this is reported (`coast_exceeded`) on diagnostics and confidence.
    reset_nis_threshold: reset when NIS / dof exceeds this (a consistent filter has NIS / dof near 1).
    enabled: off by default so evaluation treats frames independently.
    backwards_tolerance_s: a stamp older than the last one by more than this resets (bag looped, clock reset);
        smaller reorderings are treated as dt = 0.
    """

    process_noise: float = 0.02
    max_coast_s: float = 2.0
    reset_nis_threshold: float = 25.0
    enabled: bool = False
    backwards_tolerance_s: float = 0.5

    def __post_init__(self) -> None:
        if not (np.isfinite(self.process_noise) and self.process_noise >= 0):
            raise ValueError(f"process_noise must be finite and >= 0, got {self.process_noise}")
        if not (np.isfinite(self.max_coast_s) and self.max_coast_s > 0):
            raise ValueError(f"max_coast_s must be finite and > 0, got {self.max_coast_s}")
        if not (self.reset_nis_threshold > 0):
            raise ValueError(f"reset_nis_threshold must be > 0 (inf disables resets), got {self.reset_nis_threshold}")
        if not (np.isfinite(self.backwards_tolerance_s) and self.backwards_tolerance_s >= 0):
            raise ValueError(f"backwards_tolerance_s must be finite and >= 0, got {self.backwards_tolerance_s}")


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

    @property
    def coast_exceeded(self) -> bool:
        """Coasting for longer than `max_coast_s`."""
        return self.coasting and self.coast_duration_s > self.config.max_coast_s

    def _process_covariance(self, k: int, dt_s: float) -> np.ndarray:
        ref = self._reference_cov
        if ref is None or ref.shape != (k, k):
            ref = np.eye(k)
        return ref * (self.config.process_noise**2 * dt_s)

    def _check_backwards(self, stamp_s: float) -> None:
        if self._stamp_s is not None and stamp_s < self._stamp_s - self.config.backwards_tolerance_s:
            self.reset(f"stamp went backwards by {self._stamp_s - stamp_s:.3f} s")

    def predict(self, stamp_s: float, initial: Prior) -> Prior:
        """Predicted state at `stamp_s`; `initial` on the first frame, after a reset, or on a size change."""
        self._check_backwards(stamp_s)
        self._reference_cov = np.asarray(initial.covariance, np.float64)
        if self.state is None or self.state.mean.shape != np.shape(initial.mean):
            return initial
        dt = max(0.0, stamp_s - self._stamp_s)
        k = len(self.state.mean)
        return Prior(self.state.mean.copy(), self.state.covariance + self._process_covariance(k, dt))

    def update(self, fit: FitResult, stamp_s: float) -> None:
        """Take the frame's posterior (solved toward `predict`'s prior) as the new state."""
        self._check_backwards(stamp_s)
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
        self._check_backwards(stamp_s)
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

    def should_reset(self, innovation_nis: float, dof: int) -> bool:
        """True when the innovation is too large for the predicted uncertainty: the scene changed."""
        if self.state is None or dof <= 0:
            return False
        if not np.isfinite(innovation_nis):
            return True
        return innovation_nis / dof > self.config.reset_nis_threshold

    def reset(self, reason: str = "reset requested") -> None:
        """Forget the state; the next `predict` returns the caller's initial prior."""
        self.state = None
        self._stamp_s = None
        self._last_update_s = None
        self.coasting = False
        self.coast_duration_s = 0.0
        self.last_reset_reason = reason
        self.n_resets += 1
