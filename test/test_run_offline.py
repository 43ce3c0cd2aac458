"""`scale-field run` on real data: make-bag -> run -> read the MCAP back. The depth must be what the
evaluation path (`Pipeline.process` on the same anchors) gives, the points the depth unprojected, every image
processed; bad bags give clear errors and leave nothing behind; --data writes PNG/npy/PLY/panels/metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from scale_field_ros import bagio, make_bag
from scale_field_ros import msg_codec as mc
from scale_field_ros.anchors import anchors_from_points
from scale_field_ros.cli import main as cli_main
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.pipeline import Pipeline
from scale_field_ros.ply import read_ply
from scale_field_ros.ros.params import all_param_specs, params_file_values
from scale_field_ros.run_offline import (
    OUTPUT_TOPICS,
    load_settings,
    run_bag,
    run_dataset,
)

PARAMS_FILE = Path(__file__).resolve().parent.parent / "config" / "params.yaml"
RATE_HZ = 30.0
N_LIDAR = 600  # scan-line anchors a frame: enough for the field, few enough to keep the file quick


@pytest.fixture(scope="module")
def backbone(fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    return load_backbone(model_path=fastdepth_path)


def _by_topic(path) -> dict[str, list[bagio.BagMessage]]:
    topics = list(bagio.bag_topics(path))
    out: dict[str, list] = {t: [] for t in topics}
    for m in bagio.read_messages(path, topics):
        out[m.topic].append(m)
    return out


def _absrel(depth, truth, config, anchors) -> float:
    mask = evaluation_mask(truth, config.min_depth_m, config.max_depth_m, anchors)
    return compute_metrics(depth, truth, mask).absrel


def _check_outputs(msgs, n_images, frames, settings):
    """Every output topic has one message an image, stamped as the images; points = depth unprojected."""
    images = msgs["/camera/image"]
    assert len(images) == n_images
    for topic in OUTPUT_TOPICS.values():
        assert len(msgs[topic]) == n_images, topic
        assert [m.stamp_ns for m in msgs[topic]] == [m.stamp_ns for m in images], topic
    depths = []
    for i, (d, c, info) in enumerate(
        zip(msgs["/metric_depth"], msgs["/metric_depth/points"], msgs["/metric_depth/camera_info"], strict=True)
    ):
        f = frames[i % len(frames)]
        depth = mc.image_msg_to_depth_m(d.msg)
        assert depth.shape == f.rgb.shape[:2] and np.all(depth > 0)
        assert mc.camera_info_msg_to_intrinsics(info.msg) == f.intrinsics
        pts = mc.pointcloud2_msg_to_xyz(c.msg)
        step = settings.point_decimation
        np.testing.assert_allclose(pts, f.intrinsics.unproject(depth)[::step, ::step].reshape(-1, 3), atol=1e-4)
        std = mc.image_msg_to_depth_m(msgs["/metric_depth/confidence"][i].msg)
        assert np.all(np.isfinite(std)) and np.all(std >= 0)
        depths.append(depth)
    return depths


def test_sun3d_sqlite_bag_equals_eval_path(backbone, sun3d, tmp_path):
    """Anchors at the image rate, one set an image, filter off: each frame must be the eval path's result."""
    bag = tmp_path / "sun3d_bag"
    make_bag.make_bag(sun3d.root, bag, rate_hz=RATE_HZ, anchor_rate_hz=RATE_HZ, anchors="lidar", storage="sqlite3",
                      anchor_count=N_LIDAR)  # fmt: skip
    overrides = {"filter.enabled": False, "anchor_max_age": 0.01, "max_depth_m": sun3d.max_depth_m}
    settings, config = load_settings(PARAMS_FILE, overrides)
    out = tmp_path / "out.mcap"
    summary = run_bag(bag, out, settings, config, backbone, progress=False)
    assert summary.frames == summary.images_in == len(sun3d)
    msgs = _by_topic(out)
    assert {t: len(m) for t, m in msgs.items() if not t.startswith(("/metric", "/scale"))} == {
        "/camera/image": len(sun3d), "/camera/camera_info": len(sun3d), "/anchors": len(sun3d), "/odom": len(sun3d),
    }  # fmt: skip
    frames = list(sun3d.frames())
    depths = _check_outputs(msgs, len(sun3d), frames, settings)
    pipe = Pipeline(backbone, config)
    for k, (f, depth, cloud) in enumerate(zip(frames, depths, msgs["/anchors"], strict=True)):
        # exactly the Pipeline on the anchors the bag carries (camera frame, one set an image)
        bag_anchors = anchors_from_points(
            mc.pointcloud2_msg_to_xyz(cloud.msg), np.eye(4), f.intrinsics, config.min_depth_m, config.max_depth_m
        )
        np.testing.assert_allclose(depth, pipe.process(f.rgb, bag_anchors).depth_m, rtol=1e-5, atol=1e-5)
        # and scores as `scale-field eval` does with make-bag's draw (the bag's float32 points move the anchors
        # by ~1e-5 px, which the local correction does not ignore everywhere: compare scores, not pixels)
        draw = draw_anchors(f, "lidar", N_LIDAR, seed=k)
        ref = pipe.process(f.rgb, draw.anchors)
        got = _absrel(depth, draw.truth_depth_m, config, draw.anchors)
        want = _absrel(ref.depth_m, draw.truth_depth_m, config, draw.anchors)
        assert abs(got - want) <= 0.005, f"frame {k}: run AbsRel {got:.4f}, eval path {want:.4f}"
        assert want < 0.2  # the field fits: a broken anchor path would not score like this


