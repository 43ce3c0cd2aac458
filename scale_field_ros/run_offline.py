"""`scale-field run`: the node's work without ROS, on a recorded bag or on a dataset folder.

--bag: reads a ROS 2 bag (MCAP or sqlite3) with rosbags and writes an MCAP with every input topic plus the
node's outputs (/metric_depth, /metric_depth/camera_info, /metric_depth/points, /metric_depth/confidence,
/scale_field). The parameters file is the node's (`/**/scale_field_node: ros__parameters:`), validated by the
node's own table (`ros/params.py`), and each image goes through the same steps as in the node: anchor
buffering by stamp (`AnchorBuffer`, `anchors_for_image` with T_cam_anchor, odometry, anchors_in_world), the
one `Pipeline` with the temporal filter, the coasting rule on confidence, decimated points. Unlike the node,
which keeps only the newest image under load, every image is processed: an image waits until every message
logged at or before it has been read, so anchors and odometry of the same instant are in the buffers.
Where the parameters leave T_cam_anchor at identity and the bag's /tf_static links the anchor frame to the
camera frame, that transform is used (make-bag writes it for native LiDAR anchors).

--data: the same pipeline on a dataset folder (shared/data layout): metric depth as 16-bit PNG (mm) and
float32 .npy, a PLY point cloud and a PNG panel per frame, and metrics.json where ground truth exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_TOPICS = {
    "depth": "/metric_depth",
    "camera_info": "/metric_depth/camera_info",
    "points": "/metric_depth/points",
    "confidence": "/metric_depth/confidence",
    "scale_field": "/scale_field",
}
TF_STATIC = "/tf_static"
MAX_PNG_DEPTH_M = 65.535  # 16-bit millimetres; farther pixels are written as 0 (no data), the .npy keeps them
DEFAULT_PATTERN_COUNTS = {"uniform": 500, "lidar": 2000, "vio": 300}


# --------------------------------------------------------------------------- parameters


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (VALUE in YAML: 0.1, false, [1, 2]) -> values."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        value = yaml.safe_load(text)
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def load_settings(params: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """(NodeSettings, PipelineConfig) exactly as the node derives them from the same file and overrides."""
    from .ros.params import params_file_values, settings_from_values

    values = params_file_values(params) if params else {}
    values.update(overrides or {})
    return settings_from_values(values)


# --------------------------------------------------------------------------- static transforms


def tf_message_transforms(msg) -> dict[tuple[str, str], np.ndarray]:
    """A tf2_msgs/TFMessage -> {(parent frame, child frame): T_parent_child 4x4}."""
    from . import msg_codec

    out = {}
    for tf in msg.transforms:
        t, r = tf.transform.translation, tf.transform.rotation
        out[(tf.header.frame_id, tf.child_frame_id)] = msg_codec.pose_to_transform(
            (t.x, t.y, t.z), (r.x, r.y, r.z, r.w)
        )
    return out


def static_transforms(bag: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Every transform on the bag's /tf_static ({} when it has none)."""
    from .bagio import bag_topics, read_messages

    if TF_STATIC not in bag_topics(bag):
        return {}
    out: dict[tuple[str, str], np.ndarray] = {}
    for m in read_messages(bag, [TF_STATIC]):
        out.update(tf_message_transforms(m.msg))
    return out


# --------------------------------------------------------------------------- one frame, as the node does it


@dataclass(frozen=True)
class FrameOutput:
    """What the node would publish for one image, plus what produced it."""

    stamp_ns: int
    log_time_ns: int
    frame_id: str
    rgb: np.ndarray
    intrinsics: Any  # Intrinsics
    depth_m: np.ndarray
    std_m: np.ndarray
    scale_field: np.ndarray
    points: np.ndarray  # Nx3 float32, camera optical frame, every point_decimation-th pixel
    colours: np.ndarray  # Nx3 uint8
    anchors: Any  # Anchors assembled for the image (before the pipeline's sanitising)
    n_anchor_sets: int
    result: Any  # PipelineResult


