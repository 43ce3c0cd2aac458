"""Pinhole intrinsics and rigid transforms (camera optical frame: x right, y down, z forward)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of `width` x `height`."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"invalid intrinsics fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"invalid image size {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled_to(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera resampled to `width` x `height` (pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=width,
            height=height,
        )

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project Nx3 camera-frame points: returns (u, v, z) with u, v in pixels."""
        z = points_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * points_cam[:, 0] / z + self.cx
            v = self.fy * points_cam[:, 1] / z + self.cy
        return u, v, z

    def unproject(self, depth_m: np.ndarray) -> np.ndarray:
        """HxW depth in metres -> HxWx3 camera-frame points in metres."""
        h, w = depth_m.shape
        u = np.arange(w, dtype=np.float32)[None, :]
        v = np.arange(h, dtype=np.float32)[:, None]
        x = (u - self.cx) / self.fx * depth_m
        y = (v - self.cy) / self.fy * depth_m
        return np.stack([x, y, depth_m], axis=-1).astype(np.float32)


def as_transform(values: np.ndarray | list[float] | tuple[float, ...], name: str = "transform") -> np.ndarray:
    """16 row-major numbers or a 4x4 array -> validated 4x4 float64 rigid transform."""
    T = np.asarray(values, dtype=np.float64)
    if T.size != 16:
        raise ValueError(f"{name} must have 16 values (4x4 row-major), got {T.size}")
    T = T.reshape(4, 4)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"{name} contains NaN or inf")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ValueError(f"{name} bottom row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise ValueError(f"{name} rotation part is not a proper rotation")
    return T


def transform_points(T_dst_src: np.ndarray, points_src: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to Nx3 points."""
    return points_src @ T_dst_src[:3, :3].T + T_dst_src[:3, 3]