def test_sun3d_default_params_filter_on(backbone, sun3d, tmp_path):
    """The node's own parameters (filter on, 10 Hz anchors): the runner is the Pipeline fed in stamp order."""
    bag = tmp_path / "sun3d.mcap"
    make_bag.make_bag(sun3d.root, bag, rate_hz=RATE_HZ, anchors="vio")
    settings, config = load_settings(PARAMS_FILE)
    assert config.filter.enabled
    seen = []
    summary = run_bag(bag, tmp_path / "out.mcap", settings, config, backbone, progress=False, on_frame=seen.append)
    n = len(sun3d)
    assert summary.frames == n and len(seen) == n
    assert 0 < summary.anchor_sets_per_frame <= 1  # 10 Hz sets, 60 ms window, 30 Hz images
    pipe = Pipeline(backbone, config)
    for fo in seen:
        ref = pipe.process(fo.rgb, fo.anchors, stamp_s=fo.stamp_ns * 1e-9)
        np.testing.assert_allclose(fo.depth_m, ref.depth_m, rtol=1e-4, atol=1e-4)
    depths = _check_outputs(_by_topic(tmp_path / "out.mcap"), n, list(sun3d.frames()), settings)
    np.testing.assert_array_equal(depths[-1], seen[-1].depth_m)


def test_kitti_native_lidar_through_tf_static(backbone, kitti_lidar, tmp_path):
    """Velodyne-frame anchors and /tf_static from make-bag; scored on the held-out scan like `scale-field eval`."""
    n_anchors = 2000
    bag = tmp_path / "kitti.mcap"
    make_bag.make_bag(kitti_lidar.root, bag, anchors="native", anchor_count=n_anchors)
    settings, config = load_settings(PARAMS_FILE, {"filter.enabled": False})
    summary = run_bag(bag, tmp_path / "out.mcap", settings, config, backbone, progress=False)
    assert summary.frames == 1 and "/tf_static" in summary.T_cam_anchor_source
    msgs = _by_topic(tmp_path / "out.mcap")
    assert len(msgs["/tf_static"]) == 1
    f = kitti_lidar.frame(0)
    (depth,) = _check_outputs(msgs, 1, [f], settings)
    draw = draw_anchors(f, "native", n_anchors, seed=0)
    ref = Pipeline(backbone, config).process(f.rgb, draw.anchors)
    got = _absrel(depth, draw.truth_depth_m, config, draw.anchors)
    want = _absrel(ref.depth_m, draw.truth_depth_m, config, draw.anchors)
    assert abs(got - want) <= 0.005, f"run AbsRel {got:.4f}, eval path {want:.4f}"
    assert summary.anchors_per_frame > 0.8 * len(draw.anchors)


class _FailingBackbone:
    """Fails on the third frame: the run must leave nothing at --out."""

    name, runtime = "failing", "none"

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def infer(self, rgb):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("backbone failed mid-run")
        return self.inner.infer(rgb)


