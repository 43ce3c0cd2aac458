"""Baselines on real ground truth turned into an exactly affine relative inverse depth."""

from __future__ import annotations

import numpy as np

from scale_field_ros.backbone import BackboneOutput, DepthKind
from scale_field_ros.baselines import BASELINES
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors


def _affine_relative(frame, scale=3.0, shift=0.2):
    """Relative inverse depth that is an exact affine map of the truth (holes filled with the median)."""
    gt = frame.depth_m
    inv = np.where(gt > 0, 1.0 / np.maximum(gt, 1e-3), np.median(1.0 / gt[gt > 0]))
    return BackboneOutput((scale * inv + shift).astype(np.float32), DepthKind.INVERSE_DEPTH, False)


def test_inverse_alignment_and_scaffold_are_exact_on_affine_input(nyu):
    frame = nyu.frame(0)
    out = _affine_relative(frame)
    draw = draw_anchors(frame, "uniform", 100, seed=3)
    mask = evaluation_mask(frame.depth_m, 1e-3, 10.0, draw.anchors)
    for name in ("ga_inv", "scaffold"):
        m = compute_metrics(BASELINES[name](out, draw.anchors, 0.1, 10.0), frame.depth_m, mask)
        assert m.absrel < 1e-3, name
    # median scaling cannot undo a shift; depth-domain alignment cannot undo an inverse-domain shift
    assert compute_metrics(BASELINES["median"](out, draw.anchors, 0.1, 10.0), frame.depth_m, mask).absrel > 0.01
    assert compute_metrics(BASELINES["ga_depth"](out, draw.anchors, 0.1, 10.0), frame.depth_m, mask).absrel > 0.005


def test_median_scaling_is_exact_on_scaled_input_even_with_outliers(nyu):
    # without a shift every anchor gives the same ratio: the median is the scale (AbsRel measured 1e-7, float32),
    # and with 10 % of the anchors gross outliers the median of the rest still is
    frame = nyu.frame(0)
    out = _affine_relative(frame, shift=0.0)
    for outliers in (0.0, 0.1):
        draw = draw_anchors(frame, "uniform", 100, seed=3, outliers=outliers)
        truth = frame.depth_m[np.round(draw.anchors.v).astype(int), np.round(draw.anchors.u).astype(int)]
        assert np.sum(np.abs(draw.anchors.depth_m / truth - 1) > 0.01) == round(100 * outliers)
        mask = evaluation_mask(frame.depth_m, 1e-3, 10.0, draw.anchors)
        m = compute_metrics(BASELINES["median"](out, draw.anchors, 0.1, 10.0), frame.depth_m, mask)
        assert m.absrel < 1e-3, outliers


def test_scaffold_reproduces_anchors_and_beats_global_alignment_on_real_backbone(kitti):
    from field_backbone import infer

    frame, out = infer("kitti_semidense", 0)
    draw = draw_anchors(frame, "uniform", 500, seed=0)
    mask = evaluation_mask(frame.depth_m, 1e-3, 80.0, draw.anchors)
    sc = BASELINES["scaffold"](out, draw.anchors, 0.1, 80.0)
    col, row = np.round(draw.anchors.u).astype(int), np.round(draw.anchors.v).astype(int)
    np.testing.assert_allclose(sc[row, col], draw.anchors.depth_m, rtol=1e-3)
    ga = BASELINES["ga_inv"](out, draw.anchors, 0.1, 80.0)
    assert compute_metrics(sc, frame.depth_m, mask).absrel < compute_metrics(ga, frame.depth_m, mask).absrel


def test_no_anchors_gives_finite_depth_in_range(sun3d):
    from field_backbone import infer

    from scale_field_ros.anchors import Anchors

    _, out = infer("sun3d_seq", 0)
    for name, fn in BASELINES.items():
        d = fn(out, Anchors.empty(), 0.1, 10.0)
        assert d.shape == out.shape and np.all(np.isfinite(d)), name
        assert d.min() >= 0.1 and d.max() <= 10.0, name
    # without anchors every baseline keeps the backbone's own scale: the same depth map (median scaling gave
    # depth around 1 m, the scale of the normalised map)
    reference = BASELINES["ga_inv"](out, Anchors.empty(), 0.1, 10.0)
    for name, fn in BASELINES.items():
        np.testing.assert_allclose(fn(out, Anchors.empty(), 0.1, 10.0), reference, rtol=1e-5, err_msg=name)
