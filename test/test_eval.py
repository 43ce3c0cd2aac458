"""The eval subcommand's rows and panels, and its command-line contract."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
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
    by = {(r["anchors"], r["method"]): r for r in rows}
    for m in spec.methods:  # the anchor pixels are not scored: more anchors, fewer pixels
        assert by[100, m]["n_pixels"] < by[20, m]["n_pixels"]
    assert by[100, "field"]["absrel"] < by[100, "ga_inv"]["absrel"]
    for n in (20, 100):  # the field's std is scored against its error; the baselines publish none
        assert 0 < by[n, "field"]["std_ratio_median"] and 0 < by[n, "field"]["within_1std"] <= 1
        assert "within_1std" not in by[n, "median"]
    assert len(list(tmp_path.glob("*.png"))) == 3
    json.dumps({"rows": rows})


def test_native_pattern_scores_on_held_out_lidar():
    data = [str(shared_root() / "data" / "kitti_lidar")]
    rows = evaluate(
        data, backbone(), EvalSpec(anchor_counts=(200,), pattern="native", seeds=1, methods=("ga_inv", "field"))
    )
    assert len(rows) == 2 and all(r["n_pixels"] > 1000 for r in rows)
    field, ga = (next(r for r in rows if r["method"] == m) for m in ("field", "ga_inv"))
    assert field["absrel"] < ga["absrel"]


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


def _eval(tmp_path, *extra: str, data: str = "kitti_lidar") -> tuple[int, str]:
    """`scale-field eval` in this process: (exit code, what it printed to stderr)."""
    import contextlib
    import io

    from scale_field_ros.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["eval", "--data", str(shared_root() / "data" / data), "--json", str(tmp_path / "o.json"), *extra])
    return code, err.getvalue()


def test_more_anchors_than_points_give_null_metrics_not_a_crash(tmp_path):
    # the KITTI frame has ~17k LiDAR points in view: 100000 asked leaves none held out to score
    code, err = _eval(tmp_path, "--pattern", "native", "--anchors", "100000", "--seeds", "1", "--methods", "ga_inv")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert row["absrel"] is None and row["anchors_drawn"] < 100000
    assert "absrel n/a" in err


@pytest.mark.parametrize(
    "extra, says",
    [
        (("--seeds", "0"), "--seeds"),
        (("--methods", ","), "--methods"),
        (("--anchors", ","), "--anchors"),
        (("--anchors", "10,10"), "twice"),
        (("--noise", "-0.5"), "--noise"),
        (("--noise", "nan"), "--noise"),
        (("--outliers", "1.5"), "--outliers"),
        (("--pattern", "uniform"), "uniform pattern"),  # kitti_lidar has no dense ground truth
        (("--methods", "median", "--panels", "p"), "add field"),
    ],
)
def test_arguments_that_would_give_no_rows_or_mislabelled_ones_are_refused(tmp_path, extra, says):
    code, err = _eval(tmp_path, "--pattern", "native", "--seeds", "1", "--anchors", "50", *extra)
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def test_a_folder_for_json_is_refused_before_the_evaluation(tmp_path):
    (tmp_path / "o.json").mkdir()
    code, err = _eval(tmp_path, "--pattern", "native", "--seeds", "1")
    assert code == 2 and "is a folder" in err


def test_lidar_lines_land_on_rows_with_ground_truth():
    # ground truth on two rows only (a sparse scan): every line is moved to one of them, none is lost
    from scale_field_ros.datasets import load_dataset
    from scale_field_ros.patterns import draw_anchors

    frame = load_dataset(shared_root() / "data" / "nyu").frame(0)
    sparse = np.zeros_like(frame.depth_m)
    sparse[[100, 400]] = frame.depth_m[[100, 400]]
    draw = draw_anchors(dataclasses.replace(frame, depth_m=sparse), "lidar", 200, seed=0)
    assert len(draw.anchors) == 200 and set(np.unique(draw.anchors.v).tolist()) == {100.0, 400.0}


def test_std_calibration_on_real_depth():
    from scale_field_ros.datasets import load_dataset
    from scale_field_ros.metrics import std_calibration

    truth = load_dataset(shared_root() / "data" / "nyu").frame(0).depth_m
    mask = truth > 0
    pred = truth * np.float32(1.1)  # |error| = 0.1 truth
    caps = (1e-3, 10.0)
    c = std_calibration(pred, 0.2 * truth, truth, mask, caps)
    assert abs(c.ratio_median - 0.5) < 1e-3 and c.within_1std == 1.0 and abs(c.rms_ratio - 0.5) < 1e-3
    c = std_calibration(pred, 0.05 * truth, truth, mask, caps)
    assert abs(c.ratio_median - 2.0) < 1e-3 and c.within_1std == 0.0 and abs(c.rms_ratio - 2.0) < 1e-3
    assert np.isnan(std_calibration(pred, truth, truth, np.zeros_like(mask), caps).ratio_median)


def test_sparsification_error_scores_how_the_std_ranks_the_errors():
    from scale_field_ros.datasets import load_dataset
    from scale_field_ros.metrics import std_calibration

    truth = load_dataset(shared_root() / "data" / "nyu").frame(0).depth_m
    mask = truth > 0
    rel = np.random.default_rng(0).normal(0.0, 0.1, truth.shape).astype(np.float32)
    pred = truth * (1.0 + rel)
    caps = (1e-3, 10.0)
    std_m = np.abs(pred - truth) * pred / np.where(mask, truth, 1.0)  # std / depth = AbsRel
    perfect = std_calibration(pred, std_m, truth, mask, caps)
    assert abs(perfect.ause) < 1e-4 and perfect.ause_random > 0.02
    inverted = std_calibration(pred, pred / np.maximum(np.abs(rel), 1e-6), truth, mask, caps)
    assert inverted.ause > 1.5 * inverted.ause_random  # worst first kept: worse than no ranking at all
    rng_std = pred * np.random.default_rng(1).uniform(0.05, 0.15, truth.shape).astype(np.float32)
    random = std_calibration(pred, rng_std, truth, mask, caps)
    assert abs(random.ause - random.ause_random) < 0.1 * random.ause_random
