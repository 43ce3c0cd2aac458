"""`scale_field_node`: the ROS 2 node robots run, a thin shell around the one `Pipeline` the CLI also uses.

Threads: subscriptions and diagnostics run on the executor and only decode and buffer; inference runs in
the node's own thread, woken by each image, so anchors, odometry and camera_info keep arriving while a frame
is processed. Not a callback group under rclpy's MultiThreadedExecutor: that executor re-yields a task that
is queued but not yet started as fast as it can loop, and this busy loop takes the GIL from the frame being
processed (`python scripts/executor_probe.py`: frame p95 166 ms instead of 5, over 4,000 task hand-outs a
second for 30 messages a second; in the node, end-to-end p95 105 ms with one ONNX Runtime thread). A plain
thread, with a SingleThreadedExecutor for the light input callbacks (`main`), has no such loop.
Images go through a queue of one: an image that arrives while another waits replaces it, so under load
the newest image is processed and there is never a backlog.

Topics (node-relative; remap in the launch file): see README / the module constants below.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from ..alloc import keep_frame_buffers
from ..depth_points import decimated_points
from ..frame_processor import CameraInfoState, FrameProcessor, InputWarning, ProcessedFrame
from ..pipeline import Pipeline, PipelineConfig
from . import conversions as conv
from .params import NodeSettings, apply_changes, declare_parameters, settings_from_values

NODE_NAME = "scale_field_node"
# Input topics
TOPIC_IMAGE = "image"
TOPIC_IMAGE_COMPRESSED = "image/compressed"
TOPIC_CAMERA_INFO = "camera_info"
TOPIC_ANCHORS = "anchors"
TOPIC_ODOM = "odom"
# Output topics
TOPIC_DEPTH = "metric_depth"
TOPIC_DEPTH_INFO = "metric_depth/camera_info"
TOPIC_POINTS = "metric_depth/points"
TOPIC_CONFIDENCE = "metric_depth/confidence"
TOPIC_SCALE_FIELD = "scale_field"
TOPIC_DIAGNOSTICS = "/diagnostics"


class WarnThrottle:
    """Warn once per cause, then at most once per `period_s` for that cause; counts every occurrence."""

    def __init__(self, logger, period_s: float) -> None:
        self._logger = logger
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self.counts: dict[str, int] = {}  # occurrences per cause
        self.emitted: dict[str, int] = {}  # log lines per cause
        self._lock = threading.Lock()

    def __call__(self, cause: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[cause] = self.counts.get(cause, 0) + 1
            last = self._last.get(cause)
            if last is not None and now - last < self.period_s:
                return
            self._last[cause] = now
            self.emitted[cause] = self.emitted.get(cause, 0) + 1
            n = self.counts[cause]
        self._logger.warning(f"[{cause}] {message}" + (f" ({n} times so far)" if n > 1 else ""))


STALE_OUTPUT_S = 2.0  # images arriving this long after the last output: diagnostics warn (or 3x the p95 latency)


class RateCounter:
    """Events per second over the last diagnostics period."""

    def __init__(self) -> None:
        self._n = 0
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._n += 1

    def rate_hz(self) -> float:
        with self._lock:
            now = time.monotonic()
            rate = self._n / max(now - self._t, 1e-9)
            self._n, self._t = 0, now
        return rate


@dataclass
class FrameStats:
    """What the last processed frame did, for diagnostics."""

    latency_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    stages_ms: dict[str, float] = field(default_factory=dict)
    history: deque = field(default_factory=lambda: deque(maxlen=1000))  # (stamp_s, latency_ms, stages_ms)
    n_anchors: int = 0
    n_anchor_sets: int = 0
    fit_level: str = ""
    rms_residual: float = 0.0
    fallback_reason: str = ""
    coasting: bool = False
    coast_duration_s: float = 0.0
    coast_exceeded: bool = False
    nis_per_dof: float = 0.0
    filter_resets: int = 0
    last_filter_reset: str = ""
    frames_processed: int = 0
    frames_dropped: int = 0
    frames_failed: int = 0
    last_image_s: float | None = None  # time.monotonic() of the latest image received
    last_output_s: float | None = None  # ... and of the latest metric depth published


@dataclass
class _PendingImage:
    msg: object
    received_ns: int


class ScaleFieldNode(Node):
    """Metric depth from images and sparse anchors (see module docstring)."""

    def __init__(self, backbone=None, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._values = declare_parameters(self)
        settings, config = settings_from_values(self._values)  # ValueError with every reason: refuse to start
        self.settings: NodeSettings = settings
        self.warn = WarnThrottle(self.get_logger(), settings.warn_period)
        if backbone is None:
            from ..backbones import load_backbone

            backbone = load_backbone(
                settings.backbone, settings.model_path, settings.runtime, settings.threads, settings.device
            )
        self.backbone = backbone
        self.processor = FrameProcessor(settings, config, backbone)  # buffers, camera_info, the Pipeline
        self._pending_config: PipelineConfig | None = None
        self._config_lock = threading.Lock()

        self._slot: _PendingImage | None = None
        self._slot_lock = threading.Lock()
        self.stats = FrameStats()
        self.rates = {k: RateCounter() for k in ("image_in", "anchors_in", "odom_in", "depth_out")}

        self._input_group = ReentrantCallbackGroup()
        qin = conv.input_qos(settings.input_reliability, settings.input_queue_depth)
        # odometry is small and bursty (up to hundreds of Hz): a shallow queue drops poses, and anchors would
        # then be placed with the nearest pose left, from another moment
        qodom = conv.input_qos(settings.input_reliability, settings.odom_queue_depth)
        qout = conv.output_qos(settings.output_queue_depth)
        if settings.use_compressed:
            self.create_subscription(
                CompressedImage, TOPIC_IMAGE_COMPRESSED, self._on_image, qin, callback_group=self._input_group
            )
        else:
            self.create_subscription(Image, TOPIC_IMAGE, self._on_image, qin, callback_group=self._input_group)
        self.create_subscription(
            CameraInfo, TOPIC_CAMERA_INFO, self._on_camera_info, qin, callback_group=self._input_group
        )
        self.create_subscription(PointCloud2, TOPIC_ANCHORS, self._on_anchors, qin, callback_group=self._input_group)
        self.create_subscription(Odometry, TOPIC_ODOM, self._on_odom, qodom, callback_group=self._input_group)

        self.pub_depth = self.create_publisher(Image, TOPIC_DEPTH, qout)
        self.pub_info = self.create_publisher(CameraInfo, TOPIC_DEPTH_INFO, qout)
        self.pub_points = self.create_publisher(PointCloud2, TOPIC_POINTS, qout)
        self.pub_confidence = self.create_publisher(Image, TOPIC_CONFIDENCE, qout)
        self.pub_scale = self.create_publisher(Image, TOPIC_SCALE_FIELD, qout)
        self.pub_diag = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, 10)

        self._wake = threading.Event()  # set by each image; the inference thread waits on it
        self._stopping = False
        self._inference = threading.Thread(target=self._inference_loop, name="scale_field_inference", daemon=True)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=self._input_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        warm_s = self.processor.warm_up_s
        warmed = f" (numeric kernels compiled in {warm_s:.1f} s)" if warm_s > 1.0 else ""
        self.get_logger().info(
            f"ready: backbone {getattr(backbone, 'name', '?')} on {getattr(backbone, 'runtime', '?')}, "
            f"input QoS {settings.input_reliability}, anchors {'world' if settings.anchors_in_world else 'sensor'}"
            f" frame, filter {'on' if config.filter.enabled else 'off'}" + warmed
        )
        self._inference.start()

    # ---------------------------------------------------------------- the processor's state, for callers

    @property
    def pipeline(self) -> Pipeline:
        return self.processor.pipeline

    @property
    def config(self) -> PipelineConfig:
        return self.processor.config

    @property
    def anchor_buffer(self):
        return self.processor.anchor_buffer

    @property
    def pose_buffer(self):
        return self.processor.pose_buffer

    @property
    def _camera_info(self) -> CameraInfoState | None:
        return self.processor.camera_info

    def _warn_all(self, warnings: list[InputWarning] | tuple[InputWarning, ...]) -> None:
        for cause, text in warnings:
            self.warn(cause, text)

    # ---------------------------------------------------------------- parameters

    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            values, settings, config = apply_changes(self._values, params)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._values = values
        self.settings = settings
        self.warn.period_s = settings.warn_period
        self.processor.update_settings(settings)
        if config != self.config:
            with self._config_lock:
                self._pending_config = config  # swapped in by the inference thread between frames
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- inputs (fast: decode and buffer only)

    def _on_image(self, msg) -> None:
        received = time.perf_counter_ns()
        self.rates["image_in"].tick()
        self.stats.last_image_s = time.monotonic()
        self.processor.on_image_stamp(conv.stamp_to_s(msg.header.stamp))
        with self._slot_lock:
            if self._slot is not None:
                self.stats.frames_dropped += 1  # replaced before it was processed: queue of one
            self._slot = _PendingImage(msg, received)
        self._wake.set()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._warn_all(self.processor.on_camera_info(msg))

    def _on_anchors(self, msg: PointCloud2) -> None:
        self.rates["anchors_in"].tick()
        self._warn_all(self.processor.on_anchors(msg, conv.stamp_to_s(msg.header.stamp)))

    def _on_odom(self, msg: Odometry) -> None:
        self.rates["odom_in"].tick()
        self._warn_all(self.processor.on_odom(msg, conv.stamp_to_s(msg.header.stamp)))

    # ---------------------------------------------------------------- inference

    def _take_latest(self) -> _PendingImage | None:
        with self._slot_lock:
            pending, self._slot = self._slot, None
        return pending

    def _inference_loop(self) -> None:
        """The inference thread: each wake-up processes the newest waiting image (if any) until the node stops."""
        while not self._stopping:
            self._wake.wait(timeout=0.5)
            self._wake.clear()  # before taking: an image arriving from here on wakes the next round
            if not self._stopping:
                self._process_latest()

    def destroy_node(self) -> None:
        inference = getattr(self, "_inference", None)  # None: the constructor failed (rclpy.shutdown still calls this)
        if inference is not None:
            self._stopping = True
            self._wake.set()
            if inference.is_alive() and inference is not threading.current_thread():
                inference.join(timeout=10.0)
        super().destroy_node()

    def _process_latest(self) -> None:
        pending = self._take_latest()
        if pending is None:
            return
        try:
            self._process(pending)
        except Exception as exc:  # noqa: BLE001 - the node must outlive any single bad frame
            self.stats.frames_failed += 1
            self.warn("processing_failed", f"frame dropped: {type(exc).__name__}: {exc}")

    def _swap_config(self) -> None:
        with self._config_lock:
            config, self._pending_config = self._pending_config, None
        if config is not None:
            self.processor.set_config(config)

    def _process(self, pending: _PendingImage) -> None:
        self._swap_config()
        settings = self.settings
        msg = pending.msg
        t0 = time.perf_counter_ns()
        step = self.processor.process_image(msg, isinstance(msg, CompressedImage), conv.stamp_to_s(msg.header.stamp))
        self._warn_all(step.warnings)
        if step.failed:
            self.stats.frames_failed += 1
        frame = step.frame
        if frame is None:
            return
        t3 = time.perf_counter_ns()
        result = frame.result
        t_depth = self._publish(msg.header, frame, settings)
        t4 = time.perf_counter_ns()

        ms = 1e-6
        s = self.stats
        # latency: image receipt to metric_depth publication (the other outputs follow it)
        s.latency_ms.append((t_depth - pending.received_ns) * ms)
        s.stages_ms = {
            "queue": (t0 - pending.received_ns) * ms,
            "decode": step.timings.decode,
            "anchors": step.timings.anchors,
            **{f"pipeline.{k}": float(v) for k, v in _timings_dict(result.timings_ms).items()},
            "pipeline_wall": step.timings.pipeline,
            "publish_depth": (t_depth - t3) * ms,
            "publish_rest": (t4 - t_depth) * ms,
        }
        s.history.append((frame.stamp_s, s.latency_ms[-1], s.stages_ms))
        s.n_anchors = int(result.fit.n_anchors)
        s.n_anchor_sets = frame.found.n_sets
        s.fit_level = getattr(result.fit.level, "value", str(result.fit.level))
        s.rms_residual = float(result.fit.rms_residual)
        s.fallback_reason = result.fit.fallback_reason
        s.coasting = bool(result.coasting)
        s.coast_duration_s = float(result.coast_s)
        s.coast_exceeded = bool(result.coast_exceeded)
        s.nis_per_dof = float(result.nis_per_dof)
        if result.filter_reset:
            s.filter_resets += 1
            s.last_filter_reset = result.filter_reset
        s.frames_processed += 1
        s.last_output_s = time.monotonic()
        self.rates["depth_out"].tick()

    def _publish(self, header, frame: ProcessedFrame, settings: NodeSettings) -> int:
        """Publish the frame's outputs, metric depth first; returns perf_counter_ns when it was handed to DDS."""
        out_header = conv.header_from(header)
        result = frame.result
        self.pub_depth.publish(conv.float_image_msg(result.depth_m, out_header))
        t_depth = time.perf_counter_ns()
        self.pub_info.publish(conv.camera_info_msg(frame.intrinsics, out_header))
        self.pub_confidence.publish(conv.float_image_msg(result.std_m, out_header))
        self.pub_scale.publish(conv.float_image_msg(result.scale_field, out_header))
        if self.pub_points.get_subscription_count() > 0:
            points, colours = decimated_points(result.depth_m, frame.rgb, frame.intrinsics, settings.point_decimation)
            self.pub_points.publish(conv.xyzrgb_cloud_msg(points, colours, out_header))
        return t_depth

    # ---------------------------------------------------------------- diagnostics

    def diagnostics_status(self) -> DiagnosticStatus:
        s = self.stats
        rates = {k: r.rate_hz() for k, r in self.rates.items()}
        lat = np.asarray(s.latency_ms, np.float64)
        values = {
            "runtime": str(getattr(self.backbone, "runtime", "")),
            "backbone": str(getattr(self.backbone, "name", "")),
            "input_rate_hz": f"{rates['image_in']:.2f}",
            "anchor_rate_hz": f"{rates['anchors_in']:.2f}",
            "odom_rate_hz": f"{rates['odom_in']:.2f}",
            "output_rate_hz": f"{rates['depth_out']:.2f}",
            "latency_median_ms": f"{np.median(lat):.1f}" if lat.size else "",
            "latency_p95_ms": f"{np.percentile(lat, 95):.1f}" if lat.size else "",
            "anchors_used": str(s.n_anchors),
            "anchor_sets": str(s.n_anchor_sets),
            "fit_level": s.fit_level,
            "fit_rms_residual": f"{s.rms_residual:.3f}",
            "fallback_reason": s.fallback_reason,
            "coasting": str(s.coasting).lower(),
            "coast_duration_s": f"{s.coast_duration_s:.2f}",
            "coast_exceeded": str(s.coast_exceeded).lower(),
            "innovation_nis_per_dof": f"{s.nis_per_dof:.2f}",
            "filter_resets": str(s.filter_resets),
            "last_filter_reset": s.last_filter_reset,
            "filter": "on" if self.config.filter.enabled else "off",
            "frames_processed": str(s.frames_processed),
            "frames_dropped": str(s.frames_dropped),
            "frames_failed": str(s.frames_failed),
            **{f"stage_ms.{k}": f"{v:.2f}" for k, v in s.stages_ms.items()},
            **{f"warnings.{k}": str(n) for k, n in sorted(self.warn.counts.items())},
        }
        # images still arriving long after the last output (each refused, see warnings.*): the fit values are stale
        unanswered_s = (s.last_image_s or 0.0) - (s.last_output_s or 0.0)
        stale_after_s = max(STALE_OUTPUT_S, 3e-3 * float(np.percentile(lat, 95))) if lat.size else STALE_OUTPUT_S
        if s.frames_processed == 0:
            level, message = DiagnosticStatus.WARN, "no metric depth published yet"
        elif unanswered_s > stale_after_s:
            level = DiagnosticStatus.WARN
            message = f"images arriving but no metric depth published for {unanswered_s:.1f} s (see warnings.*)"
        elif s.coast_exceeded:
            level, message = DiagnosticStatus.WARN, f"coasting without anchors for {s.coast_duration_s:.1f} s"
        elif s.coasting:
            level, message = DiagnosticStatus.OK, "coasting without anchors"
        else:
            level, message = DiagnosticStatus.OK, f"{s.n_anchors} anchors, fit {s.fit_level}"
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: metric depth",
            message=message,
            hardware_id=self.get_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostics_status()]
        self.pub_diag.publish(arr)


def _timings_dict(timings) -> dict[str, float]:
    if hasattr(timings, "__dataclass_fields__"):
        return {k: getattr(timings, k) for k in timings.__dataclass_fields__}
    return dict(timings)


def main(args: list[str] | None = None) -> int:
    keep_frame_buffers()  # the node's process: per-frame arrays reuse freed heap instead of fresh pages
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = ScaleFieldNode()
        except (ValueError, FileNotFoundError) as exc:
            print(f"{NODE_NAME}: refusing to start: {exc}", flush=True)
            return 2
        # the objects made at start (torch, onnx, rclpy) move out of the collector's reach: otherwise each
        # periodic full collection walks them all (about 80 ms here), a latency spike every few seconds
        gc.collect()
        gc.freeze()
        executor = SingleThreadedExecutor()  # input callbacks only: inference has its own thread
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
