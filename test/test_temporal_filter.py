"""Weight filter: prediction, coasting, resets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scale_field_ros.solver import FitLevel, FitResult, Prior
from scale_field_ros.temporal_filter import (
    CorrectionFilter,
    FilterConfig,
    ScaleMemory,
    WeightFilter,
    combine,
    weight_nis,
)

K = 6


def _fit(weights, var=1e-4) -> FitResult:
    w = np.asarray(weights, np.float64)
    return FitResult(
        weights=w,
        covariance=np.eye(len(w)) * var,
        residuals=np.zeros(10),
        inliers=np.ones(10, bool),
        level=FitLevel.FULL,
        n_anchors=10,
        rms_residual=0.0,
        fallback_reason="",
    )


INITIAL = Prior(np.r_[1.0, np.zeros(K - 1)], np.eye(K))


def test_first_frame_uses_initial_then_random_walk():
    f = WeightFilter(FilterConfig(process_noise=0.1, enabled=True))
    assert f.predict(0.0, INITIAL) is INITIAL
    w = np.linspace(0.5, 1.5, K)
    f.update(_fit(w), 0.0)
    p = f.predict(0.5, INITIAL)
    np.testing.assert_allclose(p.mean, w)
    np.testing.assert_allclose(p.covariance, np.eye(K) * (1e-4 + 0.1**2 * 0.5))
    # predicting does not move the state; a second predict from the same state agrees
    np.testing.assert_allclose(f.predict(0.5, INITIAL).covariance, p.covariance)


def test_coasting_grows_uncertainty_and_reports_the_limit():
    f = WeightFilter(FilterConfig(process_noise=0.1, max_coast_s=1.0, enabled=True))
    f.update(_fit(np.ones(K)), 0.0)
    variances = []
    for k in range(1, 16):
        f.coast(k * 0.1)
        variances.append(f.state.covariance[0, 0])
    assert f.coasting
    assert np.all(np.diff(variances) > 0)
    assert f.coast_duration_s == pytest.approx(1.5)
    assert f.coast_exceeded
    np.testing.assert_allclose(f.state.mean, np.ones(K))  # coasting keeps the estimate
    f.update(_fit(np.ones(K)), 1.6)
    assert not f.coasting and f.coast_duration_s == 0.0 and not f.coast_exceeded


def test_coasting_before_any_evidence():
    f = WeightFilter(FilterConfig(max_coast_s=0.5, enabled=True))
    f.coast(3.0)
    f.coast(4.0)
    assert f.state is None and f.coasting and f.coast_exceeded
    assert f.predict(4.1, INITIAL) is INITIAL


def test_stamp_going_backwards_resets():
    f = WeightFilter(FilterConfig(backwards_tolerance_s=0.5, enabled=True))
    f.update(_fit(np.ones(K)), 100.0)
    assert f.predict(99.8, INITIAL) is not INITIAL  # small reordering: dt = 0
    assert f.predict(10.0, INITIAL) is INITIAL  # bag looped
    assert f.state is None and f.n_resets == 1 and "backwards" in f.last_reset_reason


def test_innovation_decides_reset():
    f = WeightFilter(FilterConfig(process_noise=0.01, reset_nis_threshold=9.0, enabled=True))
    rng = np.random.default_rng(0)
    w = np.linspace(0.5, 1.5, K)
    f.update(_fit(w, var=1e-3), 0.0)
    pred = f.predict(0.033, INITIAL)
    meas_cov = np.eye(K) * 1e-3
    same_scene = w + rng.normal(0, np.sqrt(1e-3), K)
    cut = w * 1.8
    nis_same = weight_nis(pred, same_scene, meas_cov)
    nis_cut = weight_nis(pred, cut, meas_cov)
    assert not f.should_reset(nis_same, K)
    assert f.should_reset(nis_cut, K)
    assert f.should_reset(float("nan"), K)
    f.reset()
    assert not f.should_reset(nis_cut, K)  # nothing to disagree with


def test_broken_fit_does_not_poison_state():
    f = WeightFilter(FilterConfig(enabled=True))
    f.update(_fit(np.ones(K)), 0.0)
    f.update(_fit(np.full(K, np.nan)), 0.1)
    assert np.all(np.isfinite(f.state.mean)) and f.coasting


def test_config_validation():
    with pytest.raises(ValueError):
        FilterConfig(process_noise=-1.0)
    with pytest.raises(ValueError):
        FilterConfig(max_coast_s=0.0)


def test_remap_carries_weights_by_name():
    f = WeightFilter(FilterConfig(process_noise=0.1, enabled=True))
    w = np.arange(1.0, K + 1)
    cov = np.diag(np.full(K, 1e-4))
    cov[0, 1] = cov[1, 0] = 5e-5
    f.predict(0.0, INITIAL)  # the state is born from INITIAL: its spread scales the walk
    f.update(dataclasses.replace(_fit(w), covariance=cov), 0.0)
    wide = Prior(np.full(K + 2, 7.0), np.eye(K + 2) * 4.0)
    old_index = np.array([0, 1, -1, 2, 3, 4, -1, 5])  # two new weights, the rest keep their order
    f.remap(old_index, wide)
    np.testing.assert_allclose(f.state.mean, [1, 2, 7, 3, 4, 5, 7, 6])
    np.testing.assert_allclose(f.state.covariance[:2, :2], cov[:2, :2])
    assert f.state.covariance[2, 2] == 4.0 and f.state.covariance[2, 0] == 0.0
    # the random walk keeps the old weights' scale and takes the new ones' from the wider prior
    p = f.predict(1.0, wide)
    assert p.covariance[0, 0] == pytest.approx(1e-4 + 0.1**2 * 1.0)
    assert p.covariance[2, 2] == pytest.approx(4.0 + 0.1**2 * 4.0)


def test_combine_is_the_product_of_gaussians():
    a = Prior(np.array([1.0, 0.0]), np.diag([1.0, 4.0]))
    b = Prior(np.array([3.0, 2.0]), np.diag([1.0, 4.0]))
    c = combine(a, b)
    np.testing.assert_allclose(c.mean, [2.0, 1.0])
    np.testing.assert_allclose(c.covariance, np.diag([0.5, 2.0]))
    loose = Prior(np.zeros(2), np.eye(2) * 1e12)
    np.testing.assert_allclose(combine(a, loose).mean, a.mean, atol=1e-9)


def test_correction_filter_averages_noise_and_widens_while_coasting():
    rng = np.random.default_rng(1)
    truth = np.linspace(-0.2, 0.2, 12 * 16, dtype=np.float32).reshape(12, 16)
    f = CorrectionFilter(FilterConfig(local_process_noise=0.01, enabled=True))
    var = np.full(truth.shape, 0.05**2, np.float32)
    for k in range(30):
        out = f.step(truth.shape, k / 30, truth + rng.normal(0, 0.05, truth.shape).astype(np.float32), var, var * 0.1)
    err = np.abs(out.log_ratio - truth)
    assert err.mean() < 0.4 * 0.05 * np.sqrt(2 / np.pi)  # well below one frame's mean absolute noise
    assert np.all(out.variance() < 0.5 * var)
    before = out.variance().copy()
    coasting = f.step(truth.shape, 2.0)
    np.testing.assert_array_equal(coasting.log_ratio, out.log_ratio)
    assert np.all(coasting.variance() > before)
    # another image size: the pixels no longer correspond, whether the frame measures or coasts
    assert f.step((9, 16), 2.05) is None
    assert f.step((6, 8), 2.1, np.zeros((6, 8), np.float32), np.ones((6, 8), np.float32)).log_ratio.shape == (6, 8)
    f.reset()
    assert f.step((6, 8), 3.0) is None


def test_local_process_noise_validation():
    with pytest.raises(ValueError):
        FilterConfig(local_process_noise=float("nan"))


def test_a_cut_or_a_lasting_smaller_disagreement_resets():
    f = WeightFilter(FilterConfig(reset_nis_threshold=25.0, enabled=True))
    assert f.innovation_reset(1000.0, K) == ""  # no state: nothing to disagree with
    f.update(_fit(np.ones(K)), 0.0)
    assert "scene changed" in f.innovation_reset(30.0 * K, K)  # one frame far off: a cut
    f.reset("scene changed")
    f.update(_fit(np.ones(K)), 0.1)
    for _ in range(5):
        assert f.innovation_reset(2.0 * K, K) == ""  # consistent enough, however long
    assert f.innovation_reset(9.0 * K, K) == "" and f.innovation_reset(9.0 * K, K) == ""
    assert "3 frames" in f.innovation_reset(9.0 * K, K)  # three frames of 9 per dof add up past 25
    f.reset("scene changed")
    f.update(_fit(np.ones(K)), 1.0)
    assert f.innovation_reset(9.0 * K, K) == ""  # the history went with the state


def _frame_ratios(seed: int, n: int = 100) -> np.ndarray:
    """(1 / depth) / FastDepth's raw relative inverse depth at `n` uniform anchors of NYU frame 0 (2 % noise)."""
    from field_backbone import infer

    from scale_field_ros.bases import relative_inverse_depth
    from scale_field_ros.patterns import draw_anchors

    frame, out = infer("nyu", 0)
    g, med, _ = relative_inverse_depth(out)
    a = draw_anchors(frame, "uniform", n, seed=seed, noise=0.02).anchors
    g_at = g[np.round(a.v).astype(int), np.round(a.u).astype(int)]
    return 1.0 / (a.depth_m.astype(np.float64) * g_at * med)


