"""Pose buffer, SE(3) interpolation and frame changes, checked on the real SUN3D sequence poses and depth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from scale_field_ros.anchors import anchors_from_points
from scale_field_ros.datasets import load_dataset, shared_root
from scale_field_ros.poses import (
    PoseBuffer,
    interpolate_transform,
    interpolate_transforms,
    invert_transform,
    landmarks_to_camera,
    scan_to_image_transform,
)

SEQ = shared_root() / "data" / "sun3d_seq"
pytestmark = pytest.mark.skipif(not SEQ.is_dir(), reason=f"shared data not found at {SEQ}")

# a camera mounted on a body: optical frame rotated and offset from the body frame
T_BODY_CAM = np.eye(4)
T_BODY_CAM[:3, :3] = Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_matrix()
T_BODY_CAM[:3, 3] = [0.2, -0.05, 0.4]


@pytest.fixture(scope="module")
def seq():
    return load_dataset(SEQ)


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(R).as_rotvec())))


def test_interpolation_is_geodesic(seq):
    T0, T1 = seq.frame(0).T_world_cam, seq.frame(2).T_world_cam
    np.testing.assert_allclose(interpolate_transform(T0, T1, 0.0), T0, atol=2e-3)
    np.testing.assert_allclose(interpolate_transform(T0, T1, 1.0), T1, atol=2e-3)
    Tm = interpolate_transform(T0, T1, 0.25)
    total = _angle_deg(T0[:3, :3].T @ T1[:3, :3])
    assert total > 0.1  # the frames really differ
    assert _angle_deg(T0[:3, :3].T @ Tm[:3, :3]) == pytest.approx(0.25 * total, rel=1e-2)
    assert _angle_deg(Tm[:3, :3].T @ T1[:3, :3]) == pytest.approx(0.75 * total, rel=1e-2)
    np.testing.assert_allclose(Tm[:3, 3], 0.75 * T0[:3, 3] + 0.25 * T1[:3, 3], atol=1e-9)


def test_batched_interpolation_matches_scipy_slerp_up_to_half_turns():
    """The quaternion slerp against scipy's rotation algebra (R0 exp(alpha log(R0^T R1))) on large turns, turns
    just short of half a turn (where the axis is taken from the largest quaternion component) and no turn."""
    rng = np.random.default_rng(7)
    m = 300
    R0 = Rotation.random(m, random_state=1)
    turn = Rotation.random(m, random_state=2).as_rotvec()
    axis = rng.normal(size=(100, 3))
    turn[:100] = axis / np.linalg.norm(axis, axis=1, keepdims=True) * (np.pi - 1e-6)
    turn[100:150] = 0.0
    R1 = R0 * Rotation.from_rotvec(turn)
    T0, T1 = np.tile(np.eye(4), (m, 1, 1)), np.tile(np.eye(4), (m, 1, 1))
    T0[:, :3, :3], T1[:, :3, :3] = R0.as_matrix(), R1.as_matrix()
    T0[:, :3, 3], T1[:, :3, 3] = rng.normal(size=(m, 3)), rng.normal(size=(m, 3))
    alpha = rng.uniform(0.0, 1.0, m)
    out = interpolate_transforms(T0, T1, alpha)
    expected = (R0 * Rotation.from_rotvec(alpha[:, None] * (R0.inv() * R1).as_rotvec())).as_matrix()
    np.testing.assert_allclose(out[:, :3, :3], expected, atol=1e-9)
    np.testing.assert_allclose(out[:, :3, 3], (1 - alpha[:, None]) * T0[:, :3, 3] + alpha[:, None] * T1[:, :3, 3])
    np.testing.assert_allclose(out[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (m, 1)))


def test_pose_buffer_lookup(seq):
    poses = [seq.frame(i).T_world_cam for i in range(3)]  # consecutive at 30 Hz
    buf = PoseBuffer(max_extrapolation_s=0.02)
    for i, T in enumerate(poses):
        assert buf.insert(i / 30.0, T)
    np.testing.assert_allclose(buf.lookup(1 / 30.0), poses[1])
    between = buf.lookup(1.5 / 30.0)
    np.testing.assert_allclose(between, interpolate_transform(poses[1], poses[2], 0.5), atol=1e-9)
    # a small extrapolation continues the motion over the last 1/30 s (0.3 of it past the end)
    np.testing.assert_allclose(buf.lookup(2 / 30.0 + 0.01), interpolate_transform(poses[1], poses[2], 1.3), atol=1e-9)
    assert buf.covers(2 / 30.0) and not buf.covers(2 / 30.0 + 0.01)  # ... which `covers` does not count
    assert buf.lookup(2 / 30.0 + 0.1) is None
    assert buf.lookup(-0.1) is None
    # bag looped: an old stamp clears the history
    assert not buf.insert(-5.0, poses[0])
    assert len(buf) == 1 and buf.lookup(1 / 30.0) is None
    with pytest.raises(ValueError, match="finite"):  # a NaN stamp would sort nowhere and prune nothing
        buf.insert(float("nan"), poses[1])
    assert len(buf) == 1
    # the images' clock went back to -5: poses stamped after it are the old timeline's
    buf.insert(-4.9, poses[1])
    buf.drop_newer_than(-4.95)
    assert len(buf) == 1 and buf.lookup(-5.0) is not None


def test_no_pose_is_invented_across_a_gap_in_the_odometry(seq):
    # the real poses of frames 0 to 2 (30 Hz), with 4.6 s between the last two: a pose in there would be invented
    T0, T1, T2 = (seq.frame(i).T_world_cam for i in range(3))
    buf = PoseBuffer(max_extrapolation_s=0.1)
    for t, T in ((0.0, T0), (0.4, T1), (5.0, T2)):
        buf.insert(t, T)
    assert buf.lookup(2.5) is None and buf.lookup_many(np.array([0.2, 2.5])) is None
    np.testing.assert_allclose(buf.lookup(5.0), T2)  # a buffered stamp still returns its pose
    # within MAX_POSE_GAP_S: interpolated
    np.testing.assert_allclose(buf.lookup(0.2), interpolate_transform(T0, T1, 0.5), atol=1e-9)
    buf.max_extrapolation_s = 2.5  # a pose held up to 2.5 s from a sample allows gaps twice that
    assert buf.lookup(2.5) is not None


@pytest.mark.parametrize("end", ["newest", "oldest"])
def test_a_pose_past_the_buffer_continues_the_motion(seq, end):
    # a VIO pose for image k arrives after the image: with the poses of frames 0 and 1 (30 Hz) buffered, the pose
    # at frame 2's stamp was frame 1's held; continued at constant velocity it is nearer frame 2's true pose
    # (and mirrored: frames 1 and 2 buffered, frame 0's stamp)
    T = [seq.frame(i).T_world_cam for i in range(3)]
    known, wanted = ((0, 1), 2) if end == "newest" else ((1, 2), 0)
    buf = PoseBuffer(max_extrapolation_s=0.05)
    for i in known:
        buf.insert(i / 30.0, T[i])
    got = buf.lookup(wanted / 30.0)
    held = T[1]
    truth = T[wanted]
    err_t = np.linalg.norm(got[:3, 3] - truth[:3, 3])
    held_t = np.linalg.norm(held[:3, 3] - truth[:3, 3])
    err_deg, held_deg = _angle_deg(got[:3, :3].T @ truth[:3, :3]), _angle_deg(held[:3, :3].T @ truth[:3, :3])
    assert err_t < 0.5 * held_t and err_deg < 0.5 * held_deg, (err_t, held_t, err_deg, held_deg)
    np.testing.assert_allclose(got[:3, :3] @ got[:3, :3].T, np.eye(3), atol=1e-5)  # a rotation (poses: 6 digits)
    # the velocity is measured over at least the step out: a baseline shorter than it holds the nearest pose
    short = PoseBuffer(max_extrapolation_s=0.05)
    short.insert(1 / 30.0 - 0.005, T[0])
    short.insert(1 / 30.0, T[1])
    np.testing.assert_allclose(short.lookup(2 / 30.0), T[1])


def test_pose_buffer_is_bounded(seq):
    T = seq.frame(0).T_world_cam
    buf = PoseBuffer(span_s=1.0, max_samples=50)
    for k in range(500):
        buf.insert(k * 0.01, T)
    assert len(buf) <= 50


def test_world_landmarks_reproject_into_next_frame(seq):
    """Landmarks from frame 0's depth, in the world frame, seen by the camera of frame 1 through a body pose."""
    f0, f1 = seq.frame(0), seq.frame(1)
    pts_cam0 = f0.intrinsics.unproject(f0.depth_m)[::6, ::6].reshape(-1, 3).astype(np.float64)
    pts_cam0 = pts_cam0[pts_cam0[:, 2] > 0.3]
    pts_world = pts_cam0 @ f0.T_world_cam[:3, :3].T + f0.T_world_cam[:3, 3]
    # poses are stored to 6 digits, hence atol 1e-4 below
    # same body pose convention a VIO would publish: T_world_body = T_world_cam T_body_cam^-1
    T_world_body0 = f0.T_world_cam @ invert_transform(T_BODY_CAM)
    np.testing.assert_allclose(landmarks_to_camera(pts_world, T_world_body0, T_BODY_CAM), pts_cam0, atol=1e-4)
    T_world_body1 = f1.T_world_cam @ invert_transform(T_BODY_CAM)
    pts_cam1 = landmarks_to_camera(pts_world, T_world_body1, T_BODY_CAM)
    anchors = anchors_from_points(pts_cam1, np.eye(4), f1.intrinsics, 0.3, 10.0)
    gt = f1.depth_m[np.round(anchors.v).astype(int), np.round(anchors.u).astype(int)]
    ok = gt > 0
    assert ok.sum() > 1000
    rel = np.abs(anchors.depth_m[ok] - gt[ok]) / gt[ok]
    assert np.median(rel) < 0.03  # real sensor depth and poses agree to a few percent


