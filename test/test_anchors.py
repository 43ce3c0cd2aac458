"""Anchors from real LiDAR and the evaluation anchor patterns."""

from __future__ import annotations

import numpy as np

from scale_field_ros.anchors import anchors_from_points
from scale_field_ros.camera import Intrinsics
from scale_field_ros.patterns import Pattern, draw_anchors


def test_zbuffer_keeps_nearest_point_per_pixel(kitti_lidar):
    frame = kitti_lidar.frame(0)
    a = anchors_from_points(frame.lidar_points, frame.T_cam_lidar, frame.intrinsics, 0.5, 80.0)
    assert len(a) > 5000
    pix = a.pixel_index(frame.intrinsics.width)
    assert len(np.unique(pix)) == len(pix)
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
    b = anchors_from_points(both, np.eye(4), frame.intrinsics, 0.5, 80.0)
    assert len(b) == 1 and np.isclose(b.depth_m[0], a.depth_m[0], rtol=1e-4)


def test_points_behind_or_outside_are_dropped():
    k = Intrinsics(500, 500, 320, 240, 640, 480)
    pts = np.array([[0, 0, -2.0], [100, 0, 1.0], [0, 0, 2.0], [np.nan, 0, 3.0]])
    a = anchors_from_points(pts, np.eye(4), k, 0.1, 80.0)
    assert len(a) == 1 and a.depth_m[0] == 2.0


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
