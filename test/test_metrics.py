from __future__ import annotations

import numpy as np

from scale_field_ros.anchors import Anchors
from scale_field_ros.metrics import compute_metrics, evaluation_mask


def test_perfect_and_scaled_prediction_on_real_ground_truth(nyu):
    gt = nyu.frame(0).depth_m
    mask = evaluation_mask(gt, 1e-3, 10.0)
    assert mask.sum() > 1000 and not mask[gt == 0].any()
    perfect = compute_metrics(gt, gt, mask)
    assert perfect.absrel == 0 and perfect.rmse == 0 and perfect.delta1 == 1 and perfect.silog == 0
    scaled = compute_metrics(gt * 1.1, gt, mask)
    assert np.isclose(scaled.absrel, 0.1, atol=1e-6)
    assert np.isclose(scaled.rmse_log, np.log(1.1), atol=1e-5)
    assert scaled.silog < 1e-3  # scale-invariant
    assert scaled.delta1 == 1.0
    far = compute_metrics(gt * 1.3, gt, mask)
    assert far.delta1 == 0.0 and far.delta2 == 1.0
    assert np.isclose(scaled.irmse, np.sqrt(np.mean((1000 / (1.1 * gt[mask]) - 1000 / gt[mask]) ** 2)), rtol=1e-5)
    # a 10 % overestimate: (0.1 gt)^2 / gt = 0.01 gt per pixel, |log10 1.1| everywhere, 0.1 gt off
    mean_gt = float(np.mean(gt[mask].astype(np.float64)))
    assert np.isclose(scaled.sqrel, 0.01 * mean_gt, rtol=1e-5)
    assert np.isclose(scaled.log10, np.log10(1.1), rtol=1e-5)
    assert np.isclose(scaled.mae, 0.1 * mean_gt, rtol=1e-5)
    # ratio 1.9: above 1.25^2 = 1.5625, below 1.25^3 = 1.953 (each delta counts ratios strictly below its bound)
    wide = compute_metrics(gt * 1.9, gt, mask)
    assert wide.delta1 == 0.0 and wide.delta2 == 0.0 and wide.delta3 == 1.0


def test_mask_caps_range_and_excludes_anchor_pixels(kitti):
    gt = kitti.frame(0).depth_m
    valid = np.flatnonzero(gt.ravel() > 0)[:50]
    rows, cols = np.divmod(valid, gt.shape[1])
    anchors = Anchors.from_arrays(cols, rows, gt[rows, cols])
    mask = evaluation_mask(gt, 1e-3, 80.0, anchors)
    assert not mask[rows, cols].any()
    assert not mask[gt > 80.0].any()
    assert mask.sum() == ((gt > 1e-3) & (gt <= 80.0)).sum() - len(set(valid.tolist()) & set(np.flatnonzero(gt <= 80)))


def test_empty_mask_is_nan_not_an_error(nyu):
    gt = nyu.frame(0).depth_m
    m = compute_metrics(gt, gt, np.zeros(gt.shape, bool))
    assert m.n_pixels == 0 and np.isnan(m.absrel)


def test_predictions_are_clipped_to_the_evaluation_caps(nyu):
    # ZoeDepth's evaluation: a prediction beyond the cap (10 m indoors) is scored as the cap, +inf as the far cap
    gt = nyu.frame(0).depth_m
    mask = evaluation_mask(gt, 1e-3, 10.0)
    pred = gt * 1.1
    pred[100:140] = 50.0
    pred[140:160] = np.inf
    capped = compute_metrics(pred, gt, mask, (1e-3, 10.0))
    expected = np.clip(pred, 1e-3, 10.0).astype(np.float64)
    assert np.isclose(capped.absrel, np.mean(np.abs(expected[mask] - gt[mask]) / gt[mask]), rtol=1e-6)
    beyond = gt * 1.1
    beyond[100:140] = 50.0
    assert compute_metrics(beyond, gt, mask, (1e-3, 10.0)).absrel < compute_metrics(beyond, gt, mask).absrel
    assert compute_metrics(gt * 1.1, gt, mask, (1e-3, 10.0)).absrel == compute_metrics(gt * 1.1, gt, mask).absrel
