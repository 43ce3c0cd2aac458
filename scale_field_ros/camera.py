"""Camera intrinsics with lens distortion, and rigid transforms (camera optical frame: x right, y down, z forward).

Distortion follows sensor_msgs/CameraInfo's models as ROS's image_geometry and OpenCV define them:
`plumb_bob` (k1, k2, p1, p2, k3), `rational_polynomial` (k1, k2, p1, p2, k3, k4, k5, k6) and `equidistant`
(the fisheye model, k1..k4 on the angle). The depth images we publish are pixel-aligned with the input image,
so a raw (unrectified) image with its calibration is handled by projecting anchors through the distortion
and unprojecting depth along the undistorted rays; a rectified image has no distortion and the model is the
pinhole one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

DISTORTION_COEFFICIENTS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@dataclass(frozen=True)
class Intrinsics:
    """Intrinsics in pixels for an image of `width` x `height`: pinhole K, and optionally the lens distortion
    (`distortion_model`, one of `DISTORTION_COEFFICIENTS`, with its coefficients `d`; missing trailing
    coefficients are zero). No model, or all coefficients zero, is a pinhole camera."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion_model: str = ""
    d: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"invalid intrinsics fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"invalid image size {self.width}x{self.height}")
        d = tuple(float(x) for x in self.d)
        if not all(np.isfinite(d)):
            raise ValueError(f"distortion coefficients must be finite, got {d}")
        if any(d):
            n = DISTORTION_COEFFICIENTS.get(self.distortion_model)
            if n is None:
                raise ValueError(
                    f"distortion model {self.distortion_model!r} is not supported "
                    f"(supported: {', '.join(DISTORTION_COEFFICIENTS)})"
                )
            if len(d) > n and any(d[n:]):
                raise ValueError(f"{self.distortion_model} has {n} coefficients, got {len(d)}: {d}")
            d = (d + (0.0,) * n)[:n]
        # no distortion is one value whatever the message called it: a pinhole camera compares equal to itself
        object.__setattr__(self, "d", d if any(d) else ())
        object.__setattr__(self, "distortion_model", self.distortion_model if any(d) else "")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def distorted(self) -> bool:
        return bool(self.d)

    def scaled_to(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera resampled to `width` x `height` (pixel-centre convention; the
        distortion acts on normalised coordinates and stays)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            width=width,
            height=height,
            distortion_model=self.distortion_model,
            d=self.d,
        )

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project Nx3 camera-frame points: returns (u, v, z) with u, v in pixels, through the distortion.
        Points the lens model cannot image (behind the camera, or beyond the radius where the distortion
        polynomial folds back and would wrap far-off points into the picture) get u = v = NaN."""
        z = points_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            if not self.distorted:
                return self.fx * points_cam[:, 0] / z + self.cx, self.fy * points_cam[:, 1] / z + self.cy, z
            x, y = points_cam[:, 0] / z, points_cam[:, 1] / z
            ok = (z > 0) & (x * x + y * y <= _max_radius(self.distortion_model, self.d) ** 2)
            x, y = distort(x, y, self.distortion_model, self.d)
            return np.where(ok, self.fx * x + self.cx, np.nan), np.where(ok, self.fy * y + self.cy, np.nan), z

    def rays(self, height: int, width: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Normalised undistorted coordinates (x/z, y/z), each height x width float32, of the pixels
        (step * col, step * row): the rays along which a depth image is unprojected. Cached per camera
        (undistorting is an iteration, run once per calibration, not per frame); read-only."""
        return _ray_grid(self, height, width, step)

    def lens_coverage(self, height: int, width: int) -> np.ndarray | None:
        """HxW bool, True where a pixel has a ray (False beyond the lens model's fold radius or 89 degrees off
        axis), or None when every pixel has one (no distortion, or a lens that covers the whole image).
        Cached per camera, read-only."""
        return _lens_coverage(self, height, width)

    def unproject(self, depth_m: np.ndarray, step: int = 1) -> np.ndarray:
        """HxW depth in metres of the pixels (step * col, step * row) -> HxWx3 camera-frame points in metres
        (NaN where a pixel has no ray: outside what the lens model covers)."""
        h, w = depth_m.shape
        x, y = self.rays(h, w, step)
        return np.stack([x * depth_m, y * depth_m, depth_m], axis=-1).astype(np.float32)


