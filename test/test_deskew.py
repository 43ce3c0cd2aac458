"""Per-point deskew of a LiDAR scan with odometry, on the real KITTI Velodyne frame re-taken from a moving car
(`driving_scan`): the deskewed anchors are the true ones, the whole-scan compensation is not, and the fit shows it.
Also the per-point time fields of the common drivers, and what happens when odometry does not cover a scan."""

from __future__ import annotations

import numpy as np
import pytest
from driving_scan import IMAGE_AFTER_SCAN_S, SCAN_S, T_world_body, odometry, skewed_scan

from scale_field_ros import msg_codec as mc
from scale_field_ros.anchor_buffer import AnchorSet, anchors_for_image
from scale_field_ros.anchors import Anchors, anchors_from_points
from scale_field_ros.backbones import load_backbone
from scale_field_ros.datasets import load_dataset, shared_root
from scale_field_ros.deskew import KNOT_STEP_S, knot_times, transform_at_times
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.pipeline import Pipeline, PipelineConfig
from scale_field_ros.poses import PoseBuffer, invert_transform

DATA = shared_root() / "data" / "kitti_lidar"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}")
STAMP = 50.0  # the scan's stamp: its start
RANGE = (0.1, 80.0)


@pytest.fixture(scope="module")
def frame():
    return load_dataset(DATA).frame(0)


@pytest.fixture(scope="module")
def scan(frame):
    return skewed_scan(frame.lidar_points)


@pytest.fixture(scope="module")
def poses():
    buf = PoseBuffer()
    for t, T in zip(*odometry(STAMP), strict=True):
        buf.insert(float(t), T)
    return buf


def image_anchors(frame, points, offsets, poses, **kwargs):
    times = None if offsets is None else np.asarray(offsets, np.float32)
    return anchors_for_image(
        [AnchorSet(STAMP, points, "velodyne", times)],
        STAMP + IMAGE_AFTER_SCAN_S,
        frame.intrinsics,
        frame.T_cam_lidar,
        *RANGE,
        poses=poses,
        T_body_cam=invert_transform(frame.T_cam_lidar),  # the body frame is the LiDAR's
        **kwargs,
    )


def depth_error_at_true_pixels(frame, anchors: Anchors) -> tuple[float, float]:
    """(fraction of anchors on a pixel the true scan also covers, median relative depth error there)."""
    truth = anchors_from_points(frame.lidar_points, frame.T_cam_lidar, frame.intrinsics, *RANGE)
    depth = truth.depth_image(frame.intrinsics.width, frame.intrinsics.height)
    d = depth[np.round(anchors.v).astype(int), np.round(anchors.u).astype(int)]
    hit = d > 0
    return float(hit.mean()), float(np.median(np.abs(anchors.depth_m[hit] / d[hit] - 1.0)))


def test_blend_between_knots_matches_the_exact_motion(scan):
    points, offsets = scan
    knots = knot_times(float(offsets.min()), float(offsets.max()))
    assert np.all(np.diff(knots) <= KNOT_STEP_S + 1e-12) and knots[0] == offsets.min() and knots[-1] == offsets.max()
    # each point into the world frame: blended from the knots' poses against its own pose, exactly
    blended = transform_at_times(points, offsets, knots, T_world_body(knots))
    T = T_world_body(offsets)
    exact = np.einsum("nij,nj->ni", T[:, :3, :3], points.astype(np.float64)) + T[:, :3, 3]
    assert np.max(np.linalg.norm(blended - exact, axis=1)) < 1e-4  # 0.1 mm over a 25 ms slice of a turning car
    # times outside the knots take the end knots' transforms
    outside = transform_at_times(points[:2], np.array([-1.0, 1.0]), knots, T_world_body(knots))
    ends = T_world_body(knots[[0, -1]])
    np.testing.assert_allclose(outside, np.einsum("nij,nj->ni", ends[:, :3, :3], points[:2]) + ends[:, :3, 3])


def test_deskewed_scan_gives_the_true_anchors(frame, scan, poses):
    points, offsets = scan
    deskewed = image_anchors(frame, points, offsets, poses)
    assert deskewed.problems == ()
    hit, err = depth_error_at_true_pixels(frame, deskewed.anchors)
    assert hit > 0.99 and err < 1e-5
    # one pose for the whole scan (its stamp, the scan's start) misplaces the points the camera sees by the
    # car's motion over half a scan: half a metre
    whole = image_anchors(frame, points, None, poses)
    hit_whole, err_whole = depth_error_at_true_pixels(frame, whole.anchors)
    assert hit_whole < 0.5 and err_whole > 0.01
    off = image_anchors(frame, points, offsets, poses, deskew=False)
    assert depth_error_at_true_pixels(frame, off.anchors) == (hit_whole, err_whole)


