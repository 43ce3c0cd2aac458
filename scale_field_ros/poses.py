"""Odometry poses over time and what the node does with them.

- `PoseBuffer`: T_world_body samples by stamp, looked up at any stamp by SE(3) interpolation (rotation
  slerped, translation linear), so anchors and images need not share stamps with odometry.
- `landmarks_to_camera`: VIO landmarks in the world frame -> camera optical frame at the image stamp.
- `scan_to_image_transform`: a LiDAR scan taken at another moment than the image, re-expressed in the camera
  at the image stamp (motion compensation of the whole scan; per-point deskew needs per-point times,
  which the anchor cloud does not carry).

Naming: T_dst_src maps points from src to dst; T_world_body is the body pose in the world,
T_body_cam the camera optical frame in the body, T_cam_anchor the anchor frame in the camera.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np
from scipy.spatial.transform import Rotation

from .camera import transform_points


def invert_transform(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv


def interpolate_transform(T0: np.ndarray, T1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose a fraction `alpha` of the way from T0 to T1 (slerp on rotation, linear on translation)."""
    R0 = Rotation.from_matrix(T0[:3, :3])
    R1 = Rotation.from_matrix(T1[:3, :3])
    delta = (R0.inv() * R1).as_rotvec()
    T = np.eye(4)
    T[:3, :3] = (R0 * Rotation.from_rotvec(alpha * delta)).as_matrix()
    T[:3, 3] = (1.0 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return T


class PoseBuffer:
    """T_world_body samples sorted by stamp, interpolated at query stamps.

    max_extrapolation_s: a stamp outside the buffered span by up to this takes the nearest pose; further
        out there is no pose (None), since extrapolating odometry silently misplaces anchors.
    backwards_tolerance_s: a sample older than the newest by more than this clears the buffer (bag looped).
    span_s: samples older than newest - span_s are dropped.
    """

    def __init__(
        self,
        span_s: float = 10.0,
        max_extrapolation_s: float = 0.05,
        backwards_tolerance_s: float = 1.0,
        max_samples: int = 2000,
    ) -> None:
        self.span_s = float(span_s)
        self.max_extrapolation_s = float(max_extrapolation_s)
        self.backwards_tolerance_s = float(backwards_tolerance_s)
        self.max_samples = int(max_samples)
        self._stamps: list[float] = []
        self._poses: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def insert(self, stamp_s: float, T_world_body: np.ndarray) -> bool:
        """Store a pose; returns False when it cleared the buffer because the stamp jumped back."""
        T = np.asarray(T_world_body, np.float64).reshape(4, 4)
        kept_history = True
        with self._lock:
            if self._stamps and stamp_s < self._stamps[-1] - self.backwards_tolerance_s:
                self._stamps.clear()
                self._poses.clear()
                kept_history = False
            i = bisect.bisect_left(self._stamps, stamp_s)
            if i < len(self._stamps) and self._stamps[i] == stamp_s:
                self._poses[i] = T  # same stamp again: the later message wins
            else:
                self._stamps.insert(i, float(stamp_s))
                self._poses.insert(i, T)
            start = bisect.bisect_left(self._stamps, self._stamps[-1] - self.span_s)
            start = max(start, len(self._stamps) - self.max_samples)
            if start > 0:
                del self._stamps[:start]
                del self._poses[:start]
        return kept_history

    def covers(self, stamp_s: float) -> bool:
        """A sample at or after `stamp_s` is buffered: the pose there is interpolated, not extrapolated."""
        with self._lock:
            return bool(self._stamps) and self._stamps[-1] >= stamp_s

    def lookup(self, stamp_s: float) -> np.ndarray | None:
        """T_world_body at `stamp_s`, or None when the buffer does not cover it."""
        with self._lock:
            if not self._stamps:
                return None
            i = bisect.bisect_left(self._stamps, stamp_s)
            if i < len(self._stamps) and self._stamps[i] == stamp_s:
                return self._poses[i].copy()
            if i == 0:
                ok = self._stamps[0] - stamp_s <= self.max_extrapolation_s
                return self._poses[0].copy() if ok else None
            if i == len(self._stamps):
                ok = stamp_s - self._stamps[-1] <= self.max_extrapolation_s
                return self._poses[-1].copy() if ok else None
            t0, t1 = self._stamps[i - 1], self._stamps[i]
            T0, T1 = self._poses[i - 1], self._poses[i]
        return interpolate_transform(T0, T1, (stamp_s - t0) / (t1 - t0))


def camera_from_world(T_world_body: np.ndarray, T_body_cam: np.ndarray) -> np.ndarray:
    """T_cam_world for a body pose and the camera's mounting."""
    return invert_transform(T_world_body @ T_body_cam)


def landmarks_to_camera(points_world: np.ndarray, T_world_body: np.ndarray, T_body_cam: np.ndarray) -> np.ndarray:
    """Nx3 world-frame landmarks -> Nx3 points in the camera optical frame of that body pose."""
    return transform_points(camera_from_world(T_world_body, T_body_cam), np.asarray(points_world, np.float64))


def scan_to_image_transform(
    T_world_body_scan: np.ndarray, T_world_body_image: np.ndarray, T_body_cam: np.ndarray, T_cam_anchor: np.ndarray
) -> np.ndarray:
    """T_cam(image)_anchor(scan): anchor-frame points of a scan into the camera at the image stamp.

    p_cam_img = (T_wb(img) T_bc)^-1 (T_wb(scan) T_bc) T_cam_anchor p_anchor.
    """
    T_world_cam_scan = T_world_body_scan @ T_body_cam
    return camera_from_world(T_world_body_image, T_body_cam) @ T_world_cam_scan @ T_cam_anchor
