"""Bad dataset folders and arguments give clear errors, never tracebacks or silently wrong data: malformed
manifests, non-uint16 depth, bad depth_scale, declared LiDAR record layouts, the outdoor cap from a free-text
kind, strict metrics.json when no pixel is evaluable, and make-bag's --start-s range and exact stamps.
Each case is a real dataset from shared/data copied into tmp_path and corrupted there."""

from __future__ import annotations

import json
import shutil
import warnings

import cv2
import numpy as np
import pytest
from conftest import dataset_dir

from scale_field_ros import bagio
from scale_field_ros.cli import main as cli_main
from scale_field_ros.datasets import OUTDOOR_MAX_DEPTH_M, load_dataset
from scale_field_ros.make_bag import make_bag


def copy_dataset(name, tmp_path, edit=None, frames=None):
    """shared/data/<name> copied into tmp_path; `edit(manifest)` changes the manifest, `frames` keeps the first n."""
    root = tmp_path / name
    shutil.copytree(dataset_dir(name), root)
    meta = json.loads((root / "manifest.json").read_text())
    if frames is not None:
        meta["frames"] = meta["frames"][:frames]
    if edit is not None:
        meta = edit(meta) or meta
    (root / "manifest.json").write_text(json.dumps(meta))
    return root


def _frame0(**changes):
    def edit(meta):
        for k, v in changes.items():
            if v is None:
                meta["frames"][0].pop(k)
            else:
                meta["frames"][0][k] = v

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_frame0(rgb=None), r"frames\[0\] has no rgb"),
        (_frame0(K=None), r"frames\[0\] has no K"),
        (_frame0(id=None), r"frames\[0\] has no id"),
        (_frame0(K=[500, 500, 320]), r"frames\[0\]: K must be 4 finite numbers"),
        (_frame0(K="518 519 325 253"), r"frames\[0\]: K must be 4 finite numbers"),
        (_frame0(rgb=["rgb/00000.jpg"]), r"frames\[0\]: rgb must be a file path"),
        (lambda m: [1, 2], "must be a JSON object"),
        (lambda m: {**m, "frames": {"a": 1}}, "frames must be a list"),
        (lambda m: {**m, "frames": [m["frames"][0], 7]}, r"frames\[1\] must be an object"),
        (lambda m: {**m, "frames": [m["frames"][0], m["frames"][0]]}, "ids must be unique; repeated: 00000"),
    ],
)
def test_malformed_manifest_is_a_value_error_naming_the_frame_and_key(tmp_path, edit, match):
    root = copy_dataset("nyu", tmp_path, edit)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset(root)
    assert str(root / "manifest.json") in str(err.value)


def test_manifest_errors_reach_the_command_line_as_one_line(tmp_path, capsys):
    root = copy_dataset("nyu", tmp_path, _frame0(K=[500, 500, 320]))
    assert cli_main(["make-bag", "--data", str(root), "--out", str(tmp_path / "b.mcap")]) == 2
    err = capsys.readouterr().err
    assert "make-bag: error:" in err and "K must be 4 finite numbers" in err and "Traceback" not in err
    (root / "manifest.json").write_text('{"frames": [')
    with pytest.raises(ValueError, match=r"manifest.json is not valid JSON"):
        load_dataset(root)
    assert not (tmp_path / "b.mcap").exists()


