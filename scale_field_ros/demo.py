"""`scale-field demo` (`make demo`): the main job end to end on the sample data in shared/data.

For each sample present (sun3d_seq: indoor sequence with poses, LiDAR-like scan lines from its depth;
kitti_lidar: a Velodyne scan, 2000 points anchor and the rest are held out for scoring):
1. make-bag writes it as a ROS 2 bag (30 Hz camera, 10 Hz anchors, /odom and /tf_static where known);
2. the real `scale_field_node` runs on its own DDS domain with config/params.yaml; a small rclpy player
   publishes the bag with its recorded timing (stretched where the node is busy, so every image is processed)
   and a recorder subscribes to the node's outputs;
3. the outputs and the inputs go into one MCAP per sample, beside PNG panels, a PLY of the first frame, and a
   metrics table (markdown + JSON) scoring the node against ground truth (dense, or the held-out LiDAR), next
   to `scale-field run` on the same bag and a global scale+shift baseline.
Without rclpy (no ROS 2 wheels) it says so and uses `scale-field run` (same Pipeline, same parameters).
Domain: env SCALE_FIELD_DEMO_DOMAIN_ID, else one derived from the process id (clear of the tests' 20-219).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOMAIN_ENV = "SCALE_FIELD_DEMO_DOMAIN_ID"
RATE_HZ = 30.0
ANCHOR_RATE_HZ = 10.0
CAMERA_TOPICS = {"/camera/image": "image", "/camera/camera_info": "camera_info", "/anchors": "anchors",
                 "/odom": "odom"}  # fmt: skip


@dataclass(frozen=True)
class DemoSample:
    name: str
    anchors: str  # make-bag anchor mode
    anchor_count: int | None  # None: make-bag's default
    seed: int = 0


SAMPLES = (
    DemoSample("sun3d_seq", "lidar", None),
    DemoSample("kitti_lidar", "native", 2000),
)


@dataclass(frozen=True)
class NodeFrame:
    """What the node published for one image, decoded."""

    stamp_ns: int
    depth_m: np.ndarray
    std_m: np.ndarray
    scale_field: np.ndarray


def demo_domain_id() -> int:
    env = os.environ.get(DOMAIN_ENV)
    if env:
        value = int(env)
        if not 0 <= value <= 232:
            raise ValueError(f"{DOMAIN_ENV} must be a DDS domain id in 0-232, got {value}")
        return value
    return 220 + os.getpid() % 12  # 220-231: not the tests' 20-219, not the default 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (replaced when the demo succeeds)")
    parser.add_argument("--params", default=None, help="node parameters file (default: config/params.yaml)")
    parser.add_argument("--samples", nargs="+", default=[s.name for s in SAMPLES], help="samples of shared/data")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1: recorded timing)")
    parser.add_argument("--offline", action="store_true", help="skip DDS: use `scale-field run` for the outputs")


def _default_params() -> Path | None:
    path = Path(__file__).resolve().parent.parent / "config" / "params.yaml"
    return path if path.is_file() else None


def _node_overrides(sample: DemoSample, max_depth_m: float, bag: Path) -> dict:
    """Per-sample parameters on top of the file: depth cap, reliable input (player and node share a process
    but not memory: large images over best effort are lossy), and T_cam_anchor from the bag's /tf_static,
    which the node itself does not read."""
    from .make_bag import CAMERA_FRAME, LIDAR_FRAME
    from .run_offline import static_transforms

    overrides: dict = {"max_depth_m": max_depth_m, "input_reliability": "reliable"}
    T = static_transforms(bag).get((CAMERA_FRAME, LIDAR_FRAME))
    if T is not None:
        overrides["T_cam_anchor"] = tuple(float(x) for x in T.ravel())
    return overrides


def run_node_over_dds(bag: Path, values: dict, backbone, domain_id: int, rate: float):
    """The real node in its own rclpy context + player + recorder; returns (PlaybackResult, node stats)."""
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from .bagio import read_messages
    from .ros.bag_player import OutputRecorder, play_through_node
    from .ros.node import ScaleFieldNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = player = None
    executor = None
    try:
        overrides = [Parameter(k, value=list(v) if isinstance(v, tuple) else v) for k, v in values.items()]
        remaps = [arg for bag_topic, name in CAMERA_TOPICS.items() for arg in ("-r", f"{name}:={bag_topic}")]
        node = ScaleFieldNode(backbone=backbone, context=context, parameter_overrides=overrides,
                              cli_args=["--ros-args", *remaps])  # fmt: skip
        player = rclpy.create_node("scale_field_demo_player", context=context)
        recorder = OutputRecorder(player)
        executor = SingleThreadedExecutor(context=context)  # inputs only: the node infers in its own thread
        executor.add_node(node)
        executor.add_node(player)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        from .bagio import bag_topics

        present = [t for t in CAMERA_TOPICS if t in bag_topics(bag)]
        messages = list(read_messages(bag, present))

        def settle(m) -> bool:  # the node has buffered what was just published
            stamp = m.stamp_ns * 1e-9
            if m.topic == "/anchors":
                return len(node.anchor_buffer.query(stamp, 1e-6)) > 0
            if m.topic == "/odom":  # this pose itself, not the previous one extrapolated to its stamp
                return node.pose_buffer.covers(stamp)
            if m.topic == "/camera/camera_info":
                return getattr(node, "_camera_info", None) is not None
            return True

        playback = play_through_node(player, recorder, messages, {t: t for t in present}, rate=rate, settle=settle)
        stats = node.stats
        return playback, stats
    finally:
        if executor is not None:
            executor.shutdown()
        for n in (player, node):
            if n is not None:
                n.destroy_node()
        rclpy.shutdown(context=context)


def _deserialize(recorded) -> list[tuple[str, object]]:
    """Recorded CDR (bag_player.Recorded) -> (topic, rosbags message)."""
    from . import bagio

    store = bagio.typestore()
    return [(r.topic, store.deserialize_cdr(r.cdr, r.msgtype)) for r in recorded]


def _node_frames(outputs: list[tuple[str, object]]) -> dict[int, NodeFrame]:
    """The node's depth, confidence and scale field by image stamp."""
    from . import msg_codec

    by_topic: dict[str, dict[int, np.ndarray]] = {"/metric_depth": {}, "/metric_depth/confidence": {},
                                                  "/scale_field": {}}  # fmt: skip
    for topic, msg in outputs:
        if topic in by_topic:
            by_topic[topic][msg_codec.stamp_msg_to_ns(msg.header.stamp)] = msg_codec.image_msg_to_depth_m(msg)
    conf, scale = by_topic["/metric_depth/confidence"], by_topic["/scale_field"]
    return {t: NodeFrame(t, d, conf.get(t), scale.get(t)) for t, d in by_topic["/metric_depth"].items()}


