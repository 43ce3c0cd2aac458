"""The node on real data through DDS: SUN3D frames with VIO-like anchors (camera frame, and world-frame
landmarks with odometry) and the KITTI Velodyne scan in its own frame. The received depth must score like
the evaluation code path (`Pipeline` called directly with the same anchors), and the points must be the
depth unprojected with the camera intrinsics."""

from __future__ import annotations

import numpy as np
import pytest
from lens_frames import LENSES, raw_frame, with_lens
from node_harness import NodeHarness, camera_points, depth_of, domain_id

from scale_field_ros import msg_codec
from scale_field_ros.anchors import anchors_from_points
from scale_field_ros.datasets import load_dataset, shared_root
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.pipeline import Pipeline
from scale_field_ros.poses import interpolate_transform, invert_transform
from scale_field_ros.ros.node import decimated_points
from scale_field_ros.ros.params import settings_from_values

DATA = shared_root() / "data"
pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not (DATA / "sun3d_seq").is_dir(), reason=f"shared data not found at {DATA}"),
]
N_ANCHORS = 200
DECIMATION = 4
MAX_AGE = 0.01  # one landmark set per 30 Hz frame: never merge a neighbour's
T_BODY_CAM = np.array([[0.0, 0.0, 1.0, 0.1], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.3], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def backbone():
    from scale_field_ros.backbones import load_backbone

    return load_backbone()


def reference_absrel(backbone, params, frame, anchors, truth) -> float:
    """`scale-field eval`'s path: the same Pipeline, frames independent, the same anchors and mask."""
    _, config = settings_from_values(params)
    result = Pipeline(backbone, config).process(frame.rgb, anchors)
    mask = evaluation_mask(truth, config.min_depth_m, config.max_depth_m, anchors)
    return compute_metrics(result.depth_m, truth, mask).absrel


def node_absrel(depth, params, anchors, truth) -> float:
    _, config = settings_from_values(params)
    mask = evaluation_mask(truth, config.min_depth_m, config.max_depth_m, anchors)
    return compute_metrics(depth, truth, mask).absrel


def check_points(harness, depth, rgb, intrinsics):
    clouds = harness.messages("metric_depth/points")
    assert clouds, "no point cloud received"
    cloud = clouds[-1]
    decoded = msg_codec.pointcloud2_msg_to_xyz(cloud)
    expected, colours = decimated_points(depth, rgb, intrinsics, DECIMATION)
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    # the same pixels unprojected at full resolution, independently of the node's helper
    full = intrinsics.unproject(depth)[::DECIMATION, ::DECIMATION].reshape(-1, 3)
    np.testing.assert_allclose(decoded, full, atol=1e-4)
    names = [f.name for f in cloud.fields]
    assert names[:4] == ["x", "y", "z", "rgb"]
    rgb_field = np.frombuffer(bytes(cloud.data), "<f4").reshape(-1, 4)[:, 3]
    np.testing.assert_array_equal(msg_codec.unpack_rgb_float(rgb_field), colours)


def test_sun3d_camera_frame_anchors(backbone, sun3d):
    params = {
        "max_depth_m": sun3d.max_depth_m,
        "filter.enabled": False,
        "point_decimation": DECIMATION,
        "anchor_max_age": MAX_AGE,
    }
    h = NodeHarness(domain_id(1), backbone, params)
    try:
        for i in range(3):
            frame = sun3d.frame(i)
            stamp = 100.0 + i / 30.0
            draw = draw_anchors(frame, "vio", N_ANCHORS, seed=i)
            h.publish_camera_info(frame.intrinsics, stamp)
            h.publish_anchors(camera_points(draw.anchors, frame.intrinsics), stamp)
            msg = h.process_frame(frame.rgb, stamp)
            assert msg.encoding == "32FC1" and msg.header.frame_id == "camera_optical"
            depth = depth_of(msg)
            got = node_absrel(depth, params, draw.anchors, draw.truth_depth_m)
            ref = reference_absrel(backbone, params, frame, draw.anchors, draw.truth_depth_m)
            assert abs(got - ref) <= 0.005, f"frame {i}: node AbsRel {got:.4f}, eval path {ref:.4f}"
            assert got < 0.5
        h.wait_for(lambda: h.count("metric_depth/points") >= 3, 10.0, "point clouds")
        check_points(h, depth, frame.rgb, frame.intrinsics)
    finally:
        h.close()


def test_sun3d_world_landmarks_with_odometry(backbone, sun3d):
    params = {
        "max_depth_m": sun3d.max_depth_m,
        "filter.enabled": False,
        "anchors_in_world": True,
        "T_body_cam": tuple(T_BODY_CAM.ravel()),
        "point_decimation": DECIMATION,
        "anchor_max_age": MAX_AGE,
    }
    h = NodeHarness(domain_id(2), backbone, params)
    try:
        frames = [sun3d.frame(i) for i in range(3)]
        # odometry at 2x the camera rate, stamps between the images: the node interpolates
        for k in range(7):
            t = 100.0 + k / 60.0 - 1 / 120.0
            j = min(max(int(np.floor((t - 100.0) * 30.0)), 0), 1)
            # poses from the sequence (extrapolated half a step at the ends), body = camera mounted with T_body_cam
            alpha = float(np.clip((t - 100.0) * 30.0 - j, -0.5, 1.5))
            T_wc = interpolate_transform(frames[j].T_world_cam, frames[j + 1].T_world_cam, alpha)
            h.publish_odom(T_wc @ invert_transform(T_BODY_CAM), t, wait=k == 6)  # all buffered before the images
        for i, frame in enumerate(frames):
            stamp = 100.0 + i / 30.0
            draw = draw_anchors(frame, "vio", N_ANCHORS, seed=i)
            pts_cam = camera_points(draw.anchors, frame.intrinsics)
            pts_world = pts_cam @ frame.T_world_cam[:3, :3].T + frame.T_world_cam[:3, 3]
            h.publish_camera_info(frame.intrinsics, stamp)
            h.publish_anchors(pts_world, stamp, frame_id="world")
            depth = depth_of(h.process_frame(frame.rgb, stamp))
            # the node's anchors went world -> camera through interpolated odometry; the reference uses
            # the same landmarks projected with the true pose
            ref_anchors = anchors_from_points(pts_cam, np.eye(4), frame.intrinsics, 0.1, sun3d.max_depth_m)
            got = node_absrel(depth, params, ref_anchors, draw.truth_depth_m)
            ref = reference_absrel(backbone, params, frame, ref_anchors, draw.truth_depth_m)
            assert abs(got - ref) <= 0.005, f"frame {i}: node AbsRel {got:.4f}, eval path {ref:.4f}"
            assert h.node.stats.n_anchors >= 0.8 * len(ref_anchors)
    finally:
        h.close()


def test_sun3d_raw_image_with_its_lens_calibration(backbone, sun3d):
    # a raw (unrectified) image with the distortion in its camera_info: the anchors are projected through the
    # lens, the cloud is unprojected along its rays, and metric_depth/camera_info carries the same calibration
    params = {"max_depth_m": sun3d.max_depth_m, "filter.enabled": False, "point_decimation": DECIMATION}
    _, config = settings_from_values(params)
    frame = sun3d.frame(0)
    cam = with_lens(frame.intrinsics, *LENSES[0])
    rgb, truth, _, _ = raw_frame(frame, cam)
    valid = np.flatnonzero(frame.depth_m > 0)
    pick = np.sort(np.random.default_rng(0).choice(valid.size, 300, replace=False))
    points = frame.intrinsics.unproject(frame.depth_m).reshape(-1, 3)[valid[pick]]
    anchors = anchors_from_points(points, np.eye(4), cam, config.min_depth_m, config.max_depth_m)
    h = NodeHarness(domain_id(4), backbone, params)
    try:
        stamp = 70.0
        h.publish_camera_info(cam, stamp)
        h.publish_anchors(points, stamp)
        depth = depth_of(h.process_frame(rgb, stamp))
        got = node_absrel(depth, params, anchors, truth)
        result = Pipeline(backbone, config).process(rgb, anchors)
        ref = compute_metrics(result.depth_m, truth, evaluation_mask(truth, 0.1, sun3d.max_depth_m, anchors)).absrel
        assert abs(got - ref) <= 0.005, f"node AbsRel {got:.4f}, eval path {ref:.4f}"
        assert h.node.stats.n_anchors >= 0.9 * len(anchors)
        h.wait_for(
            lambda: h.count("metric_depth/points") >= 1 and h.count("metric_depth/camera_info") >= 1, 10.0, "outputs"
        )
        info = h.messages("metric_depth/camera_info")[-1]
        assert info.distortion_model == cam.distortion_model
        np.testing.assert_allclose(info.d, cam.d)
        assert msg_codec.camera_info_msg_to_intrinsics(info) == cam
        check_points(h, depth, rgb, cam)
    finally:
        h.close()


def test_kitti_velodyne_in_its_own_frame(backbone):
    ds = load_dataset(DATA / "kitti_lidar")
    frame = ds.frame(0)
    params = {
        "max_depth_m": ds.max_depth_m,
        "filter.enabled": False,
        "point_decimation": DECIMATION,
        "T_cam_anchor": tuple(frame.T_cam_lidar.ravel()),
    }
    _, config = settings_from_values(params)
    rng = np.random.default_rng(0)
    pts = frame.lidar_points
    pick = rng.random(len(pts)) < 0.1  # a sparse tenth of the scan anchors, the rest scores
    anchors = anchors_from_points(
        pts[pick], frame.T_cam_lidar, frame.intrinsics, config.min_depth_m, config.max_depth_m
    )
    held = anchors_from_points(pts[~pick], frame.T_cam_lidar, frame.intrinsics, config.min_depth_m, config.max_depth_m)
    truth = held.depth_image(frame.intrinsics.width, frame.intrinsics.height)
    h = NodeHarness(domain_id(3), backbone, params)
    try:
        stamp = 50.0
        h.publish_camera_info(frame.intrinsics, stamp)
        h.publish_anchors(pts[pick], stamp, frame_id="velodyne")
        depth = depth_of(h.process_frame(frame.rgb, stamp))
        got = node_absrel(depth, params, anchors, truth)
        ref = reference_absrel(backbone, params, frame, anchors, truth)
        assert abs(got - ref) <= 0.005, f"node AbsRel {got:.4f}, eval path {ref:.4f}"
        assert h.node.stats.n_anchors > 100
        h.wait_for(lambda: h.count("metric_depth/points") >= 1, 10.0, "point cloud")
        check_points(h, depth, frame.rgb, frame.intrinsics)
    finally:
        h.close()


def test_kitti_scan_from_a_moving_car_is_deskewed(backbone):
    # the scan re-taken from a car driving at 10 m/s (`driving_scan`), Ouster-style per-point times (uint32 ns
    # after the stamp, the scan's start) and 100 Hz odometry: the node's depth scores as the true scan's anchors do
    from driving_scan import IMAGE_AFTER_SCAN_S, odometry, skewed_scan

    frame = load_dataset(DATA / "kitti_lidar").frame(0)
    params = {
        "max_depth_m": 80.0,
        "filter.enabled": False,
        "point_decimation": DECIMATION,
        "T_cam_anchor": tuple(frame.T_cam_lidar.ravel()),
        "T_body_cam": tuple(invert_transform(frame.T_cam_lidar).ravel()),  # the body frame is the LiDAR's
        "anchor_max_age": 0.06,
    }
    _, config = settings_from_values(params)
    points, offsets = skewed_scan(frame.lidar_points)
    pick = np.random.default_rng(0).random(len(points)) < 0.1
    true_pts = frame.lidar_points
    anchors = anchors_from_points(true_pts[pick], frame.T_cam_lidar, frame.intrinsics, 0.1, 80.0)
    held = anchors_from_points(true_pts[~pick], frame.T_cam_lidar, frame.intrinsics, 0.1, 80.0)
    truth = held.depth_image(frame.intrinsics.width, frame.intrinsics.height)
    h = NodeHarness(domain_id(5), backbone, params)
    try:
        stamp = 60.0
        stamps, poses = odometry(stamp)
        for k, (t, T) in enumerate(zip(stamps, poses, strict=True)):
            h.publish_odom(T, float(t), wait=k == len(stamps) - 1)
        h.publish_camera_info(frame.intrinsics, stamp + IMAGE_AFTER_SCAN_S)
        t_ns = np.round(offsets[pick] * 1e9).astype(np.uint32)
        h.publish_anchors(points[pick], stamp, frame_id="velodyne", columns={"t": t_ns})
        depth = depth_of(h.process_frame(frame.rgb, stamp + IMAGE_AFTER_SCAN_S))
        got = node_absrel(depth, params, anchors, truth)
        ref = reference_absrel(backbone, params, frame, anchors, truth)
        assert abs(got - ref) <= 0.005, f"node AbsRel {got:.4f}, eval path on the true scan {ref:.4f}"
        assert not [c for c in h.node.warn.counts if c.startswith(("deskew", "odom", "anchor"))], h.node.warn.counts
    finally:
        h.close()
