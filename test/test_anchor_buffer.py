"""Anchor buffer: matching by stamp, bounds, and the bad-input causes the node warns about (real KITTI scan)."""

from __future__ import annotations

import numpy as np
import pytest

from scale_field_ros.anchor_buffer import AnchorBuffer, InsertStatus
from scale_field_ros.datasets import load_dataset, shared_root

KITTI = shared_root() / "data" / "kitti_lidar"
pytestmark = pytest.mark.skipif(not KITTI.is_dir(), reason=f"shared data not found at {KITTI}")


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    return load_dataset(KITTI).frame(0).lidar_points


def test_query_by_stamp(scan):
    buf = AnchorBuffer(max_age_s=0.06)
    for k in range(10):  # 10 Hz LiDAR
        assert buf.insert(k * 0.1, scan[k::10]) is InsertStatus.OK
    # a 30 Hz image at 0.433 s sees only the 0.4 s scan; one at 0.45 s sees 0.4 and 0.5, nearest first
    found = buf.query(0.433)
    assert [s.stamp_s for s in found] == [pytest.approx(0.4)]
    np.testing.assert_array_equal(found[0].points, scan[4::10])
    assert [round(s.stamp_s, 3) for s in buf.query(0.46)] == [0.5, 0.4]
    assert buf.query(5.0) == []
    assert buf.query(0.433, max_age_s=0.2)[0].stamp_s == pytest.approx(0.4)


def test_bad_sets_are_refused(scan):
    buf = AnchorBuffer(max_age_s=0.1, max_future_s=1.0)
    assert buf.insert(0.0, np.zeros((0, 3))) is InsertStatus.EMPTY
    assert buf.insert(0.0, np.full((100, 3), np.nan)) is InsertStatus.NO_FINITE_POINTS
    assert buf.insert(float("nan"), scan) is InsertStatus.INVALID_STAMP
    assert buf.insert(100.0, scan, reference_stamp_s=1.0) is InsertStatus.FAR_FUTURE
    assert len(buf) == 0
    # NaN rows are dropped, the rest kept
    mixed = scan[:50].copy()
    mixed[::2] = np.nan
    assert buf.insert(1.0, mixed, reference_stamp_s=1.0) is InsertStatus.OK
    stored = buf.query(1.0)[0].points
    assert len(stored) == 25 and np.all(np.isfinite(stored))


def test_stamps_going_backwards_clear_the_buffer(scan):
    buf = AnchorBuffer(max_age_s=0.1, backwards_tolerance_s=0.5)
    for k in range(5):
        buf.insert(10.0 + k * 0.1, scan)
    assert buf.insert(10.25, scan) is InsertStatus.OK  # small reordering is fine
    assert len(buf) == 6
    assert buf.insert(0.0, scan) is InsertStatus.STAMP_BACKWARDS  # bag looped
    assert len(buf) == 1 and buf.query(10.2) == []
    # the images saw the loop too: a buffer that restarted since it last looked keeps the new timeline's set
    restarted = buf.generation
    assert not buf.clear_unless_restarted(restarted - 1) and len(buf) == 1
    assert buf.clear_unless_restarted(restarted) and len(buf) == 0


def test_buffer_is_bounded(scan):
    buf = AnchorBuffer(max_age_s=0.1, retention_s=1.0, max_sets=8)
    for k in range(200):
        buf.insert(k * 0.05, scan[:100])
    assert len(buf) <= 8
    buf2 = AnchorBuffer(max_age_s=0.1, retention_s=0.5, max_sets=100)
    for k in range(200):
        buf2.insert(k * 0.05, scan[:100])
    assert len(buf2) <= 11
    assert buf2.query(0.0) == []  # long gone


def test_sets_of_different_frames_each_get_their_own_transform(scan):
    # one topic carrying clouds of two frames: the LiDAR's (through T_cam_lidar) and one already in the camera
    from scale_field_ros.anchor_buffer import AnchorSet, anchors_for_image
    from scale_field_ros.camera import transform_points

    frame = load_dataset(shared_root() / "data" / "kitti_lidar").frame(0)
    half = len(frame.lidar_points) // 2
    lidar_part = frame.lidar_points[:half].astype(np.float32)
    camera_part = transform_points(frame.T_cam_lidar, frame.lidar_points[half:]).astype(np.float32)
    sets = [AnchorSet(1.0, lidar_part, "velodyne"), AnchorSet(1.0, camera_part, "camera")]
    frames = {"velodyne": frame.T_cam_lidar, "camera": np.eye(4)}
    found = anchors_for_image(sets, 1.0, frame.intrinsics, frames.__getitem__, 0.5, 80.0, motion_compensation=False)
    whole = anchors_for_image(
        [AnchorSet(1.0, frame.lidar_points.astype(np.float32), "velodyne")],
        1.0,
        frame.intrinsics,
        frame.T_cam_lidar,
        0.5,
        80.0,
        motion_compensation=False,
    )
    assert len(found.anchors) == len(whole.anchors) > 10000
    # the camera-frame half went through float32 once more: pixels agree to float32 rounding
    np.testing.assert_allclose(found.anchors.depth_m, whole.anchors.depth_m, rtol=1e-5)
    np.testing.assert_allclose(found.anchors.u, whole.anchors.u, atol=1e-3)
    np.testing.assert_allclose(found.anchors.v, whole.anchors.v, atol=1e-3)