def test_scale_memory_pools_the_latest_frames_and_widens_while_coasting():
    from scale_field_ros.tier_selection import absrel_scale

    memory = ScaleMemory(walk_log_std=0.06, noise_rel=0.02, config=FilterConfig(enabled=True), frames=3)
    assert memory.scale(0.0) is None
    draws = [_frame_ratios(seed) for seed in range(4)]
    for k, r in enumerate(draws):
        memory.add(k * 0.1, r)
    now = memory.scale(0.3)
    assert now.frames == 3 and now.raw_scale == pytest.approx(absrel_scale(np.concatenate(draws[1:])))
    one = ScaleMemory(0.06, 0.02, FilterConfig(enabled=True), frames=1)
    one.add(0.3, draws[3])
    # three frames of fresh anchors steady the scale but claim no more than one frame's certainty
    assert now.log_std == pytest.approx(one.scale(0.3).log_std, rel=0.2)
    later = memory.scale(1.3)  # a second without anchors: the walk adds 0.06^2 per second to the variance
    assert later.raw_scale == now.raw_scale
    assert later.log_std == pytest.approx(np.sqrt(now.log_std**2 + 0.06**2), rel=1e-9)


def test_scale_memory_restarts_on_a_scale_jump_and_forgets_an_older_timeline():
    memory = ScaleMemory(0.06, 0.02, FilterConfig(enabled=True), frames=5)
    for k in range(3):
        memory.add(k * 0.1, _frame_ratios(k))
    steady = memory.scale(0.2)
    memory.add(0.3, 1.5 * _frame_ratios(3))  # another scene: the scale jumps by half
    jumped = memory.scale(0.3)
    assert jumped.frames == 1 and jumped.raw_scale == pytest.approx(1.5 * steady.raw_scale, rel=0.05)
    memory.add(0.4, 1.5 * _frame_ratios(4))
    assert memory.scale(0.4).frames == 2  # the new scene pools again
    assert memory.scale(0.4 - 2.0) is None  # the bag looped: the newer frames belong to another timeline
    memory.add(5.0, np.array([np.nan, -1.0, 0.0]))  # nothing usable: no frame
    assert len(memory) == 0
