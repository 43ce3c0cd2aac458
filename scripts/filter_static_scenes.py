#!/usr/bin/env python3
"""The temporal filter on static scenes: every frame of each dataset in shared/data repeated with fresh anchors
(a new seed per frame, 2 % depth noise), per-frame AbsRel alone against filtered (frames 5 on), for the anchor
patterns and counts below. Prints one row per scene and setting, then the geometric mean of filtered / alone,
the worst ratio and how many rows the filter made worse by more than 5 %. A few minutes with FastDepth.

With --anchor-every N the filtered stream gets anchors on one frame in N only (a camera faster than its anchor
source), and "alone" is each frame solved with the latest anchored frame's anchors: the ratio then says how much
the frames between lose by coasting.

Usage: python scripts/filter_static_scenes.py [--data ../shared/data] [--frames 15] [--anchor-every 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "nyu": [(30, "vio"), (100, "vio"), (10, "uniform"), (50, "uniform"), (300, "uniform")],
    "sun3d_seq": [(30, "vio"), (100, "vio"), (50, "uniform")],
    "kitti_semidense": [(50, "vio"), (200, "lidar"), (1000, "lidar"), (50, "uniform")],
    "kitti_lidar": [(200, "native"), (1000, "native")],
}


def main() -> int:
    import numpy as np

    from scale_field_ros.anchors import Anchors
    from scale_field_ros.backbones import load_backbone
    from scale_field_ros.datasets import load_dataset
    from scale_field_ros.metrics import evaluation_mask
    from scale_field_ros.patterns import draw_anchors
    from scale_field_ros.pipeline import Pipeline, PipelineConfig
    from scale_field_ros.temporal_filter import FilterConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", type=Path, default=ROOT.parent / "shared" / "models" / "fastdepth_224.tflite")
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--anchor-every", type=int, default=1, help="anchors on one frame in this many")
    args = ap.parse_args()
    backbone = load_backbone("fastdepth", str(args.model), runtime="onnxruntime")
    ratios = []
    for name, settings in SETTINGS.items():
        ds = load_dataset(args.data / name)
        for index in range(len(ds.frames_meta)):
            frame = ds.frame(index)
            out = backbone.infer(frame.rgb)
            for n, pattern in settings:
                cfg = PipelineConfig(max_depth_m=ds.max_depth_m)
                alone = Pipeline(None, cfg)
                filtered = Pipeline(None, PipelineConfig(max_depth_m=ds.max_depth_m, filter=FilterConfig(enabled=True)))
                err_alone, err_filtered, resets = [], [], 0
                for k in range(args.frames):
                    anchored = k % args.anchor_every == 0
                    draw = draw_anchors(frame, pattern, n, seed=k - k % args.anchor_every, noise=0.02)
                    mask = evaluation_mask(draw.truth_depth_m, cfg.min_depth_m, ds.max_depth_m, draw.anchors)
                    truth = draw.truth_depth_m[mask]
                    a = alone.process_output(out, draw.anchors)
                    f = filtered.process_output(out, draw.anchors if anchored else Anchors.empty(), k / 30)
                    resets += bool(f.filter_reset)
                    if k >= 5:
                        err_alone.append(float(np.mean(np.abs(a.depth_m[mask] - truth) / truth)))
                        err_filtered.append(float(np.mean(np.abs(f.depth_m[mask] - truth) / truth)))
                ratio = np.mean(err_filtered) / np.mean(err_alone)
                ratios.append(ratio)
                print(
                    f"{name:16s} frame {index} {n:5d} {pattern:8s} alone {np.mean(err_alone):.4f} "
                    f"filtered {np.mean(err_filtered):.4f} ratio {ratio:.3f} resets {resets}",
                    flush=True,
                )
    r = np.asarray(ratios)
    print(
        f"filtered / alone: geometric mean {np.exp(np.mean(np.log(r))):.4f}, worst {r.max():.3f}, "
        f"rows worse by over 5 %: {(r > 1.05).sum()} of {len(r)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
