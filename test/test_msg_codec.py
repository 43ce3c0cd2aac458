"""msg_codec on real frames: images, depth, compressed images, point clouds, camera info, poses."""

from __future__ import annotations

import array
import warnings

import cv2
import numpy as np
import pytest

from scale_field_ros import msg_codec as mc
from scale_field_ros.camera import transform_points


@pytest.fixture(scope="module")
def frame(sun3d):
    return sun3d.frame(0)


@pytest.fixture(scope="module")
def lidar_frame(kitti_lidar):
    return kitti_lidar.frame(0)


def padded(rows: np.ndarray, pad: int, fill: int = 0xAB) -> tuple[int, bytes]:
    """HxWxC uint8 array -> (step, data) with `pad` junk bytes after each row."""
    h = rows.shape[0]
    flat = rows.reshape(h, -1)
    out = np.full((h, flat.shape[1] + pad), fill, np.uint8)
    out[:, : flat.shape[1]] = flat
    return out.shape[1], out.tobytes()


# --------------------------------------------------------------------------- images


def test_rgb8_round_trip(frame):
    f = mc.rgb8_image_fields(frame.rgb)
    assert (f.encoding, f.height, f.width, f.step) == ("rgb8", *frame.rgb.shape[:2], frame.rgb.shape[1] * 3)
    np.testing.assert_array_equal(mc.image_to_rgb8(f.encoding, f.height, f.width, f.step, f.data), frame.rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("pad", [0, 7])
def test_colour_encodings_with_row_padding(frame, encoding, pad):
    rgb = frame.rgb
    h, w = rgb.shape[:2]
    pixels = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
    if encoding.endswith("a8"):
        pixels = np.concatenate([pixels, np.full((h, w, 1), 200, np.uint8)], axis=2)
    step, data = padded(np.ascontiguousarray(pixels), pad)
    out = mc.image_to_rgb8(encoding, h, w, step, data)
    np.testing.assert_array_equal(out, rgb)


def test_mono8_and_mono16_big_endian(frame):
    grey = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    out8 = mc.image_to_rgb8("mono8", h, w, w + 3, padded(grey[:, :, None], 3)[1])
    np.testing.assert_array_equal(out8, np.repeat(grey[:, :, None], 3, axis=2))
    grey16 = grey.astype(np.uint16) * 257
    for order, big in (("<u2", 0), (">u2", 1)):
        data = grey16.astype(order).tobytes()
        out16 = mc.image_to_rgb8("mono16", h, w, w * 2, data, is_bigendian=big)
        np.testing.assert_array_equal(out16[:, :, 0], grey)


def test_16uc1_depth_both_endians_matches_dataset(frame):
    mm = np.round(frame.depth_m * 1000.0).astype(np.uint16)
    h, w = mm.shape
    for order, big in (("<u2", 0), (">u2", 1)):
        step, data = padded(mm.astype(order).view(np.uint8).reshape(h, w * 2, 1), 4)
        depth = mc.image_to_depth_m("16UC1", h, w, step, data, is_bigendian=big)
        assert depth.dtype == np.float32
        np.testing.assert_allclose(depth, frame.depth_m, atol=1e-6)


def test_32fc1_round_trip_and_invalid_to_zero(frame):
    depth = frame.depth_m.copy()
    f = mc.depth_image_fields(depth)
    assert (f.encoding, f.step, f.is_bigendian) == ("32FC1", depth.shape[1] * 4, 0)
    assert len(f.data) == f.step * f.height
    np.testing.assert_array_equal(mc.image_to_depth_m(f.encoding, f.height, f.width, f.step, f.data), depth)
    depth[0, :10] = np.nan
    depth[1, :10] = -1.0
    f = mc.depth_image_fields(depth)
    out = mc.image_to_depth_m(f.encoding, f.height, f.width, f.step, f.data)
    assert np.isfinite(out).all() and (out[:2, :10] == 0).all()
    big = depth.astype(">f4").tobytes()
    out_big = mc.image_to_depth_m("32FC1", f.height, f.width, f.step, big, is_bigendian=1)
    np.testing.assert_array_equal(out_big, out)


def test_image_size_errors(frame):
    h, w = frame.rgb.shape[:2]
    data = frame.rgb.tobytes()
    with pytest.raises(mc.MessageError, match="step"):
        mc.image_to_rgb8("rgb8", h, w, w * 3 - 1, data)
    with pytest.raises(mc.MessageError, match="bytes, expected"):
        mc.image_to_rgb8("rgb8", h, w, w * 3, data[:-1])
    with pytest.raises(mc.MessageError, match="bytes, expected"):
        mc.image_to_rgb8("rgb8", h + 1, w, w * 3, data)
    with pytest.raises(mc.MessageError, match="unsupported image encoding"):
        mc.image_to_rgb8("bayer_rggb8", h, w, w, data[: h * w])
    with pytest.raises(mc.MessageError, match="depth encoding"):
        mc.image_to_rgb8("32FC1", h, w, w * 4, data[: h * w * 4])
    with pytest.raises(mc.MessageError, match="invalid size"):
        mc.image_to_rgb8("rgb8", 0, w, w * 3, b"")
    with pytest.raises(mc.MessageError, match="unsupported depth encoding"):
        mc.image_to_depth_m("rgb8", h, w, w * 3, data)
    with pytest.raises(mc.MessageError):
        mc.depth_image_fields(np.zeros((2, 3, 1), np.float32))


def test_compressed_png_exact_and_jpeg_close(frame):
    bgr = frame.rgb[:, :, ::-1]
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    np.testing.assert_array_equal(mc.compressed_to_rgb8("png", png.tobytes()), frame.rgb)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = mc.compressed_to_rgb8("rgb8; jpeg compressed bgr8", jpg.tobytes())
    assert out.shape == frame.rgb.shape
    # JPEG is lossy; a channel swap would give errors of tens of grey levels.
    assert np.abs(out.astype(int) - frame.rgb.astype(int)).mean() < 3.0


def test_compressed_errors():
    with pytest.raises(mc.MessageError, match="not a decodable image"):
        mc.compressed_to_rgb8("jpeg", b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(mc.MessageError, match="no data"):
        mc.compressed_to_rgb8("png", b"")
    with pytest.raises(mc.MessageError, match="unsupported"):
        mc.compressed_to_rgb8("theora", b"1234")
    with pytest.raises(mc.MessageError, match="compressedDepth"):
        mc.compressed_to_rgb8("16UC1; compressedDepth png", b"1234")


# --------------------------------------------------------------------------- point clouds


def test_cloud_round_trip_kitti(lidar_frame):
    pts = lidar_frame.lidar_points
    c = mc.xyzrgb_cloud_fields(pts)
    assert (c.point_step, c.height, c.width, c.row_step) == (12, 1, len(pts), 12 * len(pts)) and c.is_dense
    d = mc.pointcloud2_decode(c.fields, c.point_step, c.row_step, c.width, c.height, c.data, c.is_bigendian)
    assert d.n_nonfinite == 0
    np.testing.assert_array_equal(d.points, pts)


def test_cloud_rgb_packing_kitti(lidar_frame):
    pts = lidar_frame.lidar_points
    intr = lidar_frame.intrinsics
    u, v, _ = intr.project(transform_points(lidar_frame.T_cam_lidar, pts))
    uv = np.stack([np.clip(np.round(u), 0, intr.width - 1), np.clip(np.round(v), 0, intr.height - 1)]).astype(int)
    rgb = lidar_frame.rgb[uv[1], uv[0]]
    c = mc.xyzrgb_cloud_fields(pts, rgb)
    assert [f[0] for f in c.fields] == ["x", "y", "z", "rgb"] and c.point_step == 16
    rec = np.frombuffer(c.data, np.dtype({"names": ["rgb"], "formats": ["<f4"], "offsets": [12], "itemsize": 16}))
    np.testing.assert_array_equal(mc.unpack_rgb_float(rec["rgb"]), rgb)
    # The ROS/PCL convention: bits are 0x00RRGGBB.
    bits = rec["rgb"].view(np.uint32)
    assert (bits >> 24 == 0).all()
    np.testing.assert_array_equal(bits[0], (int(rgb[0, 0]) << 16) | (int(rgb[0, 1]) << 8) | int(rgb[0, 2]))
    np.testing.assert_array_equal(mc.pointcloud2_to_xyz(c.fields, 16, c.row_step, c.width, 1, c.data), pts)


def _custom_cloud(pts: np.ndarray, height: int, big: bool, row_pad: int):
    """float64 xyz at shuffled offsets with an intensity field and padding, organised as height rows."""
    order = ">" if big else "<"
    n = len(pts)
    width = n // height
    rec = np.dtype(
        {
            "names": ["intensity", "z", "x", "y"],
            "formats": [order + "f4", order + "f8", order + "f8", order + "f8"],
            "offsets": [0, 8, 16, 32],
            "itemsize": 48,
        }
    )
    arr = np.zeros(height * width, rec)
    arr["x"], arr["y"], arr["z"] = pts[: height * width].T.astype(np.float64)
    arr["intensity"] = 1.0
    rows = arr.view(np.uint8).reshape(height, width * 48)
    data = np.zeros((height, width * 48 + row_pad), np.uint8)
    data[:, : width * 48] = rows
    fields = [("intensity", 0, mc.FLOAT32, 1), ("z", 8, mc.FLOAT64, 1), ("x", 16, mc.FLOAT64, 1), ("y", 32, 8, 1)]
    return fields, 48, width * 48 + row_pad, width, height, data.tobytes()


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("height,row_pad", [(1, 0), (4, 0), (4, 24)])
def test_cloud_float64_offsets_organised_big_endian(lidar_frame, big, height, row_pad):
    pts = lidar_frame.lidar_points
    fields, point_step, row_step, width, h, data = _custom_cloud(pts, height, big, row_pad)
    out = mc.pointcloud2_to_xyz(fields, point_step, row_step, width, h, data, is_bigendian=big)
    np.testing.assert_array_equal(out, pts[: width * h])


def test_cloud_nonfinite_dropped_and_counted(lidar_frame):
    pts = lidar_frame.lidar_points.copy()
    pts[::100, 1] = np.nan
    pts[5, 2] = np.inf
    c = mc.xyzrgb_cloud_fields(pts)
    assert not c.is_dense
    d = mc.pointcloud2_decode(c.fields, c.point_step, c.row_step, c.width, c.height, c.data)
    bad = ~np.isfinite(pts).all(axis=1)
    assert d.n_nonfinite == int(bad.sum()) > 0
    np.testing.assert_array_equal(d.points, pts[~bad])


def test_cloud_float64_beyond_float32_range_dropped_quietly(lidar_frame):
    """A float64 coordinate too large for float32 (a driver's 'no return' sentinel such as 1e300) is dropped
    and counted like a NaN, without numpy's overflow warning on the node's stderr."""
    pts = lidar_frame.lidar_points[:400]
    fields, point_step, row_step, width, h, data = _custom_cloud(pts, 1, False, 0)
    arr = np.frombuffer(data, np.uint8).copy()
    sentinel = np.array([1e300], "<f8").view(np.uint8)
    for i in (3, 77):  # x of two points (offset 16 in a 48-byte point)
        arr[i * point_step + 16 : i * point_step + 24] = sentinel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = mc.pointcloud2_decode(fields, point_step, row_step, width, h, arr.tobytes())
    assert d.n_nonfinite == 2
    np.testing.assert_array_equal(d.points, np.delete(pts[:width], [3, 77], axis=0))


def test_cloud_errors(lidar_frame):
    c = mc.xyzrgb_cloud_fields(lidar_frame.lidar_points[:100])
    args = (c.point_step, c.row_step, c.width, c.height)
    with pytest.raises(mc.MessageError, match="no z field"):
        mc.pointcloud2_to_xyz(c.fields[:2], *args, c.data)
    with pytest.raises(mc.MessageError, match="bytes, expected"):
        mc.pointcloud2_to_xyz(c.fields, *args, c.data[:-4])
    with pytest.raises(mc.MessageError, match="row_step"):
        mc.pointcloud2_to_xyz(c.fields, c.point_step, c.row_step - 1, c.width, c.height, c.data)
    with pytest.raises(mc.MessageError, match="does not fit"):
        bad = (c.fields[0], c.fields[1], ("z", 10, mc.FLOAT32, 1))
        mc.pointcloud2_to_xyz(bad, *args, c.data)
    with pytest.raises(mc.MessageError, match="datatype"):
        bad = (c.fields[0], c.fields[1], ("z", 8, mc.INT32, 1))
        mc.pointcloud2_to_xyz(bad, *args, c.data)
    with pytest.raises(mc.MessageError):
        mc.xyzrgb_cloud_fields(lidar_frame.lidar_points[:10], np.zeros((9, 3), np.uint8))
    empty = mc.pointcloud2_to_xyz(c.fields, c.point_step, 0, 0, 1, b"")
    assert empty.shape == (0, 3)


# --------------------------------------------------------------------------- camera info and poses


def test_camera_info_round_trip_and_errors(frame):
    ci = mc.camera_info_fields(frame.intrinsics)
    intr = mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, ci.distortion_model, ci.d)
    assert intr == frame.intrinsics
    assert not intr.distorted and not mc.camera_info_unsupported_distortion(ci.distortion_model, ci.d)
    # a supported model is kept and published again; an unknown one is named, and the camera stays pinhole
    lens = mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, "plumb_bob", [0.1, -0.02, 0, 0, 0])
    assert lens.distorted and lens.d == (0.1, -0.02, 0.0, 0.0, 0.0)
    back = mc.camera_info_fields(lens)
    assert (back.distortion_model, back.d) == ("plumb_bob", lens.d)
    assert not mc.camera_info_unsupported_distortion("plumb_bob", [0.1, 0, 0, 0, 0])
    assert "not supported" in mc.camera_info_unsupported_distortion("kannala_brandt", [0.1, 0, 0, 0])
    assert not mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, "kannala_brandt", [0.1, 0, 0, 0]).distorted
    assert not mc.camera_info_unsupported_distortion("", [])
    for bad_d in ([np.nan, 0, 0, 0, 0], [0.1, 0, 0, 0, 0, 0.2, 0, 0]):  # not finite; 8 values for 5 coefficients
        with pytest.raises(mc.MessageError, match="distortion"):
            mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, "plumb_bob", bad_d)
    for bad_k in ([0.0] * 9, [np.nan, 0, 1, 0, 1, 1, 0, 0, 1], ci.k[:8]):
        with pytest.raises(mc.MessageError):
            mc.camera_info_to_intrinsics(bad_k, ci.width, ci.height)
    with pytest.raises(mc.MessageError, match="image size"):
        mc.camera_info_to_intrinsics(ci.k, 0, ci.height)


