import numpy as np
import pytest

from scale_field_ros.camera import Intrinsics, as_transform
from scale_field_ros.ply import read_ply, write_ply


def test_ply_round_trip_of_unprojected_ground_truth(tmp_path, sun3d):
    frame = sun3d.frame(0)
    points = frame.intrinsics.unproject(frame.depth_m)
    valid = frame.depth_m > 0
    write_ply(tmp_path / "cloud.ply", points[valid], frame.rgb[valid])
    back, colours = read_ply(tmp_path / "cloud.ply")
    np.testing.assert_array_equal(back, points[valid])
    np.testing.assert_array_equal(colours, frame.rgb[valid])


def test_unproject_then_project_returns_pixels(nyu):
    frame = nyu.frame(0)
    K = frame.intrinsics
    points = K.unproject(frame.depth_m)
    valid = frame.depth_m > 0
    u, v, z = K.project(points[valid])
    rows, cols = np.nonzero(valid)
    np.testing.assert_allclose(u, cols, atol=1e-3)
    np.testing.assert_allclose(v, rows, atol=1e-3)
    np.testing.assert_allclose(z, frame.depth_m[valid])


def test_scaled_intrinsics_keep_the_ray_through_each_pixel_centre():
    K = Intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
    half = K.scaled_to(320, 240)
    assert half.fx == 250.0 and half.cx == pytest.approx(159.5)


def test_as_transform_rejects_bad_input(kitti_lidar):
    frame = kitti_lidar.frame(0)
    # a real calibration passes, as 16 row-major values or as 4 x 4, unchanged
    np.testing.assert_array_equal(as_transform(frame.T_cam_lidar.ravel().tolist()), frame.T_cam_lidar)
    np.testing.assert_array_equal(as_transform(frame.T_cam_lidar), frame.T_cam_lidar)
    not_rigid = frame.T_cam_lidar.astype(np.float64)
    not_rigid[3, 3] = 2.0  # a projective bottom row [0, 0, 0, 2]: rotation and translation are still fine
    with pytest.raises(ValueError, match="bottom row"):
        as_transform(not_rigid)
    with pytest.raises(ValueError, match="16 values"):
        as_transform([1.0] * 15)
    with pytest.raises(ValueError, match="NaN"):
        as_transform([float("nan")] * 16)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="rotation"):
        as_transform(bad)