def distort(x: np.ndarray, y: np.ndarray, model: str, d: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised undistorted coordinates -> distorted ones (OpenCV's and image_geometry's formulas)."""
    if model == "equidistant":
        k1, k2, k3, k4 = d
        r = np.hypot(x, y)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
        return x * scale, y * scale
    k1, k2, p1, p2, k3 = d[:5]
    k4, k5, k6 = d[5:8] if len(d) >= 8 else (0.0, 0.0, 0.0)
    r2 = x * x + y * y
    radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xy = x * y
    return (
        x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x),
        y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy,
    )


def undistort(
    xd: np.ndarray, yd: np.ndarray, model: str, d: tuple[float, ...], iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `distort` by Newton's method (2x2 Jacobian by central differences of `distort` itself, so
    the model is written once). NaN where it does not converge to 1e-6 or leaves the model's valid radius."""
    xd, yd = np.asarray(xd, np.float64), np.asarray(yd, np.float64)
    x, y = xd.copy(), yd.copy()  # the distorted point is the first guess
    step = 1e-6
    # beyond the lens model's coverage the iteration diverges to inf / NaN: expected, and flagged by `ok` below
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(iterations):
            px, py = distort(x, y, model, d)
            ex, ey = px - xd, py - yd
            right, left = distort(x + step, y, model, d), distort(x - step, y, model, d)
            down, up = distort(x, y + step, model, d), distort(x, y - step, model, d)
            j11, j21 = (right[0] - left[0]) / (2 * step), (right[1] - left[1]) / (2 * step)
            j12, j22 = (down[0] - up[0]) / (2 * step), (down[1] - up[1]) / (2 * step)
            det = j11 * j22 - j12 * j21
            x = x - (j22 * ex - j12 * ey) / det
            y = y - (j11 * ey - j21 * ex) / det
        px, py = distort(x, y, model, d)
        r_max = _max_radius(model, d)
        ok = (np.hypot(px - xd, py - yd) < 1e-6) & (x * x + y * y <= r_max * r_max)
    return np.where(ok, x, np.nan), np.where(ok, y, np.nan)


@functools.lru_cache(maxsize=32)
def _max_radius(model: str, d: tuple[float, ...]) -> float:
    """Largest undistorted radius (x/z, y/z) up to which the distorted radius still grows: beyond it the
    polynomial folds back and distinct rays would land on the same pixels. At most tan(89 deg)."""
    r = np.tan(np.linspace(0.0, np.radians(89.0), 4000))
    rd = np.hypot(*distort(r, np.zeros_like(r), model, d))
    falling = np.flatnonzero(np.diff(rd) <= 0)
    return float(r[falling[0]]) if falling.size else float(r[-1])


@functools.lru_cache(maxsize=8)
def _lens_coverage(intrinsics: Intrinsics, height: int, width: int) -> np.ndarray | None:
    if not intrinsics.distorted:
        return None
    covered = np.isfinite(_ray_grid(intrinsics, height, width, 1)[0])
    if covered.all():
        return None
    covered.setflags(write=False)
    return covered


@functools.lru_cache(maxsize=8)
def _ray_grid(intrinsics: Intrinsics, height: int, width: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    k = intrinsics
    u = (np.arange(width, dtype=np.float64) * step - k.cx) / k.fx
    v = (np.arange(height, dtype=np.float64) * step - k.cy) / k.fy
    x, y = np.broadcast_to(u[None, :], (height, width)), np.broadcast_to(v[:, None], (height, width))
    if k.distorted:
        x, y = undistort(x, y, k.distortion_model, k.d)
    x, y = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


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
