"""The per-message work of `scale_field_node`, without ROS: buffer anchors, odometry and camera_info, then turn
one image into metric depth through the one `Pipeline`.

Both shells run exactly this: the ROS node (`ros/node.py`, on rclpy messages) and the offline bag runner
(`run_offline.py`, on rosbags messages). Messages are duck-typed through `msg_codec`; stamps are seconds.
Nothing here logs: every method returns the warnings it raised as (cause, text) pairs, and each shell
reports them its own way (the node throttles per cause, the runner counts them).

Thread use (the node): the `on_*` inputs run on subscription threads while `process_image` runs on the
inference thread; they share only the buffers (which lock) and single-reference swaps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import msg_codec
from .anchor_buffer import AnchorBuffer, ImageAnchors, InsertStatus, anchors_for_image
from .camera import Intrinsics
from .pipeline import Pipeline, PipelineConfig, PipelineResult, warm_up
from .poses import PoseBuffer

ASPECT_TOLERANCE = 0.01  # relative: camera_info of another size is scaled only when the aspect ratio matches

InputWarning = tuple[str, str]  # (cause, text); cause is a stable key for counting and throttling


class CameraInfoState(NamedTuple):
    """The latest accepted camera_info."""

    intrinsics: Intrinsics  # with the lens distortion when its model is supported
    unsupported_distortion: str  # why the distortion is ignored ('' when it is modelled or there is none)


@dataclass(frozen=True)
class ProcessedFrame:
    """One image through the pipeline: what the shells publish or write."""

    stamp_s: float
    rgb: np.ndarray  # HxWx3 uint8, decoded
    intrinsics: Intrinsics  # at the image's size
    found: ImageAnchors  # anchors assembled for the image (before the pipeline's sanitising), sets, problems
    result: PipelineResult  # depth_m, std_m (raised past max_coast_s by the pipeline), scale_field, fit, ...


@dataclass(frozen=True)
class FrameTimings:
    """Wall time of the processor's steps for one image, milliseconds."""

    decode: float = 0.0  # decode, camera_info match, stamp checks
    anchors: float = 0.0  # anchor assembly
    pipeline: float = 0.0  # `Pipeline.process`


@dataclass(frozen=True)
class FrameStep:
    """What `process_image` did: `frame` is None when the image was skipped (see `warnings`); `failed` when the
    pipeline ran but produced an unusable (non-finite) output."""

    frame: ProcessedFrame | None
    warnings: tuple[InputWarning, ...]
    timings: FrameTimings
    failed: bool = False


TCamAnchorFn = Callable[[str, str], np.ndarray]  # (camera frame, anchor frame) -> T_cam_anchor 4x4


