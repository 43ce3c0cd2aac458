"""The scale-only estimate of the tier selection (`absrel_scale`) on real FastDepth output."""

from __future__ import annotations

import numpy as np
from field_backbone import infer

from scale_field_ros.bases import relative_inverse_depth
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.tier_selection import absrel_scale


def _ratios(dataset: str, index: int):
    """(1 / depth) / g over the frame's valid ground truth, with the frame and g."""
    frame, out = infer(dataset, index)
    g, _, _ = relative_inverse_depth(out)
    valid = np.isfinite(frame.depth_m) & (frame.depth_m > 0)
    return (1.0 / frame.depth_m[valid]) / g[valid], frame, g


def _absrel(ratio: np.ndarray, s: float) -> float:
    return float(np.mean(np.abs(ratio / s - 1.0)))  # depth 1 / (s g) against the true 1 / (r g)


def test_equal_weights_give_the_plain_median_and_bad_values_are_ignored():
    r = np.array([0.9, 1.0, 1.0, 1.1])  # weights within their bounds, nearly equal: about the median
    assert abs(absrel_scale(r) - 1.0) < 0.01
    assert absrel_scale(np.array([2.0, 2.0, np.nan, -1.0, np.inf])) == 2.0
    assert np.isnan(absrel_scale(np.array([np.nan, 0.0])))


def test_it_minimises_absrel_where_the_relative_map_is_far_from_metric():
    # FastDepth (trained indoors) on a KITTI frame: the ratios spread widely, and AbsRel's optimum is well away
    # from the median ratio; absrel_scale of all pixels finds it (a scan of scales does no better)
    ratio, _, _ = _ratios("kitti_semidense", 0)
    s = absrel_scale(ratio)
    scan = np.geomspace(np.quantile(ratio, 0.05), np.quantile(ratio, 0.95), 400)
    best_scan = min(_absrel(ratio, c) for c in scan)
    assert _absrel(ratio, s) <= best_scan * 1.01
    assert _absrel(ratio, s) < 0.95 * _absrel(ratio, float(np.median(ratio)))


def test_anchors_on_two_surfaces_lean_to_the_nearer_depth():
    # five VIO corners on the KITTI frame: three on far structure, two near; the median ratio sends the whole
    # image far (AbsRel above 1), the AbsRel-optimal scale of the same anchors comes much closer
    ratio, frame, g = _ratios("kitti_semidense", 1)
    draw = draw_anchors(frame, "vio", 10, seed=1)
    a = draw.anchors
    r = (1.0 / a.depth_m) / g[np.round(a.v).astype(int), np.round(a.u).astype(int)]
    mask = evaluation_mask(draw.truth_depth_m, 0.1, 80.0, a)

    def scored(s: float) -> float:
        return compute_metrics(1.0 / (s * g), draw.truth_depth_m, mask).absrel

    near, median = scored(absrel_scale(r)), scored(float(np.median(r)))
    assert median > 1.0 and near < 0.6 and near < 0.5 * median


def test_held_out_scale_only_is_absrel_scale_of_the_other_folds():
    # the cross-validation scores scale only from one sort of all anchors (`_held_out_scale_only`); each fold's
    # errors must be those of `absrel_scale` fitted on the other folds, ties, bad values and odd counts included
    from scale_field_ros.tier_selection import _held_out_error, _held_out_scale_only

    ratio, _, _ = _ratios("kitti_semidense", 0)
    rng = np.random.default_rng(0)
    for n, n_folds in ((5000, 5), (101, 3), (12, 2)):
        r = np.round(rng.choice(ratio, n).astype(np.float64), 3)  # rounded: many equal ratios
        r[:4] = (np.nan, -1.0, np.inf, 0.0)
        fold = rng.integers(0, n_folds, n)
        expected = np.empty(n)
        for f in range(n_folds):
            test = fold == f
            expected[test] = _held_out_error(absrel_scale(r[~test]) / r[test])
        np.testing.assert_array_equal(_held_out_scale_only(fold, n_folds, r), expected)