@dataclass
class RunStats:
    images_in: int = 0
    frames: int = 0
    anchor_sets: list[int] = field(default_factory=list)
    anchors_used: list[int] = field(default_factory=list)
    pipeline_ms: list[float] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)


class BagFrameProcessor:
    """The node's per-message logic (`frame_processor.FrameProcessor`, as ros/node.py runs it) on rosbags
    messages, plus /tf_static for T_cam_anchor; warnings are counted, each cause passed to `warn` once."""

    def __init__(self, settings, config, backbone, warn: Callable[[str, str], None] | None = None) -> None:
        from .frame_processor import FrameProcessor

        self.core = FrameProcessor(settings, config, backbone)
        self.settings = settings
        self.config = config
        self.stats = RunStats()
        self._warn_sink = warn
        self._tf_static: dict[tuple[str, str], np.ndarray] = {}  # (parent, child) -> T_parent_child
        self.T_cam_anchor_source = "parameters (T_cam_anchor)"

    def warn(self, cause: str, message: str) -> None:
        first = cause not in self.stats.warnings
        self.stats.warnings[cause] = self.stats.warnings.get(cause, 0) + 1
        if first and self._warn_sink is not None:
            self._warn_sink(cause, message)

    def _warn_all(self, warnings) -> None:
        for cause, text in warnings:
            self.warn(cause, text)

    # -------------------------------------------------------------- inputs

    def on_camera_info(self, msg) -> None:
        self._warn_all(self.core.on_camera_info(msg))

    @property
    def has_camera_info(self) -> bool:
        return self.core.camera_info is not None

    def on_image_received(self, stamp_ns: int) -> None:
        self.stats.images_in += 1
        self.core.on_image_stamp(stamp_ns * 1e-9)

    def on_anchors(self, msg, stamp_ns: int) -> None:
        self._warn_all(self.core.on_anchors(msg, stamp_ns * 1e-9))

    def on_odom(self, msg, stamp_ns: int) -> None:
        self._warn_all(self.core.on_odom(msg, stamp_ns * 1e-9))

    def on_tf_static(self, msg) -> None:
        self._tf_static.update(tf_message_transforms(msg))

    def T_cam_anchor(self, camera_frame: str, anchor_frame: str) -> np.ndarray:
        """The parameter, unless it is identity and /tf_static links the two frames (then that transform)."""
        from .poses import invert_transform

        T = self.settings.T_cam_anchor
        if not np.array_equal(T, np.eye(4)) or anchor_frame == camera_frame or not anchor_frame:
            return T
        direct = self._tf_static.get((camera_frame, anchor_frame))
        if direct is not None:
            self.T_cam_anchor_source = f"/tf_static {camera_frame} -> {anchor_frame}"
            return direct
        inverse = self._tf_static.get((anchor_frame, camera_frame))
        if inverse is not None:
            self.T_cam_anchor_source = f"/tf_static {anchor_frame} -> {camera_frame} (inverted)"
            return invert_transform(inverse)
        return T

    # -------------------------------------------------------------- one image

    def process_image(self, msg, msgtype: str, stamp_ns: int, log_time_ns: int) -> FrameOutput | None:
        """One image through the node's steps; None (after a warning) where the node would skip it too."""
        from .bagio import COMPRESSED_IMAGE
        from .depth_points import decimated_points

        step = self.core.process_image(msg, msgtype == COMPRESSED_IMAGE, stamp_ns * 1e-9, self.T_cam_anchor)
        self._warn_all(step.warnings)
        frame = step.frame
        if frame is None:
            return None
        result = frame.result
        points, colours = decimated_points(result.depth_m, frame.rgb, frame.intrinsics, self.settings.point_decimation)
        s = self.stats
        s.frames += 1
        s.anchor_sets.append(frame.found.n_sets)
        s.anchors_used.append(int(result.fit.n_anchors))
        s.pipeline_ms.append(float(result.timings_ms.total))
        return FrameOutput(
            stamp_ns, log_time_ns, msg.header.frame_id, frame.rgb, frame.intrinsics, result.depth_m, result.std_m,
            result.scale_field, points, colours, frame.found.anchors, frame.found.n_sets, result,
        )  # fmt: skip


