"""The torch scale-field stage equals the numpy core (solver.solve, field.anchor_design/compose) on real frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from field_backbone import infer

from scale_field_ros import field_torch as ft
from scale_field_ros.bases import build_bases
from scale_field_ros.basis_set import BasisConfig
from scale_field_ros.field import PriorConfig, anchor_design, compose, loose_prior, prior_around, relative_to_fit
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.solver import Design, FitLevel, Prior, SolverConfig, solve

MIN_M, NOISE = 0.1, 0.02


def _case(dataset, index, pattern, n, seed=1, outliers=0.0, select=True):
    """Numpy reference of the pipeline's two solves and compose for one real frame (the basis family chosen
    by cross-validation on the anchors, as the pipeline does)."""
    frame, out = infer(dataset, index)
    h, w = out.shape
    draw = draw_anchors(frame, pattern, n, seed=seed, noise=0.02, outliers=outliers)
    anchors = draw.anchors.sanitized(w, h, MIN_M, frame.max_depth_m)
    bases = build_bases(out, BasisConfig(), len(anchors), anchors if select else None)
    design = anchor_design(bases, anchors, NOISE)
    ga = solve(design, loose_prior(bases, PriorConfig(), design), SolverConfig(), FitLevel.SCALE_SHIFT)
    prior = prior_around(bases, ga.weights[0], ga.weights[-1], PriorConfig())
    design = relative_to_fit(design, solve(design, prior).weights)  # the pipeline's refit: its final design
    fit = solve(design, prior)
    est = compose(bases, fit.weights, fit.covariance, MIN_M, frame.max_depth_m)
    return frame, bases, anchors, design, prior, fit, est


def _t(x, dtype=torch.float64, device="cpu"):
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)[None]


def _rel(a, b):
    a = a.detach().double().cpu().numpy()
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


CASES = [
    ("nyu", 0, "uniform", 5, 0.0),
    ("nyu", 0, "lidar", 50, 0.0),
    ("nyu", 2, "lidar", 200, 0.1),
    ("sun3d_seq", 0, "vio", 80, 0.1),
    ("sun3d_seq", 3, "uniform", 1000, 0.1),
]


@pytest.mark.parametrize(("dataset", "index", "pattern", "n", "outliers"), CASES)
def test_float64_solve_and_compose_equal_numpy(dataset, index, pattern, n, outliers):
    frame, bases, _, design, prior, fit, est = _case(dataset, index, pattern, n, outliers=outliers)
    tfit = ft.solve(ft.design_from_numpy([design]), ft.prior_from_numpy([prior]))
    assert tfit.levels() == [fit.level]
    assert _rel(tfit.weights[0], fit.weights) < 1e-4
    assert _rel(tfit.covariance[0], fit.covariance) < 1e-4
    np.testing.assert_array_equal(tfit.inliers[0, : len(design)].numpy(), fit.inliers)
    if outliers:
        assert not fit.inliers.all()  # the robust path was exercised
    te = ft.compose(
        _t(bases.maps),
        _t(bases.inv_rel),
        _t(bases.inv_rel_work),
        _t(fit.weights),
        _t(fit.covariance),
        MIN_M,
        frame.max_depth_m,
    )
    # numpy composes in float32: agreement to its precision
    np.testing.assert_allclose(te.depth_m[0].numpy(), est.depth_m, rtol=1e-5)
    np.testing.assert_allclose(te.std_m[0].numpy(), est.std_m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(te.scale_field[0].numpy(), est.scale_field, rtol=1e-5)
    assert torch.isfinite(te.depth_m).all() and torch.isfinite(te.std_m).all()


def test_cases_cover_every_kind_of_family():
    """The equivalence cases above include median scaling (tier -1), a partial family on clustered anchors
    (coverage < 1, which narrows the basis prior) and the full family."""
    tiers, coverages = set(), []
    for dataset, index, pattern, n, outliers in CASES:
        bases = _case(dataset, index, pattern, n, outliers=outliers)[1]
        tiers.add(bases.tier)
        coverages.append(bases.coverage)
    assert {-1, 3} <= tiers and len(tiers) >= 3
    assert min(coverages) < 0.9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("dataset", "index", "pattern", "n"),
    [("nyu", 0, "uniform", 200), ("sun3d_seq", 0, "vio", 80), ("kitti_semidense", 2, "uniform", 200)],
)
def test_design_and_pipeline_fit_from_maps_equal_numpy(dtype, dataset, index, pattern, n):
    """Design built in torch from the maps + fit_field (both solves) reproduce the numpy path end to end."""
    frame, bases, anchors, design, _, fit, est = _case(dataset, index, pattern, n, outliers=0.1)
    mask = torch.ones(1, len(anchors), dtype=torch.bool)
    td = ft.anchor_design(
        _t(bases.maps, dtype),
        _t(bases.inv_rel, dtype),
        _t(anchors.u, dtype),
        _t(anchors.v, dtype),
        _t(anchors.depth_m, dtype),
        _t(anchors.weight, dtype),
        mask,
        NOISE,
    )
    assert _rel(td.matrix[0], design.matrix) < (1e-6 if dtype == torch.float64 else 1e-5)
    family = {"coverage": bases.coverage, "shift_free": bases.shift_free, "scale_hint": bases.scale_hint}
    tfit = ft.fit_field(td, torch.tensor([bases.scale_inv_rel], dtype=dtype), **family)
    te = ft.compose(
        _t(bases.maps, dtype),
        _t(bases.inv_rel, dtype),
        _t(bases.inv_rel_work, dtype),
        tfit.weights,
        tfit.covariance,
        MIN_M,
        frame.max_depth_m,
    )
    if dtype == torch.float64:
        assert _rel(tfit.weights[0], fit.weights) < 1e-4
        np.testing.assert_allclose(te.depth_m[0].numpy(), est.depth_m, rtol=1e-4)
        np.testing.assert_allclose(te.std_m[0].numpy(), est.std_m, rtol=1e-4, atol=1e-6)
    else:
        # float32 maps and design, the normal equations in float64 (as numpy): with them solved in float32 the
        # near-collinear bases let the weights drift, KITTI's depth by up to 18%
        np.testing.assert_allclose(te.depth_m[0].numpy(), est.depth_m, rtol=1e-3)
        np.testing.assert_allclose(te.std_m[0].numpy(), est.std_m, rtol=1e-2, atol=1e-4)
    # the misfit floor of the published variance: the pipeline's, from the same design and fit
    from scale_field_ros.pipeline import _misfit_log_var

    assert float(ft.fit_misfit(td, tfit)[0]) == pytest.approx(_misfit_log_var(design, fit), rel=1e-2)


def test_batch_of_frames_equals_frame_by_frame():
    # the family by anchor count: one K for the whole batch
    cases = [_case("sun3d_seq", i, "uniform", 100, seed=i, select=False) for i in range(3)]
    ks = {c[3].matrix.shape[1] for c in cases}
    assert len(ks) == 1
    # drop some rows of frame 1 so the batch is ragged (padding rows must not count)
    d1 = cases[1][3]
    cases[1] = (*cases[1][:3], Design(d1.matrix[:60], d1.target[:60], d1.sigma[:60], 0, d1.shift_index), *cases[1][4:])
    tfit = ft.solve(ft.design_from_numpy([c[3] for c in cases]), ft.prior_from_numpy([c[4] for c in cases]))
    for i, c in enumerate(cases):
        ref = solve(c[3], c[4])
        assert _rel(tfit.weights[i], ref.weights) < 1e-4
        assert not tfit.inliers[i, len(c[3]) :].any()


def test_few_degenerate_and_bad_anchors_follow_the_ladder(nyu):
    _, bases, _, design, prior, _, _ = _case("nyu", 0, "uniform", 30)
    k = design.matrix.shape[1]
    variants = {
        "none": Design(design.matrix[:0], design.target[:0], design.sigma[:0], 0, k - 1),
        "two": Design(design.matrix[:2], design.target[:2], design.sigma[:2], 0, k - 1),
        "five": Design(design.matrix[:5], design.target[:5], design.sigma[:5], 0, k - 1),
        "same_pixel": Design(np.repeat(design.matrix[:1], 12, 0), design.target[:12], design.sigma[:12], 0, k - 1),
    }
    bad = design.matrix.copy()
    bad[::3, 1] = np.nan
    sig = design.sigma.copy()
    sig[1::5] = 0.0
    variants["nan_and_zero_sigma"] = Design(bad, design.target, sig, 0, k - 1)
    names = list(variants)
    tfit = ft.solve(ft.design_from_numpy(list(variants.values())), ft.prior_from_numpy([prior] * len(names)))
    assert torch.isfinite(tfit.weights).all() and torch.isfinite(tfit.covariance).all()
    for i, name in enumerate(names):
        ref = solve(variants[name], prior)
        assert tfit.levels()[i] == ref.level, name
        assert _rel(tfit.weights[i], ref.weights) < 1e-4, name
        assert _rel(tfit.covariance[i], ref.covariance) < 1e-4, name
    assert tfit.levels()[0] is FitLevel.PRIOR and tfit.levels()[-1] is FitLevel.FULL


def test_plain_ridge_is_the_regularised_normal_equations():
    _, _, _, design, prior, _, _ = _case("sun3d_seq", 1, "lidar", 100)
    tfit = ft.solve(ft.design_from_numpy([design]), ft.prior_from_numpy([prior]), robust=False)
    wt = 1.0 / design.sigma**2
    p0 = np.linalg.inv(prior.covariance)
    prec = p0 + design.matrix.T @ (design.matrix * wt[:, None])
    w = np.linalg.solve(prec, p0 @ prior.mean + design.matrix.T @ (wt * design.target))
    assert _rel(tfit.weights[0], w) < 1e-6
    assert _rel(tfit.covariance[0], np.linalg.inv(prec)) < 1e-6


def test_prior_level_keeps_the_prior_exactly():
    _, _, _, design, prior, _, _ = _case("nyu", 1, "uniform", 50)
    tfit = ft.solve(ft.design_from_numpy([design]), ft.prior_from_numpy([prior]), level=FitLevel.PRIOR)
    assert tfit.levels() == [FitLevel.PRIOR] and not tfit.inliers.any()
    np.testing.assert_array_equal(tfit.weights[0].numpy(), prior.mean)
    np.testing.assert_array_equal(tfit.covariance[0].numpy(), prior.covariance)


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine (torch.cuda.is_available() is False)")
    frame, bases, anchors, design, prior, fit, est = _case("nyu", 0, "uniform", 500, outliers=0.1)
    for dtype, tol in ((torch.float64, 1e-4), (torch.float32, 5e-3)):
        td = ft.design_from_numpy([design], dtype, "cuda")
        tp = ft.prior_from_numpy([prior], dtype, "cuda")
        tfit = ft.solve(td, tp)
        assert tfit.weights.device.type == "cuda"
        te = ft.compose(
            _t(bases.maps, dtype, "cuda"),
            _t(bases.inv_rel, dtype, "cuda"),
            _t(bases.inv_rel_work, dtype, "cuda"),
            tfit.weights,
            tfit.covariance,
            MIN_M,
            frame.max_depth_m,
        )
        np.testing.assert_allclose(te.depth_m[0].cpu().numpy(), est.depth_m, rtol=tol)
    bench = ft.benchmark_scale_field_torch("cuda", repeats=3)
    assert bench["scale_field"] > 0


def test_benchmark_runs_on_cpu():
    result = ft.benchmark_scale_field_torch("cpu", n_anchors=200, repeats=2)
    assert result["n_anchors"] == 200 and result["scale_field"] > 0 and result["k"] >= 1
    assert result["bases"] > 0 and len(result["bases_samples"]) == 2


@pytest.mark.parametrize(("dataset", "index", "pattern", "n"), [("nyu", 2, "uniform", 100), *[c[:4] for c in CASES]])
def test_prior_around_matches_numpy(dataset, index, pattern, n):
    """`prior_around` in torch equals field.prior_around (and the loose prior) for every kind of family."""
    _, bases, _, _, _, _, _ = _case(dataset, index, pattern, n)
    for scale, shift in ((0.8, 0.01), (0.0, 0.0), (float("nan"), 0.1)):
        ref = prior_around(bases, scale, shift, PriorConfig())
        tp = ft.prior_around(
            torch.tensor([scale], dtype=torch.float64),
            torch.tensor([shift], dtype=torch.float64),
            torch.tensor([bases.scale_inv_rel], dtype=torch.float64),
            bases.k,
            PriorConfig(),
            bases.coverage,
            bases.shift_free,
            bases.scale_hint,
        )
        np.testing.assert_allclose(tp.covariance[0].numpy(), ref.covariance, rtol=1e-12)
        np.testing.assert_allclose(np.nan_to_num(tp.mean[0].numpy()), np.nan_to_num(ref.mean), rtol=1e-12)
    assert isinstance(ref, Prior)


def test_a_batch_without_anchors_gives_the_prior():
    """Zero anchors (N = 0): the robust solve's medians have nothing to sort; the fit is the prior, as numpy's."""
    _, bases, _, _, _, _, _ = _case("nyu", 0, "uniform", 0)
    empty = torch.zeros(1, 0, dtype=torch.float64)
    td = ft.anchor_design(
        _t(bases.maps), _t(bases.inv_rel), empty, empty, empty, empty, torch.zeros(1, 0, dtype=torch.bool), NOISE
    )
    tfit = ft.fit_field(td, torch.tensor([bases.scale_inv_rel], dtype=torch.float64))
    assert tfit.levels() == [FitLevel.PRIOR] and torch.isfinite(tfit.weights).all()
    assert float(ft.fit_misfit(td, tfit)[0]) == 0.25  # no evidence: the broad floor
    assert ft.benchmark_scale_field_torch("cpu", n_anchors=0, repeats=1)["scale_field"] > 0


def test_a_constant_relative_map_is_fitted_by_scale_only():
    """As the pipeline (`_frame_fit`): a frame whose relative depth is flat gets scale only, not a field bent
    onto the anchors; the numpy reference takes the same steps at that level."""
    from scale_field_ros.backbone import BackboneOutput

    frame, out = infer("nyu", 0)
    # flat to within 5e-5 (the pipeline's threshold on the spread of log g is 1e-4), yet every pixel distinct
    ramp = np.linspace(-1.0, 1.0, out.shape[0] * out.shape[1]).reshape(out.shape)
    flat = BackboneOutput((2.0 * (1.0 + 5e-5 * ramp)).astype(np.float32), out.features, out.kind)
    anchors = draw_anchors(frame, "uniform", 200, seed=1).anchors
    bases = build_bases(flat, BasisConfig(), len(anchors))
    assert bases.constant_relative and bases.k > 1
    design = anchor_design(bases, anchors, NOISE)
    ga = solve(design, loose_prior(bases, PriorConfig(), design), SolverConfig(), FitLevel.SCALE_SHIFT)
    prior = prior_around(bases, ga.weights[0], ga.weights[-1], PriorConfig())
    design = relative_to_fit(design, solve(design, prior, SolverConfig(), FitLevel.SCALE).weights)
    fit = solve(design, prior, SolverConfig(), FitLevel.SCALE)
    est = compose(bases, fit.weights, fit.covariance, MIN_M, 10.0)
    mask = torch.ones(1, len(anchors), dtype=torch.bool)
    a = anchors
    td = ft.anchor_design(_t(bases.maps), _t(bases.inv_rel), _t(a.u), _t(a.v), _t(a.depth_m), _t(a.weight), mask, NOISE)
    scale_inv_rel = torch.tensor([bases.scale_inv_rel], dtype=torch.float64)
    assert ft.fit_field(td, scale_inv_rel).levels() == [FitLevel.FULL]  # unflagged, the field bends
    tfit = ft.fit_field(td, scale_inv_rel, constant_relative=torch.tensor([True]))
    assert tfit.levels() == [FitLevel.SCALE]
    te = ft.compose(
        _t(bases.maps), _t(bases.inv_rel), _t(bases.inv_rel_work), tfit.weights, tfit.covariance, MIN_M, 10.0
    )
    np.testing.assert_allclose(te.depth_m[0].numpy(), est.depth_m, rtol=1e-4)
