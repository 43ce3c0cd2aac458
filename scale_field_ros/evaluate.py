"""`scale-field eval`: accuracy of the scale field against the baselines on dataset folders.

For every dataset, pattern, anchor count, seed and frame we draw anchors, run each method on the same
backbone output and score it on ground truth minus the anchor pixels (for `native` without dense ground
truth: on the held-out LiDAR points). Rows average over frames and seeds.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_METHODS = ("median", "ga_depth", "ga_inv", "scaffold", "field")


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders (layout of shared/data)")
    parser.add_argument("--model", default=None, help="backbone model file (default: the shared FastDepth)")
    parser.add_argument("--backbone", default="fastdepth", help="backbone name for load_backbone")
    parser.add_argument("--anchors", default="10,50,200,1000", help="comma-separated anchor counts")
    parser.add_argument("--pattern", default="uniform", choices=["uniform", "lidar", "vio", "native"])
    parser.add_argument("--noise", type=float, default=0.0, help="multiplicative anchor depth noise (std)")
    parser.add_argument("--outliers", type=float, default=0.0, help="fraction of gross outlier anchors")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--basis-checkpoint", default=None, help="learned basis head for method field_learned")
    parser.add_argument("--panels", default=None, help="folder for one PNG panel per frame")


@dataclass(frozen=True)
class EvalSpec:
    anchor_counts: tuple[int, ...] = (10, 50, 200, 1000)
    pattern: str = "uniform"
    noise: float = 0.0
    outliers: float = 0.0
    seed: int = 0
    seeds: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        # every one of these would give no rows, or rows labelled with settings that were not applied
        if not self.anchor_counts or min(self.anchor_counts) < 0:
            raise ValueError(f"--anchors needs one or more counts >= 0, got {list(self.anchor_counts)}")
        if len(set(self.anchor_counts)) != len(self.anchor_counts):
            raise ValueError(f"--anchors lists a count twice: {list(self.anchor_counts)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if not self.methods:
            raise ValueError("--methods is empty")
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"--noise must be a finite std >= 0, got {self.noise}")
        if not (0.0 <= self.outliers <= 1.0):
            raise ValueError(f"--outliers must be a fraction in [0, 1], got {self.outliers}")


def run(args) -> int:
    from .backbones import load_backbone
    from .metrics import shown

    spec = EvalSpec(
        anchor_counts=tuple(int(x) for x in args.anchors.split(",") if x.strip()),
        pattern=args.pattern,
        noise=args.noise,
        outliers=args.outliers,
        seed=args.seed,
        seeds=args.seeds,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
    )
    out = Path(args.json)
    if out.is_dir():  # found now, not after the whole evaluation
        raise ValueError(f"--json {out} is a folder; give a file name")
    backbone = load_backbone(args.backbone, args.model)
    rows = evaluate(args.data, backbone, spec, panels_dir=args.panels, basis_checkpoint=args.basis_checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "spec": spec.__dict__}, indent=1, allow_nan=False))
    for r in rows:
        absrel, rmse, delta1 = (shown(r[k], digits) for k, digits in (("absrel", 4), ("rmse", 3), ("delta1", 3)))
        print(
            f"{r['dataset']:16s} {r['pattern']:8s} {r['anchors']:5d} {r['method']:9s} "
            f"absrel {absrel} rmse {rmse} delta1 {delta1}",
            file=sys.stderr,
        )
    return 0


def method_functions(methods, pipeline_config=None):
    from .baselines import BASELINES
    from .pipeline import Pipeline, PipelineConfig

    fns = {}
    for m in methods:
        if m in ("field", "field_learned"):
            fns[m] = None
        elif m in BASELINES:
            fns[m] = BASELINES[m]
        else:
            raise ValueError(f"unknown method {m!r}; choose from {sorted([*BASELINES, 'field', 'field_learned'])}")
    base_cfg = pipeline_config or PipelineConfig()
    return fns, base_cfg, Pipeline


def evaluate(
    data_dirs, backbone, spec: EvalSpec, panels_dir=None, pipeline_config=None, basis_checkpoint=None
) -> list[dict]:
    """Rows {dataset, pattern, anchors, method, frames, <metric>...} averaged over frames and seeds."""
    import dataclasses

    from .datasets import load_dataset
    from .metrics import (
        DepthMetrics,
        StdCalibration,
        compute_metrics,
        evaluation_mask,
        finite_means,
        std_calibration,
    )
    from .patterns import Pattern, draw_anchors, supports

    fns, base_cfg, pipeline_cls = method_functions(spec.methods, pipeline_config)
    if panels_dir and "field" not in fns:
        raise ValueError("--panels shows the field's scale and error: add field to --methods")
    pattern = Pattern(spec.pattern)
    learned = None
    if "field_learned" in fns:
        if basis_checkpoint is None:
            raise ValueError("method field_learned needs a basis head checkpoint (--basis-checkpoint)")
        from .basis_head import LearnedBases

        learned = LearnedBases.from_checkpoint(basis_checkpoint, getattr(backbone, "name", None))
    rows = []
    datasets = [load_dataset(d) for d in data_dirs]
    names = [ds.name for ds in datasets]
    if len(set(names)) != len(names):  # rows are keyed by dataset name: two of one name could not be told apart
        raise ValueError(f"--data folders must have distinct dataset names, got {names}")
    for ds in datasets:
        cfg = dataclasses.replace(base_cfg, max_depth_m=ds.max_depth_m)
        pipes = {"field": pipeline_cls(None, cfg)}
        caps = (cfg.min_depth_m, ds.max_depth_m)  # the mask's range; every method's output lies in it already
        if learned is not None:
            pipes["field_learned"] = pipeline_cls(None, cfg, bases_fn=learned)
        acc: dict[tuple[int, str], list[DepthMetrics]] = {}
        calibration: dict[tuple[int, str], list[StdCalibration]] = {}  # the field's std against its error
        drawn: dict[int, list[int]] = {}
        for fi in range(len(ds)):
            frame = ds.frame(fi)
            if not supports(frame, pattern):
                continue
            out = backbone.infer(frame.rgb)
            for n in spec.anchor_counts:
                for s in range(spec.seed, spec.seed + spec.seeds):
                    draw = draw_anchors(frame, pattern, n, seed=s * 7919 + fi, noise=spec.noise, outliers=spec.outliers)
                    drawn.setdefault(n, []).append(len(draw.anchors))
                    mask = evaluation_mask(draw.truth_depth_m, cfg.min_depth_m, ds.max_depth_m, draw.anchors)
                    preds = {}
                    res = None
                    for name, fn in fns.items():
                        if fn is None:
                            r = pipes[name].process_output(out, draw.anchors)
                            res = r if name == "field" else res
                            preds[name] = r.depth_m
                            calibration.setdefault((n, name), []).append(
                                std_calibration(r.depth_m, r.std_m, draw.truth_depth_m, mask, caps)
                            )
                        else:
                            preds[name] = fn(out, draw.anchors, cfg.min_depth_m, ds.max_depth_m)
                        scored = compute_metrics(preds[name], draw.truth_depth_m, mask, caps)
                        acc.setdefault((n, name), []).append(scored)
                    if panels_dir and s == spec.seed and n == spec.anchor_counts[-1]:
                        from .panels import write_panel

                        write_panel(
                            Path(panels_dir) / f"{ds.name}_{frame.frame_id}_{pattern.value}_{n}.png",
                            frame.rgb,
                            draw.anchors,
                            out,
                            res,
                            draw.truth_depth_m,
                            mask,
                            ds.max_depth_m,
                        )
        if not acc:
            raise ValueError(f"{ds.root}: no frame has the data the {pattern.value} pattern needs")
        for (n, name), ms in acc.items():
            row = {"dataset": ds.name, "pattern": pattern.value, "anchors": n, "method": name, "samples": len(ms)}
            row["anchors_drawn"] = float(np.mean(drawn[n]))  # fewer than asked where the data has fewer
            names = DepthMetrics.names()
            row.update(zip(names, finite_means([[getattr(m, key) for key in names] for m in ms]), strict=True))
            if (n, name) in calibration:
                keys = [f.name for f in dataclasses.fields(StdCalibration)]
                table = np.array([[getattr(c, k) for k in keys] for c in calibration[n, name]], np.float64)
                table = table[np.isfinite(table).all(axis=1)]  # draws that left nothing to score do not count
                for k, column in zip(keys, table.T, strict=True):
                    key = k if k == "within_1std" else f"std_{k}"
                    row[key] = float(column.mean()) if len(table) else None
            rows.append(row)
    return rows
