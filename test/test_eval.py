"""The eval subcommand's rows and panels, and its command-line contract."""

from __future__ import annotations

import json

from field_backbone import backbone

from scale_field_ros.cli import build_parser
from scale_field_ros.datasets import shared_root
from scale_field_ros.evaluate import EvalSpec, evaluate


def test_rows_cover_every_method_and_count(tmp_path):
    data = [str(shared_root() / "data" / "nyu")]
    spec = EvalSpec(anchor_counts=(20, 100), pattern="vio", seeds=1, methods=("median", "ga_inv", "field"))
    rows = evaluate(data, backbone(), spec, panels_dir=tmp_path)
    assert {(r["anchors"], r["method"]) for r in rows} == {(n, m) for n in (20, 100) for m in spec.methods}
    for r in rows:
        assert r["dataset"] == "nyu" and r["pattern"] == "vio" and r["samples"] == 3
        assert 0 < r["absrel"] < 1 and 0 < r["delta1"] <= 1 and r["rmse"] > 0
    assert len(list(tmp_path.glob("*.png"))) == 3
    json.dumps({"rows": rows})


def test_native_pattern_scores_on_held_out_lidar():
    data = [str(shared_root() / "data" / "kitti_lidar")]
    rows = evaluate(
        data, backbone(), EvalSpec(anchor_counts=(200,), pattern="native", seeds=1, methods=("ga_inv", "field"))
    )
    assert len(rows) == 2 and all(r["n_pixels"] > 1000 for r in rows)


def test_cli_contract_parses():
    args = build_parser("eval").parse_args(
        [
            "eval",
            "--data",
            "a",
            "b",
            "--model",
            "m.tflite",
            "--anchors",
            "10,50",
            "--pattern",
            "lidar",
            "--noise",
            "0.02",
            "--outliers",
            "0.1",
            "--seed",
            "3",
            "--seeds",
            "2",
            "--methods",
            "median,field",
            "--json",
            "out.json",
            "--panels",
            "p",
        ]
    )
    assert args.data == ["a", "b"] and args.pattern == "lidar" and args.seeds == 2 and args.panels == "p"
