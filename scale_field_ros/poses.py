"""Odometry poses over time and what the node does with them.

- `PoseBuffer`: T_world_body samples by stamp, looked up at any stamp by SE(3) interpolation (rotation
  slerped, translation linear; a little past either end, the motion there continued at constant velocity), so
  anchors and images need not share stamps with odometry.
- `landmarks_to_camera`: VIO landmarks in the world frame -> camera optical frame at the image stamp.
- `scan_to_image_transform`: a LiDAR scan taken at another moment than the image, re-expressed in the camera
  at the image stamp (motion compensation of the whole scan; with per-point times, `deskew` moves each point).
- `PoseBuffer.lookup_many`: the poses at many stamps in one batch (the knots of a deskewed scan).

Naming: T_dst_src maps points from src to dst; T_world_body is the body pose in the world,
T_body_cam the camera optical frame in the body, T_cam_anchor the anchor frame in the camera.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np

from .camera import transform_points


def invert_transform(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    inv = np.eye(4)
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv


def interpolate_transform(T0: np.ndarray, T1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose a fraction `alpha` of the way from T0 to T1 (slerp on rotation, linear on translation)."""
    return interpolate_transforms(T0[None], T1[None], np.array([alpha], np.float64))[0]


def interpolate_transforms(T0: np.ndarray, T1: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`interpolate_transform` for M pairs at once: (M, 4, 4) poses and M fractions -> (M, 4, 4).

    The rotation turns a fraction alpha of the way about the axis of R0^T R1 (the shorter way round), in
    quaternion form: numpy on (M, 4) arrays, where scipy's Rotation objects cost ~0.4 ms a call."""
    alpha = np.asarray(alpha, np.float64)
    R0 = T0[:, :3, :3]
    q = quaternion_from_rotation(np.matmul(R0.transpose(0, 2, 1), T1[:, :3, :3]))
    sin_half = np.linalg.norm(q[:, :3], axis=1)
    half = np.arctan2(sin_half, q[:, 3])  # half the angle of the relative rotation, in [0, pi/2]
    # the axis part of the partial turn: sin(alpha * half) / sin(half) of the full one (-> alpha for no turn)
    f = np.where(sin_half > 1e-12, np.sin(alpha * half) / np.maximum(sin_half, 1e-300), alpha)
    q_alpha = np.concatenate([q[:, :3] * f[:, None], np.cos(alpha * half)[:, None]], axis=1)
    T = np.tile(np.eye(4), (len(alpha), 1, 1))
    T[:, :3, :3] = np.matmul(R0, rotation_from_quaternion(q_alpha))
    T[:, :3, 3] = (1.0 - alpha[:, None]) * T0[:, :3, 3] + alpha[:, None] * T1[:, :3, 3]
    return T


def quaternion_from_rotation(R: np.ndarray) -> np.ndarray:
    """(M, 3, 3) rotations -> (M, 4) unit quaternions (x, y, z, w: ROS's order) with w >= 0. Each is computed
    from its largest component (Shepperd's method), so none divides by a near-zero one."""
    r = np.asarray(R, np.float64).reshape(-1, 9)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = r.T
    four_sq = np.stack([1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22, 1 + r00 + r11 + r22], 1)
    big = np.argmax(four_sq, axis=1)
    # row i of each: 4 q_i times the quaternion, from the matrix entries, when component i is the largest
    scaled = np.stack(
        [
            np.stack([four_sq[:, 0], r01 + r10, r02 + r20, r21 - r12], 1),
            np.stack([r01 + r10, four_sq[:, 1], r12 + r21, r02 - r20], 1),
            np.stack([r02 + r20, r12 + r21, four_sq[:, 2], r10 - r01], 1),
            np.stack([r21 - r12, r02 - r20, r10 - r01, four_sq[:, 3]], 1),
        ],
        1,
    )[np.arange(len(r)), big]
    q = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    return np.where(q[:, 3:] < 0, -q, q)


def rotation_from_quaternion(q_xyzw: np.ndarray) -> np.ndarray:
    """(M, 4) quaternions (x, y, z, w), normalised here (callers refuse a zero one) -> (M, 3, 3) rotations."""
    q = np.asarray(q_xyzw, np.float64).reshape(-1, 4)
    x, y, z, w = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        1,
    ).reshape(-1, 3, 3)  # fmt: skip