def _write_mcap(bag: Path, outputs: list[tuple[str, object]], out: Path) -> dict[str, int]:
    """Inputs of `bag` + the node's outputs (log time = the output's header stamp) into `out`, atomically."""
    from . import bagio, msg_codec

    with bagio.BagWriter(out, overwrite=True) as writer:
        for m in bagio.read_messages(bag, list(bagio.bag_topics(bag))):
            writer.write(m.topic, m.msg, m.log_time_ns, latched=m.topic == "/tf_static")
        for topic, msg in outputs:
            writer.write(topic, msg, msg_codec.stamp_msg_to_ns(msg.header.stamp))
    return dict(writer.counts)


def _fmt(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4f}"


def run_sample(sample: DemoSample, out: Path, values: dict, backbone, domain_id: int | None, rate: float) -> dict:
    """One sample end to end; returns its row for the metrics table."""
    import dataclasses

    from .bagio import MessageFactory
    from .baselines import BASELINES
    from .datasets import load_dataset, shared_root
    from .depth_points import decimated_points
    from .make_bag import make_bag
    from .metrics import compute_metrics, evaluation_mask
    from .panels import write_panel
    from .patterns import draw_anchors
    from .ply import write_ply
    from .ros.params import settings_from_values
    from .run_offline import output_messages, run_bag

    ds = load_dataset(shared_root() / "data" / sample.name)
    frames = list(ds.frames())
    bag = out / "bags" / f"{sample.name}.mcap"
    bag.parent.mkdir(parents=True, exist_ok=True)
    made = make_bag(ds.root, bag, rate_hz=RATE_HZ, anchors=sample.anchors, anchor_rate_hz=ANCHOR_RATE_HZ,
                    anchor_count=sample.anchor_count, seed=sample.seed, overwrite=True)  # fmt: skip
    values = {**values, **_node_overrides(sample, ds.max_depth_m, bag)}
    settings, config = settings_from_values(values)

    # the offline runner on the same bag: the reference the node must match, and the anchors each image had
    offline: list = []
    t0 = time.perf_counter()
    offline_summary = run_bag(bag, out / f".{sample.name}_offline.mcap", settings, config, backbone, overwrite=True,
                              progress=False, on_frame=offline.append)  # fmt: skip
    (out / f".{sample.name}_offline.mcap").unlink()
    offline_s = time.perf_counter() - t0

    if domain_id is not None:
        playback, stats = run_node_over_dds(bag, values, backbone, domain_id, rate)
        outputs = _deserialize(playback.recorded)
        mode = "node over DDS"
        latency = np.median(stats.latency_ms) if stats.latency_ms else float("nan")
        node_note = (f"{playback.images_answered}/{playback.images_published} images answered in "
                     f"{playback.wall_s:.1f} s ({playback.stall_s:.1f} s of it waiting for the node), node latency "
                     f"median {latency:.0f} ms")  # fmt: skip
    else:
        factory = MessageFactory()
        outputs = [item for fo in offline for item in output_messages(factory, fo)]
        mode, node_note = "`scale-field run` (no rclpy)", ""
    node_frames = _node_frames(outputs)
    mcap = out / f"{sample.name}_metric_depth.mcap"
    counts = _write_mcap(bag, outputs, mcap)

    ga = BASELINES["ga_inv"]
    per_frame = []
    cap = min(config.max_depth_m, ds.max_depth_m)
    caps = (config.min_depth_m, cap)  # the evaluation caps, predictions clipped to them as the mask's truth
    for k, fo in enumerate(offline):
        frame = frames[k % len(frames)]
        if sample.anchors == "native":
            truth = draw_anchors(frame, "native", sample.anchor_count, seed=sample.seed + k % len(frames)).truth_depth_m
        else:
            truth = frame.depth_m
        # NaN depth is "no measurement" (pixels beyond the lens model): scored where depth was given
        mask = evaluation_mask(truth, config.min_depth_m, cap, fo.anchors) & np.isfinite(fo.depth_m)
        nf = node_frames.get(fo.stamp_ns)
        row = {"frame": frame.frame_id, "stamp_ns": fo.stamp_ns, "anchors": int(fo.result.fit.n_anchors)}
        row["offline"] = compute_metrics(fo.depth_m, truth, mask, caps).as_dict()
        ga_depth = ga(fo.result.backbone, fo.anchors, config.min_depth_m, config.max_depth_m)
        row["global_scale_shift"] = compute_metrics(ga_depth, truth, mask, caps).as_dict()
        if nf is not None:
            row["node"] = compute_metrics(nf.depth_m, truth, mask, caps).as_dict()
            shown = dataclasses.replace(fo.result, depth_m=nf.depth_m, scale_field=nf.scale_field)
            panel = out / "panels" / f"{sample.name}_{k:03d}_{frame.frame_id}.png"
            write_panel(panel, fo.rgb, fo.anchors, fo.result.backbone, shown, truth, mask, cap)
            if k == 0:
                pts, colours = decimated_points(nf.depth_m, fo.rgb, fo.intrinsics, 1)
                write_ply(out / f"{sample.name}_{frame.frame_id}_points.ply", pts, colours)
        per_frame.append(row)

    def mean(key: str, metric: str):
        vals = [r[key][metric] for r in per_frame if key in r]
        return float(np.nanmean(vals)) if vals and np.isfinite(vals).any() else None

    return {
        "sample": sample.name,
        "mode": mode,
        "truth": "held-out LiDAR" if sample.anchors == "native" else "dense depth",
        "anchors": made.anchors,
        "images": counts.get("/camera/image", 0),
        "depth_out": counts.get("/metric_depth", 0),
        "anchors_per_frame": float(np.mean([r["anchors"] for r in per_frame])),
        "absrel_node": mean("node", "absrel"),
        "absrel_offline": mean("offline", "absrel"),
        "absrel_global_scale_shift": mean("global_scale_shift", "absrel"),
        "rmse_node": mean("node", "rmse"),
        "delta1_node": mean("node", "delta1"),
        "offline_fps": offline_summary.fps,
        "offline_s": offline_s,
        "node_note": node_note,
        "mcap": mcap.name,
        "counts": counts,
        "frames": per_frame,
    }


