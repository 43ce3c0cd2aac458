"""make-bag and bagio on real data: write bags, read them back, compare with the dataset."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from scale_field_ros import bagio, make_bag
from scale_field_ros import msg_codec as mc
from scale_field_ros.camera import transform_points

RATE_HZ = 30.0
ANCHOR_RATE_HZ = 10.0
REPEAT = 3


def _by_topic(path) -> dict[str, list[bagio.BagMessage]]:
    topics = list(bagio.bag_topics(path))
    out: dict[str, list[bagio.BagMessage]] = {t: [] for t in topics}
    for m in bagio.read_messages(path, topics):
        out[m.topic].append(m)
    return out


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def sun3d_bag(request, sun3d, tmp_path_factory):
    out = tmp_path_factory.mktemp("bags") / f"sun3d_{request.param}"
    result = make_bag.make_bag(
        sun3d.root, out, rate_hz=RATE_HZ, anchors="lidar", anchor_rate_hz=ANCHOR_RATE_HZ,
        storage=request.param, repeat=REPEAT,
    )  # fmt: skip
    return result, _by_topic(out)


def test_counts_rates_stamps_and_order(sun3d, sun3d_bag):
    result, msgs = sun3d_bag
    n_images = len(sun3d) * REPEAT
    duration_s = (n_images - 1) / RATE_HZ
    n_anchors = int(np.floor(duration_s * ANCHOR_RATE_HZ)) + 1
    assert {t: len(m) for t, m in msgs.items()} == {
        "/camera/image": n_images,
        "/camera/camera_info": n_images,
        "/odom": n_images,
        "/anchors": n_anchors,
    }
    assert result.counts == {t: len(m) for t, m in msgs.items()}
    for topic, rate in (("/camera/image", RATE_HZ), ("/odom", RATE_HZ), ("/anchors", ANCHOR_RATE_HZ)):
        stamps = np.array([m.stamp_ns for m in msgs[topic]], np.int64)
        np.testing.assert_allclose(np.diff(stamps) * 1e-9, 1.0 / rate, atol=1e-9)
    for topic, frame_id in (("/camera/image", "camera_optical"), ("/camera/camera_info", "camera_optical"),
                            ("/anchors", "camera_optical"), ("/odom", "world")):  # fmt: skip
        assert all(m.msg.header.frame_id == frame_id for m in msgs[topic])
        assert all(m.stamp_ns == m.log_time_ns for m in msgs[topic])
    # camera_info and image share stamps one to one; the reader is time-ordered across topics.
    assert [m.stamp_ns for m in msgs["/camera/image"]] == [m.stamp_ns for m in msgs["/camera/camera_info"]]
    all_times = [m.log_time_ns for m in bagio.read_camera_bag(result.path)]
    assert all_times == sorted(all_times) and len(all_times) == sum(result.counts.values())


def test_images_camera_info_and_odometry_equal_dataset(sun3d, sun3d_bag):
    _, msgs = sun3d_bag
    frames = list(sun3d.frames())
    for i, (img, info, odom) in enumerate(zip(msgs["/camera/image"], msgs["/camera/camera_info"], msgs["/odom"],
                                              strict=True)):  # fmt: skip
        f = frames[i % len(frames)]
        np.testing.assert_array_equal(mc.image_msg_to_rgb8(img.msg), f.rgb)
        assert mc.camera_info_msg_to_intrinsics(info.msg) == f.intrinsics
        assert info.msg.distortion_model == "plumb_bob" and not any(info.msg.d)
        p, q = odom.msg.pose.pose.position, odom.msg.pose.pose.orientation
        T = mc.pose_to_transform([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])
        np.testing.assert_allclose(T, f.T_world_cam, atol=1e-5)  # manifest rotations are rounded to ~1e-6
        assert odom.msg.child_frame_id == "camera_optical"


def test_depth_anchors_project_onto_their_ground_truth_pixels(sun3d, sun3d_bag):
    _, msgs = sun3d_bag
    image_stamps = np.array([m.stamp_ns for m in msgs["/camera/image"]])
    frames = list(sun3d.frames())
    for m in msgs["/anchors"]:
        # Each cloud comes from the latest image at or before its stamp.
        i = int(np.searchsorted(image_stamps, m.stamp_ns, side="right")) - 1
        f = frames[i % len(frames)]
        decoded = mc.pointcloud2_msg_decode(m.msg)
        assert decoded.n_nonfinite == 0 and len(decoded.points) > 1000
        u, v, z = f.intrinsics.project(decoded.points)
        ui, vi = np.round(u).astype(int), np.round(v).astype(int)
        assert np.abs(u - ui).max() < 1e-3 and np.abs(v - vi).max() < 1e-3
        assert ui.min() >= 0 and ui.max() < f.intrinsics.width and vi.min() >= 0 and vi.max() < f.intrinsics.height
        np.testing.assert_allclose(z, f.depth_m[vi, ui], rtol=1e-6)
        # Scan lines: few distinct rows, many points per row.
        assert len(np.unique(vi)) <= 32


def test_vio_anchors_are_corners_with_depth(sun3d, tmp_path):
    out = tmp_path / "vio.mcap"
    result = make_bag.make_bag(sun3d.root, out, anchors="vio")
    f = sun3d.frame(0)
    first = next(m for m in bagio.read_messages(out, ["/anchors"]))
    pts = mc.pointcloud2_msg_to_xyz(first.msg)
    u, v, z = f.intrinsics.project(pts)
    ui, vi = np.round(u).astype(int), np.round(v).astype(int)
    np.testing.assert_allclose(z, f.depth_m[vi, ui], rtol=1e-6)
    assert 20 < len(pts) <= 300 and result.anchors == "vio"
    assert len(np.unique(vi)) > len(pts) // 4  # spread over the image, not on a few lines


def test_native_lidar_bag_kitti(kitti_lidar, tmp_path):
    out = tmp_path / "kitti.mcap"  # a bare MCAP file
    result = make_bag.make_bag(kitti_lidar.root, out)
    assert out.is_file() and result.anchors == "native"
    msgs = _by_topic(out)
    f = kitti_lidar.frame(0)
    cloud = msgs["/anchors"][0].msg
    assert cloud.header.frame_id == "velodyne"
    pts = mc.pointcloud2_msg_to_xyz(cloud)
    np.testing.assert_array_equal(pts, f.lidar_points)
    (tf,) = msgs["/tf_static"][0].msg.transforms
    assert (tf.header.frame_id, tf.child_frame_id) == ("camera_optical", "velodyne")
    t, r = tf.transform.translation, tf.transform.rotation
    T_cam_lidar = mc.pose_to_transform([t.x, t.y, t.z], [r.x, r.y, r.z, r.w])
    # KITTI calibration rotations are orthonormal only to ~1e-7; a quaternion carries the nearest rotation.
    np.testing.assert_allclose(T_cam_lidar, f.T_cam_lidar, atol=1e-6)
    # The shipped points are those in the camera view: through the bag's TF they land in the image.
    u, v, z = f.intrinsics.project(transform_points(T_cam_lidar, pts))
    inside = (z > 0) & (u >= 0) & (u < f.intrinsics.width) & (v >= 0) & (v < f.intrinsics.height)
    assert inside.mean() > 0.95
    np.testing.assert_array_equal(mc.image_msg_to_rgb8(msgs["/camera/image"][0].msg), f.rgb)
    assert "/odom" not in msgs  # no poses in this dataset


def test_camera_bag_errors(sun3d, tmp_path):
    factory = bagio.MessageFactory()
    f = sun3d.frame(0)
    no_anchors = tmp_path / "no_anchors.mcap"
    with bagio.BagWriter(no_anchors) as w:
        w.write("/camera/image", factory.image(1, "camera_optical", mc.rgb8_image_fields(f.rgb)), 1)
        w.write("/camera/camera_info", factory.camera_info(1, "camera_optical", mc.camera_info_fields(f.intrinsics)),
                1)  # fmt: skip
    with pytest.raises(bagio.BagError, match="anchors topic /anchors.*topics in the bag: /camera/image"):
        list(bagio.read_camera_bag(no_anchors, bagio.CameraBagTopics(odom=None)))
    with pytest.raises(bagio.BagError, match="camera_info topic /cam/info"):
        bagio.check_camera_bag(no_anchors, bagio.CameraBagTopics(camera_info="/cam/info", odom=None))
    with pytest.raises(bagio.BagError, match="anchors topic /camera/image is sensor_msgs/msg/Image"):
        bagio.check_camera_bag(no_anchors, bagio.CameraBagTopics(anchors="/camera/image", odom=None))
    with pytest.raises(bagio.BagError, match="no topic /nope"):
        list(bagio.read_messages(no_anchors, ["/camera/image", "/nope"]))
    with pytest.raises(FileNotFoundError):
        bagio.bag_topics(tmp_path / "missing")
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file at all")
    with pytest.raises(bagio.BagError, match="cannot open"):
        bagio.bag_topics(tmp_path / "junk.mcap")


def test_writer_is_atomic_and_refuses_to_overwrite(sun3d, tmp_path):
    factory = bagio.MessageFactory()
    rgb = mc.rgb8_image_fields(sun3d.frame(0).rgb)
    out = tmp_path / "bag"
    with pytest.raises(RuntimeError, match="boom"), bagio.BagWriter(out, storage="sqlite3") as w:
        w.write("/camera/image", factory.image(1, "camera_optical", rgb), 1)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the bag nor its temporary folder
    with bagio.BagWriter(out) as w:
        w.write("/camera/image", factory.image(1, "camera_optical", rgb), 1)
    with pytest.raises(bagio.BagError, match="exists already"):
        bagio.BagWriter(out)
    with bagio.BagWriter(out, overwrite=True) as w:
        for stamp in (1, 2):
            w.write("/camera/image", factory.image(stamp, "camera_optical", rgb), stamp)
    assert bagio.bag_topics(out)["/camera/image"].count == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]
    with pytest.raises(bagio.BagError, match="cannot write"), bagio.BagWriter(tmp_path / "x.mcap") as w:
        w.write("/camera/image", factory.image(1, "camera_optical", rgb), 1)
        w.write("/camera/image", factory.camera_info(1, "c", mc.camera_info_fields(sun3d.frame(0).intrinsics)), 2)
    assert not (tmp_path / "x.mcap").exists()
    with pytest.raises(bagio.BagError, match=".mcap"):
        bagio.BagWriter(tmp_path / "y.mcap", storage="sqlite3")


def test_make_bag_cli_and_input_errors(sun3d, kitti_lidar, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    make_bag.add_arguments(parser)
    out = tmp_path / "cli_bag"
    args = parser.parse_args(["--data", str(sun3d.root), "--out", str(out), "--format", "sqlite3", "--anchors", "vio"])
    assert make_bag.run(args) == 0
    assert (out / "cli_bag.db3").is_file() and "/anchors" in capsys.readouterr().out
    assert bagio.bag_topics(out)["/camera/image"].count == len(sun3d)
    with pytest.raises(ValueError, match="no LiDAR"):
        make_bag.make_bag(sun3d.root, tmp_path / "a", anchors="native")
    with pytest.raises(ValueError, match="no ground-truth depth"):
        make_bag.make_bag(kitti_lidar.root, tmp_path / "b", anchors="lidar")
    with pytest.raises(ValueError, match="rate-hz"):
        make_bag.make_bag(sun3d.root, tmp_path / "c", rate_hz=0.0)
    with pytest.raises(FileNotFoundError, match="manifest"):
        make_bag.make_bag(tmp_path, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli_bag"]


@pytest.mark.ros
def test_bag_bytes_decode_with_real_ros_typesupport(sun3d, tmp_path):
    """Read our MCAP with the independent `mcap` reader and deserialise each message with rclpy."""
    serialization = pytest.importorskip("rclpy.serialization", reason="ROS 2 rclpy wheels not installed")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    nav_msgs = pytest.importorskip("nav_msgs.msg")
    from mcap.reader import make_reader

    out = tmp_path / "ros.mcap"
    make_bag.make_bag(sun3d.root, out, anchors="vio")
    types = {"/camera/image": sensor_msgs.Image, "/camera/camera_info": sensor_msgs.CameraInfo,
             "/anchors": sensor_msgs.PointCloud2, "/odom": nav_msgs.Odometry}  # fmt: skip
    first: dict[str, object] = {}
    with out.open("rb") as fh:
        for _, channel, message in make_reader(fh).iter_messages():
            first.setdefault(channel.topic, serialization.deserialize_message(message.data, types[channel.topic]))
    f = sun3d.frame(0)
    np.testing.assert_array_equal(mc.image_msg_to_rgb8(first["/camera/image"]), f.rgb)
    assert mc.camera_info_msg_to_intrinsics(first["/camera/camera_info"]) == f.intrinsics
    pts = mc.pointcloud2_msg_to_xyz(first["/anchors"])
    u, v, z = f.intrinsics.project(pts)
    np.testing.assert_allclose(z, f.depth_m[np.round(v).astype(int), np.round(u).astype(int)], rtol=1e-6)
    q = first["/odom"].pose.pose.orientation
    p = first["/odom"].pose.pose.position
    np.testing.assert_allclose(mc.pose_to_transform([p.x, p.y, p.z], [q.x, q.y, q.z, q.w]), f.T_world_cam, atol=1e-5)
