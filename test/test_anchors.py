"""Anchors from real LiDAR and the evaluation anchor patterns."""

from __future__ import annotations

import numpy as np
import pytest

from scale_field_ros.anchors import anchors_from_points
from scale_field_ros.camera import Intrinsics
from scale_field_ros.patterns import Pattern, draw_anchors


def test_zbuffer_keeps_nearest_point_per_pixel(kitti_lidar):
    frame = kitti_lidar.frame(0)
    a = anchors_from_points(frame.lidar_points, frame.T_cam_lidar, frame.intrinsics, 0.5, 80.0)
    assert len(a) > 5000
    pix = a.pixel_index(frame.intrinsics.width)
    assert np.all(np.diff(pix) > 0)  # one anchor per pixel, in row-major pixel order
    # each is the nearest of the scan's points on its pixel (brute force over every projected point)
    k = frame.intrinsics
    pts_cam = frame.lidar_points.astype(np.float64) @ frame.T_cam_lidar[:3, :3].T + frame.T_cam_lidar[:3, 3]
    pts_cam = pts_cam[(pts_cam[:, 2] >= 0.5) & (pts_cam[:, 2] <= 80.0)]
    col = np.round(k.fx * pts_cam[:, 0] / pts_cam[:, 2] + k.cx).astype(int)
    row = np.round(k.fy * pts_cam[:, 1] / pts_cam[:, 2] + k.cy).astype(int)
    inside = (col >= 0) & (col < k.width) & (row >= 0) & (row < k.height)
    nearest = np.full(k.width * k.height, np.inf)
    np.minimum.at(nearest, (row * k.width + col)[inside], pts_cam[inside, 2])
    # (a pixel in a thousand may differ: rounding a float32 u that sat at a half pixel in float64)
    assert len(set(np.flatnonzero(np.isfinite(nearest))) ^ set(pix)) < 1e-3 * len(pix)
    same = np.isfinite(nearest[pix])
    assert same.mean() > 0.999
    np.testing.assert_allclose(a.depth_m[same], nearest[pix[same]], rtol=1e-6)
    # a point pushed 10 m behind an existing anchor along its ray is hidden by the z-buffer
    pts_cam = np.stack(
        [
            (a.u[:1] - frame.intrinsics.cx) / frame.intrinsics.fx,
            (a.v[:1] - frame.intrinsics.cy) / frame.intrinsics.fy,
            np.ones(1),
        ],
        1,
    ) * (a.depth_m[0] + 10)
    both = np.vstack([pts_cam, pts_cam / (a.depth_m[0] + 10) * a.depth_m[0]])
    for order in ([0, 1], [1, 0]):  # far point first, then near point first: the near one wins either way
        b = anchors_from_points(both[order], np.eye(4), frame.intrinsics, 0.5, 80.0)
        assert len(b) == 1 and np.isclose(b.depth_m[0], a.depth_m[0], rtol=1e-4), order
    # the nearest, not the first or the last of the scan: the same pixels and depths whatever the points' order
    # (about a hundred pixels of this scan hold more than one point)
    n = len(frame.lidar_points)
    for order in (np.arange(n)[::-1], np.random.default_rng(0).permutation(n)):
        c = anchors_from_points(frame.lidar_points[order], frame.T_cam_lidar, frame.intrinsics, 0.5, 80.0)
        np.testing.assert_array_equal(c.pixel_index(frame.intrinsics.width), pix)
        np.testing.assert_array_equal(c.depth_m, a.depth_m)


def test_points_behind_outside_or_not_finite_are_dropped():
    k = Intrinsics(500, 500, 320, 240, 640, 480)
    pts = np.array([[0, 0, -2.0], [100, 0, 1.0], [0, 0, 2.0], [np.nan, 0, 3.0], [0, 0, np.inf], [0, 0.1, 90.0]])
    a = anchors_from_points(pts, np.eye(4), k, 0.1, 80.0)
    assert len(a) == 1 and a.depth_m[0] == 2.0
    # through a transform a NaN or inf coordinate spoils every camera coordinate of its point, none of the others
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 1.0]
    moved = anchors_from_points(pts, T, k, 0.1, 80.0)
    assert len(moved) == 1 and moved.depth_m[0] == 3.0
    # a non-finite weight drops its point; the weights must match the points one to one
    many = np.array([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0], [-0.5, 0.0, 2.0]])
    w = anchors_from_points(many, np.eye(4), k, 0.1, 80.0, weights=np.array([1.0, np.nan, 2.0]))
    np.testing.assert_array_equal(np.sort(w.weight), [1.0, 2.0])
    with pytest.raises(ValueError, match="weights"):
        anchors_from_points(many, np.eye(4), k, 0.1, 80.0, weights=np.ones(2))
    # of equally near points on one pixel the first wins; pixels come out in row-major order
    u, v, z = np.array([[320, 240, 2.0], [320.2, 240, 2.0], [100, 50, 3.0], [100, 50, 1.5], [500, 50, 2.0]]).T
    on_pixels = np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z], axis=1)
    t = anchors_from_points(on_pixels, np.eye(4), k, 0.1, 80.0, weights=np.arange(1.0, 6.0))
    np.testing.assert_array_equal(t.weight, [4.0, 5.0, 1.0])


def test_patterns_are_reproducible_and_on_valid_truth(kitti):
    frame = kitti.frame(0)
    for pattern in ("uniform", "lidar", "vio"):
        a = draw_anchors(frame, pattern, 200, seed=5).anchors
        b = draw_anchors(frame, pattern, 200, seed=5).anchors
        c = draw_anchors(frame, pattern, 200, seed=6).anchors
        assert 150 <= len(a) <= 200, pattern
        np.testing.assert_array_equal(a.u, b.u)
        assert not np.array_equal(a.u, c.u) or not np.array_equal(a.v, c.v), pattern
        assert np.all(frame.depth_m[a.v.astype(int), a.u.astype(int)] > 0)
    lidar = draw_anchors(frame, "lidar", 200, seed=0).anchors
    assert len(np.unique(lidar.v)) <= 10  # a few scan lines


def test_native_holds_out_lidar_points_and_noise_outliers(kitti_lidar):
    frame = kitti_lidar.frame(0)
    draw = draw_anchors(frame, Pattern.NATIVE, 300, seed=0)
    assert len(draw.anchors) == 300
    held = draw.truth_depth_m > 0
    assert (
        held.sum() > 5000 and not held[np.round(draw.anchors.v).astype(int), np.round(draw.anchors.u).astype(int)].any()
    )
    noisy = draw_anchors(frame, Pattern.NATIVE, 300, seed=0, noise=0.02, outliers=0.1)
    ratio = noisy.anchors.depth_m / draw.anchors.depth_m
    assert np.sum(np.abs(np.log(ratio)) > 0.35) == 30
    assert 0.005 < np.std(ratio[np.abs(np.log(ratio)) < 0.2]) < 0.05
