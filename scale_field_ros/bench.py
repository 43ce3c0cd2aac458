"""`scale-field bench`: per-stage latency, written as JSON.

Each stage benchmark is a function `(BenchContext) -> dict[stage name, LatencyStats]` listed in
`STAGE_BENCHES`; the report collects all of them under "stages_ms" next to the runtime, thread count
and machine/software description. Timings are wall-clock per call after a warm-up, on a real frame
from shared/data when it is present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .runtime_select import REQUESTS as RUNTIMES

DEFAULT_REPEATS = 50
WARMUP = 5


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one stage over `repeats` timed calls, milliseconds."""

    median: float
    p95: float
    mean: float
    min: float
    repeats: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median": round(self.median, 4),
            "p95": round(self.p95, 4),
            "mean": round(self.mean, 4),
            "min": round(self.min, 4),
            "repeats": self.repeats,
        }


def measure(fn: Callable[[], object], repeats: int = DEFAULT_REPEATS, warmup: int = WARMUP) -> LatencyStats:
    """Call `fn` `warmup` times untimed, then `repeats` times timed one by one."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    samples = np.empty(repeats, np.float64)
    for i in range(repeats):
        start = time.perf_counter_ns()
        fn()
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    return latency_stats(samples)


def latency_stats(samples_ms) -> LatencyStats:
    samples = np.asarray(samples_ms, np.float64)
    return LatencyStats(
        median=float(np.median(samples)),
        p95=float(np.percentile(samples, 95)),
        mean=float(samples.mean()),
        min=float(samples.min()),
        repeats=int(samples.size),
    )


@dataclass(frozen=True)
class BenchContext:
    """What every stage benchmark gets: the loaded backbone and the input frame at the requested size."""

    backbone: object  # a scale_field_ros.backbone.Backbone
    rgb: np.ndarray  # HxWx3 uint8 at --width x --height
    frame: object | None  # the scale_field_ros.datasets.Frame it came from, None for a synthetic image
    repeats: int
    device: str = "cpu"  # resolved --device (cpu or cuda[:N]) for the torch stages
    node: bool = False  # --node: also time the ROS node end to end (needs rclpy)
    info: dict = field(default_factory=dict)  # report entries beside "stages_ms" that a stage bench adds
    cache: dict = field(default_factory=dict)  # what stage benches share (the backbone output they time on)


def bench_backbone(ctx: BenchContext) -> dict[str, LatencyStats]:
    """`infer` at the requested input size ("backbone") and at the network's own size ("backbone_native")."""
    import cv2

    stages = {"backbone": measure(lambda: ctx.backbone.infer(ctx.rgb), ctx.repeats)}
    side = getattr(ctx.backbone, "input_size", None)
    if isinstance(side, int):
        native = cv2.resize(ctx.rgb, (side, side), interpolation=cv2.INTER_AREA)
        stages["backbone_native"] = measure(lambda: ctx.backbone.infer(native), ctx.repeats)
    return stages


def bench_backbone_split(ctx: BenchContext) -> dict[str, LatencyStats]:
    """Pre-process / network / post-process split of `infer` for backbones that time their stages.

    GraphBackbone (Depth Anything on torch, ONNX Runtime or TensorRT) synchronises the device at each
    stage border, so on a GPU "backbone_network" is the engine's own latency.
    """
    if not hasattr(ctx.backbone, "last_times"):
        return {}
    for _ in range(WARMUP):
        ctx.backbone.infer(ctx.rgb)
    parts: dict[str, list[float]] = {"preprocess": [], "network": [], "postprocess": []}
    for _ in range(ctx.repeats):
        ctx.backbone.infer(ctx.rgb)
        for part, samples in parts.items():
            samples.append(getattr(ctx.backbone.last_times, part))
    return {f"backbone_{part}": latency_stats(samples) for part, samples in parts.items()}


SCALE_FIELD_ANCHORS = 1000


