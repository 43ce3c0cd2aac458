"""Time-indexed buffer of anchor point sets (LiDAR scans, VIO landmark sets), queried by image stamp.

Anchors and images arrive at different rates (a 10 Hz LiDAR, a 30 Hz camera) and out of step; every
image takes the sets stamped within `max_age_s` of it. The buffer is bounded in time and count so it
never grows, and it says why it refused or reset on an insert so the caller can warn once per cause.
Thread-safe: ROS subscriptions insert while the inference thread queries.
"""

from __future__ import annotations

import bisect
import enum
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnchorSet:
    """One anchor message: finite Nx3 float32 points in the frame they were published in."""

    stamp_s: float
    points: np.ndarray
    frame_id: str = ""

    def __len__(self) -> int:
        return len(self.points)


class InsertStatus(str, enum.Enum):
    """What `AnchorBuffer.insert` did; everything but OK is worth a (throttled) warning."""

    OK = "ok"
    EMPTY = "empty"  # the set holds no points: not stored
    NO_FINITE_POINTS = "no_finite_points"  # every point has NaN/inf: not stored
    FAR_FUTURE = "far_future"  # stamped far ahead of the reference (latest image): refused
    STAMP_BACKWARDS = "stamp_backwards"  # far older than the newest set: buffer cleared, then stored
    INVALID_STAMP = "invalid_stamp"  # NaN/inf stamp: refused


class AnchorBuffer:
    """Anchor sets sorted by stamp; `query(stamp)` returns those within `max_age_s` of it, nearest first.

    max_future_s: a set stamped more than this after the reference stamp is refused; it could never
        match an image yet and would evict every valid set.
    backwards_tolerance_s: a set older than the newest by more than this means the source restarted
        (bag looped): the old sets belong to another timeline and are dropped.
    retention_s: sets older than newest - retention_s are dropped (at least max_age_s plus slack).
    max_sets: hard cap on the number of stored sets.
    """

    def __init__(
        self,
        max_age_s: float,
        max_future_s: float = 1.0,
        backwards_tolerance_s: float = 1.0,
        retention_s: float | None = None,
        max_sets: int = 64,
    ) -> None:
        if not (np.isfinite(max_age_s) and max_age_s >= 0):
            raise ValueError(f"max_age_s must be finite and >= 0, got {max_age_s}")
        if max_sets < 1:
            raise ValueError(f"max_sets must be >= 1, got {max_sets}")
        self.max_age_s = float(max_age_s)
        self.max_future_s = float(max_future_s)
        self.backwards_tolerance_s = float(backwards_tolerance_s)
        self.retention_s = float(retention_s) if retention_s is not None else 2.0 * self.max_age_s + 1.0
        self.max_sets = int(max_sets)
        self._stamps: list[float] = []
        self._sets: list[AnchorSet] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sets)

    @property
    def newest_stamp_s(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._sets.clear()

    def insert(
        self, stamp_s: float, points: np.ndarray, frame_id: str = "", reference_stamp_s: float | None = None
    ) -> InsertStatus:
        """Store a set of points stamped `stamp_s`; non-finite points are dropped first."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if len(pts) == 0:
            return InsertStatus.EMPTY
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if len(pts) == 0:
            return InsertStatus.NO_FINITE_POINTS
        if not np.isfinite(stamp_s):
            return InsertStatus.INVALID_STAMP
        if reference_stamp_s is not None and stamp_s > reference_stamp_s + self.max_future_s:
            return InsertStatus.FAR_FUTURE
        status = InsertStatus.OK
        with self._lock:
            if self._stamps and stamp_s < self._stamps[-1] - self.backwards_tolerance_s:
                self._stamps.clear()
                self._sets.clear()
                status = InsertStatus.STAMP_BACKWARDS
            i = bisect.bisect_right(self._stamps, stamp_s)
            self._stamps.insert(i, float(stamp_s))
            self._sets.insert(i, AnchorSet(float(stamp_s), np.ascontiguousarray(pts), frame_id))
            self._prune_locked()
        return status

    def _prune_locked(self) -> None:
        oldest_kept = self._stamps[-1] - self.retention_s
        start = bisect.bisect_left(self._stamps, oldest_kept)
        start = max(start, len(self._stamps) - self.max_sets)
        if start > 0:
            del self._stamps[:start]
            del self._sets[:start]

    def query(self, stamp_s: float, max_age_s: float | None = None) -> list[AnchorSet]:
        """Sets stamped within `max_age_s` (default: the buffer's) of `stamp_s`, nearest in time first."""
        age = self.max_age_s if max_age_s is None else float(max_age_s)
        with self._lock:
            lo = bisect.bisect_left(self._stamps, stamp_s - age)
            hi = bisect.bisect_right(self._stamps, stamp_s + age)
            found = self._sets[lo:hi]
        return sorted(found, key=lambda s: abs(s.stamp_s - stamp_s))