# Longest gap between two odometry samples that a lookup interpolates across. Under an acceleration a, the
# interpolated pose misses the true one by up to a g^2 / 8 (3 cm at 1 m/s^2 over 0.5 s): odometry at 2 Hz, or at
# 4 Hz with a message dropped, is bridged; a longer gap is odometry missing, and the pose in it would be invented.
MAX_POSE_GAP_S = 0.5


class StampedHistory:
    """Items sorted by stamp behind a lock, with what both of the node's buffers (`PoseBuffer`, `anchor_buffer.
    AnchorBuffer`) do with their whole history: drop it when stamps jump back (a bag looped), counting each time,
    so that an image-stamp reset can tell what arrived before it from what arrived after the buffer's own restart."""

    def __init__(self) -> None:
        self._stamps: list[float] = []
        self._items: list = []
        self._generation = 0  # times the whole history was dropped: every item held arrived after the latest
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    @property
    def newest_stamp_s(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    @property
    def generation(self) -> int:
        """How many times the buffer dropped its whole history (stamps went back, or `clear`)."""
        with self._lock:
            return self._generation

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def clear_unless_restarted(self, since_generation: int) -> bool:
        """Drop every item, whatever its stamp, unless the buffer restarted on its own after `since_generation`
        (then it holds only items that arrived since: the new timeline's). Returns whether it cleared."""
        with self._lock:
            if self._generation != since_generation:
                return False
            self._clear_locked()
            return True

    def drop_newer_than(self, stamp_s: float) -> None:
        """Forget the items stamped after `stamp_s` (far ahead of the images: glitched stamps)."""
        with self._lock:
            keep = bisect.bisect_right(self._stamps, stamp_s)
            del self._stamps[keep:]
            del self._items[keep:]

    def _clear_locked(self) -> None:
        self._stamps.clear()
        self._items.clear()
        self._generation += 1

    def _restart_if_back_locked(self, stamp_s: float, tolerance_s: float) -> bool:
        """Drop the whole history when `stamp_s` is older than the newest item by more than `tolerance_s` (the
        source restarted: a bag looped); returns whether it did."""
        if self._stamps and stamp_s < self._stamps[-1] - tolerance_s:
            self._clear_locked()
            return True
        return False

    def _trim_locked(self, span_s: float, max_items: int) -> None:
        """Keep the items stamped within `span_s` of the newest, at most the newest `max_items` of them."""
        start = bisect.bisect_left(self._stamps, self._stamps[-1] - span_s)
        start = max(start, len(self._stamps) - max_items)
        if start > 0:
            del self._stamps[:start]
            del self._items[:start]


class PoseBuffer(StampedHistory):
    """T_world_body samples sorted by stamp, interpolated at query stamps.

    max_extrapolation_s: a stamp outside the buffered span by up to this takes the motion at that end continued at
        constant velocity (the nearest pose where it cannot be measured); further out there is no pose (None),
        since extrapolating odometry far silently misplaces anchors. A stamp between two samples further apart
        than `max_gap_s` has no pose either.
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
        super().__init__()
        self._items: list[np.ndarray] = []  # T_world_body per stamp

    def insert(self, stamp_s: float, T_world_body: np.ndarray) -> bool:
        """Store a pose; returns False when it cleared the buffer because the stamp jumped back."""
        if not np.isfinite(stamp_s):
            raise ValueError(f"pose stamp must be finite, got {stamp_s}")
        T = np.asarray(T_world_body, np.float64).reshape(4, 4)
        with self._lock:
            kept_history = not self._restart_if_back_locked(stamp_s, self.backwards_tolerance_s)
            i = bisect.bisect_left(self._stamps, stamp_s)
            if i < len(self._stamps) and self._stamps[i] == stamp_s:
                self._items[i] = T  # same stamp again: the later message wins
            else:
                self._stamps.insert(i, float(stamp_s))
                self._items.insert(i, T)
            self._trim_locked(self.span_s, self.max_samples)
        return kept_history

    @property
    def max_gap_s(self) -> float:
        """The longest gap between two samples interpolated across: `MAX_POSE_GAP_S`, or twice
        `max_extrapolation_s` where that is longer (where a pose may be held that far from a sample, an
        interpolated one, nearer the truth, may be too: a stamp in a gap is at most half of it from a sample)."""
        return max(MAX_POSE_GAP_S, 2.0 * self.max_extrapolation_s)

    def covers(self, stamp_s: float) -> bool:
        """A sample at or after `stamp_s` is buffered: the pose there is interpolated, not extrapolated."""
        with self._lock:
            return bool(self._stamps) and self._stamps[-1] >= stamp_s

    def lookup(self, stamp_s: float) -> np.ndarray | None:
        """T_world_body at `stamp_s`, or None when the buffer does not cover it."""
        poses = self.lookup_many(np.array([stamp_s], np.float64))
        return None if poses is None else poses[0]

    def lookup_many(self, stamps_s: np.ndarray) -> np.ndarray | None:
        """T_world_body (M, 4, 4) at each of `stamps_s`, or None when the buffer does not cover one of them
        (further than `max_extrapolation_s` outside it, or between samples more than `max_gap_s` apart). A buffered
        stamp returns its pose exactly."""
        q = np.asarray(stamps_s, np.float64).reshape(-1)
        with self._lock:
            if not self._stamps or not np.all(np.isfinite(q)):
                return None
            # only the samples around the queried span (the buffer may hold thousands), and outside the buffered
            # span those as far back inside it as the query is out: the baseline of the extrapolation below
            q_lo, q_hi = float(q.min()), float(q.max())
            oldest, newest = self._stamps[0], self._stamps[-1]
            lo = max(bisect.bisect_left(self._stamps, min(q_lo, 2.0 * newest - q_hi)) - 1, 0)
            hi = min(bisect.bisect_right(self._stamps, max(q_hi, 2.0 * oldest - q_lo)) + 1, len(self._stamps))
            stamps = np.array(self._stamps[lo:hi])
            poses = np.stack(self._items[lo:hi])
        n = len(stamps)
        if np.any(q < stamps[0] - self.max_extrapolation_s) or np.any(q > stamps[-1] + self.max_extrapolation_s):
            return None
        max_gap_s = self.max_gap_s
        after = np.searchsorted(stamps, q, side="left")  # first sample at or after each stamp
        exact = (after < n) & (stamps[np.minimum(after, n - 1)] == q)
        i0 = np.where(exact, after, np.clip(after - 1, 0, n - 1))  # outside the span both ends are the nearest
        i1 = np.where(exact, after, np.clip(after, 0, n - 1))
        # outside the span: the motion from a sample at least as far inside as the stamp is out to the end sample,
        # continued at constant velocity (alpha beyond [0, 1]): a held pose lags a moving body by the whole step out
        # (a VIO pose for image k arrives after it: ~20 px at 1 rad/s and 30 Hz). Held where no such sample lies
        # within max_gap_s of the end (the buffer just started, or a gap): a velocity measured over a much shorter
        # baseline would amplify the odometry's noise, one over a gap is not the current one
        base_new = np.searchsorted(stamps, 2.0 * stamps[-1] - q, side="right") - 1  # last at or before the mirror
        base_old = np.searchsorted(stamps, 2.0 * stamps[0] - q, side="left")  # first at or after the mirror
        past = (q > stamps[-1]) & (base_new >= 0) & (stamps[-1] - stamps[np.maximum(base_new, 0)] <= max_gap_s)
        ahead = (q < stamps[0]) & (base_old < n) & (stamps[np.minimum(base_old, n - 1)] - stamps[0] <= max_gap_s)
        i0 = np.where(past, base_new, np.where(ahead, 0, i0))
        i1 = np.where(past, n - 1, np.where(ahead, base_old, i1))
        gap = stamps[i1] - stamps[i0]
        if np.any(gap > max_gap_s):
            return None
        alpha = np.divide(q - stamps[i0], gap, out=np.zeros_like(q), where=gap > 0)
        out = interpolate_transforms(poses[i0], poses[i1], alpha)
        same = i0 == i1
        out[same] = poses[i0[same]]  # as stored: the rotation round trip would re-orthonormalise it
        return out


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
