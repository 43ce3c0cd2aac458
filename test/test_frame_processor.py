"""The node's per-image work (`FrameProcessor`) without DDS: image-stamp resets, anchor timing, the odometry frame
check and how camera_info is read (region of interest, binning, rectified input)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python wheels (message types)")

from field_backbone import backbone  # noqa: E402
from node_harness import header  # noqa: E402

from scale_field_ros.frame_processor import FrameProcessor  # noqa: E402
from scale_field_ros.ros import conversions as conv  # noqa: E402
from scale_field_ros.run_offline import load_settings  # noqa: E402


@pytest.mark.parametrize("tolerance_s", [0.5, 5.0])
def test_image_stamps_going_back_reset_by_the_filter_setting(sun3d, tolerance_s):
    settings, config = load_settings()
    config = dataclasses.replace(config, filter=dataclasses.replace(config.filter, backwards_tolerance_s=tolerance_s))
    proc = FrameProcessor(settings, config, backbone())
    frame = sun3d.frame(0)
    proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera")))
    msg = conv.rgb8_image_msg(frame.rgb, header(0.0, "camera"))
    assert proc.process_image(msg, False, 100.0).frame is not None
    step = proc.process_image(msg, False, 98.0)  # 2 s back: a reset only where the tolerance is shorter
    assert step.frame is not None
    warned = any(cause == "image_stamp_backwards" for cause, _ in step.warnings)
    assert warned == (tolerance_s < 2.0)


@pytest.mark.parametrize("max_age_s", [0.06, 0.2])
def test_scans_stamped_at_sweep_start_need_a_longer_anchor_age(sun3d, max_age_s):
    # a 10 Hz LiDAR stamping each scan at the start of its sweep, delivered 110 ms after that stamp; a 30 Hz
    # camera processed on arrival. With the default window no image ever finds a scan, and the coasting warning
    # says why; with a window above the period plus latency every image does.
    from scale_field_ros import msg_codec

    settings, config = load_settings()
    settings = dataclasses.replace(settings, anchor_max_age=max_age_s)
    config = dataclasses.replace(config, filter=dataclasses.replace(config.filter, max_coast_s=0.3))
    proc = FrameProcessor(settings, config, backbone())
    frame = sun3d.frame(0)
    proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera")))
    msg = conv.rgb8_image_msg(frame.rgb, header(0.0, "camera"))
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-1, 1, 500), rng.uniform(-0.7, 0.7, 500), rng.uniform(1.5, 4.0, 500)])
    cloud = conv.cloud_msg(msg_codec.cloud_fields(points.astype(np.float32)), header(0.0, "camera"))
    found, why = [], []
    for i in range(30):
        t = 10.0 + i / 30.0
        if i % 3 == 0 and i >= 3:  # the scan that started 0.11 s ago arrives now
            proc.on_anchors(cloud, round(t - 0.11, 6))
        step = proc.process_image(msg, False, t)
        assert step.frame is not None
        found.append(step.frame.found.n_sets)
        why += [text for cause, text in step.warnings if cause == "coasting"]
    if max_age_s < 0.11:
        assert max(found) == 0
        assert why and "anchor_max_age" in why[-1] and "before the image" in why[-1]
    else:
        assert min(found[3:]) >= 1 and not why


def test_odometry_of_another_frame_with_identity_T_body_cam_is_warned(sun3d):
    from nav_msgs.msg import Odometry

    settings, config = load_settings()  # motion compensation on, T_body_cam identity
    frame = sun3d.frame(0)
    msg = conv.rgb8_image_msg(frame.rgb, header(0.0, "camera"))  # frame_id "camera"

    def warned(child: str, T_body_cam=None) -> bool:
        s = settings if T_body_cam is None else dataclasses.replace(settings, T_body_cam=T_body_cam)
        proc = FrameProcessor(s, config, backbone())
        proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera")))
        for t in (9.9, 10.1):
            odom = Odometry()
            odom.header, odom.child_frame_id = header(t, "odom"), child
            odom.pose.pose.orientation.w = 1.0
            assert proc.on_odom(odom, t) == []
        step = proc.process_image(msg, False, 10.0)
        return any(cause == "T_body_cam_identity" for cause, _ in step.warnings)

    rep103 = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)  # optical -> base_link
    assert warned("base_link")
    assert not warned("camera")  # the odometry is the camera's own
    assert not warned("base_link", rep103)


@pytest.mark.parametrize("anchors_in_world", [False, True])
def test_anchors_of_another_frame_than_the_transform_assumes_are_warned(kitti_lidar, anchors_in_world):
    # the raw Velodyne scan (x forward, z up) with T_cam_anchor left at identity: taken for camera optical points,
    # it lands almost wholly behind or beside the camera, and no anchor was used without a word
    from nav_msgs.msg import Odometry

    from scale_field_ros import msg_codec

    settings, config = load_settings()
    settings = dataclasses.replace(settings, anchors_in_world=anchors_in_world, motion_compensation=False)
    frame = kitti_lidar.frame(0)
    scan = frame.lidar_points.astype(np.float32)

    def causes(cloud_frame: str, T_cam_anchor=None) -> set[str]:
        s = settings if T_cam_anchor is None else dataclasses.replace(settings, T_cam_anchor=T_cam_anchor)
        proc = FrameProcessor(s, config, backbone())
        proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera_optical")))
        odom = Odometry()
        odom.header, odom.child_frame_id = header(10.0, "odom"), "camera_optical"
        odom.pose.pose.orientation.w = 1.0
        assert proc.on_odom(odom, 10.0) == []
        assert proc.on_anchors(conv.cloud_msg(msg_codec.cloud_fields(scan), header(10.0, cloud_frame)), 10.0) == []
        step = proc.process_image(conv.rgb8_image_msg(frame.rgb, header(10.0, "camera_optical")), False, 10.0)
        return {cause for cause, _ in step.warnings}

    if anchors_in_world:  # landmarks must be in the odometry's world frame
        assert "anchors_world_frame" in causes("velodyne")
        assert "anchors_world_frame" not in causes("odom") | causes("")
    else:
        assert "T_cam_anchor_identity" in causes("velodyne")
        assert "T_cam_anchor_identity" not in causes("velodyne", frame.T_cam_lidar)
        assert "T_cam_anchor_identity" not in causes("camera_optical") | causes("")


def test_camera_info_region_of_interest_and_binning_are_read_from_the_message(sun3d):
    from scale_field_ros import msg_codec

    settings, config = load_settings()
    proc = FrameProcessor(settings, config, None)
    intrinsics = sun3d.frame(0).intrinsics
    msg = conv.camera_info_msg(intrinsics, header(0.0, "camera"))
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 160, 120, 320, 240
    msg.binning_x = msg.binning_y = 2
    assert proc.on_camera_info(msg) == []
    fields = msg_codec.camera_info_fields(intrinsics)
    expected = msg_codec.camera_info_to_intrinsics(fields.k, fields.width, fields.height, roi=(160, 120, 320, 240),
                                                   binning=(2, 2))  # fmt: skip
    assert proc.camera_info.intrinsics == expected and expected.width == 160


@pytest.mark.parametrize("rectified", [False, True])
def test_a_rectified_image_takes_its_intrinsics_from_p(sun3d, rectified):
    # a raw camera's calibration: K with plumb_bob distortion, and P of the rectified image (other focal length)
    settings, config = load_settings()
    proc = FrameProcessor(dataclasses.replace(settings, image_rectified=rectified), config, None)
    intrinsics = sun3d.frame(0).intrinsics
    msg = conv.camera_info_msg(intrinsics, header(0.0, "camera"))
    msg.distortion_model, msg.d = "plumb_bob", [0.1, -0.05, 0.0, 0.0, 0.0]
    fx_rect, cx_rect = 0.9 * intrinsics.fx, intrinsics.cx + 3.0
    msg.p = [fx_rect, 0.0, cx_rect, 0.0, 0.0, 0.9 * intrinsics.fy, intrinsics.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert proc.on_camera_info(msg) == []
    got = proc.camera_info.intrinsics
    if rectified:
        assert not got.distorted and (got.fx, got.cx) == (fx_rect, cx_rect)
    else:
        assert got.distorted and (got.fx, got.cx) == (intrinsics.fx, intrinsics.cx)


def test_stamps_creeping_back_add_up_to_a_reported_reset(sun3d):
    # each image 0.4 s before the last (within the 0.5 s tolerance): the third is 0.8 s behind the newest
    proc, frame, msg = _processor(sun3d)
    warned = []
    for t in (10.0, 9.6, 9.2):
        step = proc.process_image(msg, False, t)
        warned.append(any(cause == "image_stamp_backwards" for cause, _ in step.warnings))
    assert warned == [False, False, True]


def test_a_bag_loop_keeps_the_new_timelines_early_odometry_and_anchors(sun3d):
    proc, msg, odom, cloud = _processor_with_odom_and_cloud(sun3d)
    for t in (50.0, 50.05, 50.1):  # the old timeline
        proc.on_odom(odom, t)
        proc.on_anchors(cloud, t)
    assert proc.process_image(msg, False, 50.1).frame is not None
    # the bag loops: its first odometry and scan arrive before its first image (they clear the old ones)
    for t in (0.0, 0.01):
        proc.on_odom(odom, t)
    proc.on_anchors(cloud, 0.01)
    step = proc.process_image(msg, False, 0.02)
    assert any(cause == "image_stamp_backwards" for cause, _ in step.warnings)
    assert len(proc.pose_buffer) == 2 and proc.pose_buffer.covers(0.01)
    assert step.frame.found.n_sets == 1


def test_a_bag_loop_drops_what_arrived_before_it_whatever_its_stamp(sun3d):
    # the clock goes back 0.75 s and the new timeline's first image comes before its odometry and scans: the old
    # timeline's poses and scans stamped around the new images were kept and mixed with the new ones
    proc, msg, odom, cloud = _processor_with_odom_and_cloud(sun3d)
    odom.pose.pose.position.x = 1.0  # the old trajectory
    for k in range(80):
        t = round(5.0 + k * 0.05, 6)
        proc.on_odom(odom, t)
        proc.on_anchors(cloud, t)
    assert proc.process_image(msg, False, 8.95).frame is not None
    step = proc.process_image(msg, False, 8.2)
    assert any(cause == "image_stamp_backwards" for cause, _ in step.warnings)
    odom.pose.pose.position.x = -1.0  # the new trajectory
    for t in (8.22, 8.27):
        assert proc.on_odom(odom, t) == []
    assert proc.on_anchors(cloud, 8.25) == []
    np.testing.assert_allclose(proc.pose_buffer.lookup(8.25)[:3, 3], [-1.0, 0.0, 0.0])
    assert proc.process_image(msg, False, 8.25).frame.found.n_sets == 1


def test_an_image_in_a_gap_of_the_odometry_is_warned_not_given_an_invented_pose(sun3d):
    proc, msg, odom, cloud = _processor_with_odom_and_cloud(sun3d)
    for t in (9.0, 11.0):  # 2 s without odometry around the image
        proc.on_odom(odom, t)
    proc.on_anchors(cloud, 10.0)
    step = proc.process_image(msg, False, 10.0)
    assert [text for cause, text in step.warnings if cause == "odom_missing"] == [
        "odometry does not cover the image stamp (10.000 s; a pose is looked up at most odom_max_extrapolation 0.1 s "
        "outside the buffered ones, and between two at most 0.5 s apart)"
    ]


def test_odometry_far_ahead_of_the_images_is_refused_and_keeps_the_history(sun3d):
    from nav_msgs.msg import Odometry

    settings, config = load_settings()
    proc = FrameProcessor(settings, config, backbone())
    odom = Odometry()
    odom.pose.pose.orientation.w = 1.0
    proc.on_image_stamp(101.0)
    for k in range(200):
        assert proc.on_odom(odom, 100.0 + k * 0.01) == []
    warnings = proc.on_odom(odom, 100.0 + 3600.0)  # one glitched stamp, an hour ahead
    assert [cause for cause, _ in warnings] == ["odom_far_future"]
    assert len(proc.pose_buffer) == 200 and proc.pose_buffer.lookup(101.5) is not None
    assert proc.on_odom(odom, 102.0) == []  # and the next normal sample is not taken for a loop


def test_far_future_stamps_from_before_the_first_image_are_dropped_by_it(sun3d):
    # with no image yet nothing bounds a stamp: a glitched one was kept and hid the later sets until one of them
    # cleared the buffer as a loop ("anchor stamps went backwards", the wrong cause)
    proc, msg, odom, cloud = _processor_with_odom_and_cloud(sun3d)
    for t in (9.95, 10.0):
        proc.on_odom(odom, t)
    proc.on_anchors(cloud, 10.0)
    proc.on_odom(odom, 3610.0)  # glitched stamps, an hour ahead
    proc.on_anchors(cloud, 3610.0)
    causes = {cause for cause, _ in proc.process_image(msg, False, 10.01).warnings}
    assert {"anchors_far_future", "odom_far_future"} <= causes
    assert proc.anchor_buffer.newest_stamp_s is None and proc.pose_buffer.newest_stamp_s is None
    assert proc.on_anchors(cloud, 10.03) == [] and proc.on_odom(odom, 10.03) == []  # no loop taken
    assert proc.process_image(msg, False, 10.04).frame.found.n_sets == 1


def test_a_larger_anchor_age_at_runtime_keeps_the_sets_it_asks_for():
    from scale_field_ros.anchor_buffer import AnchorBuffer

    settings, config = load_settings()
    proc = FrameProcessor(settings, config, backbone())
    assert proc.anchor_buffer.max_age_s == pytest.approx(0.06)
    proc.update_settings(dataclasses.replace(settings, anchor_max_age=2.0))
    built = AnchorBuffer(2.0)
    points = np.ones((10, 3), np.float32)
    for k in range(40):  # 10 Hz scans over 4 s
        for buf in (proc.anchor_buffer, built):
            buf.insert(100.0 + k * 0.1, points)
    image_stamp = 102.4  # 1.5 s behind the newest scan (slow inference)
    assert [s.stamp_s for s in proc.anchor_buffer.query(image_stamp)] == [s.stamp_s for s in built.query(image_stamp)]
    assert proc.anchor_buffer.query(image_stamp)[0].stamp_s == pytest.approx(image_stamp)


def test_pixels_beyond_the_lens_model_have_no_depth(sun3d):
    # a wide fisheye calibration on a 640x480 image: the corners lie beyond 89 degrees off axis, where no ray
    # exists. Depth, confidence and scale field are NaN exactly there, as the points unprojected from them are
    from scale_field_ros.camera import Intrinsics

    settings, config = load_settings()
    proc = FrameProcessor(settings, config, backbone())
    frame = sun3d.frame(0)
    fisheye = Intrinsics(200.0, 200.0, 319.5, 239.5, 640, 480, "equidistant", (0.0, 0.0, 0.0, 1e-4))
    proc.on_camera_info(conv.camera_info_msg(fisheye, header(0.0, "camera")))
    step = proc.process_image(conv.rgb8_image_msg(frame.rgb, header(0.0, "camera")), False, 1.0)
    covered = fisheye.lens_coverage(480, 640)
    assert covered is not None and 0 < (~covered).sum() < covered.size // 4
    result = step.frame.result
    for image in (result.depth_m, result.std_m, result.scale_field):
        assert np.array_equal(np.isfinite(image), covered)
    points = fisheye.unproject(result.depth_m)
    assert np.array_equal(np.isfinite(points).all(axis=-1), covered)
    assert Intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480).lens_coverage(480, 640) is None  # a pinhole sees all


def _processor_with_odom_and_cloud(sun3d):
    """`_processor`'s processor and image, an identity Odometry and a three-point camera-frame cloud (restamped
    by the calls that take them)."""
    from nav_msgs.msg import Odometry

    from scale_field_ros import msg_codec

    proc, _, msg = _processor(sun3d)
    odom = Odometry()
    odom.pose.pose.orientation.w = 1.0
    points = np.array([[0.0, 0.0, 2.0], [0.3, 0.1, 2.5], [-0.2, 0.2, 3.0]], np.float32)
    return proc, msg, odom, conv.cloud_msg(msg_codec.cloud_fields(points), header(0.0, "camera"))


def _processor(sun3d):
    """A FrameProcessor with the default settings, sun3d frame 0's camera_info received, and that frame's image."""
    settings, config = load_settings()
    proc = FrameProcessor(settings, config, backbone())
    frame = sun3d.frame(0)
    proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera")))
    return proc, frame, conv.rgb8_image_msg(frame.rgb, header(0.0, "camera"))
