"""Per-point motion compensation (deskew) of a LiDAR scan with odometry.

A spinning LiDAR takes ~0.1 s per scan: at 10 m/s the robot moves a metre while it is taken, so the points of
one scan were measured from different poses, and the whole-scan compensation (`poses.scan_to_image_transform`,
one pose for the cloud's stamp) leaves each point displaced by the motion between its own time and the stamp.
With per-point times (the cloud's `t`, `time` or `timestamp` field, `msg_codec.pointcloud2_decode`), every point
goes from the anchor frame at its own time into the camera at the image stamp.

Poses are looked up at knots `KNOT_STEP_S` apart over the scan's span; between two knots the point is moved by the
linear blend of their two transforms (the chord of the motion: under 0.1 mm for knots 5 ms apart at 1 rad/s and
20 m), so the cost is one batched pose lookup per scan and one compiled pass over its points.
"""

from __future__ import annotations

import numpy as np
from numba import njit

KNOT_STEP_S = 0.005
MAX_KNOTS = 256  # bounds the cost; a 1 s span (the longest `msg_codec` accepts) needs 201 at KNOT_STEP_S


def spinning_scan_offsets(
    points_lidar: np.ndarray, scan_s: float = 0.1, start_azimuth_rad: float = np.pi
) -> np.ndarray:
    """Per-point time offsets (s after the scan's start) of a spinning LiDAR whose cloud lost them (KITTI's .bin
    scans): the head turns clockwise seen from above (Velodyne, Ouster), one turn in `scan_s`, starting at
    `start_azimuth_rad` (pi: the rear, where KITTI's scans begin), so a point's time follows its azimuth."""
    p = np.asarray(points_lidar, np.float64)
    azimuth = np.arctan2(p[:, 1], p[:, 0])
    return np.mod(start_azimuth_rad - azimuth, 2.0 * np.pi) / (2.0 * np.pi) * scan_s


def knot_times(t_lo_s: float, t_hi_s: float) -> np.ndarray:
    """Knot stamps from `t_lo_s` to `t_hi_s` inclusive, at most `KNOT_STEP_S` apart (two for a single instant)."""
    n = int(np.clip(np.ceil((t_hi_s - t_lo_s) / KNOT_STEP_S), 1, MAX_KNOTS - 1)) + 1
    return np.linspace(t_lo_s, t_hi_s, n)


def transform_at_times(
    points: np.ndarray, point_time_s: np.ndarray, knot_time_s: np.ndarray, T_dst_src_knots: np.ndarray
) -> np.ndarray:
    """Nx3 points, each measured at its own time, into the destination frame: point i goes through the transform
    at its time, blended linearly between the two knots (`knot_time_s`, ascending; (M, 4, 4) transforms) around
    it. Times outside the knots take the end knots' transforms."""
    t = np.ascontiguousarray(point_time_s, np.float64)
    knots = np.ascontiguousarray(knot_time_s, np.float64)
    T = np.ascontiguousarray(np.asarray(T_dst_src_knots, np.float64)[:, :3, :])
    return _blend_transform(np.ascontiguousarray(points, np.float64).reshape(-1, 3), t, knots, T)


@njit(cache=True, nogil=True)
def _blend_transform(points, t, knots, T):
    """`transform_at_times`' loop, compiled (as numpy it was a dozen passes over N x 12 gathered entries,
    ~1 ms for a 17k-point scan): the blend of two affine maps applied to p is the blend of the two
    transformed points. A NaN time gives a NaN point."""
    n, m = t.size, knots.size
    out = np.empty((n, 3))
    for i in range(n):
        k, hi = 0, max(m - 2, 0)  # the last knot at or before t[i], within 0 .. m - 2
        while k < hi:
            mid = (k + hi + 1) // 2
            if knots[mid] <= t[i]:
                k = mid
            else:
                hi = mid - 1
        k1 = min(k + 1, m - 1)
        gap = knots[k1] - knots[k]
        alpha = min(max((t[i] - knots[k]) / gap, 0.0), 1.0) if gap > 0 else 0.0
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        for r in range(3):
            a = T[k, r, 0] * x + T[k, r, 1] * y + T[k, r, 2] * z + T[k, r, 3]
            b = T[k1, r, 0] * x + T[k1, r, 1] * y + T[k1, r, 2] * z + T[k1, r, 3]
            out[i, r] = a + alpha * (b - a)
    return out