def test_depth_must_be_uint16_png(tmp_path):
    root = copy_dataset("nyu", tmp_path, frames=1)
    png = root / "depth" / "00000.png"
    depth = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16
    cv2.imwrite(str(png), (depth // 40).astype(np.uint8))  # 8-bit: read as 0-0.255 m by the old code
    ds = load_dataset(root)
    with pytest.raises(ValueError, match=r"00000.png: depth must be a single-channel uint16 PNG.*got uint8"):
        ds.frame(0)


@pytest.mark.parametrize("scale", [0, -1000.0, float("nan"), float("inf")])
def test_depth_scale_must_be_finite_and_positive(tmp_path, scale):
    root = copy_dataset("nyu", tmp_path, _frame0(depth_scale=scale))
    with pytest.raises(ValueError, match=r"frames\[0\]: depth_scale must be a finite number > 0"):
        load_dataset(root)


def test_lidar_records_follow_lidar_format(tmp_path, kitti_lidar):
    points = kitti_lidar.frame(0).lidar_points
    points = points[: len(points) // 4 * 4]  # 12 B records in a multiple of 16 B: 4-float reading cannot tell
    meta = kitti_lidar.frames_meta[0]
    # x,y,z only (12 B records): read as declared, the same points
    root = copy_dataset("kitti_lidar", tmp_path, _frame0(lidar_format="float32 x,y,z (Velodyne frame)"))
    points.astype(np.float32).tofile(root / meta["lidar"])
    np.testing.assert_array_equal(load_dataset(root).frame(0).lidar_points, points)
    # a layout the reader does not know is refused, not read as 4 floats
    for fmt in ("float64 x,y,z", "float32 intensity,x,y,z", "uint8 x,y,z"):
        (root / "manifest.json").write_text(json.dumps({"frames": [{**meta, "lidar_format": fmt}]}))
        with pytest.raises(ValueError, match=r"frames\[0\]: lidar_format .* is not supported"):
            load_dataset(root)


def test_truncated_lidar_file_is_refused(tmp_path):
    root = copy_dataset("kitti_lidar", tmp_path)
    path = root / load_dataset(root).frames_meta[0]["lidar"]
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 13)  # still a whole number of 4-float groups once cut to float32: the old check missed it
    with pytest.raises(ValueError, match=r"000008.bin: size .* not a multiple of the 16 B record"):
        load_dataset(root).frame(0)


def test_outdoor_cap_ignores_the_case_of_kind(tmp_path):
    root = copy_dataset("kitti_semidense", tmp_path, lambda m: {**m, "kind": "Outdoor Driving"})
    assert load_dataset(root).max_depth_m == OUTDOOR_MAX_DEPTH_M


def test_run_data_metrics_json_is_strict_when_no_pixel_is_evaluable(tmp_path, fastdepth_path):
    from scale_field_ros.backbones import load_backbone
    from scale_field_ros.run_offline import load_settings, run_dataset

    root = copy_dataset("nyu", tmp_path, frames=1)
    settings, config = load_settings()
    backbone = load_backbone(model_path=fastdepth_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # every valid pixel an anchor: nothing left to score
        summary = run_dataset(root, tmp_path / "out", settings, config, backbone, "uniform", 10**6, progress=False)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]

    def no_constants(c):
        raise AssertionError(f"metrics.json holds {c}")

    doc = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=no_constants)
    assert doc["frames"][0]["n_pixels"] == 0 and doc["frames"][0]["absrel"] is None
    assert doc["mean"]["absrel"] is None and doc["mean"]["n_pixels"] == 0
    assert "AbsRel n/a" in summary.text()


def test_make_bag_start_s_range_and_exact_stamps(tmp_path, capsys):
    root = copy_dataset("nyu", tmp_path, frames=1)
    for bad in ("-5", "3e9", "nan", "abc"):
        assert cli_main(["make-bag", "--data", str(root), "--out", str(tmp_path / "x.mcap"), f"--start-s={bad}"]) == 2
        err = capsys.readouterr().err
        assert "start-s must be a number of seconds in [0, 2**31)" in err and bad in err, err
    assert not (tmp_path / "x.mcap").exists()
    # the last stamp, not only the first, must fit the int32 seconds
    with pytest.raises(ValueError, match="last stamp passes 2"):
        make_bag(root, tmp_path / "y.mcap", start_s=2**31 - 0.01, repeat=2, anchors="lidar")
    # exact ns: 1700000000.25 * 1e9 in float64 is 1700000000249999872
    out = tmp_path / "z.mcap"
    assert cli_main(["make-bag", "--data", str(root), "--out", str(out), "--start-s=1700000000.25"]) == 0
    assert next(bagio.read_messages(out, ["/camera/image"])).stamp_ns == 1_700_000_000_250_000_000
    make_bag(root, out, start_s=1700000000.25, overwrite=True)
    assert next(bagio.read_messages(out, ["/camera/image"])).stamp_ns == 1_700_000_000_250_000_000


def test_native_bag_refuses_frames_with_their_own_extrinsics(tmp_path):
    # one /tf_static transform serves the whole bag: a second frame with other extrinsics would be misplaced
    def second_frame_moved(meta):
        moved = dict(meta["frames"][0], id="moved")
        T = np.array(moved["T_cam_lidar"], np.float64).reshape(4, 4)
        T[0, 3] += 0.5
        moved["T_cam_lidar"] = T.tolist()
        meta["frames"].append(moved)

    root = copy_dataset("kitti_lidar", tmp_path, edit=second_frame_moved)
    with pytest.raises(ValueError, match="differ in T_cam_lidar"):
        make_bag(root, tmp_path / "b.mcap", anchors="native")


def test_eval_refuses_two_folders_of_one_dataset_name(tmp_path):
    root = copy_dataset("kitti_lidar", tmp_path)
    out = tmp_path / "o.json"
    args = ["eval", "--data", str(root), str(dataset_dir("kitti_lidar")), "--pattern", "native", "--json", str(out)]
    assert cli_main(args) == 2 and not out.exists()