def test_bad_bags_give_clear_errors_and_leave_nothing(backbone, sun3d, tmp_path, capsys):
    f = sun3d.frame(0)
    factory = bagio.MessageFactory()
    image = factory.image(1, "camera_optical", mc.rgb8_image_fields(f.rgb))
    info = factory.camera_info(1, "camera_optical", mc.camera_info_fields(f.intrinsics))
    cloud = factory.pointcloud2(1, "camera_optical", mc.xyzrgb_cloud_fields(np.ones((10, 3), np.float32)))
    no_info, no_anchors, no_odom = tmp_path / "no_info.mcap", tmp_path / "no_anchors.mcap", tmp_path / "no_odom.mcap"
    with bagio.BagWriter(no_odom) as w:
        w.write("/camera/camera_info", info, 1)
        w.write("/camera/image", image, 1)
        w.write("/anchors", cloud, 1)
    with bagio.BagWriter(no_info) as w:
        w.write("/camera/image", image, 1)
        w.write("/anchors", cloud, 1)
    with bagio.BagWriter(no_anchors) as w:
        w.write("/camera/image", image, 1)
        w.write("/camera/camera_info", info, 1)
    settings, config = load_settings(PARAMS_FILE)
    outs = tmp_path / "outs"
    outs.mkdir()
    with pytest.raises(bagio.BagError, match="camera_info topic /camera/camera_info"):
        run_bag(no_info, outs / "a.mcap", settings, config, backbone, progress=False)
    with pytest.raises(bagio.BagError, match="anchors topic /anchors.*topics in the bag"):
        run_bag(no_anchors, outs / "b.mcap", settings, config, backbone, progress=False)
    with pytest.raises(bagio.BagError, match="anchors topic /camera/image is sensor_msgs/msg/Image"):
        run_bag(no_anchors, outs / "c.mcap", settings, config, backbone,
                topics=bagio.CameraBagTopics(anchors="/camera/image"), progress=False)  # fmt: skip
    with pytest.raises(bagio.BagError, match="odom topic /odom"):
        run_bag(no_odom, outs / "c.mcap", settings, config, backbone, require_odom=True, progress=False)
    world, _ = load_settings(PARAMS_FILE, {"anchors_in_world": True})
    with pytest.raises(bagio.BagError, match="anchors_in_world needs odometry"):
        run_bag(no_odom, outs / "c.mcap", world, config, backbone, progress=False)
    assert run_bag(no_odom, outs / "ok.mcap", settings, config, backbone, progress=False).frames == 1
    (outs / "ok.mcap").unlink()
    good = tmp_path / "good.mcap"
    make_bag.make_bag(sun3d.root, good, anchors="vio")
    with pytest.raises(RuntimeError, match="mid-run"):
        run_bag(good, outs / "d.mcap", settings, config, _FailingBackbone(backbone), progress=False)
    assert list(outs.iterdir()) == []  # no output and no temporary folder
    # the command line: an unknown topic is a one-line error naming the bag's topics, exit status 2
    code = cli_main(["run", "--bag", str(good), "--out", str(outs / "e.mcap"), "--image-topic", "/cam/nope"])
    err = capsys.readouterr().err
    assert code == 2 and "image topic /cam/nope" in err and "/camera/image" in err
    assert list(outs.iterdir()) == []


