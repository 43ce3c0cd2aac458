"""The local correction's parts on real FastDepth output: the neighbour outlier test, the splat and push-pull."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from field_backbone import infer

from scale_field_ros.bases import relative_inverse_depth
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.residual_grid import neighbour_consistent, push_pull, splat_bilinear


def _log_ratios(dataset: str, n: int):
    """Frame 0, g, its uniform anchors, their log ratio log((1 / depth) / g) less its median, that median, and
    log g at the anchors."""
    frame, out = infer(dataset, 0)
    g, _, _ = relative_inverse_depth(out)
    a = draw_anchors(frame, "uniform", n, seed=0).anchors
    rows, cols = np.round(a.v).astype(int), np.round(a.u).astype(int)
    log_ratio = np.log((1.0 / a.depth_m) / g[rows, cols]).astype(np.float64)
    offset = float(np.median(log_ratio))
    return frame, g, a, log_ratio - offset, offset, np.log(g[rows, cols]).astype(np.float64)


@pytest.mark.parametrize("dataset", ["nyu", "sun3d_seq", "kitti_semidense"])
def test_neighbour_test_flags_gross_outliers_and_keeps_the_rest(dataset):
    _, _, a, log_ratio, _, log_g = _log_ratios(dataset, 400)
    rng = np.random.default_rng(1)
    wrong = rng.random(len(log_ratio)) < 0.1
    jump = rng.choice([-1.0, 1.0], len(log_ratio)) * rng.uniform(0.7, 1.5, len(log_ratio))
    keep = neighbour_consistent(a.u, a.v, log_ratio + wrong * jump, 0.45, 6, log_g)
    assert wrong.sum() > 20
    assert (~keep[wrong]).mean() >= 0.9
    assert keep[~wrong].mean() >= 0.95


def test_neighbour_test_keeps_everything_with_too_few_anchors():
    keep = neighbour_consistent(np.arange(5.0), np.arange(5.0), np.array([0.0, 0.0, 5.0, 0.0, 0.0]), 0.45)
    assert keep.all()


def test_splat_conserves_weight_and_a_pixel_centre_sample_stays_on_its_pixel():
    x = np.array([3.0, 10.25, 0.5])
    y = np.array([2.0, 4.75, 7.5])
    weight = np.array([1.0, 2.0, 0.5])
    value = np.array([0.2, -0.1, 0.4])
    wsum, vsum = splat_bilinear(x, y, weight, value, (9, 12))
    assert wsum.dtype == np.float32 and wsum.shape == (9, 12)
    assert wsum.sum() == pytest.approx(weight.sum(), rel=1e-6)
    assert vsum.sum() == pytest.approx(float(weight @ value), rel=1e-6)
    assert wsum[2, 3] == pytest.approx(1.0) and vsum[2, 3] == pytest.approx(0.2)
    assert wsum[4:6, 10:12].sum() == pytest.approx(2.0)  # the second sample over its 4 neighbours


def test_splat_refuses_non_finite_coordinates():
    with pytest.raises(ValueError, match="finite"):
        splat_bilinear(np.array([1.0, np.nan]), np.array([1.0, 2.0]), np.ones(2), np.zeros(2), (4, 4))


def test_push_pull_recovers_the_true_correction_between_anchors():
    # the log ratio between metric and relative inverse depth on a real NYU frame is smooth but not constant:
    # interpolated from 300 anchors, it is closer to the truth at every other valid pixel than no correction
    frame, g, a, log_ratio, offset, _ = _log_ratios("nyu", 300)
    h, w = 120, 160
    fh, fw = g.shape
    x = (a.u + 0.5) * (w / fw) - 0.5
    y = (a.v + 0.5) * (h / fh) - 0.5
    corr, density = push_pull(x, y, log_ratio, np.ones(len(log_ratio)), (h, w), 0.3, 0.02)
    assert corr.shape == (h, w) and np.isfinite(corr).all()
    assert density.sum() == pytest.approx(len(log_ratio), rel=1e-5)
    valid = np.isfinite(frame.depth_m) & (frame.depth_m > 0)
    truth = np.log((1.0 / np.where(valid, frame.depth_m, 1.0)) / g) - offset
    up = cv2.resize(corr, (fw, fh), interpolation=cv2.INTER_LINEAR)
    err_corrected = np.mean(np.abs(truth - up)[valid])
    err_none = np.mean(np.abs(truth)[valid])
    assert err_corrected < 0.6 * err_none


@pytest.mark.parametrize("axis", [0, 1])
def test_push_pull_puts_the_coarse_levels_where_pyrdown_took_them(axis):
    # +1 and -1 anchors 80 px apart: the fill crosses zero half-way between them, up to the pyramid's uneven
    # borders. Upsampling a coarse level by resize (pixel i at fine 2i + 0.5) instead of pyrDown's 2i shifted it
    # by half a pixel per level: 14 px along x, 8 along y.
    h, w = 120, 160
    along = np.array([40.0, 120.0]) if axis == 1 else np.array([20.0, 100.0])
    across = np.array([60.0, 60.0]) if axis == 1 else np.array([80.0, 80.0])
    x, y = (along, across) if axis == 1 else (across, along)
    est, _ = push_pull(x, y, np.array([1.0, -1.0]), np.ones(2), (h, w), 0.3, 0.02)
    line = est[60] if axis == 1 else est[:, 80]
    i = int(np.flatnonzero((line[:-1] > 0) & (line[1:] <= 0))[0])
    crossing = i + line[i] / (line[i] - line[i + 1])
    assert abs(crossing - along.mean()) < 1.5


def test_edge_misfit_fits_the_residuals_growth_with_the_gradient():
    from scale_field_ros.residual_grid import edge_misfit

    edge = np.linspace(0.0, 0.04, 200)
    weight = np.ones_like(edge)
    v0, k = edge_misfit(0.001 + 2.5 * edge, edge, weight)
    assert v0 == pytest.approx(0.001) and k == pytest.approx(2.5)
    # residuals that shrink with the gradient, or anchors all on one gradient: no edge part, the plain mean
    assert edge_misfit(0.1 - edge, edge, weight) == (pytest.approx(np.mean(0.1 - edge)), 0.0)
    assert edge_misfit(np.full(5, 0.02), np.full(5, 0.3), np.ones(5)) == (pytest.approx(0.02), 0.0)
    v0, k = edge_misfit(3.0 * edge, edge + 0.01, weight)  # the line would cut below 0: through the origin
    assert v0 == 0.0 and k > 0


@pytest.mark.parametrize("dataset", ["nyu", "sun3d_seq"])
def test_the_edge_term_ranks_the_errors_better(dataset, monkeypatch):
    # FastDepth's errors are many times larger at its depth edges than on flat ground, and the local correction
    # does not mend them: a std grown with the gradient puts them first (sparsification error, AUSE)
    import scale_field_ros.residual_grid as residual_grid
    from scale_field_ros.metrics import evaluation_mask, std_calibration
    from scale_field_ros.pipeline import Pipeline, PipelineConfig

    frame, out = infer(dataset, 0)
    pipe = Pipeline(None, PipelineConfig(max_depth_m=10.0))
    ause = np.zeros(2)
    for seed in range(3):
        draw = draw_anchors(frame, "uniform", 1000, seed=seed)
        mask = evaluation_mask(draw.truth_depth_m, 0.1, 10.0, draw.anchors)
        with monkeypatch.context() as patch:
            with_edges = pipe.process_output(out, draw.anchors)
            patch.setattr(residual_grid, "edge_misfit", lambda sq, e, w: (float(np.average(sq, weights=w)), 0.0))
            without = pipe.process_output(out, draw.anchors)
        np.testing.assert_array_equal(with_edges.depth_m, without.depth_m)  # the std only
        for i, r in enumerate((with_edges, without)):
            ause[i] += std_calibration(r.depth_m, r.std_m, draw.truth_depth_m, mask, (0.1, 10.0)).ause
    print(dataset, "AUSE with / without the edge term", ause / 3)
    assert ause[0] < 0.9 * ause[1]
