"""The pipeline with the temporal filter on real FastDepth output: coasting keeps the anchored basis family and
widens the confidence, the family grows without a reset, a scene cut resets and the same scene does not."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from field_backbone import backbone, infer

from scale_field_ros.anchors import Anchors
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.pipeline import Pipeline, PipelineConfig, _misfit_design_effect
from scale_field_ros.solver import FitLevel
from scale_field_ros.temporal_filter import FilterConfig

FILTERED = PipelineConfig(max_depth_m=10.0, filter=FilterConfig(enabled=True))
DT = 1 / 30


def _absrel(res, draw) -> float:
    mask = evaluation_mask(draw.truth_depth_m, 0.1, 10.0, draw.anchors)
    return compute_metrics(res.depth_m, draw.truth_depth_m, mask).absrel


def test_coasting_keeps_the_family_and_widens_the_confidence():
    frame, out = infer("sun3d_seq", 0)
    cfg = dataclasses.replace(FILTERED, filter=FilterConfig(enabled=True, max_coast_s=0.1))
    pipe = Pipeline(None, cfg)
    for k in range(3):
        anchored = pipe.process_output(out, draw_anchors(frame, "uniform", 100, seed=k, noise=0.03).anchors, k * DT)
    assert not anchored.coasting and anchored.fit.level is FitLevel.FULL
    draw = draw_anchors(frame, "uniform", 100, seed=9)  # only for scoring: the coasting frames get no anchor
    stds, scores = [], []
    for k in range(3, 8):
        res = pipe.process_output(out, Anchors.empty(), k * DT)
        assert res.coasting and res.basis_signature == anchored.basis_signature and not res.filter_reset
        assert abs(res.coast_s - (k - 2) * DT) < 1e-9  # since the last anchored frame
        assert np.all(np.isfinite(res.depth_m)) and np.all(np.isfinite(res.std_m))
        stds.append(float(np.median(res.std_m)))
        scores.append(_absrel(res, draw))
    assert stds[0] > float(np.median(anchored.std_m))
    assert np.all(np.diff(stds[:3]) > 0)  # uncertainty grows while there is no evidence
    assert max(scores) <= _absrel(anchored, draw) + 0.005  # the estimate is carried, not lost
    # past max_coast_s: flagged, and the confidence says "do not trust" (std at least the depth)
    assert res.coast_exceeded and np.all(res.std_m >= res.depth_m)
    back = pipe.process_output(out, draw_anchors(frame, "uniform", 100, seed=20, noise=0.03).anchors, 8 * DT)
    assert not back.coasting and not back.coast_exceeded and back.coast_s == 0.0


def test_few_anchors_keep_the_family_and_more_anchors_grow_it_without_reset():
    frame, out = infer("sun3d_seq", 0)
    pipe = Pipeline(None, FILTERED)
    alone = Pipeline(None, dataclasses.replace(FILTERED, filter=FilterConfig(enabled=False)))
    few = pipe.process_output(out, draw_anchors(frame, "uniform", 12, seed=0, noise=0.02).anchors, 0.0)
    many_draw = draw_anchors(frame, "uniform", 300, seed=1, noise=0.02)
    many = pipe.process_output(out, many_draw.anchors, DT)
    assert many.basis_signature != few.basis_signature  # the richer family, weights carried by name
    assert not many.filter_reset
    assert _absrel(many, many_draw) <= _absrel(alone.process_output(out, many_draw.anchors), many_draw) + 0.01
    sparse = pipe.process_output(out, draw_anchors(frame, "uniform", 5, seed=2, noise=0.02).anchors, 2 * DT)
    assert sparse.basis_signature == many.basis_signature and not sparse.filter_reset and not sparse.coasting
    # the prediction is the prior, so five anchors update the whole field (no ladder down to scale and shift)
    # and only nudge it: the estimate stays as good as the one 300 anchors gave
    assert sparse.fit.level is FitLevel.FULL and sparse.fit.n_anchors == 5
    assert _absrel(sparse, many_draw) <= _absrel(many, many_draw) + 0.01


def test_scene_cut_resets_and_the_same_scene_does_not():
    cfg = dataclasses.replace(FILTERED, max_depth_m=80.0)
    pipe = Pipeline(None, cfg)
    alone = Pipeline(None, dataclasses.replace(cfg, filter=FilterConfig(enabled=False)))
    sequence = [("sun3d_seq", 0)] * 3 + [("sun3d_seq", 1), ("sun3d_seq", 2)]  # static, then 30 Hz motion
    for k, (name, index) in enumerate(sequence):
        frame, out = infer(name, index)
        res = pipe.process_output(out, draw_anchors(frame, "uniform", 200, seed=k, noise=0.02).anchors, k * DT)
        assert not res.filter_reset, (k, res.nis_per_dof)
        assert res.nis_per_dof < cfg.filter.reset_nis_threshold
    frame, out = infer("kitti_semidense", 0)  # a cut from a room to a street
    draw = draw_anchors(frame, "uniform", 200, seed=7, noise=0.02)
    cut = pipe.process_output(out, draw.anchors, len(sequence) * DT)
    assert "scene changed" in cut.filter_reset and cut.nis_per_dof > cfg.filter.reset_nis_threshold
    # after the reset the frame stands on its own: the same depth as without the filter
    np.testing.assert_allclose(cut.depth_m, alone.process_output(out, draw.anchors).depth_m, rtol=1e-5)


def test_the_family_does_not_drop_weights_while_the_anchors_allow_them():
    # KITTI with 200 LiDAR-like anchors, fresh scan lines every frame: the frames' own tiers flip between 2 and 3.
    # Dropping tier 3's weights changed the field under the kept ones' small covariance (AbsRel 0.15 vs 0.05).
    frame, out = infer("kitti_semidense", 0)
    cfg = PipelineConfig(max_depth_m=80.0, filter=FilterConfig(enabled=True, reset_nis_threshold=float("inf")))
    pipe = Pipeline(None, cfg)
    alone = Pipeline(None, dataclasses.replace(cfg, filter=FilterConfig(enabled=False)))
    tiers, own_tiers, filtered, single = [], [], [], []
    for k in range(12):
        draw = draw_anchors(frame, "lidar", 200, seed=k, noise=0.02)
        res = pipe.process_output(out, draw.anchors, k * DT)
        own = alone.process_output(out, draw.anchors)
        tiers.append(int(res.basis_signature.split(":")[0][1:]))
        own_tiers.append(int(own.basis_signature.split(":")[0][1:]))
        filtered.append(_absrel80(res, draw))
        single.append(_absrel80(own, draw))
    assert min(own_tiers[1:]) < max(tiers[:-1])  # the frames' own choice fell below the held family
    assert np.all(np.diff(tiers) >= 0), tiers
    assert max(filtered) <= max(single) + 0.005, (filtered, single)
    assert np.mean(filtered) < np.mean(single)


def test_corner_anchors_that_choose_scale_only_together_keep_no_field_state():
    # static NYU, 100 VIO corners a frame (a new subset each frame, on the same textured places): most frames
    # choose scale only on their own. One frame's tier-3 choice used to start a state that the others then fed,
    # and the field bent the walls between the corners: AbsRel 0.125 filtered against 0.064 per frame
    frame, out = infer("nyu", 0)
    pipe = Pipeline(None, FILTERED)
    alone = Pipeline(None, dataclasses.replace(FILTERED, filter=FilterConfig(enabled=False)))
    filtered, single, own_tiers = [], [], []
    for k in range(12):
        draw = draw_anchors(frame, "vio", 100, seed=k, noise=0.02)
        res = pipe.process_output(out, draw.anchors, k * DT)
        own = alone.process_output(out, draw.anchors)
        own_tiers.append(int(own.basis_signature.split(":")[0][1:]))
        filtered.append(_absrel(res, draw))
        single.append(_absrel(own, draw))
    assert min(own_tiers) < 0 < max(own_tiers), own_tiers  # the frames' own choices differ
    assert np.mean(filtered[4:]) <= np.mean(single[4:]) + 0.005, (filtered, single)
    assert max(f - s for f, s in zip(filtered, single, strict=True)) < 0.01, (filtered, single)


def test_a_static_street_with_fresh_scan_lines_does_not_reset():
    # the scan lines move a little every frame (as on a pitching car): the field's misfit is shared along a line,
    # so the weights vary between frames far beyond what independent anchor errors say; before the innovation
    # counted the misfit's design effect the filter reset on the fifth frame (17 times in 90 frames)
    frame, out = infer("kitti_semidense", 0)
    pipe = Pipeline(None, PipelineConfig(max_depth_m=80.0, filter=FilterConfig(enabled=True)))
    for k in range(30):
        res = pipe.process_output(out, draw_anchors(frame, "lidar", 1000, seed=k, noise=0.02).anchors, k * DT)
        assert not res.filter_reset, (k, res.filter_reset)


def test_the_misfit_design_effect_is_one_for_independent_errors_and_large_for_shared_ones():
    rng = np.random.default_rng(0)
    n, shape = 2000, (480, 640)
    u, v = rng.uniform(0, 640, n), rng.uniform(0, 480, n)
    rows = np.stack([np.ones(n), u / 640, v / 480], axis=1)
    covariance = np.linalg.inv(rows.T @ rows)
    independent = rng.standard_normal(n)
    assert 0.99 <= _misfit_design_effect(rows, independent, u, v, shape, covariance, 1.0) < 1.5
    # errors shared within a cell of the grid (an object the bases cannot follow), same variance per anchor
    cell = (v // 60).astype(int) * 8 + (u // 80).astype(int)
    shared = rng.standard_normal(64)[cell] * np.sqrt(0.9) + rng.standard_normal(n) * np.sqrt(0.1)
    assert _misfit_design_effect(rows, shared, u, v, shape, covariance, 1.0) > 5.0
    # a misfit already counted (the residual variance) is not counted twice
    effect = _misfit_design_effect(rows, 3.0 * independent, u, v, shape, covariance, 9.0)
    assert 0.99 <= effect < 1.5


def _absrel80(res, draw) -> float:
    mask = evaluation_mask(draw.truth_depth_m, 0.1, 80.0, draw.anchors)
    return compute_metrics(res.depth_m, draw.truth_depth_m, mask).absrel


def test_median_scaling_frames_stand_alone_until_a_field_can_be_fitted():
    frame, out = infer("sun3d_seq", 0)
    pipe = Pipeline(None, FILTERED)
    alone = Pipeline(None, dataclasses.replace(FILTERED, filter=FilterConfig(enabled=False)))
    corner = _corner_anchors(frame)
    first = pipe.process_output(out, corner, 0.0)
    assert first.basis_signature.startswith("t-1:")  # median scaling, its shift pinned
    # on the remembered scale, which for a first frame is its anchors' absrel_scale: what scale only holds to
    np.testing.assert_allclose(first.depth_m, alone.process_output(out, corner).depth_m, rtol=1e-5)
    assert pipe._filter.state is None  # no state is born from pinned spreads
    draw = draw_anchors(frame, "uniform", 100, seed=3, noise=0.02)
    second = pipe.process_output(out, draw.anchors, DT)
    assert pipe._filter.state is not None and not second.basis_signature.startswith("t-1:")
    again = pipe.process_output(out, corner, 2 * DT)  # the state's family is kept, the corner only nudges it
    assert again.basis_signature == second.basis_signature and not again.filter_reset
    assert _absrel(again, draw) <= _absrel(second, draw) + 0.02


def test_anchors_after_a_long_coast_end_it_also_when_they_give_median_scaling():
    # anchors that start late (LiDAR up 1 s after the camera): the first anchored frames choose median scaling,
    # from which no state is born; they are evidence all the same, not more coasting with a ruined confidence
    frame, out = infer("sun3d_seq", 0)
    cfg = dataclasses.replace(FILTERED, filter=FilterConfig(enabled=True, max_coast_s=0.5))
    pipe = Pipeline(None, cfg)
    fresh = Pipeline(None, cfg).process_output(out, _corner_anchors(frame), 1.0)  # the anchors from the start
    for k in range(10):
        blind = pipe.process_output(out, Anchors.empty(), k * 0.1)
    assert blind.coasting and blind.coast_exceeded
    for k in range(10, 13):
        res = pipe.process_output(out, _corner_anchors(frame), k * 0.1)
        assert res.basis_signature.startswith("t-1:") and pipe._filter.state is None
        assert not res.coasting and not res.coast_exceeded and res.coast_s == 0.0
        # the same corners every frame: the remembered scale pools them, to the weighted median's interpolation
        np.testing.assert_allclose(res.std_m, fresh.std_m, rtol=2e-3)
    blind = pipe.process_output(out, Anchors.empty(), 1.4)  # coasting again counts from the last anchored frame
    assert blind.coasting and abs(blind.coast_s - 0.2) < 1e-9 and not blind.coast_exceeded


def test_a_new_image_size_while_coasting_drops_the_local_correction():
    frame, out = infer("sun3d_seq", 0)
    pipe = Pipeline(None, FILTERED)
    for k in range(3):
        pipe.process_output(out, draw_anchors(frame, "uniform", 100, seed=k, noise=0.02).anchors, k * DT)
    # the camera switches to 640x360 (another working shape), and the next frames have no anchors
    rgb = cv2.resize(frame.rgb, (640, 360), interpolation=cv2.INTER_AREA)
    wide = backbone().infer(rgb)
    for k in range(3, 6):
        res = pipe.process_output(wide, Anchors.empty(), k * DT)
        assert res.depth_m.shape == (360, 640) and res.coasting and np.all(np.isfinite(res.depth_m))
    assert pipe._local_filter.log_ratio is None


def test_a_filter_reset_by_stamps_creeping_backwards_is_reported():
    # each step back is within the tolerance (0.5 s), together they are not: the reset must say so
    frame, out = infer("sun3d_seq", 0)
    pipe = Pipeline(None, FILTERED)
    reasons = []
    for k, t in enumerate((10.0, 9.6, 9.2)):
        res = pipe.process_output(out, draw_anchors(frame, "uniform", 100, seed=k, noise=0.02).anchors, t)
        reasons.append(res.filter_reset)
    assert reasons[:2] == ["", ""] and "backwards" in reasons[2] and pipe._filter.n_resets == 1


def _corner_anchors(frame) -> Anchors:
    """30 anchors in one corner of the image: one cell of the selection grid, so median scaling is chosen."""
    rows, cols = np.nonzero(frame.depth_m[20:90, 20:120] > 0)
    pick = np.random.default_rng(0).choice(len(rows), 30, replace=False)
    return Anchors.from_arrays(cols[pick] + 20, rows[pick] + 20, frame.depth_m[rows[pick] + 20, cols[pick] + 20])


def test_stage_timings_put_the_filters_time_under_filter(monkeypatch):
    """Both filter steps (weights, inside the solve's span; local correction, before compose) count as `filter`
    only: a 30 ms stall in each lands there, solve and compose stay below it, and the parts sum to the total."""
    import time

    from scale_field_ros import pipeline as pipeline_module

    frame, out = infer("sun3d_seq", 0)
    pipe = Pipeline(None, FILTERED)
    pipe.process_output(out, draw_anchors(frame, "uniform", 200, seed=0).anchors, 0.0)  # a state to update
    stall_s = 0.03
    for cls in (pipeline_module.WeightFilter, pipeline_module.CorrectionFilter):
        step = cls.update if cls is pipeline_module.WeightFilter else cls.step

        def slow(self, *args, _step=step, **kwargs):
            time.sleep(stall_s)
            return _step(self, *args, **kwargs)

        monkeypatch.setattr(cls, "update" if cls is pipeline_module.WeightFilter else "step", slow)
    res = pipe.process_output(out, draw_anchors(frame, "uniform", 200, seed=1).anchors, DT)
    assert res.fit.level is FitLevel.FULL and not res.coasting
    t = res.timings_ms
    assert t.filter >= 2 * stall_s * 1e3
    assert 0 <= t.solve < stall_s * 1e3 and 0 <= t.compose < stall_s * 1e3
    assert abs(t.bases + t.solve + t.compose + t.filter + t.backbone - t.total) < 1e-6


def test_repeated_anchors_do_not_shrink_the_published_std_below_the_frames_own():
    """A robot standing still sees the same anchors every frame: the filtered correction then measures only what
    they add to the carried one (about nothing), but its published std must stay what the frame alone publishes
    (its errors are the same): the old floor, from that innovation, left it less than half as wide on NYU (RMS
    error / RMS std 0.67 alone, 1.46 filtered)."""
    frame, out = infer("nyu", 0)
    draw = draw_anchors(frame, "uniform", 300, seed=0, noise=0.02)
    alone = Pipeline(None, dataclasses.replace(FILTERED, filter=FilterConfig(enabled=False))).process_output(
        out, draw.anchors
    )
    pipe = Pipeline(None, FILTERED)
    for k in range(6):
        res = pipe.process_output(out, draw.anchors, k * DT)
    assert res.fit.level is FitLevel.FULL and not res.coasting and not res.filter_reset
    mask = evaluation_mask(draw.truth_depth_m, 0.1, 10.0, draw.anchors)

    def error_over_std(r) -> float:  # RMS log error over RMS relative std: 1 when the std is an RMS error
        log_error = np.log(r.depth_m[mask] / draw.truth_depth_m[mask])
        return float(np.sqrt(np.mean(log_error**2) / np.mean((r.std_m / r.depth_m)[mask] ** 2)))

    assert error_over_std(res) < 1.15 * error_over_std(alone)
    assert abs(_absrel(res, draw) - _absrel(alone, draw)) < 0.01  # the same depth, to the filter's smoothing


def test_frames_without_anchors_between_scale_only_frames_coast_on_their_scale():
    # VIO corners on one camera frame in three; 30 corners choose scale only, so no weight state is born. The
    # frames between used to publish the prior, the network's own scale: AbsRel 0.18 against 0.08 with the
    # corners for FastDepth (roughly metric indoors), and nothing metric at all for an affine-invariant model
    # (here FastDepth's map as inverse depth in Depth Anything's arbitrary units)
    from scale_field_ros.backbone import BackboneOutput, DepthKind

    frame, out = infer("sun3d_seq", 3)
    inverse = BackboneOutput((2e-5 / out.relative).astype(np.float32), DepthKind.INVERSE_DEPTH, False, out.features)
    for backbone_out in (out, inverse):
        pipe = Pipeline(None, FILTERED)
        for k in range(9):
            draw = draw_anchors(frame, "vio", 30, seed=k, noise=0.02)
            res = pipe.process_output(backbone_out, draw.anchors if k % 3 == 0 else Anchors.empty(), k * DT)
            assert pipe._filter.state is None and res.basis_signature.startswith("t-1:")
            if k % 3 == 0:
                anchored, anchored_std = _absrel(res, draw), float(np.median(res.std_m))
                continue
            assert res.coasting and res.fit.fallback_reason.startswith("no usable anchors: the scale")
            assert abs(_absrel(res, draw) - anchored) < 0.005, (k, _absrel(res, draw), anchored)
            assert float(np.median(res.std_m)) >= anchored_std  # no more certain than the frame it coasts on
