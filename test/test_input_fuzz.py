"""Seeded fuzzing of the node's per-message work (`FrameProcessor`, what every subscription callback calls) with
malformed real messages: no exception may escape (in the node it would take the executor down), and what is
buffered or published stays finite."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python wheels (message types)")

from nav_msgs.msg import Odometry  # noqa: E402
from node_harness import header  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from scale_field_ros import msg_codec  # noqa: E402
from scale_field_ros.frame_processor import FrameProcessor  # noqa: E402
from scale_field_ros.ros import conversions as conv  # noqa: E402
from scale_field_ros.run_offline import load_settings  # noqa: E402

U32 = [0, 1, 2, 3, 4, 7, 8, 12, 16, 17, 479, 480, 640, 1000, 2**31, 2**32 - 1]


def truncated(rng: random.Random, data) -> bytes:
    return bytes(data)[: rng.randrange(len(data) + 1)]


# (part of the message, field, new value from the rng and the message): one is drawn per mutation
CLOUD_MUTATIONS = [
    *((lambda m: m, name, lambda rng, m: rng.choice(U32)) for name in ("point_step", "row_step", "width", "height")),
    (lambda m: m, "data", lambda rng, m: truncated(rng, m.data)),
    (lambda m: m.fields[0], "offset", lambda rng, m: rng.choice(U32)),
    (lambda m: m.fields[1], "datatype", lambda rng, m: rng.randrange(0, 12)),
    (lambda m: m.fields[2], "count", lambda rng, m: rng.choice([0, 1, 3, 2**31])),
    (lambda m: m.fields[-1], "name", lambda rng, m: rng.choice(["x", "y", "z", "t", "time", "", "intensity"])),
]
IMAGE_MUTATIONS = [
    *((lambda m: m, name, lambda rng, m: rng.choice(U32)) for name in ("step", "height", "width")),
    (lambda m: m, "data", lambda rng, m: truncated(rng, m.data)),
]


def mutate(rng: random.Random, msg, mutations) -> None:
    part, name, value = rng.choice(mutations)
    target = part(msg)
    setattr(target, name, value(rng, msg))


def processor(backbone=None) -> FrameProcessor:
    settings, config = load_settings()  # the node's defaults
    return FrameProcessor(settings, config, backbone)


def mutated_cloud(rng: random.Random, points: np.ndarray):
    n = rng.choice([1, 5, 300])
    cols = {"t": np.linspace(0, 0.1, n, dtype=np.float32)} if rng.random() < 0.5 else None
    pts = points[rng.randrange(len(points) - n) :][:n].copy()
    if rng.random() < 0.3:
        pts[rng.randrange(n)] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
    msg = conv.cloud_msg(msg_codec.cloud_fields(pts, cols), header(0.0, "velodyne"))
    for _ in range(rng.randrange(0, 3)):
        mutate(rng, msg, CLOUD_MUTATIONS)
    return msg


def mutated_camera_info(rng: random.Random, intrinsics):
    msg = conv.camera_info_msg(intrinsics, header(0.0, "camera"))
    k = rng.randrange(6)
    if k == 0:
        msg.k = [rng.choice([0.0, np.nan, np.inf, -1.0, 1e300]) if rng.random() < 0.3 else v for v in msg.k]
    elif k == 1:
        msg.d = [rng.choice([0.0, np.nan, 1e6, -1e6, 0.1]) for _ in range(rng.choice([0, 1, 4, 5, 8, 14]))]
    elif k == 2:
        msg.distortion_model = rng.choice(["plumb_bob", "rational_polynomial", "equidistant", "fisheye", ""])
    elif k == 3:
        msg.width, msg.height = rng.choice(U32), rng.choice(U32)
    elif k == 4:
        msg.p = [rng.choice([0.0, np.nan]) for _ in range(12)]
    return msg


def mutated_odometry(rng: random.Random):
    msg = Odometry()
    msg.header = header(0.0, "odom")
    q = msg.pose.pose.orientation
    q.x, q.y, q.z, q.w = (rng.choice([0.0, 1.0, np.nan, np.inf, 1e-20, -1.0]) for _ in range(4))
    msg.pose.pose.position.x = rng.choice([0.0, np.nan, 1e308])
    return msg


def test_input_callbacks_survive_malformed_messages(kitti_lidar, sun3d):
    rng = random.Random(0)
    proc = processor()
    points = kitti_lidar.frame(0).lidar_points.astype(np.float32)
    intrinsics = sun3d.frame(0).intrinsics
    warned = 0
    for i in range(1500):
        stamp = rng.choice([0.0, 1e9, -1.0, np.nan, np.inf, 5.0 + 0.01 * i])
        kind = i % 3
        if kind == 0:
            out = proc.on_anchors(mutated_cloud(rng, points), stamp)
        elif kind == 1:
            out = proc.on_camera_info(mutated_camera_info(rng, intrinsics))
        else:
            out = proc.on_odom(mutated_odometry(rng), stamp)
        assert all(isinstance(cause, str) and isinstance(text, str) for cause, text in out)
        warned += bool(out)
    assert warned > 500  # the mutations are mostly refused, each with its reason
    kept = proc.anchor_buffer.query(5.0, max_age_s=1e12)
    assert kept and all(np.isfinite(s.points).all() for s in kept)
    assert all(np.isfinite(s.point_time_s).all() for s in kept if s.point_time_s is not None)


def test_images_survive_malformed_messages(sun3d, fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    rng = random.Random(1)
    proc = processor(load_backbone("fastdepth", fastdepth_path, runtime="onnxruntime"))
    frame = sun3d.frame(0)
    proc.on_camera_info(conv.camera_info_msg(frame.intrinsics, header(0.0, "camera")))
    h, w = frame.rgb.shape[:2]
    published = refused = 0
    for i in range(60):
        compressed = rng.random() < 0.25
        if compressed:
            msg = CompressedImage()
            msg.format = rng.choice(["jpeg", "png", "16UC1; compressedDepth", "tiff"])
            data = cv2.imencode(rng.choice([".png", ".jpg"]), frame.rgb[..., ::-1])[1].tobytes()
            msg.data = truncated(rng, data) if rng.random() < 0.5 else data
        else:
            msg = Image()
            msg.encoding = rng.choice(["rgb8", "bgr8", "rgba8", "mono8", "mono16", "yuv422", ""])
            msg.height, msg.width, msg.step = h, w, 3 * w
            msg.data = frame.rgb.tobytes()
            if rng.random() < 0.8:
                mutate(rng, msg, IMAGE_MUTATIONS)
        msg.header = header(0.0, "camera")
        step = proc.process_image(msg, compressed, 10.0 + i / 30.0)
        if step.frame is None:
            refused += 1
            assert step.warnings  # never silently
            continue
        published += 1
        depth = step.frame.result.depth_m
        assert depth.shape == step.frame.rgb.shape[:2]
        assert np.isfinite(depth).all() and (depth > 0).all() and np.isfinite(step.frame.result.std_m).all()
    assert published > 5 and refused > 5
