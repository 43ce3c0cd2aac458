"""Anchor patterns for evaluation, reproducible from a seed.

- uniform: random pixels with valid ground truth;
- lidar: a few horizontal scan lines across the image with points along each (a 16-64 beam LiDAR);
- vio: Shi-Tomasi corners of the RGB image where ground truth is valid (VIO landmarks);
- native: the dataset's own LiDAR points (z-buffered), subsampled; the rest are held out for scoring.
Optional multiplicative Gaussian noise and a fraction of gross outliers (depth times 1.5-4 or divided by it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import cv2
import numpy as np

from .anchors import Anchors, anchors_from_points
from .datasets import Frame


class Pattern(str, enum.Enum):
    UNIFORM = "uniform"
    LIDAR = "lidar"
    VIO = "vio"
    NATIVE = "native"


@dataclass(frozen=True)
class AnchorDraw:
    """Anchors for one frame and the ground truth to score against (dense GT, or held-out LiDAR depth)."""

    anchors: Anchors
    truth_depth_m: np.ndarray  # H x W, 0 where unknown


def supports(frame: Frame, pattern: Pattern) -> bool:
    if pattern is Pattern.NATIVE:
        return frame.lidar_points is not None and frame.T_cam_lidar is not None
    return frame.depth_m is not None


def draw_anchors(
    frame: Frame,
    pattern: Pattern | str,
    n: int,
    seed: int = 0,
    noise: float = 0.0,
    outliers: float = 0.0,
    min_depth_m: float = 1e-3,
) -> AnchorDraw:
    pattern = Pattern(pattern)
    rng = np.random.default_rng(seed)
    if not supports(frame, pattern):
        raise ValueError(f"{frame.dataset}/{frame.frame_id} has no data for the {pattern.value} pattern")
    if pattern is Pattern.NATIVE:
        anchors, truth = _native(frame, n, rng, min_depth_m)
    else:
        truth = frame.depth_m
        valid = np.isfinite(truth) & (truth > min_depth_m) & (truth <= frame.max_depth_m)
        if pattern is Pattern.UNIFORM:
            flat = np.flatnonzero(valid)
            pick = rng.choice(flat, size=min(n, flat.size), replace=False) if flat.size else flat
            rows, cols = np.divmod(pick, truth.shape[1])
        elif pattern is Pattern.LIDAR:
            rows, cols = _scan_lines(valid, n, rng)
        else:
            rows, cols = _corners(frame.rgb, valid, n, rng)
        anchors = Anchors.from_arrays(cols, rows, truth[rows, cols])
    return AnchorDraw(_corrupt(anchors, noise, outliers, rng), truth)


def _scan_lines(valid: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points on about sqrt(n/4) rows (2-64), evenly spread along each row's valid pixels."""
    h, w = valid.shape
    rows_valid = np.flatnonzero(valid.any(axis=1))
    if rows_valid.size == 0 or n <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_lines = int(np.clip(round(np.sqrt(n / 4.0)), 2, 64))
    lo, hi = rows_valid[0], rows_valid[-1]
    step = (hi - lo + 1) / n_lines
    line_rows = np.clip((lo + (np.arange(n_lines) + rng.uniform(0.2, 0.8)) * step).astype(int), lo, hi)
    # each line on the nearest row with ground truth (sparse ground truth may leave a chosen row empty)
    nearest = np.abs(rows_valid[:, None] - line_rows[None, :]).argmin(axis=0)
    line_rows = np.unique(rows_valid[nearest])
    per_line = int(np.ceil(n / len(line_rows)))
    rr, cc = [], []
    for r in line_rows:
        cols = np.flatnonzero(valid[r])
        take = np.unique(np.linspace(0, cols.size - 1, min(per_line, cols.size)).round().astype(int))
        rr.append(np.full(take.size, r))
        cc.append(cols[take])
    rows, cols = np.concatenate(rr), np.concatenate(cc)
    if rows.size > n:
        keep = np.sort(rng.choice(rows.size, n, replace=False))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _corners(rgb: np.ndarray, valid: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Strongest Shi-Tomasi corners on valid ground truth; a random n of the best 2n so seeds differ."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    pts = cv2.goodFeaturesToTrack(grey, maxCorners=max(8 * n, 100), qualityLevel=1e-3, minDistance=3)
    if pts is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = np.round(pts[:, 0, 0]).astype(np.int64)
    rows = np.round(pts[:, 0, 1]).astype(np.int64)
    ok = valid[rows, cols]
    rows, cols = rows[ok][: 2 * n], cols[ok][: 2 * n]
    if rows.size > n:
        keep = np.sort(rng.choice(rows.size, n, replace=False))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _native(frame: Frame, n: int, rng: np.random.Generator, min_depth_m: float) -> tuple[Anchors, np.ndarray]:
    all_pts = anchors_from_points(
        frame.lidar_points, frame.T_cam_lidar, frame.intrinsics, max(min_depth_m, 0.5), frame.max_depth_m
    )
    m = len(all_pts)
    pick = rng.choice(m, size=min(n, m), replace=False) if m else np.zeros(0, np.int64)
    held = np.ones(m, bool)
    held[pick] = False
    if frame.depth_m is not None:
        truth = frame.depth_m.copy()
    else:
        truth = all_pts.subset(held).depth_image(frame.intrinsics.width, frame.intrinsics.height)
    return all_pts.subset(np.sort(pick)), truth


def _corrupt(anchors: Anchors, noise: float, outliers: float, rng: np.random.Generator) -> Anchors:
    n = len(anchors)
    if n == 0 or (noise <= 0 and outliers <= 0):
        return anchors
    depth = anchors.depth_m.astype(np.float64)
    if noise > 0:
        depth = depth * np.clip(1.0 + noise * rng.standard_normal(n), 0.2, None)
    if outliers > 0:
        k = int(round(outliers * n))
        bad = rng.choice(n, size=k, replace=False)
        factor = rng.uniform(np.log(1.5), np.log(4.0), size=k) * rng.choice([-1.0, 1.0], size=k)
        depth[bad] = depth[bad] * np.exp(factor)
    return Anchors.from_arrays(anchors.u, anchors.v, depth, anchors.weight)