def test_camera_info_roi_and_binning_give_the_intrinsics_of_the_sent_image(frame):
    # image_proc's crop_decimate: the full sensor's K and size, a region of interest, then 2x2 binning
    ci = mc.camera_info_fields(frame.intrinsics)
    full = mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height)
    roi = (160, 120, 320, 240)
    sent = mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, roi=roi, binning=(2, 2))
    assert (sent.width, sent.height) == (160, 120)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-0.3, 0.3, 50), rng.uniform(-0.2, 0.2, 50), rng.uniform(1, 5, 50)])
    u_full, v_full, _ = full.project(points)
    u, v, _ = sent.project(points)
    np.testing.assert_allclose(u, (u_full - roi[0]) / 2, atol=1e-9)
    np.testing.assert_allclose(v, (v_full - roi[1]) / 2, atol=1e-9)
    # no roi (zero size) and binning 0 or 1 leave the camera as it is
    assert mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, roi=(5, 5, 0, 0), binning=(1, 0)) == full
    with pytest.raises(mc.MessageError, match="roi"):
        mc.camera_info_to_intrinsics(ci.k, ci.width, ci.height, roi=(600, 0, 320, 240))


def test_pose_round_trip_on_dataset_poses(sun3d):
    for meta in sun3d.frames_meta:
        T = np.asarray(meta["T_world_cam"], float).reshape(4, 4)
        pos, q = mc.transform_to_pose(T)
        assert abs(np.linalg.norm(q) - 1.0) < 1e-12 and q[3] >= 0
        # The manifest rotations are orthonormal to ~1e-6 only (rounded values).
        np.testing.assert_allclose(mc.pose_to_transform(pos, q), T, atol=1e-5)
    for angle, axis in ((np.pi, 0), (np.pi, 1), (np.pi, 2), (0.0, 0)):  # the branches of Shepperd's method
        T = np.eye(4)
        T[:3, :3] = cv2.Rodrigues(np.eye(3)[axis] * angle)[0]
        np.testing.assert_allclose(mc.pose_to_transform(*mc.transform_to_pose(T)), T, atol=1e-9)
    with pytest.raises(mc.MessageError):
        mc.pose_to_transform([0, 0, 0], [0, 0, 0, 0])
    assert mc.ns_to_stamp(mc.stamp_to_ns(12, 345)) == (12, 345)


