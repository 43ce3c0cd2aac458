"""The pipeline on real FastDepth output: accuracy against the baselines and defined results on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from field_backbone import infer

from scale_field_ros.anchors import Anchors
from scale_field_ros.array_namespace import NUMPY
from scale_field_ros.baselines import BASELINES
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.pipeline import Pipeline, PipelineConfig
from scale_field_ros.solver import FitLevel

NYU = PipelineConfig(max_depth_m=10.0)


def _check_output(res, shape, cfg=NYU):
    for a in (res.depth_m, res.std_m, res.scale_field):
        assert a.shape == shape and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert res.depth_m.min() >= cfg.min_depth_m and res.depth_m.max() <= cfg.max_depth_m
    assert np.all(res.std_m >= 0)


@pytest.mark.parametrize("name,n,cap", [("nyu", 200, 10.0), ("kitti_semidense", 200, 80.0)])
def test_field_beats_global_alignment_and_is_finite(name, n, cap):
    frame, out = infer(name, 0)
    cfg = dataclasses.replace(NYU, max_depth_m=cap)
    draw = draw_anchors(frame, "uniform", n, seed=1)
    res = Pipeline(None, cfg).process_output(out, draw.anchors)
    _check_output(res, out.shape, cfg)
    assert res.fit.level is FitLevel.FULL and res.fit.fallback_reason == ""
    mask = evaluation_mask(draw.truth_depth_m, 1e-3, cap, draw.anchors)
    field = compute_metrics(res.depth_m, draw.truth_depth_m, mask).absrel
    ga = compute_metrics(BASELINES["ga_inv"](out, draw.anchors, 0.1, cap), draw.truth_depth_m, mask).absrel
    assert field < 0.9 * ga


@pytest.mark.parametrize(
    "name,index,n,cap", [("sun3d_seq", 0, 50, 10.0), ("nyu", 1, 200, 10.0), ("kitti_semidense", 0, 200, 80.0)]
)
def test_uncertainty_is_larger_where_the_error_is_larger(name, index, n, cap):
    frame, out = infer(name, index)
    draw = draw_anchors(frame, "uniform", n, seed=2)
    res = Pipeline(None, dataclasses.replace(NYU, max_depth_m=cap)).process_output(out, draw.anchors)
    mask = evaluation_mask(draw.truth_depth_m, 1e-3, cap, draw.anchors)
    err = np.abs(res.depth_m - draw.truth_depth_m)[mask]
    std = res.std_m[mask]
    hi = std > np.median(std)
    assert err[hi].mean() > err[~hi].mean()
    # roughly calibrated: for a calibrated Gaussian std the median of |err| / std is 0.674. The std is on the
    # wide side: 0.18 to 0.37 on these data sets (50 to 1000 anchors); 10x too wide (the misfit variance x 100)
    # gives 0.02 to 0.04. A band of a factor 6 either way of 0.674 (0.112 to 4.04) passes the one, fails the other
    ratio = float(np.median(err / std))
    assert 0.674 / 6 < ratio < 0.674 * 6, ratio


@pytest.mark.parametrize("name,index,n,cap", [("nyu", 2, 1000, 10.0), ("kitti_semidense", 1, 200, 80.0)])
def test_propagated_std_follows_the_exact_one_across_depth_edges(name, index, n, cap):
    # the weights' covariance through the model, sqrt(var(S g + c)) / |S g + c|, exactly at every working pixel
    # against what compose computes on every 4th pixel (subsampled at 4i and upsampled as var(inv), it was off
    # by up to 5x at depth edges: p1 0.57 to 0.65, p50 1.07, p99 2.2 on these frames)
    from scale_field_ros.bases import build_bases
    from scale_field_ros.field import _relative_std, anchor_design, loose_prior
    from scale_field_ros.solver import solve

    frame, out = infer(name, index)
    cfg = PipelineConfig(max_depth_m=cap)
    h, w = out.shape
    clean = draw_anchors(frame, "uniform", n, seed=index).anchors.sanitized(w, h, cfg.min_depth_m, cap)
    bases = build_bases(out, cfg.basis, len(clean), clean)
    fit = solve(anchor_design(bases, clean, cfg.noise_rel), loose_prior(bases, cfg.prior), cfg.solver)
    k = bases.k
    s_work = np.tensordot(fit.weights[:k], bases.maps, axes=1).astype(np.float32)
    shift = np.float32(fit.weights[k])
    lo = 1.0 / cap
    computed = _relative_std(NUMPY, bases.maps, bases.inv_rel_work, fit.covariance, s_work, shift, lo, 0.0)
    g = bases.inv_rel_work.astype(np.float64)
    rows = np.concatenate([bases.maps * g, np.ones((1, *g.shape))]).reshape(k + 1, -1)
    var_inv = np.einsum("kp,kl,lp->p", rows, fit.covariance, rows).reshape(g.shape)
    exact = np.sqrt(var_inv) / np.maximum(np.abs(s_work * g + shift), lo)
    p1, p50, p99 = np.percentile(computed / exact, [1, 50, 99])
    assert 0.97 < p50 < 1.03 and p1 > 0.7 and p99 < 1.8


@pytest.mark.parametrize("n_fine", [120, 160, 90, 91])
def test_std_samples_are_interpolated_where_they_were_taken(n_fine):
    # samples at 2, 6, 10, ...: a ramp through them comes back exact between the first and the last sample,
    # whatever the side (1280 x 720 has a 90-pixel working side and 22 samples, a resize would stretch them)
    from scale_field_ros.field import sample_upsampler

    taken = np.arange(2, n_fine, 4)
    fine = sample_upsampler(n_fine, len(taken), 2, 4) @ taken.astype(np.float32)
    inside = np.arange(taken[0], taken[-1] + 1)
    np.testing.assert_allclose(fine[inside], inside, atol=1e-4)
    assert np.all(fine[: taken[0]] == taken[0]) and np.all(fine[taken[-1] :] == taken[-1])


@pytest.mark.parametrize("n", [200, 1000])
@pytest.mark.parametrize("name,cap", [("nyu", 10.0), ("kitti_semidense", 80.0), ("sun3d_seq", 10.0)])
def test_local_correction_lowers_the_error(name, cap, n):
    # the residual grid's exp(R) on top of the field: AbsRel with it / without it (local.enabled=False) measured
    # 0.22 to 0.58 over these frames, counts and seeds 0-2; with the correction computed but not applied
    # (compose's A = S, B = c) 0.80 to 1.0. The bound sits between the two
    frame, out = infer(name, 0)
    cfg = dataclasses.replace(NYU, max_depth_m=cap)
    without = dataclasses.replace(cfg, local=dataclasses.replace(cfg.local, enabled=False))
    draw = draw_anchors(frame, "uniform", n, seed=1)
    mask = evaluation_mask(draw.truth_depth_m, 1e-3, cap, draw.anchors)
    with_local = Pipeline(None, cfg).process_output(out, draw.anchors)
    assert with_local.fit.level is FitLevel.FULL
    absrel = compute_metrics(with_local.depth_m, draw.truth_depth_m, mask).absrel
    plain = compute_metrics(Pipeline(None, without).process_output(out, draw.anchors).depth_m, draw.truth_depth_m, mask)
    assert absrel < 0.7 * plain.absrel, (absrel, plain.absrel)


def test_outliers_and_noise_barely_move_the_field():
    frame, out = infer("nyu", 1)
    clean = draw_anchors(frame, "uniform", 300, seed=4)
    dirty = draw_anchors(frame, "uniform", 300, seed=4, noise=0.02, outliers=0.1)
    mask = evaluation_mask(clean.truth_depth_m, 1e-3, 10.0, clean.anchors)
    pipe = Pipeline(None, NYU)
    a = compute_metrics(pipe.process_output(out, clean.anchors).depth_m, clean.truth_depth_m, mask).absrel
    b = compute_metrics(pipe.process_output(out, dirty.anchors).depth_m, clean.truth_depth_m, mask).absrel
    assert b < a + 0.02


def test_bad_inputs_give_a_flagged_defined_result():
    frame, out = infer("nyu", 0)
    pipe = Pipeline(None, NYU)
    draw = draw_anchors(frame, "uniform", 100, seed=0)
    none = pipe.process_output(out, Anchors.empty())
    _check_output(none, out.shape)
    assert none.fit.level is FitLevel.PRIOR and none.fit.fallback_reason
    outl = Anchors.from_arrays(draw.anchors.u, draw.anchors.v, np.full(100, 1e6))  # all outside the range
    res = pipe.process_output(out, outl)
    _check_output(res, out.shape)
    # sanitized away: none is used, and the frame is the no-anchor frame (the prior, flagged)
    assert len(res.anchors_used) == 0 and res.fit.n_anchors == 0
    assert res.fit.level is FitLevel.PRIOR and res.fit.fallback_reason == "no usable anchors"
    np.testing.assert_array_equal(res.depth_m, none.depth_m)
    pile = Anchors.from_arrays(np.full(50, 100.0), np.full(50, 80.0), np.full(50, 2.5))
    res = pipe.process_output(out, pile)
    _check_output(res, out.shape)
    assert res.fit.level is FitLevel.SCALE and res.fit.fallback_reason
    nan_out = dataclasses.replace(out, relative=np.where(out.relative > 3, np.nan, out.relative).astype(np.float32))
    _check_output(pipe.process_output(nan_out, draw.anchors), out.shape)
    flat = dataclasses.replace(out, relative=np.full(out.shape, 2.0, np.float32))
    res = pipe.process_output(flat, draw.anchors)
    _check_output(res, out.shape)
    assert res.fit.level is FitLevel.SCALE and "constant" in res.fit.fallback_reason
    nan_anchor = Anchors.from_arrays([np.nan, 10.0], [5.0, np.inf], [2.0, np.nan])
    _check_output(pipe.process_output(out, nan_anchor), out.shape)


def test_a_degenerate_correction_is_published_as_untrusted():
    """A non-finite local correction (a divide by zero, as a zero `local.prior_count` gave in the grid method, now
    refused) falls back to max_depth_m; the std then says so (at least the depth), not its usual few per cent."""
    from scale_field_ros.bases import build_bases
    from scale_field_ros.field import compose
    from scale_field_ros.residual_grid import LocalConfig, LocalCorrection

    frame, out = infer("nyu", 0)
    draw = draw_anchors(frame, "uniform", 300, seed=0)
    res = Pipeline(None, NYU).process_output(out, draw.anchors)
    bases = build_bases(out, NYU.basis, 300, draw.anchors.sanitized(*out.shape[::-1], 0.1, 10.0))
    nan = np.full(bases.work_shape, np.nan, np.float32)
    local = LocalCorrection(nan, np.ones(bases.work_shape, np.float32), 0.01, 0.3)
    est = compose(bases, res.fit.weights, res.fit.covariance, 0.1, 10.0, local)
    assert np.all(est.depth_m == 10.0) and np.all(np.isfinite(est.std_m)) and np.all(est.std_m >= est.depth_m)
    for name in ("prior_count", "log_depth_cell", "min_cell_px"):
        with pytest.raises(ValueError, match=name):
            LocalConfig(**{name: 0.0})


def test_anchors_left_in_one_cell_by_the_outlier_test_fall_back_to_scale_only():
    # nine true anchors in the top-left cell of the cross-validation grid and one gross outlier in the opposite
    # cell: the outlier test keeps one cell, which leaves a single fold (it raised StopIteration)
    frame, out = infer("nyu", 0)
    h, w = out.shape
    rows, cols = np.nonzero(frame.depth_m[: h // 4, : w // 4] > 0)
    far_rows, far_cols = np.nonzero(frame.depth_m[3 * h // 4 :, 3 * w // 4 :] > 0)
    pick = np.linspace(0, len(rows) - 1, 9).astype(int)
    v = np.r_[rows[pick], far_rows[-1] + 3 * h // 4].astype(np.float64)
    u = np.r_[cols[pick], far_cols[-1] + 3 * w // 4].astype(np.float64)
    depth_m = frame.depth_m[v.astype(int), u.astype(int)].copy()
    depth_m[-1] /= 3.0
    res = Pipeline(None, NYU).process_output(out, Anchors.from_arrays(u, v, depth_m))
    _check_output(res, out.shape)
    assert res.basis_signature.startswith("t-1")


def test_config_from_flat_dict():
    cfg = PipelineConfig.from_dict({"max_depth_m": 20, "basis_poly_degree": 1, "solver.huber_k": 2.0})
    assert cfg.max_depth_m == 20 and cfg.basis.poly_degree == 1 and cfg.solver.huber_k == 2.0
    with pytest.raises(ValueError, match="unknown"):
        PipelineConfig.from_dict({"basis_no_such_thing": 1})
    with pytest.raises(ValueError):
        PipelineConfig(min_depth_m=5.0, max_depth_m=1.0)


def test_a_richer_pick_on_few_anchors_is_averaged_with_median_scaling():
    from scale_field_ros.bases import build_bases

    frame, out = infer("nyu", 2)
    h, w = out.shape
    for seed in range(20):  # VIO corners, where the cross-validation picks more than a scale
        anchors = draw_anchors(frame, "vio", 10, seed=seed).anchors
        clean = anchors.sanitized(w, h, NYU.min_depth_m, NYU.max_depth_m)
        bases = build_bases(out, NYU.basis, len(clean), clean)
        if bases.blend is not None:
            break
    else:
        pytest.fail("no frame among 20 draws picked more than median scaling")
    assert 0.0 < bases.blend.weight < 1.0
    blended = Pipeline(None, NYU).process_output(out, anchors)
    _check_output(blended, out.shape)
    pick_alone = dataclasses.replace(bases, blend=None)
    single = Pipeline(None, NYU, bases_fn=lambda *a: pick_alone).process_output(out, anchors)
    median = BASELINES["median"](out, anchors, NYU.min_depth_m, NYU.max_depth_m)
    lo, hi = np.minimum(single.depth_m, median), np.maximum(single.depth_m, median)
    assert np.all(blended.depth_m >= lo * (1 - 1e-4)) and np.all(blended.depth_m <= hi * (1 + 1e-4))
    assert np.abs(blended.depth_m - single.depth_m).max() > 1e-3  # not the pick alone
    # the mixture's std holds the spread between its parts
    spread = np.abs(single.depth_m - median)
    assert np.all(blended.std_m >= np.sqrt(bases.blend.weight * (1 - bases.blend.weight)) * spread * (1 - 1e-3))


_COMPILED_KERNELS = """
import json, sys
from numba.core.registry import CPUDispatcher
from scale_field_ros.pipeline import PipelineConfig, warm_up