def test_scan_in_two_sets_gives_the_anchors_of_one(frame, scan, poses):
    """Several sets for one image (here one deskewed scan sent as two halves) are joined in the camera and
    z-buffered together: the same anchors as the scan in one set."""
    points, offsets = scan
    whole = image_anchors(frame, points, offsets, poses).anchors
    half = len(points) // 2
    sets = [
        AnchorSet(STAMP, p, "velodyne", t)
        for p, t in ((points[:half], offsets[:half]), (points[half:], offsets[half:]))
    ]
    kwargs = dict(poses=poses, T_body_cam=invert_transform(frame.T_cam_lidar))
    image_stamp = STAMP + IMAGE_AFTER_SCAN_S
    split = anchors_for_image(sets, image_stamp, frame.intrinsics, frame.T_cam_lidar, *RANGE, **kwargs)
    assert split.n_sets == 2 and split.problems == ()
    # each half is blended between its own pose knots: the same points to the blend's 0.1 mm (0.05 px here)
    assert len(split.anchors) == len(whole)
    np.testing.assert_allclose(split.anchors.depth_m, whole.depth_m, rtol=1e-6)
    np.testing.assert_allclose(np.c_[split.anchors.u, split.anchors.v], np.c_[whole.u, whole.v], atol=0.05)


def test_deskew_shows_in_the_metric_depth(frame, scan, poses):
    # a tenth of the scan as anchors (KITTI-like), scored on the true held-out points as `native` eval does
    points, offsets = scan
    rng = np.random.default_rng(0)
    pick = rng.random(len(points)) < 0.1
    truth_held = anchors_from_points(frame.lidar_points[~pick], frame.T_cam_lidar, frame.intrinsics, *RANGE)
    truth = truth_held.depth_image(frame.intrinsics.width, frame.intrinsics.height)
    backbone = load_backbone()
    out = backbone.infer(frame.rgb)
    pipe = Pipeline(backbone, PipelineConfig(max_depth_m=RANGE[1]))

    def absrel(anchors: Anchors) -> float:
        result = pipe.process_output(out, anchors)
        return compute_metrics(result.depth_m, truth, evaluation_mask(truth, *RANGE, anchors)).absrel

    true_anchors = anchors_from_points(frame.lidar_points[pick], frame.T_cam_lidar, frame.intrinsics, *RANGE)
    deskewed = absrel(image_anchors(frame, points[pick], offsets[pick], poses).anchors)
    whole = absrel(image_anchors(frame, points[pick], None, poses).anchors)
    assert abs(deskewed - absrel(true_anchors)) < 1e-3
    assert whole > deskewed + 0.01, f"whole-scan {whole:.4f}, deskewed {deskewed:.4f}"


def test_odometry_not_covering_the_scan_falls_back_to_the_whole_scan(frame, scan):
    points, offsets = scan
    short = PoseBuffer(max_extrapolation_s=1e-3)
    for t, T in zip(*odometry(STAMP), strict=True):
        if t <= STAMP + IMAGE_AFTER_SCAN_S + 1e-6:  # odometry lags: it ends at the image, before the scan's end
            short.insert(float(t), T)
    late = offsets + 0.5 * SCAN_S  # the same scan stamped earlier: its points run past the odometry
    got = image_anchors(frame, points, late, short)
    assert [cause for cause, _ in got.problems] == ["deskew_no_odom"]
    assert "moved from its stamp as a whole" in got.problems[0][1]
    whole = image_anchors(frame, points, None, short)
    np.testing.assert_array_equal(got.anchors.depth_m, whole.anchors.depth_m)


def test_point_time_fields_of_the_common_drivers(scan):
    points, offsets = scan
    stamp = 1.7e9 + 0.25  # an epoch stamp: absolute times need float64 to keep their microseconds
    cases = {
        "ouster t (uint32 ns)": {"t": np.round(offsets * 1e9).astype(np.uint32)},
        "velodyne time (float32 s)": {"time": offsets.astype(np.float32)},
        "hesai timestamp (float64 s)": {"timestamp": stamp + offsets},
        "livox timestamp (float64 ns)": {"timestamp": np.round((stamp + offsets) * 1e9)},
    }
    for what, columns in cases.items():
        c = mc.cloud_fields(points, columns)
        d = mc.pointcloud2_decode(c.fields, c.point_step, c.row_step, c.width, c.height, c.data, stamp_s=stamp)
        assert d.time_field_note == "", what
        np.testing.assert_allclose(d.point_time_s, offsets, atol=1e-6, err_msg=what)
        np.testing.assert_array_equal(d.points, points)


def test_bad_point_times(scan):
    points, offsets = scan[0][:100], scan[1][:100]

    def decode(columns, stamp_s=5.0):
        c = mc.cloud_fields(points, columns)
        return mc.pointcloud2_decode(c.fields, c.point_step, c.row_step, c.width, c.height, c.data, stamp_s=stamp_s)

    # a time field that is not one scan's offsets (absolute seconds in `time`): ignored, with the reason
    d = decode({"time": (1.7e9 + offsets).astype(np.float64)})
    assert d.point_time_s is None and "per-point times ignored" in d.time_field_note and len(d.points) == 100
    d = decode({"timestamp": 5.0 + offsets}, stamp_s=None)
    assert d.point_time_s is None and "no usable stamp" in d.time_field_note
    # a NaN time drops its point, as a NaN coordinate does
    times = offsets.astype(np.float32).copy()
    times[[3, 7]] = np.nan
    d = decode({"time": times})
    assert d.n_nonfinite == 2 and len(d.points) == len(d.point_time_s) == 98
    np.testing.assert_array_equal(d.point_time_s, np.delete(times, [3, 7]))
    with pytest.raises(mc.MessageError):
        mc.cloud_fields(points, {"t": offsets[:10]})