def bench_scale_field(ctx: BenchContext) -> dict[str, LatencyStats]:
    """The scale-field stage (bases, solve, compose, uncertainty) at the input size with 1000 anchors on this
    backbone's output for the input frame (its relative map and its features: the feature PCA's cost depends on
    them), from `pipeline.benchmark_scale_field`; one timed frame per call so that the report gets the spread,
    plus its parts as "scale_field_<part>"; and the stage as the node runs it, with the temporal filter, on a
    stream of that frame ("scale_field_filtered", the filter's part "scale_field_filter")."""
    from .datasets import shared_root
    from .pipeline import benchmark_filtered, benchmark_scale_field

    if not (shared_root() / "data" / "nyu" / "manifest.json").is_file():
        return {}
    out = _scale_field_input(ctx)
    runs = [benchmark_scale_field(out, SCALE_FIELD_ANCHORS, repeats=1, seed=i) for i in range(ctx.repeats)]
    stages = {"scale_field": latency_stats([r["scale_field"] for r in runs])}
    for part in ("bases", "solve", "compose"):
        stages[f"scale_field_{part}"] = latency_stats([r[part] for r in runs])
    # the node also runs the temporal filter on every frame: the stage with it, and the filter's part
    filtered = benchmark_filtered(out, SCALE_FIELD_ANCHORS, repeats=ctx.repeats)
    stages["scale_field_filtered"] = latency_stats(filtered["scale_field_filtered"])
    stages["scale_field_filter"] = latency_stats(filtered["filter"])
    return stages


def bench_scale_field_lidar(ctx: BenchContext) -> dict[str, LatencyStats]:
    """The stage on LiDAR anchors, where the basis family is cross-validated every frame (the NYU frame's 1000
    uniform anchors cover the image, which skips that test): the kitti_lidar frame at its own size, 1000 points
    of its own scan a frame, drawn afresh, on this backbone's output; alone ("scale_field_lidar") and through the
    temporal filter ("scale_field_filtered_lidar"), which also cross-validates on the last frames' anchors
    pooled (`Pipeline._pool_anchors`). The first two frames are not timed."""
    import dataclasses

    from .datasets import load_dataset, shared_root
    from .patterns import draw_anchors
    from .pipeline import Pipeline, PipelineConfig
    from .temporal_filter import FilterConfig

    folder = shared_root() / "data" / "kitti_lidar"
    if not (folder / "manifest.json").is_file():
        return {}
    frame = load_dataset(folder).frame(0)
    out = ctx.backbone.infer(frame.rgb)
    draws = [draw_anchors(frame, "native", SCALE_FIELD_ANCHORS, seed=i).anchors for i in range(ctx.repeats + 2)]
    alone = PipelineConfig(max_depth_m=frame.max_depth_m)
    filtered = dataclasses.replace(alone, filter=FilterConfig(enabled=True))
    stages = {}
    for name, config in (("scale_field_lidar", alone), ("scale_field_filtered_lidar", filtered)):
        pipe = Pipeline(None, config)
        samples = []
        for i, anchors in enumerate(draws):
            t = pipe.process_output(out, anchors, stamp_s=i / 30.0).timings_ms
            if i >= 2:
                samples.append(t.bases + t.solve + t.filter + t.compose)
        stages[name] = latency_stats(samples)
    return stages


def _scale_field_input(ctx: BenchContext):
    """The backbone's output for the input frame, computed once per report."""
    if "scale_field_input" not in ctx.cache:
        ctx.cache["scale_field_input"] = ctx.backbone.infer(ctx.rgb)
    return ctx.cache["scale_field_input"]