# --------------------------------------------------------------------------- duck typing on real message types


def test_byte_containers_all_decode_equal(frame):
    f = mc.rgb8_image_fields(frame.rgb)
    for data in (
        f.data,
        bytearray(f.data),
        memoryview(f.data),
        array.array("B", f.data),
        np.frombuffer(f.data, np.uint8),
        list(f.data[: 16 * 16 * 3]),
    ):
        h, w = (f.height, f.width) if not isinstance(data, list) else (16, 16)
        out = mc.image_to_rgb8("rgb8", h, w, w * 3, data)
        # the list holds the first 256 pixels of the image, read as a 16 x 16 one
        expected = frame.rgb if not isinstance(data, list) else frame.rgb.reshape(-1, 3)[:256].reshape(16, 16, 3)
        np.testing.assert_array_equal(out, expected, err_msg=type(data).__name__)
    with pytest.raises(mc.MessageError):
        mc.as_byte_array(np.zeros(4, np.float32))


def test_rosbags_and_rclpy_messages(frame, lidar_frame):
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    f = mc.rgb8_image_fields(frame.rgb)
    img = ts.types["sensor_msgs/msg/Image"](
        Header(Time(1, 2), "cam"), f.height, f.width, f.encoding, 0, f.step, np.frombuffer(f.data, np.uint8)
    )
    np.testing.assert_array_equal(mc.image_msg_to_rgb8(img), frame.rgb)
    PointField = ts.types["sensor_msgs/msg/PointField"]
    c = mc.xyzrgb_cloud_fields(lidar_frame.lidar_points)
    cloud = ts.types["sensor_msgs/msg/PointCloud2"](
        Header(Time(1, 2), "velodyne"),
        c.height,
        c.width,
        [PointField(*t) for t in c.fields],
        False,
        c.point_step,
        c.row_step,
        np.frombuffer(c.data, np.uint8),
        c.is_dense,
    )
    np.testing.assert_array_equal(mc.pointcloud2_msg_to_xyz(cloud), lidar_frame.lidar_points)

    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs wheels not installed")
    m = sensor_msgs.Image(height=f.height, width=f.width, encoding=f.encoding, step=f.step)
    m.data = f.data
    np.testing.assert_array_equal(mc.image_msg_to_rgb8(m), frame.rgb)
    pc = sensor_msgs.PointCloud2(height=c.height, width=c.width, point_step=c.point_step, row_step=c.row_step)
    pc.fields = [sensor_msgs.PointField(name=n, offset=o, datatype=d, count=k) for n, o, d, k in c.fields]
    pc.data = c.data
    np.testing.assert_array_equal(mc.pointcloud2_msg_to_xyz(pc), lidar_frame.lidar_points)
    ci = mc.camera_info_fields(frame.intrinsics)
    info = sensor_msgs.CameraInfo(
        width=ci.width,
        height=ci.height,
        distortion_model=ci.distortion_model,
        d=list(ci.d),
        k=list(ci.k),
        r=list(ci.r),
        p=list(ci.p),
    )
    assert mc.camera_info_msg_to_intrinsics(info) == frame.intrinsics
    assert not mc.camera_info_msg_unsupported_distortion(info)


def test_a_depth_image_through_the_png_plugin_is_not_taken_for_a_camera_image(sun3d):
    # image_transport's compressed plugin on a 16UC1 depth image writes "16UC1; png compressed ": it decodes to
    # uint16, which as a colour image would be a near-black picture of millimetres
    depth_mm = np.round(sun3d.frame(0).depth_m * 1000.0).astype(np.uint16)
    ok, png = cv2.imencode(".png", depth_mm)
    assert ok
    with pytest.raises(mc.MessageError, match="not a camera image"):
        mc.compressed_to_rgb8("16UC1; png compressed ", png.tobytes())
    grey = mc.compressed_to_rgb8("mono8; png compressed ", cv2.imencode(".png", (depth_mm >> 8).astype(np.uint8))[1])
    assert grey.shape == (*depth_mm.shape, 3)  # a mono8 camera image through the same plugin still decodes
