"""The robust ridge solver on anchors drawn from real ground truth."""

from __future__ import annotations

import numpy as np

from scale_field_ros.solver import Design, FitLevel, Prior, SolverConfig, solve


def _gt_design(frame, n=300, seed=0, scale=0.7, shift=0.05):
    """Relative inverse depth = (true inverse depth - shift) / scale, so the truth is (scale, shift)."""
    gt = frame.depth_m
    rng = np.random.default_rng(seed)
    idx = rng.choice(np.flatnonzero(gt.ravel() > 0), n, replace=False)
    inv = 1.0 / gt.ravel()[idx].astype(np.float64)
    rel = (inv - shift) / scale
    design = Design(np.stack([rel, np.ones(n)], 1), inv.copy(), 0.02 * inv, scale_index=0, shift_index=1)
    return design, np.array([scale, shift])


LOOSE = Prior.diagonal([1.0, 0.0], [100.0, 100.0])


def test_recovers_scale_and_shift_and_shrinks_covariance(nyu):
    design, truth = _gt_design(nyu.frame(0))
    fit = solve(design, LOOSE)
    assert fit.level is FitLevel.FULL and fit.fallback_reason == ""
    np.testing.assert_allclose(fit.weights, truth, rtol=1e-4, atol=1e-5)
    assert np.all(np.diag(fit.covariance) < np.diag(LOOSE.covariance) * 1e-3)
    assert fit.inliers.all() and fit.n_anchors == len(design)


