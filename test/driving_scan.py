"""The real KITTI Velodyne scan re-taken from a car that drives while the LiDAR spins: every point measured from
the pose at its own time, as a real scan is, for the deskew tests.

The truth is the shipped scan itself, taken as the geometry seen from the body pose at the image stamp (KITTI
triggers the camera as the LiDAR faces forward, mid-scan). The body frame is the LiDAR frame (x forward, z up);
the car drives at SPEED_M_S while turning at YAW_RATE_RAD_S. The scan is stamped at its start, as Ouster's
driver does, and the head spins clockwise from the rear, one turn in SCAN_S.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from scale_field_ros.deskew import spinning_scan_offsets

SCAN_S = 0.1
SPEED_M_S = 10.0
YAW_RATE_RAD_S = 0.5
IMAGE_AFTER_SCAN_S = 0.05


def T_world_body(t_s: np.ndarray) -> np.ndarray:
    """(N, 4, 4) body poses at times `t_s` (s after the scan's stamp) on the circle the car drives."""
    t = np.atleast_1d(np.asarray(t_s, np.float64))
    yaw = YAW_RATE_RAD_S * t
    T = np.tile(np.eye(4), (len(t), 1, 1))
    T[:, :3, :3] = Rotation.from_euler("z", yaw[:, None]).as_matrix()
    T[:, 0, 3] = SPEED_M_S / YAW_RATE_RAD_S * np.sin(yaw)
    T[:, 1, 3] = SPEED_M_S / YAW_RATE_RAD_S * (1.0 - np.cos(yaw))
    return T


def skewed_scan(points_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points as measured, each in the LiDAR frame at its own time; their time offsets from the scan stamp)."""
    world = _apply(T_world_body(np.array([IMAGE_AFTER_SCAN_S]))[0], points_lidar)
    offsets = spinning_scan_offsets(points_lidar, SCAN_S)
    T_wb = T_world_body(offsets)
    R_T = np.transpose(T_wb[:, :3, :3], (0, 2, 1))  # inverse of each point's pose
    measured = np.einsum("nij,nj->ni", R_T, world - T_wb[:, :3, 3])
    return measured.astype(np.float32), offsets


def odometry(stamp_s: float, rate_hz: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """(stamps, T_world_body poses) from a scan before the scan stamp to a scan after it, at `rate_hz`."""
    rel = np.arange(-SCAN_S, 2.0 * SCAN_S + 1e-9, 1.0 / rate_hz)
    return stamp_s + rel, T_world_body(rel)


def _apply(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ T[:3, :3].T + T[:3, 3]
