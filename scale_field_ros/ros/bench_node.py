"""End-to-end latency of `scale_field_node`: image receipt to metric_depth publication, through DDS.

A real node and a publisher node share one process and a private DDS domain; frames go one at a time (the
next image after the previous depth arrived) so the figure is the node's own latency, not queueing.
The share of that latency that is not the backbone is what the ROS shell and the scale field add.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np


def benchmark_node(
    backbone=None,
    frames: int = 30,
    warmup: int = 3,
    data_dir: str | Path | None = None,
    n_anchors: int = 200,
    params: dict | None = None,
    domain_id: int | None = None,
    timeout_s: float = 30.0,
    size: tuple[int, int] | None = None,
) -> dict:
    """Latency statistics (ms) of the node on sun3d_seq frames (640x480, or resized to `size` = (width, height)
    with the camera_info scaled to it) with corner anchors.

    Returns {"resolution", "frames", "runtime", "latency_ms": {median, p95, max}, "backbone_ms": {median},
    "non_backbone_ms": {median, p95}, "non_backbone_share" (median over frames), "latency_samples_ms" (per
    frame), "stages_ms" (medians),
    "target_non_backbone_share": 0.25, "meets_target"}.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header

    from .. import msg_codec
    from ..datasets import load_dataset, shared_root
    from ..patterns import draw_anchors
    from . import conversions as conv
    from .node import ScaleFieldNode
    from .spinner import BackgroundSpinner

    if backbone is None:
        from ..backbones import load_backbone

        backbone = load_backbone()
    ds = load_dataset(data_dir or shared_root() / "data" / "sun3d_seq")
    frame = ds.frame(0)
    h, w = frame.rgb.shape[:2]
    # anchors as camera-frame points (identity T_cam_anchor), through the one unprojection; metric points, so
    # they stay valid for the image at any size
    anchors = draw_anchors(frame, "vio", n_anchors, seed=0).anchors
    sparse = np.zeros((h, w), np.float32)
    rows, cols = np.round(anchors.v).astype(int), np.round(anchors.u).astype(int)
    sparse[rows, cols] = anchors.depth_m
    points = frame.intrinsics.unproject(sparse)[rows, cols]
    rgb, intrinsics = frame.rgb, frame.intrinsics
    if size is not None and tuple(size) != (w, h):
        import cv2

        w, h = int(size[0]), int(size[1])
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        intrinsics = intrinsics.scaled_to(w, h)

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id if domain_id is not None else 20 + os.getpid() % 200)
    overrides = {"max_depth_m": ds.max_depth_m, "anchor_max_age": 0.01, **(params or {})}
    node = ScaleFieldNode(
        backbone=backbone,
        context=ctx,
        parameter_overrides=[Parameter(k, value=list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()],
    )
    io = rclpy.create_node("scale_field_bench_io", context=ctx)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub_image = io.create_publisher(Image, "image", qos)
    pub_info = io.create_publisher(CameraInfo, "camera_info", qos)
    pub_anchors = io.create_publisher(PointCloud2, "anchors", qos)
    arrived = threading.Event()
    published_sizes: set[tuple[int, int]] = set()

    def on_depth(msg: Image) -> None:
        published_sizes.add((msg.width, msg.height))
        arrived.set()

    io.create_subscription(Image, "metric_depth", on_depth, qos)
    io.create_subscription(PointCloud2, "metric_depth/points", lambda _m: None, qos)  # a consumer, as in use
    executor = SingleThreadedExecutor(context=ctx)  # as the node's main(): inference has its own thread
    executor.add_node(node)
    executor.add_node(io)
    spinner = BackgroundSpinner(executor)
    try:
        deadline = time.monotonic() + timeout_s
        while not (
            pub_image.get_subscription_count()
            and pub_anchors.get_subscription_count()
            and io.count_publishers("metric_depth")
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("DDS discovery between the benchmark publisher and the node timed out")
            time.sleep(0.01)

        def header(stamp_s: float) -> Header:
            hd = Header()
            hd.stamp.sec, hd.stamp.nanosec = msg_codec.ns_to_stamp(int(stamp_s * 1e9))
            hd.frame_id = "camera_optical"
            return hd

        image_msg = conv.rgb8_image_msg(rgb, header(0.0))
        for k in range(warmup + frames):
            stamp = 1000.0 + k / 30.0
            pub_info.publish(conv.camera_info_msg(intrinsics, header(stamp)))
            pub_anchors.publish(conv.xyzrgb_cloud_msg(points, None, header(stamp)))
            end = time.monotonic() + timeout_s
            while not node.anchor_buffer.query(stamp, 1e-6):
                if time.monotonic() > end:
                    raise TimeoutError("anchors did not reach the node")
                time.sleep(0.001)
            arrived.clear()
            image_msg.header = header(stamp)
            pub_image.publish(image_msg)
            if not arrived.wait(timeout_s):
                raise TimeoutError(f"no metric_depth within {timeout_s} s")
        # the depth is published before the node records the frame's stats: wait for the last record
        end = time.monotonic() + timeout_s
        while len(node.stats.history) < min(warmup + frames, node.stats.history.maxlen) and time.monotonic() < end:
            time.sleep(0.001)
        history = list(node.stats.history)[warmup:]
    finally:
        spinner.stop()
        node.destroy_node()
        io.destroy_node()
        rclpy.shutdown(context=ctx)

    latency = np.array([lat for _, lat, _ in history])
    backbone_ms = np.array([st.get("pipeline.backbone", 0.0) for _, _, st in history])
    other = latency - backbone_ms
    stage_names = sorted({k for _, _, st in history for k in st})
    return {
        # what the node published, so that a report cannot label one size with another's timings
        "resolution": " ".join(f"{pw}x{ph}" for pw, ph in sorted(published_sizes)),
        "frames": len(history),
        "runtime": str(getattr(backbone, "runtime", "")),
        "latency_ms": {
            "median": float(np.median(latency)),
            "p95": float(np.percentile(latency, 95)),
            "max": float(latency.max()),
        },
        "backbone_ms": {"median": float(np.median(backbone_ms))},
        "non_backbone_ms": {"median": float(np.median(other)), "p95": float(np.percentile(other, 95))},
        "non_backbone_share": float(np.median(other / latency)),
        "latency_samples_ms": [float(x) for x in latency],  # per frame, for LatencyStats
        "stages_ms": {k: float(np.median([st.get(k, 0.0) for _, _, st in history])) for k in stage_names},
        "target_non_backbone_share": 0.25,
        "meets_target": bool(np.median(other / latency) < 0.25),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(benchmark_node(), indent=1))