# --------------------------------------------------------------------------- bag mode


@dataclass(frozen=True)
class RunSummary:
    out: Path
    images_in: int
    frames: int
    anchor_sets_per_frame: float
    anchors_per_frame: float  # anchors the fit used (inliers), mean over frames
    wall_s: float
    fps: float
    pipeline_ms_median: float
    counts: dict[str, int]  # messages written per topic
    warnings: dict[str, int]
    T_cam_anchor_source: str

    def text(self) -> str:
        lines = [
            f"wrote {self.out}: {self.frames} of {self.images_in} images processed in {self.wall_s:.1f} s "
            f"({self.fps:.1f} frames/s, pipeline median {self.pipeline_ms_median:.1f} ms)",
            f"anchors per frame: {self.anchors_per_frame:.0f} used by the fit, from "
            f"{self.anchor_sets_per_frame:.2f} anchor sets; T_cam_anchor from {self.T_cam_anchor_source}",
            "topics: " + ", ".join(f"{t} {n}" for t, n in sorted(self.counts.items())),
        ]
        if self.warnings:
            lines.append("warnings: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.warnings.items())))
        return "\n".join(lines)


def resolve_topics(bag: str | Path, topics, require_odom: bool = False):
    """Validate `topics` against `bag`; its odometry topic is dropped when absent unless `require_odom`."""
    from .bagio import bag_topics, check_camera_bag

    found = bag_topics(bag)
    if topics.odom and not require_odom and topics.odom not in found:
        topics = dataclasses.replace(topics, odom=None)
    check_camera_bag(bag, topics)
    return topics, found


def output_messages(factory, out: FrameOutput) -> list[tuple[str, object]]:
    """The node's five outputs for one frame as rosbags messages (topic, message)."""
    from . import msg_codec

    t, fid = out.stamp_ns, out.frame_id
    return [
        (OUTPUT_TOPICS["depth"], factory.image(t, fid, msg_codec.depth_image_fields(out.depth_m))),
        (OUTPUT_TOPICS["camera_info"], factory.camera_info(t, fid, msg_codec.camera_info_fields(out.intrinsics))),
        (OUTPUT_TOPICS["confidence"], factory.image(t, fid, msg_codec.depth_image_fields(out.std_m))),
        (OUTPUT_TOPICS["scale_field"], factory.image(t, fid, msg_codec.depth_image_fields(out.scale_field))),
        (OUTPUT_TOPICS["points"], factory.pointcloud2(t, fid, msg_codec.xyzrgb_cloud_fields(out.points, out.colours))),
    ]


def run_bag(
    bag: str | Path,
    out: str | Path,
    settings,
    config,
    backbone,
    topics=None,
    require_odom: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_frame: Callable[[FrameOutput], None] | None = None,
    warn: Callable[[str, str], None] | None = None,
) -> RunSummary:
    """Process every image of `bag` as the node would and write inputs + outputs to the MCAP `out`.

    `topics` defaults to make-bag's; odometry is used when the bag has it (required with `require_odom`). The
    output is written atomically: on any error nothing is left at `out`.
    """
    from tqdm import tqdm

    from .bagio import (
        CAMERA_INFO,
        COMPRESSED_IMAGE,
        IMAGE,
        ODOMETRY,
        BagError,
        BagWriter,
        CameraBagTopics,
        MessageFactory,
    )
    from .bagio import read_messages as read_bag

    out = Path(out)
    if out.suffix != ".mcap":
        raise ValueError(f"--out must be an .mcap file, got {out}")
    topics, found = resolve_topics(bag, topics or CameraBagTopics(), require_odom)
    if settings.anchors_in_world and not topics.odom:
        raise BagError(f"anchors_in_world needs odometry, but bag {bag} has no odometry topic (--odom-topic)")
    clash = sorted(set(OUTPUT_TOPICS.values()) & set(found))
    if clash:
        raise BagError(f"bag {bag} already holds output topics {', '.join(clash)}; run on the recorded inputs")
    if found[topics.image].msgtype not in (IMAGE, COMPRESSED_IMAGE):
        raise BagError(f"image topic {topics.image} is {found[topics.image].msgtype}")
    n_images = found[topics.image].count
    proc = BagFrameProcessor(settings, config, backbone, warn)
    factory = MessageFactory()
    pending: list = []  # images waiting for every message logged at or before them
    t0 = time.perf_counter()
    with (
        BagWriter(out, overwrite=overwrite) as writer,
        tqdm(total=n_images, unit="frame", desc="scale-field run", disable=not progress, file=sys.stderr) as bar,
    ):

        def flush(before_ns: int | None) -> None:
            while pending and (before_ns is None or pending[0].log_time_ns < before_ns):
                if not proc.has_camera_info and before_ns is not None:
                    return  # hold images until the first camera_info (the node would drop them)
                m = pending.pop(0)
                frame = proc.process_image(m.msg, m.msgtype, m.stamp_ns, m.log_time_ns)
                bar.update(1)
                if frame is None:
                    continue
                for topic, msg in output_messages(factory, frame):
                    writer.write(topic, msg, frame.log_time_ns)
                if on_frame is not None:
                    on_frame(frame)

        for m in read_bag(bag, list(found)):
            flush(m.log_time_ns)
            writer.write(m.topic, m.msg, m.log_time_ns, latched=m.topic == TF_STATIC)
            if m.topic == topics.image:
                proc.on_image_received(m.stamp_ns)
                pending.append(m)
            elif m.topic == topics.camera_info and m.msgtype == CAMERA_INFO:
                proc.on_camera_info(m.msg)
            elif m.topic == topics.anchors:
                proc.on_anchors(m.msg, m.stamp_ns)
            elif m.topic == topics.odom and m.msgtype == ODOMETRY:
                proc.on_odom(m.msg, m.stamp_ns)
            elif m.topic == TF_STATIC:
                proc.on_tf_static(m.msg)
        flush(None)
        if proc.stats.frames == 0:
            raise BagError(f"no image of {bag} could be processed (warnings: {proc.stats.warnings}); nothing written")
    wall = time.perf_counter() - t0
    s = proc.stats
    return RunSummary(
        out=out,
        images_in=s.images_in,
        frames=s.frames,
        anchor_sets_per_frame=float(np.mean(s.anchor_sets)),
        anchors_per_frame=float(np.mean(s.anchors_used)),
        wall_s=wall,
        fps=s.frames / max(wall, 1e-9),
        pipeline_ms_median=float(np.median(s.pipeline_ms)),
        counts=dict(writer.counts),
        warnings=dict(s.warnings),
        T_cam_anchor_source=proc.T_cam_anchor_source,
    )


# --------------------------------------------------------------------------- dataset-folder mode


@dataclass(frozen=True)
class DataRunSummary:
    out: Path
    frames: int
    pattern: str
    anchors_per_frame: float
    wall_s: float
    fps: float
    metrics: dict[str, float | None] | None  # mean over frames with ground truth (None where undefined)

    def text(self) -> str:
        line = (
            f"wrote {self.out}: {self.frames} frames, anchors {self.pattern} ({self.anchors_per_frame:.0f} a frame), "
            f"{self.wall_s:.1f} s ({self.fps:.1f} frames/s)"
        )
        if self.metrics:
            from .metrics import shown

            m = self.metrics  # a metric is None where no frame had evaluable pixels
            a, r, d = (shown(m[k], digits) for k, digits in (("absrel", 4), ("rmse", 3), ("delta1", 3)))
            line += f"\nmetrics.json: AbsRel {a}, RMSE {r} m, delta1 {d}"
        return line


def finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    """Metrics as strict JSON: NaN/inf (e.g. no evaluable pixels) become null."""
    return {k: float(v) if np.isfinite(v) else None for k, v in values.items()}


def depth_png_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth -> uint16 millimetres (ROS 16UC1 convention: 0 = no data, also beyond 65.535 m)."""
    mm = np.round(np.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
    return np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)


def atomic_dir(out: Path, overwrite: bool):
    """A temporary sibling folder to fill; `commit()` renames it to `out`."""
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists already; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)  # as eval and make-bag do: `--out out/nyu` on a fresh checkout
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    def commit() -> None:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        if old.exists():
            shutil.rmtree(old)

    return tmp, commit


def run_dataset(
    data_dir: str | Path,
    out: str | Path,
    settings,
    config,
    backbone,
    pattern: str = "auto",
    anchor_count: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> DataRunSummary:
    """Every frame of a dataset folder through the pipeline (frames independent: a folder has no timing).

    Anchors: `auto` = the native LiDAR when the dataset has it, else `lidar`; `native` with `anchor_count` keeps
    that many scan points and scores on the rest. Ground truth (dense, or held-out LiDAR) gives metrics.json.
    """
    import cv2
    from tqdm import tqdm

    from .datasets import load_dataset
    from .depth_points import decimated_points
    from .metrics import DepthMetrics, compute_metrics, evaluation_mask, finite_means
    from .panels import write_panel
    from .patterns import Pattern, draw_anchors, supports
    from .pipeline import Pipeline
    from .ply import write_ply

    out = Path(out)
    ds = load_dataset(data_dir)
    first = ds.frame(0)
    if pattern == "auto":
        pattern = "native" if supports(first, Pattern.NATIVE) else "lidar"
    pattern = Pattern(pattern).value
    if not supports(first, Pattern(pattern)):
        raise ValueError(f"dataset {ds.name} has no data for the {pattern} pattern")
    pipe = Pipeline(backbone, config)
    tmp, commit = atomic_dir(out, overwrite)
    try:
        for sub in ("depth", "points", "panels"):
            (tmp / sub).mkdir()
        rows, n_anchors = [], []
        t0 = time.perf_counter()
        for i in tqdm(range(len(ds)), unit="frame", desc="scale-field run", disable=not progress, file=sys.stderr):
            frame = ds.frame(i)
            if pattern == "native" and anchor_count is None:
                from .anchors import anchors_from_points

                # the whole scan anchors; only dense ground truth (if any) scores
                anchors = anchors_from_points(
                    frame.lidar_points, frame.T_cam_lidar, frame.intrinsics, config.min_depth_m, config.max_depth_m
                )
                truth = frame.depth_m
            else:
                n = anchor_count if anchor_count is not None else DEFAULT_PATTERN_COUNTS[pattern]
                draw = draw_anchors(frame, pattern, n, seed=seed + i, min_depth_m=config.min_depth_m)
                anchors, truth = draw.anchors, draw.truth_depth_m
            result = pipe.process(frame.rgb, anchors)
            n_anchors.append(int(result.fit.n_anchors))
            name = frame.frame_id
            np.save(tmp / "depth" / f"{name}.npy", result.depth_m.astype(np.float32))
            cv2.imwrite(str(tmp / "depth" / f"{name}.png"), depth_png_mm(result.depth_m))
            points, colours = decimated_points(result.depth_m, frame.rgb, frame.intrinsics, settings.point_decimation)
            write_ply(tmp / "points" / f"{name}.ply", points, colours)
            cap = min(config.max_depth_m, ds.max_depth_m)
            have_truth = truth is not None and bool(np.any(truth > 0))
            if have_truth:
                # NaN depth is "no measurement" (pixels beyond the lens model): scored where depth was given
                mask = evaluation_mask(truth, config.min_depth_m, cap, anchors) & np.isfinite(result.depth_m)
                metrics = compute_metrics(result.depth_m, truth, mask, (config.min_depth_m, cap))
                rows.append({"frame": name, "anchors": len(anchors), **finite_or_none(metrics.as_dict())})
            else:
                truth = np.zeros_like(result.depth_m)
                mask = np.zeros(truth.shape, bool)
            write_panel(tmp / "panels" / f"{name}.png", frame.rgb, anchors, result.backbone, result, truth, mask, cap)
        wall = time.perf_counter() - t0
        mean = None
        if rows:
            # mean over the frames where a metric is defined; null where none is (a frame with no evaluable
            # pixels gives NaN metrics, which are not JSON, and np.nanmean of all-NaN warns)
            names = DepthMetrics.names()
            mean = dict(zip(names, finite_means([[r[k] for k in names] for r in rows]), strict=True))
            doc = {
                "dataset": ds.name,
                "pattern": pattern,
                "anchor_count": anchor_count,
                "seed": seed,
                "mean": mean,
                "frames": rows,
            }
            (tmp / "metrics.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
        commit()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return DataRunSummary(out, len(ds), pattern, float(np.mean(n_anchors)), wall, len(ds) / max(wall, 1e-9), mean)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--bag", help="input ROS 2 bag (rosbag2 folder with MCAP or sqlite3, or a bare .mcap)")
    src.add_argument("--data", help="input dataset folder (shared/data layout)")
    parser.add_argument("--out", required=True, help="--bag: output .mcap file; --data: output folder")
    parser.add_argument(
        "--params",
        default=None,
        help="the node's parameters file (config/params.yaml layout); default: the node's defaults",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter (repeatable)"
    )
    parser.add_argument("--image-topic", default="/camera/image")
    parser.add_argument("--camera-info-topic", default="/camera/camera_info")
    parser.add_argument("--anchors-topic", default="/anchors")
    parser.add_argument(
        "--odom-topic", default=None, help="odometry topic (default: /odom when the bag has it; named: required)"
    )
    parser.add_argument(
        "--pattern",
        default="auto",
        choices=("auto", "native", "lidar", "vio", "uniform"),
        help="--data: anchors (auto: the dataset's LiDAR if present, else lidar scan lines from ground truth)",
    )
    parser.add_argument("--anchor-count", type=int, default=None, help="--data: anchors a frame (native: all)")
    parser.add_argument("--seed", type=int, default=0, help="--data: seed of the anchor pattern (frame k: seed + k)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _print_warning(cause: str, message: str) -> None:
    print(f"warning [{cause}]: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from .backbones import load_backbone
    from .bagio import CameraBagTopics

    settings, config = load_settings(args.params, parse_overrides(args.set))
    if args.anchor_count is not None and args.anchor_count < 1:
        raise ValueError(f"--anchor-count must be at least 1, got {args.anchor_count}")
    backbone = load_backbone(
        settings.backbone, settings.model_path, settings.runtime, settings.threads, settings.device
    )
    if args.bag:
        odom = args.odom_topic or "/odom"
        topics = CameraBagTopics(args.image_topic, args.camera_info_topic, args.anchors_topic, odom)
        summary = run_bag(
            args.bag, args.out, settings, config, backbone, topics, require_odom=args.odom_topic is not None,
            overwrite=args.force, progress=not args.no_progress, warn=_print_warning,
        )  # fmt: skip
    else:
        summary = run_dataset(
            args.data, args.out, settings, config, backbone, args.pattern, args.anchor_count, args.seed,
            args.force, not args.no_progress,
        )  # fmt: skip
    print(summary.text())
    return 0
