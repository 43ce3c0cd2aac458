"""Sparse metric anchors: (u, v, metric depth, weight) in image pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .camera import Intrinsics, transform_points


@dataclass(frozen=True)
class Anchors:
    """Sparse metric depth samples in image pixel coordinates.

    u, v: pixel coordinates (x right, y down; pixel centres at integers), float32.
    depth_m: metric depth along the optical axis (z), float32, metres.
    weight: per-anchor confidence weight (>0), float32.
    """

    u: np.ndarray
    v: np.ndarray
    depth_m: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.u)
        for name in ("v", "depth_m", "weight"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"anchor arrays differ in length: u has {n}, {name} has {len(getattr(self, name))}")

    def __len__(self) -> int:
        return len(self.u)

    @staticmethod
    def empty() -> Anchors:
        z = np.zeros(0, np.float32)
        return Anchors(z, z.copy(), z.copy(), z.copy())

    @staticmethod
    def from_arrays(u, v, depth_m, weight=None) -> Anchors:
        u = np.asarray(u, np.float32).ravel()
        v = np.asarray(v, np.float32).ravel()
        d = np.asarray(depth_m, np.float32).ravel()
        w = np.ones_like(d) if weight is None else np.asarray(weight, np.float32).ravel()
        return Anchors(u, v, d, w)

    @staticmethod
    def concatenate(parts) -> Anchors:
        """All anchors of `parts` (a sequence of Anchors) in one set, in order."""
        parts = list(parts)
        if not parts:
            return Anchors.empty()
        return Anchors(*(np.concatenate([getattr(a, f) for a in parts]) for f in ("u", "v", "depth_m", "weight")))

    def subset(self, index: np.ndarray) -> Anchors:
        return Anchors(self.u[index], self.v[index], self.depth_m[index], self.weight[index])

    def pixel_index(self, width: int) -> np.ndarray:
        """Flat index of the pixel each anchor falls on (nearest pixel centre)."""
        return np.round(self.v).astype(np.int64) * width + np.round(self.u).astype(np.int64)

    def depth_image(self, width: int, height: int) -> np.ndarray:
        """height x width float32 metres: each anchor's depth on its nearest pixel, 0 elsewhere (sparse ground
        truth from held-out LiDAR points)."""
        depth = np.zeros((height, width), np.float32)
        depth[np.round(self.v).astype(int), np.round(self.u).astype(int)] = self.depth_m
        return depth

    def valid_mask(self, width: int, height: int, min_depth_m: float, max_depth_m: float) -> np.ndarray:
        """Anchors that are finite, in the image, inside the depth range and with positive weight."""
        ok = np.isfinite(self.u) & np.isfinite(self.v) & np.isfinite(self.depth_m) & np.isfinite(self.weight)
        ok &= (self.u > -0.5) & (self.u < width - 0.5) & (self.v > -0.5) & (self.v < height - 0.5)
        ok &= (self.depth_m >= min_depth_m) & (self.depth_m <= max_depth_m) & (self.weight > 0)
        return ok

    def sanitized(self, width: int, height: int, min_depth_m: float, max_depth_m: float) -> Anchors:
        return self.subset(self.valid_mask(width, height, min_depth_m, max_depth_m))


_IDENTITY = np.eye(4)


def anchors_from_points(
    points: np.ndarray,
    T_cam_frame: np.ndarray,
    intrinsics: Intrinsics,
    min_depth_m: float = 0.1,
    max_depth_m: float = 100.0,
    weights: np.ndarray | None = None,
) -> Anchors:
    """Project Nx3 points given in some frame into the camera and keep the nearest per pixel.

    Drops points that are NaN/inf, behind the camera, outside the image (through the lens distortion of
    `intrinsics`, if any) or outside [min_depth_m, max_depth_m]. The z-buffer matters for LiDAR: mounted away
    from the camera it sees surfaces behind foreground edges that the camera does not, and those must not
    anchor the foreground.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    w_in = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if len(w_in) != len(pts):
        raise ValueError(f"anchors_from_points: {len(w_in)} weights for {len(pts)} points")
    T = np.asarray(T_cam_frame, np.float64)
    # a non-finite coordinate makes every camera coordinate of its point non-finite (inf * 0 is NaN: no
    # warning for it), and the compiled pass below drops it
    with np.errstate(invalid="ignore"):
        pts_cam = pts if np.array_equal(T, _IDENTITY) else transform_points(T, pts)
        u, v, z = intrinsics.project(pts_cam)
    keep = _nearest_per_pixel(
        np.ascontiguousarray(u),
        np.ascontiguousarray(v),
        np.ascontiguousarray(z),
        w_in,
        intrinsics.width,
        intrinsics.height,
        float(min_depth_m),
        float(max_depth_m),
    )
    if len(keep) == 0:
        return Anchors.empty()
    return Anchors.from_arrays(u[keep], v[keep], z[keep], w_in[keep])


@njit(cache=True, nogil=True)
def _nearest_per_pixel(u, v, z, weight, width, height, min_depth_m, max_depth_m):
    """The z-buffer: index of the nearest usable point on each pixel that has one, in pixel (row-major) order;
    of equally near points the first. Usable: finite u, v, z and weight, z inside the range, nearest pixel
    (round half to even, as numpy) inside the image.

    Row by row, so the memory is one image row, not one image (a full-image buffer is 33 MB at 4K, fresh pages
    every frame, and its pass over every pixel cost more than the points on a 17k-point scan): the usable points
    are bucketed by row (a stable counting sort keeps the first of equally near ones first), each row's
    nearest point per column is found in a row buffer, and the row's columns are sorted."""
    n = z.size
    row_of = np.full(n, -1, np.int64)
    col_of = np.empty(n, np.int64)
    per_row = np.zeros(height + 1, np.int64)
    for i in range(n):
        zi = z[i]
        if not (zi >= min_depth_m and zi <= max_depth_m and np.isfinite(weight[i])):
            continue
        if not (np.isfinite(u[i]) and np.isfinite(v[i])):
            continue
        col = np.rint(u[i])
        row = np.rint(v[i])
        if not (col >= 0 and col < width and row >= 0 and row < height):
            continue
        row_of[i] = int(row)
        col_of[i] = int(col)
        per_row[int(row) + 1] += 1
    start = np.cumsum(per_row)
    fill = start[:-1].copy()
    by_row = np.empty(start[-1], np.int64)
    for i in range(n):
        if row_of[i] >= 0:
            by_row[fill[row_of[i]]] = i
            fill[row_of[i]] += 1
    best = np.full(width, -1, np.int64)
    cols = np.empty(width, np.int64)
    keep = np.empty(by_row.size, np.int64)
    n_keep = 0
    for r in range(height):
        n_cols = 0
        for a in range(start[r], start[r + 1]):
            i = by_row[a]
            c = col_of[i]
            j = best[c]
            if j < 0:
                best[c] = i
                cols[n_cols] = c
                n_cols += 1
            elif z[i] < z[j]:
                best[c] = i
        row_cols = np.sort(cols[:n_cols])
        for c in row_cols:
            keep[n_keep] = best[c]
            n_keep += 1
            best[c] = -1
    return keep[:n_keep]