def test_data_folder_outputs(backbone, sun3d, kitti_lidar, tmp_path):
    settings, config = load_settings(PARAMS_FILE, {"max_depth_m": sun3d.max_depth_m})
    out = tmp_path / "sun3d_out"
    summary = run_dataset(sun3d.root, out, settings, config, backbone, pattern="vio", anchor_count=200, progress=False)
    assert summary.frames == len(sun3d) and summary.pattern == "vio"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["frames"]) == len(sun3d)
    for k, f in enumerate(sun3d.frames()):
        depth = np.load(out / "depth" / f"{f.frame_id}.npy")
        assert depth.dtype == np.float32 and depth.shape == f.rgb.shape[:2]
        png = cv2.imread(str(out / "depth" / f"{f.frame_id}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and np.all(png > 0)
        assert np.abs(png.astype(np.float64) / 1000.0 - depth).max() <= 0.001
        pts, colours = read_ply(out / "points" / f"{f.frame_id}.ply")
        d = settings.point_decimation
        np.testing.assert_allclose(pts, f.intrinsics.unproject(depth)[::d, ::d].reshape(-1, 3), atol=1e-5)
        np.testing.assert_array_equal(colours, f.rgb[::d, ::d].reshape(-1, 3))
        assert (out / "panels" / f"{f.frame_id}.png").is_file()
        draw = draw_anchors(f, "vio", 200, seed=k, min_depth_m=config.min_depth_m)
        assert metrics["frames"][k]["absrel"] == pytest.approx(_absrel(depth, draw.truth_depth_m, config, draw.anchors))
    with pytest.raises(ValueError, match="exists already"):
        run_dataset(sun3d.root, out, settings, config, backbone, progress=False)
    # KITTI with its own LiDAR (auto): part of the scan anchors, the rest scores
    settings, config = load_settings(PARAMS_FILE)
    summary = run_dataset(kitti_lidar.root, tmp_path / "kitti", settings, config, backbone, anchor_count=1000,
                          progress=False)  # fmt: skip
    assert summary.pattern == "native" and summary.metrics["absrel"] < 0.3
    assert json.loads((tmp_path / "kitti" / "metrics.json").read_text())["frames"][0]["anchors"] == 1000
    png = cv2.imread(str(tmp_path / "kitti" / "depth" / "000008.png"), cv2.IMREAD_UNCHANGED)
    npy = np.load(tmp_path / "kitti" / "depth" / "000008.npy")
    far = np.round(npy * 1000.0) > 65535  # beyond 16-bit millimetres (rounded): no data in the PNG, kept in the .npy
    assert np.all(png[far] == 0) and np.abs(png[~far] / 1000.0 - npy[~far]).max() <= 0.001


def test_every_params_file_key_is_accepted_with_the_node_table(tmp_path):
    """The runner reads config/params.yaml through the node's table: every key known, every value the default.
    (That the file lists every parameter is test_node_params' business.)"""
    values = params_file_values(PARAMS_FILE)
    specs = {s.name: s for s in all_param_specs()}
    assert values and set(values) <= set(specs), sorted(set(values) - set(specs))
    assert all(values[k] == specs[k].default for k in values)
    settings, config = load_settings(PARAMS_FILE)
    assert config.filter.enabled and settings.point_decimation == specs["point_decimation"].default
    wild = tmp_path / "wild.yaml"
    wild.write_text("/**:\n  ros__parameters:\n    filter:\n      enabled: false\n    point_decimation: 2\n")
    settings, config = load_settings(wild)
    assert not config.filter.enabled and settings.point_decimation == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale_field_node:\n  ros__parameters:\n    no_such_key: 1\n    point_decimation: 0\n")
    with pytest.raises(ValueError, match="no_such_key") as info:
        load_settings(bad)
    assert "point_decimation" in str(info.value)
    other = tmp_path / "other.yaml"
    other.write_text("some_other_node:\n  ros__parameters:\n    a: 1\n")
    with pytest.raises(ValueError, match="no section for scale_field_node"):
        load_settings(other)


def test_parameter_parsing_needs_no_ros():
    """`scale-field run` must work where rclpy is missing: reading the params file imports no ROS module."""
    code = (
        "import sys; from scale_field_ros.run_offline import load_settings; "
        f"load_settings({str(PARAMS_FILE)!r}); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rcl_interfaces', 'sensor_msgs')); "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PARAMS_FILE.parent.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_outputs_into_folders_that_do_not_exist_yet(tmp_path):
    # the README's `--out out/nyu` on a fresh checkout: the parents are made, as eval's --json does
    from conftest import dataset_dir

    bag = tmp_path / "new" / "bags" / "sun3d.mcap"
    assert cli_main(["make-bag", "--data", str(dataset_dir("sun3d_seq")), "--out", str(bag), "--anchors", "vio"]) == 0
    assert bag.is_file()
    out = tmp_path / "new" / "runs" / "sun3d"
    assert cli_main(["run", "--data", str(dataset_dir("sun3d_seq")), "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file()
