#!/usr/bin/env python3
"""Write one small panel per dataset in shared/data to docs/panels/: frame 0, the field from 200 uniform
anchors (the dataset's own LiDAR for kitti_lidar), tiles downscaled so the folder stays small.

Usage: python scripts/doc_panels.py [--out docs/panels] [--anchors 200] [--scale 0.4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    import cv2

    from scale_field_ros.backbones import load_backbone
    from scale_field_ros.datasets import load_dataset, shared_root
    from scale_field_ros.metrics import evaluation_mask
    from scale_field_ros.panels import write_panel
    from scale_field_ros.patterns import Pattern, draw_anchors, supports
    from scale_field_ros.pipeline import Pipeline, PipelineConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "panels"))
    p.add_argument("--anchors", type=int, default=200)
    p.add_argument("--scale", type=float, default=0.4, help="downscale factor of the written PNG")
    a = p.parse_args()
    backbone = load_backbone("fastdepth", None)
    out_dir = Path(a.out)
    for d in sorted(d for d in (shared_root() / "data").iterdir() if (d / "manifest.json").is_file()):
        ds = load_dataset(d)
        frame = ds.frame(0)
        pattern = Pattern.UNIFORM if supports(frame, Pattern.UNIFORM) else Pattern.NATIVE
        draw = draw_anchors(frame, pattern, a.anchors, seed=0)
        out = backbone.infer(frame.rgb)
        res = Pipeline(None, PipelineConfig(max_depth_m=ds.max_depth_m)).process_output(out, draw.anchors)
        mask = evaluation_mask(draw.truth_depth_m, 0.1, ds.max_depth_m, draw.anchors)
        path = out_dir / f"{ds.name}_{frame.frame_id}_{pattern.value}_{a.anchors}.png"
        write_panel(path, frame.rgb, draw.anchors, out, res, draw.truth_depth_m, mask, ds.max_depth_m)
        img = cv2.imread(str(path))
        small = cv2.resize(img, None, fx=a.scale, fy=a.scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(path), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"{path} {path.stat().st_size // 1024} KiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
