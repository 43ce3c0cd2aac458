"""Runs a real `ScaleFieldNode` and a test node on their own DDS domain and talks to it over topics.

One rclpy context per harness (domain id unique to the test module and process), one SingleThreadedExecutor
spinning both nodes in a background thread. Messages go through the rmw (Fast DDS), not mocks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 Python wheels (rclpy)")

from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from scale_field_ros import msg_codec  # noqa: E402
from scale_field_ros.camera import Intrinsics  # noqa: E402
from scale_field_ros.ros import conversions as conv  # noqa: E402
from scale_field_ros.ros.node import ScaleFieldNode  # noqa: E402
from scale_field_ros.ros.spinner import BackgroundSpinner  # noqa: E402


def domain_id(offset: int) -> int:
    """A DDS domain for one test module in this process (0-232 are valid; stay clear of 0)."""
    return 20 + (os.getpid() + offset) % 200


def header(stamp_s: float, frame_id: str = "camera_optical") -> Header:
    h = Header()
    sec, nanosec = msg_codec.ns_to_stamp(int(round(stamp_s * 1e9)))
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    h.frame_id = frame_id
    return h


class NodeHarness:
    """A ScaleFieldNode plus publishers of its inputs and recorders of its outputs."""

    OUTPUTS = {
        "metric_depth": Image,
        "metric_depth/points": PointCloud2,
        "metric_depth/confidence": Image,
        "metric_depth/camera_info": CameraInfo,
        "scale_field": Image,
    }

    def __init__(self, domain: int, backbone, params: dict | None = None, keep: int = 200) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        overrides = [Parameter(k, value=list(v) if isinstance(v, tuple) else v) for k, v in (params or {}).items()]
        self.node = ScaleFieldNode(backbone=backbone, context=self.context, parameter_overrides=overrides)
        self.io = rclpy.create_node("scale_field_test_io", context=self.context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.io.create_publisher(Image, "image", reliable)
        self.pub_info = self.io.create_publisher(CameraInfo, "camera_info", reliable)
        self.pub_anchors = self.io.create_publisher(PointCloud2, "anchors", reliable)
        self.pub_odom = self.io.create_publisher(Odometry, "odom", reliable)
        self.received: dict[str, deque] = {}
        self._lock = threading.Lock()
        for topic, msg_type in self.OUTPUTS.items():
            self.received[topic] = deque(maxlen=keep)
            self.io.create_subscription(msg_type, topic, self._recorder(topic), reliable)
        self.executor = SingleThreadedExecutor(context=self.context)  # as the node's main()
        self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        self._spinner = BackgroundSpinner(self.executor)
        self.wait_for(self._connected, 10.0, "DDS discovery between the test node and scale_field_node")

    def _recorder(self, topic):
        def record(msg):
            with self._lock:
                self.received[topic].append((time.perf_counter(), msg))

        return record

    def _connected(self) -> bool:
        pubs = (self.pub_image, self.pub_info, self.pub_anchors, self.pub_odom)
        if not all(p.get_subscription_count() > 0 for p in pubs):
            return False
        return (
            all(self.io.count_publishers(t) > 0 for t in self.OUTPUTS)
            and self.node.pub_points.get_subscription_count() > 0
        )

    def wait_for(self, predicate, timeout_s: float, what: str = "condition") -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.01)
        raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")

    def count(self, topic: str = "metric_depth") -> int:
        with self._lock:
            return len(self.received[topic])

    def messages(self, topic: str = "metric_depth") -> list:
        with self._lock:
            return [m for _, m in self.received[topic]]

    def clear(self) -> None:
        with self._lock:
            for q in self.received.values():
                q.clear()

    # ------------------------------------------------------------------ publishing inputs

    def publish_camera_info(self, intrinsics: Intrinsics, stamp_s: float) -> None:
        self.pub_info.publish(conv.camera_info_msg(intrinsics, header(stamp_s)))

    def publish_image(self, rgb: np.ndarray, stamp_s: float) -> None:
        self.pub_image.publish(conv.rgb8_image_msg(rgb, header(stamp_s)))

    def publish_anchors(
        self,
        points: np.ndarray,
        stamp_s: float,
        frame_id: str = "camera_optical",  # the images' (`header`): points in the camera frame, T_cam_anchor identity
        wait: bool = True,
        columns: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Publish an xyz cloud (with extra per-point `columns`, e.g. a LiDAR's time field); with `wait`, return
        once the node has buffered it (so the next image sees it)."""
        fields = msg_codec.cloud_fields(np.asarray(points, np.float32), columns)
        self.pub_anchors.publish(conv.cloud_msg(fields, header(stamp_s, frame_id)))
        if wait:
            buffered = self.node.anchor_buffer
            self.wait_for(lambda: len(buffered.query(stamp_s, 1e-6)) > 0, 5.0, "the node to buffer anchors")

    def publish_odom(self, T_world_body: np.ndarray, stamp_s: float, wait: bool = False) -> None:
        """Publish a body pose; with `wait`, return once the node has buffered a pose at or after its stamp
        (images up to it then interpolate, not extrapolate)."""
        msg = Odometry()
        msg.header = header(stamp_s, "world")
        msg.child_frame_id = "body"
        p, q = msg_codec.transform_to_pose(T_world_body)
        pose = msg.pose.pose
        pose.position.x, pose.position.y, pose.position.z = (float(x) for x in p)
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(x) for x in q)
        self.pub_odom.publish(msg)
        if wait:
            poses = self.node.pose_buffer
            self.wait_for(lambda: poses.covers(stamp_s), 5.0, "the node to buffer the pose")

    def output(self, stamp_s: float, topic: str = "metric_depth", timeout_s: float = 30.0):
        """Wait for the message on `topic` stamped `stamp_s`."""
        want = header(stamp_s).stamp
        found: list = []

        def arrived() -> bool:
            found[:] = [m for m in self.messages(topic) if m.header.stamp == want]
            return bool(found)

        self.wait_for(arrived, timeout_s, f"{topic} stamped {stamp_s}")
        return found[0]

    def process_frame(self, rgb: np.ndarray, stamp_s: float, timeout_s: float = 30.0) -> Image:
        """Publish an image and wait for the metric depth carrying its stamp, and for the node's stats on it.

        The node publishes before it books the frame in `stats`, so a test reading them right after the depth
        arrived would race the inference thread.
        """
        self.publish_image(rgb, stamp_s)
        depth = self.output(stamp_s, "metric_depth", timeout_s)
        history = self.node.stats.history
        self.wait_for(lambda: history and abs(history[-1][0] - stamp_s) < 1e-6, 5.0, f"stats of the frame {stamp_s}")
        return depth

    def close(self) -> None:
        self._spinner.stop()
        self.node.destroy_node()
        self.io.destroy_node()
        rclpy.shutdown(context=self.context)


def camera_points(anchors, intrinsics: Intrinsics) -> np.ndarray:
    """Anchors on integer pixels -> their 3D points in the camera frame (through the one unprojection)."""
    sparse = np.zeros((intrinsics.height, intrinsics.width), np.float32)
    rows, cols = np.round(anchors.v).astype(int), np.round(anchors.u).astype(int)
    sparse[rows, cols] = anchors.depth_m
    return intrinsics.unproject(sparse)[rows, cols].astype(np.float64)


def depth_of(msg: Image) -> np.ndarray:
    return msg_codec.image_msg_to_depth_m(msg)


def float_image_of(msg: Image) -> np.ndarray:
    """32FC1 image -> HxW float32 as sent (no zeroing of invalid values)."""
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)
