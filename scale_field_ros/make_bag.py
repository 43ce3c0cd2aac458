"""`scale-field make-bag`: a dataset folder (shared/data layout) as a ROS 2 bag a robot could have recorded.

Topics: /camera/image (rgb8) and /camera/camera_info at --rate-hz; /anchors (PointCloud2 float32 xyz) at
--anchor-rate-hz, taken from the latest image frame; /odom from T_world_cam where the dataset has poses;
/tf_static with camera_optical -> velodyne when the anchors are native LiDAR points.
Anchors: `native` = the dataset's LiDAR points in the LiDAR frame; `lidar` / `vio` = points sampled from the
ground-truth depth along scan lines / at Shi-Tomasi corners, in the camera optical frame.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .bagio import STORAGE_FORMATS, BagWriter, CameraBagTopics, MessageFactory
from .msg_codec import camera_info_fields, rgb8_image_fields, xyzrgb_cloud_fields

if TYPE_CHECKING:
    from .datasets import Frame

CAMERA_FRAME = "camera_optical"
LIDAR_FRAME = "velodyne"
WORLD_FRAME = "world"
TF_STATIC = "/tf_static"
DEFAULT_START_S = 1_700_000_000  # a plausible wall-clock epoch, fixed so bags are reproducible
ANCHOR_MODES = ("native", "lidar", "vio")
DEFAULT_TOPICS = CameraBagTopics()

# Pixel samplers: Frame -> (u, v) integer pixel coordinates whose ground-truth depth becomes an anchor.
# TEMPORARY local implementations: to be replaced by scale_field_ros.patterns (field helper) once it lands,
# by rebinding the entries of ANCHOR_SAMPLERS; nothing else here depends on how pixels are chosen.
PixelSampler = Callable[["Frame"], tuple[np.ndarray, np.ndarray]]


def scan_line_pixels(frame: Frame, n_lines: int = 32, column_step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A spinning-LiDAR-like pattern: `n_lines` evenly spaced image rows, every `column_step`-th column."""
    h, w = frame.rgb.shape[:2]
    rows = np.unique(np.linspace(0, h - 1, n_lines).round().astype(np.int64))
    cols = np.arange(column_step // 2, w, column_step, dtype=np.int64)
    v, u = np.meshgrid(rows, cols, indexing="ij")
    return u.ravel(), v.ravel()


def corner_pixels(frame: Frame, max_corners: int = 300, min_distance_px: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A VIO-like pattern: Shi-Tomasi corners, where a feature tracker would have landmarks."""
    import cv2

    grey = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(grey, maxCorners=max_corners, qualityLevel=0.01, minDistance=min_distance_px)
    if corners is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    uv = np.round(corners.reshape(-1, 2)).astype(np.int64)
    return uv[:, 0], uv[:, 1]


ANCHOR_SAMPLERS: dict[str, PixelSampler] = {"lidar": scan_line_pixels, "vio": corner_pixels}


def depth_anchor_points(frame: Frame, sampler: PixelSampler) -> np.ndarray:
    """Ground-truth depth at the sampled pixels, unprojected to Nx3 float32 points in the camera optical frame."""
    if frame.depth_m is None:
        raise ValueError(f"{frame.dataset} frame {frame.frame_id} has no ground-truth depth; use --anchors native")
    h, w = frame.depth_m.shape
    u, v = sampler(frame)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v = u[inside], v[inside]
    z = frame.depth_m[v, u]
    ok = np.isfinite(z) & (z > 0) & (z <= frame.max_depth_m)
    u, v, z = u[ok], v[ok], z[ok]
    k = frame.intrinsics
    x = (u - k.cx) / k.fx * z
    y = (v - k.cy) / k.fy * z
    return np.stack([x, y, z], axis=1).astype(np.float32)


@dataclass(frozen=True)
class MakeBagResult:
    path: Path
    counts: dict[str, int]  # messages per topic
    duration_s: float  # last stamp - first stamp
    anchors: str  # the anchor mode used
    mean_anchor_points: float


def _rate(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def make_bag(
    data_dir: str | Path,
    out: str | Path,
    rate_hz: float = 30.0,
    anchors: str = "auto",
    anchor_rate_hz: float = 10.0,
    storage: str = "mcap",
    repeat: int = 1,
    start_s: float = DEFAULT_START_S,
    overwrite: bool = False,
    topics: CameraBagTopics = DEFAULT_TOPICS,
) -> MakeBagResult:
    """Write the dataset at `data_dir` as a ROS 2 bag at `out` (see the module docstring for its contents)."""
    from .datasets import load_dataset  # imports OpenCV; kept out of `scale-field --help`

    rate_hz = _rate("rate-hz", rate_hz)
    anchor_rate_hz = _rate("anchor-rate-hz", anchor_rate_hz)
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    dataset = load_dataset(data_dir)
    frames = list(dataset.frames())
    if anchors == "auto":
        anchors = "native" if frames[0].lidar_points is not None else "lidar"
    if anchors not in ANCHOR_MODES:
        raise ValueError(f"unknown anchors {anchors!r}; expected one of {', '.join(ANCHOR_MODES)}")
    if anchors == "native" and any(f.lidar_points is None or f.T_cam_lidar is None for f in frames):
        raise ValueError(f"dataset {dataset.name} has no LiDAR points with T_cam_lidar; use --anchors lidar or vio")
    if anchors != "native" and any(f.depth_m is None for f in frames):
        raise ValueError(f"dataset {dataset.name} has no ground-truth depth to sample; use --anchors native")

    # Anchor clouds depend only on the frame, so compute each once however often it is replayed.
    if anchors == "native":
        clouds = [xyzrgb_cloud_fields(f.lidar_points) for f in frames]
        anchor_frame_id = LIDAR_FRAME
    else:
        clouds = [xyzrgb_cloud_fields(depth_anchor_points(f, ANCHOR_SAMPLERS[anchors])) for f in frames]
        anchor_frame_id = CAMERA_FRAME
    images = [rgb8_image_fields(f.rgb) for f in frames]
    infos = [camera_info_fields(f.intrinsics) for f in frames]

    start_ns = int(round(start_s * 1e9))
    n_images = len(frames) * repeat
    image_ns = [start_ns + int(round(i * 1e9 / rate_hz)) for i in range(n_images)]
    # Anchors at their own rate, each from the latest image at or before its stamp (as a sensor would see it).
    n_anchor_msgs = int(math.floor((image_ns[-1] - start_ns) * 1e-9 * anchor_rate_hz + 1e-9)) + 1
    anchor_ns = [start_ns + int(round(j * 1e9 / anchor_rate_hz)) for j in range(n_anchor_msgs)]
    anchor_image = np.searchsorted(np.asarray(image_ns), np.asarray(anchor_ns), side="right") - 1

    factory = MessageFactory()
    events: list[tuple[int, int, str, object]] = []  # (stamp, order, topic, message) - sorted below
    if anchors == "native":
        tf = factory.tf(start_ns, CAMERA_FRAME, LIDAR_FRAME, frames[0].T_cam_lidar)
        events.append((start_ns, 0, TF_STATIC, tf))
    for i, t in enumerate(image_ns):
        k = i % len(frames)
        events.append((t, 1, topics.camera_info, factory.camera_info(t, CAMERA_FRAME, infos[k])))
        events.append((t, 2, topics.image, factory.image(t, CAMERA_FRAME, images[k])))
        if topics.odom and frames[k].T_world_cam is not None:
            events.append((t, 3, topics.odom, factory.odometry(t, WORLD_FRAME, CAMERA_FRAME, frames[k].T_world_cam)))
    for t, i in zip(anchor_ns, anchor_image, strict=True):
        k = int(i) % len(frames)
        events.append((t, 4, topics.anchors, factory.pointcloud2(t, anchor_frame_id, clouds[k])))
    events.sort(key=lambda e: (e[0], e[1]))

    with BagWriter(out, storage=storage, overwrite=overwrite) as writer:
        for t, _, topic, msg in events:
            writer.write(topic, msg, t, latched=topic == TF_STATIC)
    n_points = [clouds[int(i) % len(frames)].width for i in anchor_image]
    return MakeBagResult(
        path=Path(out),
        counts=dict(writer.counts),
        duration_s=(events[-1][0] - events[0][0]) * 1e-9,
        anchors=anchors,
        mean_anchor_points=float(np.mean(n_points)),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder in the shared/data layout")
    parser.add_argument("--out", required=True, help="output bag: a rosbag2 folder, or a bare file ending in .mcap")
    parser.add_argument("--rate-hz", type=float, default=30.0, help="image and camera_info rate (default 30)")
    parser.add_argument(
        "--anchors",
        choices=("auto",) + ANCHOR_MODES,
        default="auto",
        help="native: the dataset's LiDAR points; lidar/vio: sampled from ground-truth depth "
        "(auto: native when the dataset has LiDAR, else lidar)",
    )
    parser.add_argument("--anchor-rate-hz", type=float, default=10.0, help="anchor cloud rate (default 10)")
    parser.add_argument("--format", choices=STORAGE_FORMATS, default="mcap", help="rosbag2 storage (default mcap)")
    parser.add_argument("--repeat", type=int, default=1, help="play the frame list this many times (default 1)")
    parser.add_argument("--start-s", type=float, default=DEFAULT_START_S, help="stamp of the first message, s")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    result = make_bag(
        args.data,
        args.out,
        rate_hz=args.rate_hz,
        anchors=args.anchors,
        anchor_rate_hz=args.anchor_rate_hz,
        storage=args.format,
        repeat=args.repeat,
        start_s=args.start_s,
        overwrite=args.force,
    )
    counts = ", ".join(f"{topic}: {n}" for topic, n in sorted(result.counts.items()))
    print(
        f"wrote {result.path} ({args.format}, {result.duration_s:.3f} s, anchors {result.anchors}, "
        f"{result.mean_anchor_points:.0f} points a cloud): {counts}"
    )
    return 0