ONE_CORE_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def bench_scale_field_one_core(ctx: BenchContext) -> dict[str, LatencyStats]:
    """The "scale_field" stage (same backbone output) in a child process held to one CPU core (affinity to one
    core, one thread for BLAS, OpenMP and OpenCV), the setting of the stage's target: "scale_field_one_core"."""
    import subprocess
    import tempfile

    from .datasets import shared_root

    if not (shared_root() / "data" / "nyu" / "manifest.json").is_file():
        return {}
    out = _scale_field_input(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "output.npz"
        feats = {f"feature_{k}": v for k, v in out.features.items()}
        np.savez(
            path,
            relative=out.relative,
            kind=out.kind.value,
            metric=out.metric,
            graph_basis_config=out.graph_basis_config,  # a graph's bases are used in the child as in the parent
            **feats,
        )
        code = f"from scale_field_ros.bench import one_core_child; one_core_child({str(path)!r}, {ctx.repeats})"
        child = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **ONE_CORE_ENV}, capture_output=True, text=True
        )
    if child.returncode != 0:
        print(f"bench: scale_field_one_core failed: {child.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    return {"scale_field_one_core": latency_stats(json.loads(child.stdout.strip().splitlines()[-1]))}


def one_core_child(output_npz: str, repeats: int) -> None:
    """`bench_scale_field_one_core`'s child: pin to the lowest allowed core, time the stage on the saved backbone
    output, print the samples as JSON."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import cv2

    from .alloc import keep_frame_buffers
    from .backbone import BackboneOutput, DepthKind
    from .pipeline import benchmark_scale_field

    cv2.setNumThreads(1)
    keep_frame_buffers()
    saved = np.load(output_npz)
    feats = {k.removeprefix("feature_"): saved[k] for k in saved.files if k.startswith("feature_")}
    kind, graph_config = DepthKind(str(saved["kind"])), str(saved["graph_basis_config"])
    out = BackboneOutput(saved["relative"], kind, bool(saved["metric"]), feats, graph_config)
    runs = [benchmark_scale_field(out, SCALE_FIELD_ANCHORS, repeats=1, seed=i) for i in range(repeats)]
    print(json.dumps([r["scale_field"] for r in runs]))


def scale_field_share(stages: dict[str, LatencyStats]) -> float | None:
    """Median scale-field time over median backbone time (the target is below 0.2)."""
    if "scale_field" not in stages or "backbone" not in stages or stages["backbone"].median <= 0:
        return None
    return round(stages["scale_field"].median / stages["backbone"].median, 4)


def bench_scale_field_torch(ctx: BenchContext) -> dict[str, LatencyStats]:
    """The torch scale-field stage (bases, anchor design, both solves, compose; `field_torch`) on `ctx.device`,
    same backbone output and anchor count as "scale_field", plus its parts as "scale_field_torch_<part>"."""
    from .datasets import shared_root

    if not (shared_root() / "data" / "nyu" / "manifest.json").is_file():
        return {}
    from .field_torch import benchmark_scale_field_torch

    run = benchmark_scale_field_torch(
        ctx.device, n_anchors=SCALE_FIELD_ANCHORS, repeats=ctx.repeats, out=_scale_field_input(ctx)
    )
    stages = {"scale_field_torch": latency_stats(run["scale_field_samples"])}
    for part in ("bases", "solve", "compose"):
        stages[f"scale_field_torch_{part}"] = latency_stats(run[f"{part}_samples"])
    return stages


def bench_node_end_to_end(ctx: BenchContext) -> dict[str, LatencyStats]:
    """With --node: image receipt to metric_depth publication of the real ROS node over DDS
    (`ros.bench_node.benchmark_node`, sun3d_seq frames at the input size, this backbone), one frame at a time;
    its median non-backbone share goes to the report as "node_non_backbone_share"."""
    import importlib.util

    if not ctx.node:
        return {}
    if importlib.util.find_spec("rclpy") is None:
        print("bench: --node skipped: rclpy (ROS 2 Python) is not installed", file=sys.stderr)
        return {}
    from .datasets import shared_root

    if not (shared_root() / "data" / "sun3d_seq" / "manifest.json").is_file():
        print("bench: --node skipped: shared/data/sun3d_seq is missing", file=sys.stderr)
        return {}
    from .ros.bench_node import benchmark_node

    h, w = ctx.rgb.shape[:2]
    run = benchmark_node(ctx.backbone, frames=ctx.repeats, size=(w, h))
    ctx.info["node_non_backbone_share"] = round(run["non_backbone_share"], 4)
    ctx.info["node_resolution"] = run["resolution"]
    return {"node_end_to_end": latency_stats(run["latency_samples_ms"])}


def bench_lidar_anchors(ctx: BenchContext) -> dict[str, LatencyStats]:
    """The node's anchor assembly for one image from the KITTI Velodyne scan (kitti_lidar: the ~17k points in the
    camera's view), the image 50 ms after the scan's stamp, odometry driving straight at 10 m/s: the scan moved
    as a whole ("anchors_scan") and deskewed with per-point times from the spin ("anchors_scan_deskew")."""
    from .anchor_buffer import AnchorSet, anchors_for_image
    from .datasets import load_dataset, shared_root
    from .deskew import spinning_scan_offsets
    from .poses import PoseBuffer, invert_transform

    folder = shared_root() / "data" / "kitti_lidar"
    if not (folder / "manifest.json").is_file():
        return {}
    frame = load_dataset(folder).frame(0)
    poses = PoseBuffer()
    for k in range(31):
        T_world_body = np.eye(4)
        T_world_body[0, 3] = 10.0 * (k * 0.01 - 0.1)
        poses.insert(k * 0.01 - 0.1, T_world_body)
    points = np.ascontiguousarray(frame.lidar_points, np.float32)
    offsets = spinning_scan_offsets(points).astype(np.float32)
    T_body_cam = invert_transform(frame.T_cam_lidar)

    def assemble(times):
        scan = AnchorSet(0.0, points, "velodyne", times)
        return anchors_for_image([scan], 0.05, frame.intrinsics, frame.T_cam_lidar, 0.1, 80.0, poses, T_body_cam)

    return {
        "anchors_scan": measure(lambda: assemble(None), ctx.repeats),
        "anchors_scan_deskew": measure(lambda: assemble(offsets), ctx.repeats),
    }


STAGE_BENCHES: list[Callable[[BenchContext], dict[str, LatencyStats]]] = [
    bench_backbone,
    bench_backbone_split,
    bench_scale_field,
    bench_scale_field_one_core,
    bench_scale_field_lidar,
    bench_lidar_anchors,
    bench_node_end_to_end,
    # torch last: its CPU thread pool keeps spinning after a run and slowed the node's frames 5x when it ran first
    bench_scale_field_torch,
]


def torch_device(requested: str) -> str:
    """--device for the torch stages: "auto" is cuda when torch sees one, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bench_input(width: int, height: int) -> tuple[np.ndarray, object | None, str]:
    """A real indoor frame resized to width x height when shared/data is present, else a synthetic image."""
    import cv2

    from .datasets import load_dataset, shared_root

    for name in ("nyu", "sun3d_seq"):
        folder = shared_root() / "data" / name
        if (folder / "manifest.json").is_file():
            frame = load_dataset(folder).frame(0)
            rgb = frame.rgb
            if rgb.shape[:2] != (height, width):
                rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            return rgb, frame, f"{name}/{frame.frame_id}"
    # No real data: a smooth gradient with texture, so the network does real work on it.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 9.0)], axis=2)
    return (rgb * 255).astype(np.uint8), None, "synthetic"


def cpu_description() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_description() -> str | None:
    """CUDA device name and compute capability as torch sees them, None without CUDA."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})"


def software_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "onnxruntime", "opencv-python-headless", "transformers", "tensorrt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def build_report(stages: dict[str, LatencyStats], **info) -> dict:
    """The JSON report: {"stages_ms": {stage: stats}, **info, "machine": ..., "versions": ...}."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "stages_ms": {name: stats.as_dict() for name, stats in stages.items()},
        **info,
        "machine": {
            "cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": affinity,
            "platform": platform.platform(),
            "gpu": gpu_description(),
        },
        "versions": software_versions(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="fastdepth", help="backbone name (default fastdepth)")
    parser.add_argument("--model", default=None, help="model file (default shared/models/fastdepth_224.tflite)")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES, help="auto picks the fastest available")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--random-init", action="store_true", help="Depth Anything: random weights (timing only)")
    parser.add_argument("--fp32", action="store_true", help="TensorRT: FP32 engine instead of FP16")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = runtime default)")
    parser.add_argument("--width", type=int, default=640, help="input image width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="input image height (default 480)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls per stage")
    parser.add_argument("--node", action="store_true", help="also time the ROS node end to end (needs rclpy)")
    parser.add_argument("--json", default=None, help="write the report here (default: print it)")


def run(args: argparse.Namespace) -> int:
    from .backbone import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
    from .backbones import load_backbone

    for name in ("width", "height"):
        value = getattr(args, name)
        if not MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE:
            raise ValueError(f"--{name} {value} is outside {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    options = {}
    if args.random_init:
        options["random_init"] = True
    if args.fp32:
        options["precision"] = "fp32"
    backbone = load_backbone(args.backbone, args.model, args.runtime, args.threads, args.device, **options)
    rgb, frame, source = bench_input(args.width, args.height)
    ctx = BenchContext(
        backbone=backbone,
        rgb=rgb,
        frame=frame,
        repeats=args.repeats,
        device=torch_device(args.device),
        node=args.node,
    )
    stages: dict[str, LatencyStats] = {}
    for bench in STAGE_BENCHES:
        stages.update(bench(ctx))
    report = build_report(
        stages,
        backbone=backbone.name,
        runtime=backbone.runtime,
        threads=getattr(backbone, "threads", args.threads),
        device=args.device,
        model=str(getattr(backbone, "model_path", args.model)),
        input={"source": source, "width": args.width, "height": args.height},
        scale_field_share_of_backbone=scale_field_share(stages),
        **ctx.info,
    )
    text = json.dumps(report, indent=2)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    summary = ", ".join(f"{k} {v.median:.2f} ms (p95 {v.p95:.2f})" for k, v in stages.items())
    print(f"{backbone.name}/{backbone.runtime} threads={report['threads']}: {summary}", file=sys.stderr)
    if not args.json:
        print(text)
    return 0
