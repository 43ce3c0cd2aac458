"""`scale-field bench` report structure (no timing assertions: speed is what the report is for)."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from scale_field_ros import bench


def test_measure_counts_and_orders_statistics():
    calls = []
    stats = bench.measure(lambda: calls.append(1), repeats=7, warmup=2)
    assert len(calls) == 9 and stats.repeats == 7
    assert 0.0 <= stats.min <= stats.median <= stats.p95
    with pytest.raises(ValueError, match="repeats"):
        bench.measure(lambda: None, repeats=0)


def test_bench_writes_the_json_report(tmp_path, monkeypatch, fastdepth_path):
    monkeypatch.setenv("SCALE_FIELD_CACHE", str(tmp_path / "cache"))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        [
            "--model",
            str(fastdepth_path),
            "--runtime",
            "onnxruntime",
            "--threads",
            "1",
            "--width",
            "320",
            "--height",
            "240",
            "--repeats",
            "2",
            "--device",
            "cpu",
            "--node",
        ]
        + ["--json", str(out)]
    )
    assert bench.run(args) == 0
    report = json.loads(out.read_text())
    assert {
        "backbone",
        "backbone_native",
        "scale_field",
        "scale_field_solve",
        "scale_field_one_core",
        "scale_field_lidar",
        "scale_field_filtered_lidar",
        "scale_field_torch",
        "scale_field_torch_bases",
        "anchors_scan",
        "anchors_scan_deskew",
    } <= set(report["stages_ms"])
    if importlib.util.find_spec("rclpy") is not None:
        # the node over DDS: end to end includes the backbone, so the non-backbone share is a proper fraction
        assert "node_end_to_end" in report["stages_ms"]
        assert 0.0 < report["node_non_backbone_share"] < 1.0
    for stats in report["stages_ms"].values():
        assert stats["repeats"] == 2 and 0 < stats["median"] <= stats["p95"]
    assert report["runtime"] == "onnxruntime" and report["threads"] == 1
    assert report["input"]["width"] == 320 and report["input"]["source"] != ""
    assert {"python", "torch", "onnxruntime"} <= set(report["versions"])
    assert report["machine"]["cpu"]
    share = report["scale_field_share_of_backbone"]
    assert share == pytest.approx(
        report["stages_ms"]["scale_field"]["median"] / report["stages_ms"]["backbone"]["median"], rel=1e-2
    )


def test_bench_refuses_bad_sizes():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="--width"):
        bench.run(parser.parse_args(["--width", "4"]))


def test_stage_split_for_graph_backbones(nyu):
    """Depth Anything's pre/network/post split is reported per stage; FastDepth-like backbones add nothing."""
    from scale_field_ros import depth_anything, export
    from scale_field_ros.graph_backbone import GraphBackbone
    from scale_field_ros.torch_runtime import TorchRunner

    config = depth_anything.reduced_config("depth_anything_v2_small")
    module, meta = export.build_graph("depth_anything_v2_small", random_init=True, config=config)
    backbone = GraphBackbone(meta, TorchRunner(module))
    ctx = bench.BenchContext(backbone=backbone, rgb=nyu.frame(0).rgb[::2, ::2], frame=None, repeats=2)
    stages = bench.bench_backbone_split(ctx)
    assert set(stages) == {"backbone_preprocess", "backbone_network", "backbone_postprocess"}
    assert all(s.repeats == 2 and s.min > 0 for s in stages.values())
    assert bench.bench_backbone_split(bench.BenchContext(object(), ctx.rgb, None, 2)) == {}


def test_node_stage_is_optional_and_skips_without_rclpy(monkeypatch, capsys):
    """Without --node nothing runs; with --node and no rclpy the stage is skipped with its reason."""
    ctx = bench.BenchContext(backbone=object(), rgb=None, frame=None, repeats=1, node=False)
    assert bench.bench_node_end_to_end(ctx) == {}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rclpy" else real_find_spec(name))
    ctx = bench.BenchContext(backbone=object(), rgb=None, frame=None, repeats=1, node=True)
    assert bench.bench_node_end_to_end(ctx) == {} and ctx.info == {}
    assert "rclpy" in capsys.readouterr().err


