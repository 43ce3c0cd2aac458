"""Time-indexed buffer of anchor point sets (LiDAR scans, VIO landmark sets), queried by image stamp.

Anchors and images arrive at different rates (a 10 Hz LiDAR, a 30 Hz camera) and out of step; every
image takes the sets stamped within `max_age_s` of it. The buffer is bounded in time and count so it
never grows, and it says why it refused or reset on an insert so the caller can warn once per cause.
Thread-safe: ROS subscriptions insert while the inference thread queries.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .anchors import Anchors, anchors_from_points
from .camera import Intrinsics, transform_points
from .deskew import knot_times, transform_at_times
from .poses import PoseBuffer, StampedHistory, camera_from_world, scan_to_image_transform


@dataclass(frozen=True)
class AnchorSet:
    """One anchor message: finite Nx3 float32 points in the frame they were published in, and for a LiDAR scan
    that carries them, each point's time as an offset (s) from `stamp_s` (`deskew`)."""

    stamp_s: float
    points: np.ndarray
    frame_id: str = ""
    point_time_s: np.ndarray | None = None

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


class AnchorBuffer(StampedHistory):
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
        self._retention_s = float(retention_s) if retention_s is not None else None
        self.max_sets = int(max_sets)
        super().__init__()
        self._items: list[AnchorSet] = []

    @property
    def retention_s(self) -> float:
        """Sets older than the newest by more than this are dropped: as given, else 2 max_age_s + 1 s, which
        follows `max_age_s` when it is changed (a larger age must find the sets it asks for)."""
        return self._retention_s if self._retention_s is not None else 2.0 * self.max_age_s + 1.0

    def insert(
        self,
        stamp_s: float,
        points: np.ndarray,
        frame_id: str = "",
        reference_stamp_s: float | None = None,
        point_time_s: np.ndarray | None = None,
    ) -> InsertStatus:
        """Store a set of points stamped `stamp_s` (with per-point time offsets from it, when given); points with
        a non-finite coordinate or time are dropped first."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if len(pts) == 0:
            return InsertStatus.EMPTY
        finite = np.all(np.isfinite(pts), axis=1)
        times = None
        if point_time_s is not None:
            times = np.asarray(point_time_s, np.float32).reshape(-1)
            if len(times) != len(pts):
                raise ValueError(f"{len(times)} point times for {len(pts)} points")
            finite &= np.isfinite(times)
            times = np.ascontiguousarray(times[finite])
        pts = pts[finite]
        if len(pts) == 0:
            return InsertStatus.NO_FINITE_POINTS
        if not np.isfinite(stamp_s):
            return InsertStatus.INVALID_STAMP
        if reference_stamp_s is not None and stamp_s > reference_stamp_s + self.max_future_s:
            return InsertStatus.FAR_FUTURE
        status = InsertStatus.OK
        with self._lock:
            if self._restart_if_back_locked(stamp_s, self.backwards_tolerance_s):
                status = InsertStatus.STAMP_BACKWARDS
            i = bisect.bisect_right(self._stamps, stamp_s)
            self._stamps.insert(i, float(stamp_s))
            self._items.insert(i, AnchorSet(float(stamp_s), np.ascontiguousarray(pts), frame_id, times))
            self._trim_locked(self.retention_s, self.max_sets)
        return status

    def query(self, stamp_s: float, max_age_s: float | None = None) -> list[AnchorSet]:
        """Sets stamped within `max_age_s` (default: the buffer's) of `stamp_s`, nearest in time first."""
        age = self.max_age_s if max_age_s is None else float(max_age_s)
        with self._lock:
            lo = bisect.bisect_left(self._stamps, stamp_s - age)
            hi = bisect.bisect_right(self._stamps, stamp_s + age)
            found = self._items[lo:hi]
        return sorted(found, key=lambda s: abs(s.stamp_s - stamp_s))


@dataclass(frozen=True)
class ImageAnchors:
    """The anchors assembled for one image and what stood in the way.

    problems: (cause, message) pairs for the caller's throttled warnings; cause is a stable key.
    """

    anchors: Anchors
    n_sets: int
    n_points: int
    problems: tuple[tuple[str, str], ...] = ()


def anchors_for_image(
    sets: list[AnchorSet],
    image_stamp_s: float,
    intrinsics: Intrinsics,
    T_cam_anchor: np.ndarray | Callable[[str], np.ndarray],
    min_depth_m: float,
    max_depth_m: float,
    poses: PoseBuffer | None = None,
    T_body_cam: np.ndarray | None = None,
    anchors_in_world: bool = False,
    motion_compensation: bool = True,
    deskew: bool = True,
) -> ImageAnchors:
    """Bring every set into the camera at the image stamp and z-buffer them together into pixel anchors.

    - anchors_in_world: sets are world-frame landmarks; the camera pose at the image stamp comes from
      `poses` (T_world_body) and `T_body_cam`. Without a pose there are no anchors for this image.
    - otherwise sets are in the anchor frame (`T_cam_anchor`: one 4x4, or a function of a set's frame_id, so that
      sets from different frames each get their own); with `poses` and motion_compensation each
      set is moved from its own stamp to the image stamp (a set without poses is used as is), and with
      `deskew` a set with per-point times has each point moved from its own time (`deskew` module; where
      odometry does not cover the scan's span, the whole scan moves from its stamp instead).
    """
    T_body_cam = np.eye(4) if T_body_cam is None else T_body_cam
    problems: list[tuple[str, str]] = []
    clouds: list[tuple[np.ndarray, np.ndarray | None]] = []  # (points, T_cam_points; None: in the camera already)
    have_poses = poses is not None and len(poses) > 0
    T_wb_image = poses.lookup(image_stamp_s) if have_poses else None
    if (anchors_in_world or (motion_compensation and have_poses)) and sets and T_wb_image is None:
        why = "no odometry received" if not have_poses else "odometry does not cover the image stamp"
        problems.append(("odom_missing", f"{why} ({image_stamp_s:.3f} s{_pose_limits(poses) if have_poses else ''})"))
    for s in sets:
        T_cam_set = T_cam_anchor(s.frame_id) if callable(T_cam_anchor) else T_cam_anchor
        if anchors_in_world:
            if T_wb_image is None:
                continue
            T = camera_from_world(T_wb_image, T_body_cam)
        elif motion_compensation and T_wb_image is not None and deskew and s.point_time_s is not None:
            moved = _deskewed(s, poses, T_wb_image, T_body_cam, T_cam_set)
            if moved is not None:
                clouds.append((moved, None))
                continue
            problems.append(
                (
                    "deskew_no_odom",
                    f"odometry does not cover the point times of the scan stamped {s.stamp_s:.3f} s "
                    f"({float(s.point_time_s.min()):+.3f}..{float(s.point_time_s.max()):+.3f} s): "
                    "moved from its stamp as a whole",
                )
            )
            T = _whole_scan_transform(s, poses, T_wb_image, T_body_cam, T_cam_set, problems)
        elif motion_compensation and T_wb_image is not None and s.stamp_s != image_stamp_s:
            T = _whole_scan_transform(s, poses, T_wb_image, T_body_cam, T_cam_set, problems)
        else:
            T = T_cam_set
        clouds.append((s.points, T))
    if not clouds:
        return ImageAnchors(Anchors.empty(), 0, 0, tuple(problems))
    if len(clouds) == 1:  # the usual case: anchors_from_points moves it into the camera itself
        pts, T_cam_pts = clouds[0]
    else:
        pts = np.concatenate([p if T is None else transform_points(T, p.astype(np.float64)) for p, T in clouds])
        T_cam_pts = None  # every set is in the camera now
    T_cam_pts = np.eye(4) if T_cam_pts is None else T_cam_pts
    anchors = anchors_from_points(pts, T_cam_pts, intrinsics, min_depth_m, max_depth_m)
    return ImageAnchors(anchors, len(clouds), len(pts), tuple(problems))


def _whole_scan_transform(
    s: AnchorSet, poses: PoseBuffer, T_wb_image, T_body_cam, T_cam_anchor, problems
) -> np.ndarray:
    """T_cam(image)_anchor for the set as a whole, from the pose at its stamp (none: as is, with a problem)."""
    T_wb_set = poses.lookup(s.stamp_s)
    if T_wb_set is None:
        problems.append(
            ("odom_missing", f"odometry does not cover the anchor stamp ({s.stamp_s:.3f} s{_pose_limits(poses)})")
        )
        return T_cam_anchor
    return scan_to_image_transform(T_wb_set, T_wb_image, T_body_cam, T_cam_anchor)


def _pose_limits(poses: PoseBuffer) -> str:
    """What "covered" means, for the odom_missing warning."""
    return (
        f"; a pose is looked up at most odom_max_extrapolation {poses.max_extrapolation_s:g} s outside the buffered "
        f"ones, and between two at most {poses.max_gap_s:g} s apart"
    )


def _deskewed(s: AnchorSet, poses: PoseBuffer, T_wb_image, T_body_cam, T_cam_anchor) -> np.ndarray | None:
    """The set's points in the camera at the image stamp, each from the pose at its own time; None when
    odometry does not cover the scan's span."""
    offsets = knot_times(float(s.point_time_s.min()), float(s.point_time_s.max()))  # relative: no precision loss
    T_wb_knots = poses.lookup_many(s.stamp_s + offsets)
    if T_wb_knots is None:
        return None
    T_knots = scan_to_image_transform(T_wb_knots, T_wb_image, T_body_cam, T_cam_anchor)  # batched over knots
    return transform_at_times(s.points, s.point_time_s, offsets, T_knots)