class FrameProcessor:
    """Buffers inputs and processes images exactly as the node does (see module docstring).

    `settings` is a `ros.params.NodeSettings` (plain dataclass, no ROS import), `config` the `PipelineConfig`.
    """

    def __init__(self, settings: Any, config: PipelineConfig, backbone: Any) -> None:
        self.settings = settings
        self.config = config
        self.backbone = backbone
        self.pipeline = Pipeline(backbone, config)
        self.warm_up_s = warm_up(config)  # compiled kernels ready before the first image, not during it
        self.anchor_buffer = AnchorBuffer(settings.anchor_max_age, max_future_s=settings.anchor_max_future)
        self.pose_buffer = PoseBuffer(max_extrapolation_s=settings.odom_max_extrapolation)
        self.camera_info: CameraInfoState | None = None
        self.latest_image_stamp_s: float | None = None  # reference for far-future anchors
        self.last_processed_stamp_s: float | None = None  # the newest processed image stamp
        self.odom_child_frame = ""  # the frame whose pose the odometry gives (its child_frame_id)
        self.odom_frame = ""  # the world frame the odometry's poses are in (its header frame_id)
        # the buffers' generations as the last processed image left them: a loop keeps what arrived after a restart
        self._buffer_generations = (self.anchor_buffer.generation, self.pose_buffer.generation)

    # -------------------------------------------------------------- settings

    def update_settings(self, settings: Any) -> None:
        """New node settings: buffer limits follow at once."""
        self.settings = settings
        self.anchor_buffer.max_age_s = settings.anchor_max_age
        self.anchor_buffer.max_future_s = settings.anchor_max_future
        self.pose_buffer.max_extrapolation_s = settings.odom_max_extrapolation

    def set_config(self, config: PipelineConfig) -> None:
        """A new pipeline configuration (a fresh Pipeline: filter state starts over). Call between frames."""
        self.pipeline = Pipeline(self.backbone, config)
        self.config = config

    # -------------------------------------------------------------- inputs (cheap: decode and buffer)

    def on_camera_info(self, msg) -> list[InputWarning]:
        try:
            rectified = self.settings.image_rectified
            intrinsics = msg_codec.camera_info_msg_to_intrinsics(msg, rectified)
            unsupported = "" if rectified else msg_codec.camera_info_msg_unsupported_distortion(msg)
        except (msg_codec.MessageError, ValueError) as exc:
            return [("bad_camera_info", f"camera_info refused: {exc}")]
        self.camera_info = CameraInfoState(intrinsics, unsupported)
        return [("unsupported_distortion", unsupported)] if unsupported else []

    def on_image_stamp(self, stamp_s: float) -> None:
        """An image arrived (before it is processed): its stamp bounds how far ahead anchors may be."""
        self.latest_image_stamp_s = stamp_s

    def on_anchors(self, msg, stamp_s: float) -> list[InputWarning]:
        try:
            decoded = msg_codec.pointcloud2_msg_decode(msg)
        except (msg_codec.MessageError, ValueError) as exc:
            return [("bad_anchor_cloud", f"anchor cloud refused: {exc}")]
        n_total = len(decoded.points) + decoded.n_nonfinite
        notes: list[InputWarning] = [("anchor_point_times", decoded.time_field_note)] if decoded.time_field_note else []
        if len(decoded.points) == 0:  # the codec already dropped non-finite points: say which case it was
            status = InsertStatus.NO_FINITE_POINTS if decoded.n_nonfinite else InsertStatus.EMPTY
        else:
            status = self.anchor_buffer.insert(
                stamp_s,
                decoded.points,
                msg.header.frame_id,
                reference_stamp_s=self.latest_image_stamp_s,
                point_time_s=decoded.point_time_s,
            )
        if status is InsertStatus.OK:
            return notes
        text = {
            InsertStatus.EMPTY: "anchor cloud is empty",
            InsertStatus.NO_FINITE_POINTS: f"anchor cloud has no finite points (all {n_total} are NaN/inf)",
            InsertStatus.INVALID_STAMP: "anchor cloud stamp is not finite",
            InsertStatus.FAR_FUTURE: f"anchor cloud stamped {stamp_s:.3f} s is more than "
            f"{self.anchor_buffer.max_future_s} s after the latest image ({self.latest_image_stamp_s}); refused",
            InsertStatus.STAMP_BACKWARDS: f"anchor stamps went backwards (to {stamp_s:.3f} s): older anchors dropped",
        }[status]
        return [*notes, (f"anchors_{status.value}", text)]

    def on_odom(self, msg, stamp_s: float) -> list[InputWarning]:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            T_world_body = msg_codec.pose_to_transform((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except (msg_codec.MessageError, ValueError) as exc:
            return [("bad_odom", f"odometry refused: {exc}")]
        if not np.all(np.isfinite(T_world_body)):
            return [("bad_odom", "odometry refused: pose holds NaN or inf")]
        if not np.isfinite(stamp_s):
            return [("bad_odom", f"odometry refused: stamp {stamp_s} is not finite")]
        latest = self.latest_image_stamp_s
        if latest is not None and stamp_s > latest + self.settings.anchor_max_future:
            # as for anchors: one stamp far ahead would prune the whole pose history behind it
            return [
                (
                    "odom_far_future",
                    f"odometry stamped {stamp_s:.3f} s is more than {self.settings.anchor_max_future} s after the "
                    f"latest image ({latest:.3f} s); refused",
                )
            ]
        self.odom_child_frame = str(getattr(msg, "child_frame_id", ""))
        self.odom_frame = str(getattr(msg.header, "frame_id", ""))
        if not self.pose_buffer.insert(stamp_s, T_world_body):
            return [("odom_backwards", "odometry stamps went backwards: older poses dropped")]
        return []

    def _odom_frame_check(self, image_frame: str) -> list[InputWarning]:
        """Odometry in use with T_body_cam at identity takes the odometry for the camera optical frame's own pose;
        where it names another frame (a REP-103 base_link: x forward, not z) the anchors would move sideways."""
        settings = self.settings
        used = settings.anchors_in_world or settings.motion_compensation
        child = self.odom_child_frame
        if not used or len(self.pose_buffer) == 0 or not child or child == image_frame:
            return []
        if not np.array_equal(settings.T_body_cam, np.eye(4)):
            return []
        return [
            (
                "T_body_cam_identity",
                f"odometry gives the pose of '{child}' but T_body_cam is identity, which takes it for the camera "
                f"optical frame ('{image_frame}'): set T_body_cam (camera optical frame to '{child}'), or "
                "motion_compensation: false",
            )
        ]

    def _anchor_frame_check(
        self, sets, image_frame: str, T_cam_anchor: np.ndarray | Callable[[str], np.ndarray]
    ) -> list[InputWarning]:
        """Sets of a frame that T_cam_anchor (at identity) takes for the camera optical frame, or landmarks in another
        frame than the odometry's world: their points land in the wrong place, often outside the image altogether."""
        if self.settings.anchors_in_world:
            world = self.odom_frame
            frames = sorted({s.frame_id for s in sets if s.frame_id and world and s.frame_id != world})
            return [
                (
                    "anchors_world_frame",
                    f"anchor sets in '{frame}' are taken for landmarks in the odometry's world frame ('{world}'): "
                    "publish them in that frame, or anchors_in_world: false (then T_cam_anchor places them)",
                )
                for frame in frames
            ]
        warnings: list[InputWarning] = []
        for frame in sorted({s.frame_id for s in sets if s.frame_id and s.frame_id != image_frame}):
            T = T_cam_anchor(frame) if callable(T_cam_anchor) else T_cam_anchor
            if np.array_equal(T, np.eye(4)):
                warnings.append(
                    (
                        "T_cam_anchor_identity",
                        f"anchor sets are in '{frame}' but T_cam_anchor is identity, which takes them for the camera "
                        f"optical frame ('{image_frame}'): set T_cam_anchor ('{frame}' to the camera optical frame), "
                        "or, for points in the camera optical frame, publish them with the image's frame_id",
                    )
                )
        return warnings

    def _why_no_sets(self, sets, stamp_s: float) -> str:
        """Where the buffer holds anchor sets but none near the image: how far the newest is, and what to set.
        A LiDAR driver that stamps a scan at the start of its sweep delivers it a sweep period (and its latency)
        later, so every image processed on arrival finds only scans older than that."""
        newest = self.anchor_buffer.newest_stamp_s
        if sets or newest is None:
            return ""
        gap = stamp_s - newest
        where = f"{gap:.3f} s before" if gap >= 0 else f"{-gap:.3f} s after"
        return (
            f"; anchor sets arrive, but the newest is stamped {where} the image, beyond anchor_max_age "
            f"{self.anchor_buffer.max_age_s:g} s (a scan stamped at the start of its sweep arrives a period late: "
            "raise anchor_max_age above the period plus latency, with odometry to move the scan to the image)"
        )

    # -------------------------------------------------------------- one image

    def process_image(
        self, msg, compressed: bool, stamp_s: float, T_cam_anchor: TCamAnchorFn | None = None
    ) -> FrameStep:
        """Decode `msg` (sensor_msgs Image, or CompressedImage with `compressed`), assemble its anchors and run
        the pipeline. `T_cam_anchor` resolves the anchor frame (default: the `T_cam_anchor` setting)."""
        warnings: list[InputWarning] = []
        settings, config = self.settings, self.config
        t0 = time.perf_counter_ns()

        def step(frame=None, failed=False, marks: tuple[int, ...] = ()) -> FrameStep:
            # marks: the ends of decode, anchors, pipeline reached so far; the rest end now
            ends = (*marks, *(time.perf_counter_ns(),) * (3 - len(marks)))
            ms = [(b - a) * 1e-6 for a, b in zip((t0, *ends[:2]), ends, strict=True)]
            return FrameStep(frame, tuple(warnings), FrameTimings(*ms), failed)

        try:
            rgb = msg_codec.compressed_msg_to_rgb8(msg) if compressed else msg_codec.image_msg_to_rgb8(msg)
        except (msg_codec.MessageError, ValueError) as exc:
            warnings.append(("bad_image", f"image refused: {exc}"))
            return step()
        h, w = rgb.shape[:2]
        intrinsics = self._intrinsics_for(w, h, warnings)
        if intrinsics is None:
            return step()
        last = self.last_processed_stamp_s
        # an image stamp this far back means the bag looped or the clock was reset: filter and buffers reset
        looped = last is not None and stamp_s < last - config.filter.backwards_tolerance_s
        if looped:
            warnings.append(
                (
                    "image_stamp_backwards",
                    f"image stamps went back from {last:.3f} to {stamp_s:.3f} s (bag looped?): "
                    "temporal filter reset, buffered anchors and odometry of the old timeline dropped",
                )
            )
            self.pipeline.reset()
            # what arrived before the reset is the old timeline's, whatever its stamp (one near the new images' stamps
            # would be mixed with theirs); a buffer that restarted on its own since the last image (its stamps went
            # back too) holds only what arrived since: the new timeline's early odometry and anchors, which stay
            seen_anchors, seen_poses = self._buffer_generations
            self.anchor_buffer.clear_unless_restarted(seen_anchors)
            self.pose_buffer.clear_unless_restarted(seen_poses)
        self._buffer_generations = (self.anchor_buffer.generation, self.pose_buffer.generation)
        # the newest stamp, as the filter keeps it: steps back within the tolerance must not add up unseen
        self.last_processed_stamp_s = stamp_s if last is None or looped else max(last, stamp_s)
        warnings.extend(self._drop_far_future(stamp_s))
        t1 = time.perf_counter_ns()

        sets = self.anchor_buffer.query(stamp_s)
        if T_cam_anchor is None:
            T = settings.T_cam_anchor
        else:
            camera_frame = msg.header.frame_id

            def T(anchor_frame: str) -> np.ndarray:  # each set by its own frame (one topic may carry several)
                return T_cam_anchor(camera_frame, anchor_frame)

        found = anchors_for_image(
            sets,
            stamp_s,
            intrinsics,
            T,
            config.min_depth_m,
            config.max_depth_m,
            poses=self.pose_buffer,
            T_body_cam=settings.T_body_cam,
            anchors_in_world=settings.anchors_in_world,
            motion_compensation=settings.motion_compensation,
            deskew=settings.deskew,
        )
        warnings.extend(found.problems)
        warnings.extend(self._odom_frame_check(msg.header.frame_id))
        warnings.extend(self._anchor_frame_check(sets, msg.header.frame_id, T))
        t2 = time.perf_counter_ns()

        result = self.pipeline.process(rgb, found.anchors, stamp_s=stamp_s)
        t3 = time.perf_counter_ns()
        # past filter.max_coast_s the pipeline's confidence is already at least the depth itself
        if result.coast_exceeded:
            warnings.append(
                (
                    "coasting",
                    f"no usable anchors for {result.coast_s:.1f} s (limit {config.filter.max_coast_s} s): "
                    "confidence marked low" + self._why_no_sets(sets, stamp_s),
                )
            )
        if result.filter_reset:
            warnings.append(("filter_reset", f"temporal filter reset: {result.filter_reset}"))
        if not (np.all(np.isfinite(result.depth_m)) and np.all(np.isfinite(result.std_m))):
            warnings.append(("non_finite_output", f"pipeline produced NaN/inf depth at {stamp_s:.3f} s; frame dropped"))
            return step(failed=True, marks=(t1, t2, t3))
        covered = intrinsics.lens_coverage(h, w)
        if covered is not None:
            # beyond what the lens model images a pixel has no ray, so no depth: NaN (REP 118's "no measurement")
            # in depth, confidence and scale field alike, as in the points unprojected from them
            for image in (result.depth_m, result.std_m, result.scale_field):
                image[~covered] = np.nan
        return step(ProcessedFrame(stamp_s, rgb, intrinsics, found, result), marks=(t1, t2, t3))

    def _drop_far_future(self, stamp_s: float) -> list[InputWarning]:
        """Anchor sets and odometry stamped more than `anchor_max_future` after this image are dropped. Once images
        flow, such messages are refused on arrival; this catches those that came before the first image, with
        nothing to compare them with (left buffered, a glitched stamp hid every later set until one arrived
        far enough behind it to clear the buffer as a loop)."""
        horizon = stamp_s + self.settings.anchor_max_future
        warnings: list[InputWarning] = []
        for cause, what, buffer in (
            ("anchors_far_future", "anchor sets", self.anchor_buffer),
            ("odom_far_future", "odometry", self.pose_buffer),
        ):
            newest = buffer.newest_stamp_s
            if newest is not None and newest > horizon:
                buffer.drop_newer_than(horizon)
                warnings.append(
                    (
                        cause,
                        f"{what} stamped up to {newest:.3f} s, more than {self.settings.anchor_max_future} s after "
                        f"the image ({stamp_s:.3f} s), dropped",
                    )
                )
        return warnings

    def _intrinsics_for(self, w: int, h: int, warnings: list[InputWarning]) -> Intrinsics | None:
        """Latest camera_info at the image's size; None (after a warning) when there is none or it cannot fit."""
        info = self.camera_info
        if info is None:
            warnings.append(("no_camera_info", "no camera_info received yet; image skipped"))
            return None
        intrinsics = info.intrinsics
        if (intrinsics.width, intrinsics.height) == (w, h):
            return intrinsics
        aspect_info = intrinsics.width / intrinsics.height
        if abs(w / h - aspect_info) > ASPECT_TOLERANCE * aspect_info:
            warnings.append(
                (
                    "camera_info_size",
                    f"camera_info is {intrinsics.width}x{intrinsics.height} but the image is "
                    f"{w}x{h} with another aspect ratio; image skipped",
                )
            )
            return None
        warnings.append(
            (
                "camera_info_scaled",
                f"camera_info is {intrinsics.width}x{intrinsics.height}, the image {w}x{h}: "
                "intrinsics scaled to the image",
            )
        )
        return intrinsics.scaled_to(w, h)
