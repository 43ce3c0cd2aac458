"""Metric depth -> point cloud of every n-th pixel, for PointCloud2 messages and PLY files (no ROS import)."""

from __future__ import annotations

import numpy as np

from .camera import Intrinsics


def decimated_points(
    depth_m: np.ndarray, rgb: np.ndarray, intrinsics: Intrinsics, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every `step`-th pixel of the depth unprojected (Nx3 float32 metres, along the camera's undistorted
    rays) with its colour (Nx3 uint8)."""
    if step < 1:
        raise ValueError(f"point decimation must be >= 1, got {step}")
    sub = np.ascontiguousarray(depth_m[::step, ::step])
    points = intrinsics.unproject(sub, step).reshape(-1, 3)
    colours = rgb[::step, ::step].reshape(-1, 3)
    return points, colours
