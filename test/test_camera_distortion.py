"""Lens distortion (camera.py): projection against OpenCV, the undistorted rays, fold-back, and a raw (distorted)
image made from a real frame, through the anchors, the pipeline and the point cloud."""

import cv2
import numpy as np
import pytest
from lens_frames import LENSES, raw_frame, with_lens

from scale_field_ros.anchors import anchors_from_points
from scale_field_ros.camera import Intrinsics, distort
from scale_field_ros.depth_points import decimated_points
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.pipeline import Pipeline, PipelineConfig


@pytest.fixture(scope="module")
def fastdepth(fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    return load_backbone(model_path=fastdepth_path, runtime="onnxruntime", threads=1)


def _points(frame) -> np.ndarray:
    valid = frame.depth_m > 0
    return frame.intrinsics.unproject(frame.depth_m)[valid].astype(np.float64)


@pytest.mark.parametrize(("model", "d"), LENSES)
def test_projection_matches_opencv_on_real_points(sun3d, model, d):
    frame = sun3d.frame(0)
    cam = with_lens(frame.intrinsics, model, d)
    points = _points(frame)
    u, v, z = cam.project(points)
    zero = np.zeros(3)
    if model == "equidistant":
        ref, _ = cv2.fisheye.projectPoints(points.reshape(-1, 1, 3), zero, zero, cam.K, np.array(d))
    else:
        ref, _ = cv2.projectPoints(points, zero, zero, cam.K, np.array(d))
    ok = np.isfinite(u)
    assert ok.mean() > 0.999
    np.testing.assert_allclose(u[ok], ref[ok, 0, 0], atol=1e-6)
    np.testing.assert_allclose(v[ok], ref[ok, 0, 1], atol=1e-6)
    np.testing.assert_array_equal(z, points[:, 2])


@pytest.mark.parametrize(("model", "d"), LENSES)
def test_rays_project_back_to_their_pixels(sun3d, model, d):
    frame = sun3d.frame(0)
    cam = with_lens(frame.intrinsics, model, d)
    for step in (1, 4):
        x, y = cam.rays(frame.depth_m.shape[0] // step, frame.depth_m.shape[1] // step, step)
        ok = np.isfinite(x)
        assert ok.mean() > 0.99
        rows, cols = np.nonzero(ok)
        u, v, _ = cam.project(np.stack([x[ok], y[ok], np.ones(ok.sum())], axis=1).astype(np.float64))
        np.testing.assert_allclose(u, cols * step, atol=2e-3)  # float32 rays: ~1e-4 px
        np.testing.assert_allclose(v, rows * step, atol=2e-3)
    assert cam.rays(10, 10) is cam.rays(10, 10)  # cached per calibration


def test_points_beyond_the_lens_fold_back_are_not_projected():
    # k1 = -0.5: the distorted radius r (1 - 0.5 r^2) peaks at r = 0.816 and falls after it, so a ray at r = 1.2
    # would land at r_d = 0.34, well inside the picture, on pixels that belong to rays near the centre
    cam = Intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480, "plumb_bob", (-0.5, 0.0, 0.0, 0.0, 0.0))
    points = np.array([[1.2, 0.0, 1.0], [0.3, 0.0, 1.0], [0.0, 0.0, -1.0]])
    u, v, _ = cam.project(points)
    assert np.isnan(u[0]) and np.isfinite(u[1]) and np.isnan(u[2])
    anchors = anchors_from_points(points * 3.0, np.eye(4), cam, 0.1, 10.0)
    assert len(anchors) == 1 and anchors.depth_m[0] == pytest.approx(3.0)
    folded_x, _ = distort(np.array([1.2]), np.array([0.0]), cam.distortion_model, cam.d)
    assert 0 <= cam.fx * folded_x[0] + cam.cx < cam.width  # where the bare polynomial would have put it


def test_intrinsics_refuse_bad_distortion():
    with pytest.raises(ValueError, match="not supported"):
        Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480, "kannala_brandt", (0.1, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480, "plumb_bob", (float("nan"),) * 5)
    short = Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480, "plumb_bob", (0.1,))
    assert short.d == (0.1, 0.0, 0.0, 0.0, 0.0)
    zero = Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480, "plumb_bob", (0.0,) * 5)
    assert not zero.distorted and zero == Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480, "plumb_bob")
    assert short.scaled_to(320, 240).d == short.d  # distortion acts on normalised coordinates


def test_raw_image_with_its_calibration_gets_anchors_depth_and_points_right(sun3d, fastdepth):
    frame = sun3d.frame(0)
    model, d = LENSES[0]
    cam = with_lens(frame.intrinsics, model, d)
    rgb, truth, map_u, map_v = raw_frame(frame, cam)
    pick = np.random.default_rng(0).choice(np.flatnonzero(frame.depth_m > 0), 400, replace=False)
    points = _points(frame)[np.searchsorted(np.flatnonzero(frame.depth_m > 0), pick)]

    # anchors land where the raw image shows their surface; ignoring the lens puts edge anchors on other pixels
    lens_anchors = anchors_from_points(points, np.eye(4), cam, 0.1, 10.0)
    pinhole_anchors = anchors_from_points(points, np.eye(4), frame.intrinsics, 0.1, 10.0)

    def misfit(a):
        at = truth[np.round(a.v).astype(int), np.round(a.u).astype(int)]
        ok = at > 0
        return np.abs(at[ok] / a.depth_m[ok] - 1.0)

    assert np.percentile(misfit(lens_anchors), 75) < 0.02
    assert np.percentile(misfit(pinhole_anchors), 75) > 2 * np.percentile(misfit(lens_anchors), 75)

    # the pipeline on the raw image with lens anchors is as good as on the rectified one
    pipe = Pipeline(fastdepth, PipelineConfig(max_depth_m=sun3d.max_depth_m))

    def absrel(image, anchors, gt):
        depth = pipe.process(image, anchors).depth_m
        return compute_metrics(depth, gt, evaluation_mask(gt, 0.1, sun3d.max_depth_m, anchors)).absrel

    rectified = absrel(frame.rgb, pinhole_anchors, frame.depth_m)
    raw = absrel(rgb, lens_anchors, truth)
    ignored = absrel(rgb, pinhole_anchors, truth)
    assert raw < rectified * 1.15 + 0.005
    assert raw < ignored

    # the cloud of the raw depth lies along the lens's rays: each point is the rectified frame's point of the
    # pixel its ray hits (to the nearest-pixel resampling of the truth: half a pixel of angle)
    cloud, colours = decimated_points(truth, rgb, cam, 1)
    valid = (truth > 0).ravel()
    src = frame.intrinsics.unproject(frame.depth_m)
    nearest = src[np.round(map_v).astype(int).clip(0, 479), np.round(map_u).astype(int).clip(0, 639)]
    err = np.linalg.norm(cloud[valid] - nearest.reshape(-1, 3)[valid], axis=1)
    assert np.median(err) < 0.005 and np.percentile(err, 99) < 0.03
    np.testing.assert_array_equal(colours, rgb.reshape(-1, 3))
