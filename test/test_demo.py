"""`scale-field demo` on real data: the node over DDS on sun3d_seq, and the offline fallback on kitti_lidar.
Both must leave the MCAP (inputs + one /metric_depth an image), panels, a PLY and the metrics table."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from scale_field_ros import bagio, msg_codec
from scale_field_ros.cli import main as cli_main
from scale_field_ros.ply import read_ply

pytestmark = pytest.mark.slow


def _check_folder(out, sample: str, n_images: int, dataset) -> dict:
    mcap = out / f"{sample}_metric_depth.mcap"
    topics = bagio.bag_topics(mcap)
    assert topics["/camera/image"].count == n_images
    for t in ("/metric_depth", "/metric_depth/camera_info", "/metric_depth/points", "/metric_depth/confidence",
              "/scale_field"):  # fmt: skip
        assert topics[t].count == n_images, t
    depth_msgs = [m for m in bagio.read_messages(mcap, ["/metric_depth"])]
    for m in depth_msgs:
        depth = msg_codec.image_msg_to_depth_m(m.msg)
        assert np.all(np.isfinite(depth)) and depth.min() > 0
    assert len(list((out / "panels").glob(f"{sample}_*.png"))) == n_images
    (ply,) = out.glob(f"{sample}_*_points.ply")
    points, colours = read_ply(ply)
    f = dataset.frame(0)
    first_depth = msg_codec.image_msg_to_depth_m(depth_msgs[0].msg)
    np.testing.assert_allclose(points, f.intrinsics.unproject(first_depth).reshape(-1, 3), atol=1e-4)
    np.testing.assert_array_equal(colours, f.rgb.reshape(-1, 3))
    doc = json.loads((out / "metrics.json").read_text())
    (row,) = [r for r in doc["samples"] if r["sample"] == sample]
    assert row["images"] == row["depth_out"] == n_images
    table = (out / "metrics.md").read_text()
    assert f"| {sample} |" in table and "AbsRel" in table
    return row


def test_demo_node_over_dds_on_sun3d(sun3d, tmp_path, monkeypatch, capsys):
    pytest.importorskip("rclpy", reason="needs the ROS 2 Python wheels (rclpy)")
    from node_harness import domain_id

    monkeypatch.setenv("SCALE_FIELD_DEMO_DOMAIN_ID", str(domain_id(23)))
    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out), "--samples", "sun3d_seq"]) == 0
    row = _check_folder(out, "sun3d_seq", len(sun3d), sun3d)
    assert row["mode"] == "node over DDS"
    # the node over DDS scores as `scale-field run` on the same bag, and beats one global scale+shift
    assert abs(row["absrel_node"] - row["absrel_offline"]) <= 0.005
    assert row["absrel_node"] < row["absrel_global_scale_shift"]
    assert json.loads((out / "metrics.json").read_text())["domain_id"] == domain_id(23)
    printed = capsys.readouterr().out
    assert "Foxglove" in printed and str(out / "sun3d_seq_metric_depth.mcap") in printed
    assert not list(tmp_path.glob(".demo*"))  # no temporary folder left


def test_demo_offline_fallback_on_kitti_lidar(kitti_lidar, tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    (out / "stale").mkdir(parents=True)  # a previous demo's folder is replaced, not merged
    monkeypatch.setitem(sys.modules, "rclpy", None)  # as on a machine without the ROS 2 wheels
    assert cli_main(["demo", "--out", str(out), "--samples", "kitti_lidar"]) == 0
    assert "running the offline runner instead" in capsys.readouterr().err
    row = _check_folder(out, "kitti_lidar", len(kitti_lidar), kitti_lidar)
    assert row["mode"].startswith("`scale-field run`") and row["truth"] == "held-out LiDAR"
    assert row["absrel_node"] == row["absrel_offline"] and np.isfinite(row["absrel_node"])
    assert not (out / "stale").exists()
    assert cli_main(["demo", "--out", str(out), "--samples", "nope"]) == 2
