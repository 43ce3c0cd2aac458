"""`scale-field make-bag`: a dataset folder (shared/data layout) as a ROS 2 bag a robot could have recorded.

Topics: /camera/image (rgb8) and /camera/camera_info at --rate-hz; /anchors (PointCloud2 float32 xyz) at
--anchor-rate-hz, taken from the latest image frame; /odom from T_world_cam where the dataset has poses;
/tf_static with camera_optical -> velodyne when the anchors are native LiDAR points.
Anchors: `native` = the dataset's LiDAR points in the LiDAR frame (all, or a random subset); `lidar` / `vio` =
ground-truth depth along scan lines / at Shi-Tomasi corners (`patterns.py`), in the camera optical frame.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .bagio import STORAGE_FORMATS, BagWriter, CameraBagTopics, MessageFactory
from .camera import transform_points
from .msg_codec import camera_info_fields, rgb8_image_fields, xyzrgb_cloud_fields

if TYPE_CHECKING:
    from .anchors import Anchors
    from .camera import Intrinsics
    from .datasets import Frame

CAMERA_FRAME = "camera_optical"
LIDAR_FRAME = "velodyne"
WORLD_FRAME = "world"
TF_STATIC = "/tf_static"
DEFAULT_START_S = 1_700_000_000  # a plausible wall-clock epoch, fixed so bags are reproducible
STAMP_LIMIT_NS = 2**31 * 10**9  # builtin_interfaces/Time.sec is an int32
ANCHOR_MODES = ("native", "lidar", "vio")
DEFAULT_TOPICS = CameraBagTopics()

# Anchor points per mode come from `patterns.draw_anchors` (the one implementation of the evaluation patterns);
# the counts are what a 32-line LiDAR crop and a VIO front end typically give on a VGA image.
DEFAULT_ANCHOR_COUNTS = {"lidar": 2000, "vio": 300}


def anchor_points(anchors: Anchors, intrinsics: Intrinsics) -> np.ndarray:
    """Pixel anchors (u, v, depth) unprojected to Nx3 float32 points in the camera optical frame."""
    z = anchors.depth_m.astype(np.float64)
    x = (anchors.u.astype(np.float64) - intrinsics.cx) / intrinsics.fx * z
    y = (anchors.v.astype(np.float64) - intrinsics.cy) / intrinsics.fy * z
    return np.stack([x, y, z], axis=1).astype(np.float32)


def frame_anchor_points(frame: Frame, mode: str, count: int | None, seed: int) -> np.ndarray:
    """The anchor cloud of one frame: camera-frame points for lidar/vio, LiDAR-frame points for native.

    native without `count` is the whole scan as recorded; with `count`, a z-buffered random subset drawn by
    `patterns` (the rest of the scan is then held out for scoring, as `scale-field eval` does).
    """
    from .patterns import draw_anchors
    from .poses import invert_transform

    if mode == "native":
        if count is None:
            return np.asarray(frame.lidar_points, np.float32)
        draw = draw_anchors(frame, "native", count, seed=seed)
        pts_cam = anchor_points(draw.anchors, frame.intrinsics).astype(np.float64)
        return transform_points(invert_transform(frame.T_cam_lidar), pts_cam).astype(np.float32)
    if frame.depth_m is None:
        raise ValueError(f"{frame.dataset} frame {frame.frame_id} has no ground-truth depth; use --anchors native")
    n = DEFAULT_ANCHOR_COUNTS[mode] if count is None else count
    return anchor_points(draw_anchors(frame, mode, n, seed=seed).anchors, frame.intrinsics)


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


def start_ns(start_s: float | str | Decimal) -> int:
    """--start-s in whole ns, exact to its decimal digits (start_s * 1e9 in float64 is off by up to 128 ns)."""
    try:
        s = Decimal(str(start_s).strip())  # str of a float is its shortest repr: the decimal the user wrote
    except InvalidOperation:
        s = Decimal("nan")
    if not (s.is_finite() and 0 <= s < 2**31):
        raise ValueError(f"start-s must be a number of seconds in [0, 2**31) (an int32 ROS stamp), got {start_s}")
    return int((s * 10**9).to_integral_value())


def make_bag(
    data_dir: str | Path,
    out: str | Path,
    rate_hz: float = 30.0,
    anchors: str = "auto",
    anchor_rate_hz: float = 10.0,
    storage: str = "mcap",
    repeat: int = 1,
    start_s: float | str | Decimal = DEFAULT_START_S,
    overwrite: bool = False,
    topics: CameraBagTopics = DEFAULT_TOPICS,
    anchor_count: int | None = None,
    seed: int = 0,
) -> MakeBagResult:
    """Write the dataset at `data_dir` as a ROS 2 bag at `out` (see the module docstring for its contents).

    anchor_count: points a cloud for lidar/vio (default DEFAULT_ANCHOR_COUNTS); for native, a random subset of
    the scan of this size (default: the whole scan). Frame k's pattern is drawn with seed `seed + k`.
    """
    from .datasets import load_dataset  # imports OpenCV; kept out of `scale-field --help`

    t0_ns = start_ns(start_s)
    rate_hz = _rate("rate-hz", rate_hz)
    anchor_rate_hz = _rate("anchor-rate-hz", anchor_rate_hz)
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if anchor_count is not None and anchor_count < 1:
        raise ValueError(f"anchor-count must be at least 1, got {anchor_count}")
    dataset = load_dataset(data_dir)
    frames = list(dataset.frames())
    if anchors == "auto":
        anchors = "native" if frames[0].lidar_points is not None else "lidar"
    if anchors not in ANCHOR_MODES:
        raise ValueError(f"unknown anchors {anchors!r}; expected one of {', '.join(ANCHOR_MODES)}")
    if anchors == "native" and any(f.lidar_points is None or f.T_cam_lidar is None for f in frames):
        raise ValueError(f"dataset {dataset.name} has no LiDAR points with T_cam_lidar; use --anchors lidar or vio")
    if anchors == "native" and any(not np.array_equal(f.T_cam_lidar, frames[0].T_cam_lidar) for f in frames):
        # one /tf_static transform serves the whole bag: frames with their own extrinsics would be misplaced
        raise ValueError(f"dataset {dataset.name}: frames differ in T_cam_lidar; a bag holds one static transform")
    if anchors != "native" and any(f.depth_m is None for f in frames):
        raise ValueError(f"dataset {dataset.name} has no ground-truth depth to sample; use --anchors native")

    # Anchor clouds depend only on the frame, so compute each once however often it is replayed.
    clouds = [
        xyzrgb_cloud_fields(frame_anchor_points(f, anchors, anchor_count, seed + k)) for k, f in enumerate(frames)
    ]
    anchor_frame_id = LIDAR_FRAME if anchors == "native" else CAMERA_FRAME
    images = [rgb8_image_fields(f.rgb) for f in frames]
    infos = [camera_info_fields(f.intrinsics) for f in frames]

    n_images = len(frames) * repeat
    image_ns = [t0_ns + int(round(i * 1e9 / rate_hz)) for i in range(n_images)]
    # Anchors at their own rate, each from the latest image at or before its stamp (as a sensor would see it).
    # tolerance: image stamps are rounded to whole ns, so k/rate can land a fraction of a ns short
    n_anchor_msgs = int(math.floor((image_ns[-1] - t0_ns) * 1e-9 * anchor_rate_hz + 1e-6)) + 1
    anchor_ns = [t0_ns + int(round(j * 1e9 / anchor_rate_hz)) for j in range(n_anchor_msgs)]
    if max(image_ns[-1], anchor_ns[-1]) >= STAMP_LIMIT_NS:
        raise ValueError(f"the last stamp passes 2**31 s (an int32 ROS stamp); start-s {start_s} is too late")
    anchor_image = np.searchsorted(np.asarray(image_ns), np.asarray(anchor_ns), side="right") - 1

    factory = MessageFactory()
    events: list[tuple[int, int, str, object]] = []  # (stamp, order, topic, message) - sorted below
    if anchors == "native":
        tf = factory.tf(t0_ns, CAMERA_FRAME, LIDAR_FRAME, frames[0].T_cam_lidar)
        events.append((t0_ns, 0, TF_STATIC, tf))
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
    parser.add_argument(
        "--anchor-count",
        type=int,
        default=None,
        help="anchor points a cloud (default: lidar 2000, vio 300, native the whole scan)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the anchor patterns (frame k uses seed + k)")
    parser.add_argument("--anchor-rate-hz", type=float, default=10.0, help="anchor cloud rate (default 10)")
    parser.add_argument("--format", choices=STORAGE_FORMATS, default="mcap", help="rosbag2 storage (default mcap)")
    parser.add_argument("--repeat", type=int, default=1, help="play the frame list this many times (default 1)")
    # kept as text: make_bag turns its decimal digits into exact ns and refuses what an int32 stamp cannot hold
    parser.add_argument(
        "--start-s", default=DEFAULT_START_S, help="stamp of the first message, s, in [0, 2**31) (default 1.7e9)"
    )
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
        anchor_count=args.anchor_count,
        seed=args.seed,
    )
    counts = ", ".join(f"{topic}: {n}" for topic, n in sorted(result.counts.items()))
    print(
        f"wrote {result.path} ({args.format}, {result.duration_s:.3f} s, anchors {result.anchors}, "
        f"{result.mean_anchor_points:.0f} points a cloud): {counts}"
    )
    return 0
