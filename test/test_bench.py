"""`scale-field bench` report structure (no timing assertions: speed is what the report is for)."""

from __future__ import annotations

import argparse
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
        ]
        + ["--json", str(out)]
    )
    assert bench.run(args) == 0
    report = json.loads(out.read_text())
    assert set(report["stages_ms"]) == {"backbone", "backbone_native"}
    for stats in report["stages_ms"].values():
        assert stats["repeats"] == 2 and 0 < stats["median"] <= stats["p95"]
    assert report["runtime"] == "onnxruntime" and report["threads"] == 1
    assert report["input"]["width"] == 320 and report["input"]["source"] != ""
    assert {"python", "torch", "onnxruntime"} <= set(report["versions"])
    assert report["machine"]["cpu"]


def test_bench_refuses_bad_sizes():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ValueError, match="--width"):
        bench.run(parser.parse_args(["--width", "4"]))