def metrics_markdown(rows: list[dict], wall_s: float, domain_id: int | None) -> str:
    lines = [
        "# scale-field demo: metric depth from FastDepth + sparse anchors",
        "",
        "| sample | outputs from | truth | images | /metric_depth | anchors/frame | AbsRel node | AbsRel `run` "
        "| AbsRel global scale+shift | RMSE node (m) | delta1 node |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sample']} | {r['mode']} | {r['truth']} | {r['images']} | {r['depth_out']} | "
            f"{r['anchors_per_frame']:.0f} ({r['anchors']}) | {_fmt(r['absrel_node'])} | {_fmt(r['absrel_offline'])} | "
            f"{_fmt(r['absrel_global_scale_shift'])} | {_fmt(r['rmse_node'])} | {_fmt(r['delta1_node'])} |"
        )
    lines += ["", f"Wall time {wall_s:.1f} s" + (f", DDS domain {domain_id}." if domain_id is not None else ".")]
    lines += [f"- {r['sample']}: {r['node_note']}" for r in rows if r["node_note"]]
    lines += [
        "",
        "AbsRel node: what scale_field_node published over DDS (temporal filter on, as config/params.yaml);",
        "AbsRel `run`: `scale-field run` on the same bag and parameters; global scale+shift: one scale and shift",
        "of inverse depth fitted to the same anchors. Anchor pixels are excluded from scoring.",
    ]
    return "\n".join(lines) + "\n"