def test_ten_percent_gross_outliers_do_not_move_the_result(nyu):
    design, truth = _gt_design(nyu.frame(1))
    rng = np.random.default_rng(1)
    bad = rng.choice(len(design), len(design) // 10, replace=False)
    target = design.target.copy()
    target[bad] *= rng.choice([0.3, 3.0], len(bad))
    fit = solve(Design(design.matrix, target, design.sigma, 0, 1), LOOSE)
    np.testing.assert_allclose(fit.weights, truth, rtol=1e-3, atol=1e-4)
    assert not fit.inliers[bad].any()
    plain = np.linalg.lstsq(design.matrix, target, rcond=None)[0]
    assert np.abs(plain - truth).max() > 10 * np.abs(fit.weights - truth).max()
    # the Huber weights alone, without the hard rejection: every anchor stays in, the outliers' pull is bounded.
    # Error against weighted least squares on the same rows: 0.007 to 0.067 of it over NYU frames 0-2 and
    # outlier draws 1-3 (0.037 on this one); with unit weights instead of Huber's it is the same solve (1.0)
    huber = solve(Design(design.matrix, target, design.sigma, 0, 1), LOOSE, SolverConfig(outlier_sigmas=np.inf))
    assert huber.inliers.all()
    weighted = np.linalg.lstsq(design.matrix / design.sigma[:, None], target / design.sigma, rcond=None)[0]
    assert np.abs(huber.weights - truth).max() < 0.1 * np.abs(weighted - truth).max()


def test_prior_pulls_unconstrained_weights(sun3d):
    design, _ = _gt_design(sun3d.frame(0), n=50)
    extra = np.zeros((len(design), 1))  # a column the data cannot see
    d3 = Design(np.hstack([design.matrix, extra]), design.target, design.sigma, 0, 1)
    prior = Prior.diagonal([1.0, 0.0, 0.42], [100.0, 100.0, 0.1])
    fit = solve(d3, prior)
    assert np.isclose(fit.weights[2], 0.42) and np.isclose(fit.covariance[2, 2], 0.01)


def test_ladder_for_few_and_degenerate_anchors(nyu):
    design, _ = _gt_design(nyu.frame(0), n=20)
    cfg = SolverConfig()
    empty = solve(Design(design.matrix[:0], design.target[:0], design.sigma[:0], 0, 1), LOOSE, cfg)
    assert empty.level is FitLevel.PRIOR and empty.fallback_reason and np.array_equal(empty.weights, LOOSE.mean)
    few = solve(Design(design.matrix[:5], design.target[:5], design.sigma[:5], 0, 1), LOOSE, cfg)
    assert few.level is FitLevel.SCALE_SHIFT and "full field" in few.fallback_reason
    one = solve(Design(design.matrix[:1], design.target[:1], design.sigma[:1], 0, 1), LOOSE, cfg)
    assert one.level is FitLevel.SCALE
    assert np.isclose(one.weights[0] * design.matrix[0, 0], design.target[0], rtol=1e-3)
    same = np.repeat(design.matrix[:1], 30, axis=0)  # all anchors on one pixel
    pile = solve(Design(same, np.repeat(design.target[:1], 30), np.repeat(design.sigma[:1], 30), 0, 1), LOOSE, cfg)
    assert pile.level is FitLevel.SCALE and np.all(np.isfinite(pile.weights))
    # many anchors on a few pixels, the first ones all on one: counted over all of them, not only the first
    rows = np.r_[np.zeros(40, int), np.arange(1, 4).repeat(20)]  # 4 distinct pixels, 100 anchors
    few_px = solve(Design(design.matrix[rows], design.target[rows], design.sigma[rows], 0, 1), LOOSE, cfg)
    assert few_px.level is FitLevel.SCALE_SHIFT and "4 distinct" in few_px.fallback_reason
    rows = np.r_[np.zeros(40, int), np.arange(1, 20)]  # 20 distinct pixels after 40 on one
    spread = solve(Design(design.matrix[rows], design.target[rows], design.sigma[rows], 0, 1), LOOSE, cfg)
    assert spread.level is FitLevel.FULL


def test_nan_rows_are_ignored_and_nothing_is_nan(kitti):
    design, truth = _gt_design(kitti.frame(0), n=200, scale=2.0, shift=0.001)
    m = design.matrix.copy()
    t = design.target.copy()
    m[:10, 0] = np.nan
    t[10:20] = np.inf
    fit = solve(Design(m, t, design.sigma, 0, 1), LOOSE)
    np.testing.assert_allclose(fit.weights, truth, rtol=1e-3, atol=1e-4)
    assert np.all(np.isfinite(fit.residuals)) and not fit.inliers[:20].any()


def test_a_prior_that_is_not_positive_definite_gives_the_prior_with_a_reason(nyu):
    # a corrupt state (a negative variance) fails the compiled Cholesky: no exception and no NaN, the prior
    # comes back flagged as a numerical failure
    design, _ = _gt_design(nyu.frame(0), n=100)
    bad = Prior(np.array([1.0, 0.0]), np.array([[-1.0, 0.0], [0.0, 1.0]]))
    fit = solve(design, bad)
    assert fit.level is FitLevel.PRIOR and "numerical failure" in fit.fallback_reason
    assert np.all(np.isfinite(fit.weights)) and np.all(np.isfinite(fit.residuals))


def test_columns_held_at_the_prior_stay_there_uncoupled(sun3d):
    # the scale-and-shift rung of a 3-weight model: the third weight keeps its prior mean and variance and no
    # covariance with the fitted two (the compiled conditioning on fixed columns)
    design, truth = _gt_design(sun3d.frame(0), n=200)
    extra = design.matrix[:, :1] * np.linspace(-1.0, 1.0, len(design))[:, None]
    d3 = Design(np.hstack([design.matrix[:, :1], extra, design.matrix[:, 1:]]), design.target, design.sigma, 0, 2)
    prior = Prior.diagonal([1.0, 0.0, 0.0], [100.0, 0.3, 100.0])
    fit = solve(d3, prior, level=FitLevel.SCALE_SHIFT)
    assert fit.level is FitLevel.SCALE_SHIFT
    np.testing.assert_allclose(fit.weights[[0, 2]], truth, rtol=1e-3, atol=1e-4)
    assert fit.weights[1] == 0.0 and fit.covariance[1, 1] == prior.covariance[1, 1]
    assert not fit.covariance[1, [0, 2]].any() and not fit.covariance[[0, 2], 1].any()