def test_an_inverse_depth_backbone_is_timed_on_all_its_anchors():
    # Depth Anything gives inverse depth in arbitrary units: anchors taken from its own output were ~1e-5 m,
    # all dropped by the depth range, and the stage timed a prior-only frame labelled with 1000 anchors
    import dataclasses

    import numpy as np
    from field_backbone import infer

    from scale_field_ros.backbone import DepthKind
    from scale_field_ros.pipeline import Pipeline, PipelineConfig, benchmark_input, benchmark_scale_field

    _, out = infer("nyu", 0)
    inverse = dataclasses.replace(out, relative=(2e-5 / out.relative).astype(np.float32), kind=DepthKind.INVERSE_DEPTH)
    frame_out, anchors = benchmark_input(inverse, 1000)
    result = Pipeline(None, PipelineConfig(max_depth_m=10.0)).process_output(frame_out, anchors)
    assert result.fit.level.value == "full" and result.fit.n_anchors > 900
    assert benchmark_scale_field(inverse, 1000, repeats=1)["n_anchors"] == 1000


def test_node_benchmark_times_the_requested_image_size():
    # --width/--height reached every stage but the node's, which always ran 640x480 under the report's label
    pytest.importorskip("rclpy", reason="needs the ROS 2 Python wheels (rclpy)")
    import numpy as np
    from field_backbone import backbone

    from scale_field_ros.datasets import load_dataset, shared_root

    rgb = load_dataset(shared_root() / "data" / "sun3d_seq").frame(0).rgb
    small = np.ascontiguousarray(rgb[::2, ::2])  # 320x240
    ctx = bench.BenchContext(backbone=backbone(), rgb=small, frame=None, repeats=2, node=True)
    stages = bench.bench_node_end_to_end(ctx)
    assert ctx.info["node_resolution"] == "320x240"
    assert stages["node_end_to_end"].repeats == 2 and 0.0 < ctx.info["node_non_backbone_share"] < 1.0


def test_the_filtered_stage_runs_the_temporal_filter_on_every_timed_frame():
    # the node runs the filter on every frame; the plain stage does not, so the report times it apart
    import numpy as np
    from field_backbone import infer

    from scale_field_ros.pipeline import benchmark_filtered

    _, out = infer("nyu", 0)
    run = benchmark_filtered(out, 1000, repeats=3)
    stage, filt = np.array(run["scale_field_filtered"]), np.array(run["filter"])
    assert len(stage) == len(filt) == 3
    assert np.all(filt > 0) and np.all(stage > filt)


def test_the_lidar_stage_times_cross_validation_on_every_frame_and_the_filtered_one_on_pooled_frames(monkeypatch):
    # the NYU rows' uniform anchors cover the image and skip the tier test; the LiDAR rows must time it: each
    # frame's own test, and with the filter also the test on the last frames' anchors pooled
    import numpy as np
    from field_backbone import backbone

    import scale_field_ros.bases as bases_module
    import scale_field_ros.pipeline as pipeline_module

    tested = {"own": [], "pooled": []}

    def spy(kind, select):
        def counted(full, anchors, config, *rest):
            tested[kind].append(len(anchors))
            return select(full, anchors, config, *rest)

        return counted

    monkeypatch.setattr(bases_module, "select_tier", spy("own", bases_module.select_tier))
    monkeypatch.setattr(pipeline_module, "select_tier", spy("pooled", pipeline_module.select_tier))
    rgb = np.zeros((8, 8, 3), np.uint8)  # the stage bench loads its own frame
    stages = bench.bench_scale_field_lidar(bench.BenchContext(backbone=backbone(), rgb=rgb, frame=None, repeats=4))
    assert stages["scale_field_lidar"].repeats == stages["scale_field_filtered_lidar"].repeats == 4
    assert len(tested["own"]) == 2 * 6 and min(tested["own"]) > 900  # both streams, every frame, 1000 points
    pooled = tested["pooled"]
    assert len(pooled) == 6 and pooled[4] > 4.5 * pooled[0]  # five frames pooled ...
    assert abs(pooled[5] - pooled[4]) < 0.05 * pooled[4]  # ... and no more