def test_scan_motion_compensation(seq):
    """A 'LiDAR' scan taken at frame 0 lands on frame 1's depth once compensated with odometry."""
    f0, f1 = seq.frame(0), seq.frame(2)
    T_cam_lidar = np.eye(4)
    T_cam_lidar[:3, :3] = Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_matrix()
    T_cam_lidar[:3, 3] = [0.05, -0.1, 0.0]
    pts_cam0 = f0.intrinsics.unproject(f0.depth_m)[::6, ::6].reshape(-1, 3).astype(np.float64)
    pts_cam0 = pts_cam0[pts_cam0[:, 2] > 0.3]
    pts_lidar = pts_cam0 @ invert_transform(T_cam_lidar)[:3, :3].T + invert_transform(T_cam_lidar)[:3, 3]
    T_wb0 = f0.T_world_cam @ invert_transform(T_BODY_CAM)
    T_wb1 = f1.T_world_cam @ invert_transform(T_BODY_CAM)
    # same pose at scan and image: nothing but the extrinsic
    np.testing.assert_allclose(scan_to_image_transform(T_wb0, T_wb0, T_BODY_CAM, T_cam_lidar), T_cam_lidar, atol=1e-5)

    def median_rel(T):
        a = anchors_from_points(pts_lidar, T, f1.intrinsics, 0.3, 10.0)
        gt = f1.depth_m[np.round(a.v).astype(int), np.round(a.u).astype(int)]
        ok = gt > 0
        return float(np.median(np.abs(a.depth_m[ok] - gt[ok]) / gt[ok]))

    compensated = median_rel(scan_to_image_transform(T_wb0, T_wb1, T_BODY_CAM, T_cam_lidar))
    uncompensated = median_rel(T_cam_lidar)
    assert compensated < 0.03
    assert compensated < uncompensated