def how_to_view(out: Path, rows: list[dict]) -> str:
    mcaps = " ".join(str(out / r["mcap"]) for r in rows)
    return f"""Results in {out}/:
  metrics.md / metrics.json   the table above
  panels/*.png                rgb + anchors | relative depth | scale field | metric depth | error
  *_metric_depth.mcap         inputs + node outputs: {mcaps}
  *_points.ply                one frame's metric point cloud (MeshLab, CloudCompare, Open3D)
View the MCAP in Foxglove Studio: Open local file -> Image panel on /metric_depth (colour map: turbo),
  3D panel on /metric_depth/points. Or with ROS 2: ros2 bag play {out / rows[0]["mcap"]} --loop
  and rviz2 -d config/depth.rviz (fixed frame camera_optical)."""


def run(args: argparse.Namespace) -> int:
    from .backbones import load_backbone
    from .datasets import shared_root
    from .ros.params import params_file_values
    from .run_offline import atomic_dir

    t0 = time.perf_counter()
    params = Path(args.params) if args.params else _default_params()
    values = params_file_values(params) if params else {}
    if not (np.isfinite(args.rate) and args.rate > 0):
        raise ValueError(f"--rate must be a positive number, got {args.rate}")
    known = {s.name: s for s in SAMPLES}
    unknown = [s for s in args.samples if s not in known]
    if unknown:
        raise ValueError(f"unknown demo samples {unknown}; choose from {sorted(known)}")
    samples = [known[s] for s in args.samples if (shared_root() / "data" / s / "manifest.json").is_file()]
    if not samples:
        raise FileNotFoundError(f"none of {args.samples} is in {shared_root() / 'data'}; see shared/data/README.md")
    domain_id = None
    if not args.offline:
        try:
            import rclpy  # noqa: F401

            from .ros import node  # noqa: F401  (imports every message package the node needs)

            domain_id = demo_domain_id()
        except ImportError as exc:
            print(f"demo: ROS 2 (rclpy) is not available ({exc}); running the offline runner instead: same Pipeline, "
                  "parameters and anchor buffering, no DDS", file=sys.stderr)  # fmt: skip
    from .run_offline import load_settings

    settings, _ = load_settings(params)
    backbone = load_backbone(
        settings.backbone, settings.model_path, settings.runtime, settings.threads, settings.device
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, commit = atomic_dir(out, overwrite=True)  # a finished demo replaces the last one; a failed one leaves it
    try:
        rows = []
        for sample in samples:
            print(f"demo: {sample.name} ...", file=sys.stderr, flush=True)
            rows.append(run_sample(sample, tmp, values, backbone, domain_id, args.rate))
        wall = time.perf_counter() - t0
        table = metrics_markdown(rows, wall, domain_id)
        (tmp / "metrics.md").write_text(table)
        doc = {"wall_s": wall, "domain_id": domain_id, "params": str(params) if params else None, "samples": rows}
        (tmp / "metrics.json").write_text(json.dumps(doc, indent=1))
        commit()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(table)
    print(how_to_view(out, rows))
    return 0
