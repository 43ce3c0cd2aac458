"""Per-point motion compensation (deskew) of a LiDAR scan with odometry.

A spinning LiDAR takes ~0.1 s per scan: at 10 m/s the robot moves a metre while it is taken, so the points of
one scan were measured from different poses, and the whole-scan compensation (`poses.scan_to_image_transform`,
one pose for the cloud's stamp) leaves each point displaced by the motion between its own time and the stamp.
With per-point times (the cloud's `t`, `time` or `timestamp` field, `msg_codec.pointcloud2_decode`), every point
goes from the anchor frame at its own time into the camera at the image stamp.

Poses are looked up at knots `KNOT_STEP_S` apart over the scan's span; between two knots the point is moved by the
linear blend of their two transforms (the chord of the motion: under 0.1 mm for knots 5 ms apart at 1 rad/s and
20 m), so the cost is one batched pose lookup per scan and a few vectorised passes over its points.
"""

from __future__ import annotations

import numpy as np

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
    t = np.asarray(point_time_s, np.float64)
    m = len(knot_time_s)
    k = np.clip(np.searchsorted(knot_time_s, t, side="right") - 1, 0, max(m - 2, 0))
    k1 = np.minimum(k + 1, m - 1)
    gap = knot_time_s[k1] - knot_time_s[k]
    alpha = np.divide(t - knot_time_s[k], gap, out=np.zeros_like(t), where=gap > 0)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    # the blend of two affine maps applied to p is the blend of the two transformed points: blend the 3x4
    # entries, each a row of N values (an N x 12 layout would run numpy's inner loops 12 long: ~10x slower)
    entries = np.ascontiguousarray(T_dst_src_knots[:, :3, :].reshape(m, 12).T)
    blended = entries[:, k]
    blended *= 1.0 - alpha
    end = entries[:, k1]
    end *= alpha
    blended += end  # in place: fresh arrays of this size cost page faults
    x, y, z = np.asarray(points, np.float64).T
    out = np.empty((len(t), 3))
    for i in range(3):
        r = blended[4 * i : 4 * i + 4]
        out[:, i] = r[0] * x + r[1] * y + r[2] * z + r[3]
    return out