def compiled():
    return {
        f"{name}.{attr}": bool(kernel.signatures)
        for name, module in list(sys.modules.items())
        if name.startswith("scale_field_ros.")
        for attr, kernel in vars(module).items()
        if isinstance(kernel, CPUDispatcher) and kernel.py_func.__module__ == name
    }

before = compiled()
warm_up(PipelineConfig(min_depth_m=0.5, max_depth_m=6.0))
print(json.dumps([before, compiled()]))
"""


def test_warm_up_compiles_every_kernel_the_scale_field_uses():
    # the node calls it before its first image: each compiled entry point of the anchors' z-buffer, the deskew
    # blend, the solve, the bases, the tier selection and the local correction must have run (numba keeps the
    # compiled signatures of what Python called; the kernels those call compile inside them and list none).
    # In a fresh interpreter: in this one the tests before have run the kernels already, warm_up or not
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", _COMPILED_KERNELS],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    modules = {name.rsplit(".", 1)[0] for name in after}
    for stage in ("anchors", "deskew", "bases", "basis_set", "solver", "tier_selection", "residual_grid"):
        assert f"scale_field_ros.{stage}" in modules, stage
    assert not any(before.values())  # nothing compiled before warm_up: what follows is its doing
    inner = {"_robust_scale", "_cholesky", "_cholesky_solve", "_solve_spd", "_inverse_spd", "_irls", "_held_out_error"}
    inner |= {"_absrel_scale_sorted", "_fold_grams", "_held_out_scale_only"}  # compiled into their callers
    entry = {name for name in after if name.rsplit(".", 1)[1] not in inner}
    assert len(entry) >= 10
    missed = sorted(name for name in entry if not after[name])
    assert not missed, f"not compiled by warm_up: {missed}"


@pytest.mark.parametrize("units", [2e-5, 2e3])
def test_the_fit_does_not_depend_on_the_backbones_units(units):
    # an affine-invariant model's inverse depth comes in arbitrary units (a random-init Depth Anything: ~1e-5);
    # the loose prior took its median for the scale, and a map of 1e-5 held the fit thousands of sigmas from the
    # anchors (depth 10 m everywhere). The same map in any units must give the same metric depth
    from scale_field_ros.backbone import BackboneOutput, DepthKind

    frame, out = infer("nyu", 0)
    inverse = BackboneOutput((units / out.relative).astype(np.float32), DepthKind.INVERSE_DEPTH, False, out.features)
    anchors = draw_anchors(frame, "uniform", 1000, seed=0).anchors
    reference = Pipeline(None, NYU).process_output(out, anchors)
    result = Pipeline(None, NYU).process_output(inverse, anchors)
    assert result.fit.level is FitLevel.FULL and abs(result.fit.n_anchors - reference.fit.n_anchors) <= 2
    np.testing.assert_allclose(result.depth_m, reference.depth_m, rtol=1e-3)
