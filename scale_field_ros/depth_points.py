"""Metric depth -> point cloud of every n-th pixel, for PointCloud2 messages and PLY files (no ROS import)."""

from __future__ import annotations

import numpy as np

from .camera import Intrinsics


def decimated_points(
    depth_m: np.ndarray, rgb: np.ndarray, intrinsics: Intrinsics, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every `step`-th pixel of the depth unprojected (Nx3 float32 metres) with its colour (Nx3 uint8).

    Pixel (step*i, step*j) of the full image is pixel (i, j) of a camera with fx/step, cx/step, ...,
    so the one unprojection in `Intrinsics` serves the decimated grid.
    """
    if step < 1:
        raise ValueError(f"point decimation must be >= 1, got {step}")
    sub = depth_m[::step, ::step]
    k = intrinsics
    grid = Intrinsics(k.fx / step, k.fy / step, k.cx / step, k.cy / step, sub.shape[1], sub.shape[0])
    points = grid.unproject(np.ascontiguousarray(sub)).reshape(-1, 3)
    colours = rgb[::step, ::step].reshape(-1, 3)
    return points, colours
