"""The torch analytic bases equal numpy's `build_bases` on real FastDepth frames, and fit the same depth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from field_backbone import infer

from scale_field_ros.backbone import BackboneOutput
from scale_field_ros.bases import build_bases, pick_feature, relative_inverse_depth
from scale_field_ros.bases_torch import TorchAnalyticBases, analytic_bases
from scale_field_ros.bases_torch import relative_inverse_depth as relative_inverse_depth_torch
from scale_field_ros.basis_set import BasisConfig
from scale_field_ros.metrics import compute_metrics, evaluation_mask
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.pipeline import Pipeline, PipelineConfig

# Measured on nyu 0-2 and kitti_semidense 0-2 (float32 and float64): 1 - correlation <= 5e-10 for every map
# (resizes are cv2's own weights; the PCA maps carry the power-iteration eigenvectors). 1e-5 leaves room for
# other BLAS / devices while still failing on any wrong formula (a flipped sign, a shifted resize, a lost map).
MIN_CORRELATION = 0.99999
FRAMES = [("nyu", 0), ("nyu", 2), ("kitti_semidense", 0), ("kitti_semidense", 1)]


def _correlations(a: np.ndarray, b: np.ndarray) -> list[float]:
    out = []
    for x, y in zip(a, b, strict=True):
        if x.std() == 0 and y.std() == 0:
            out.append(1.0 if np.allclose(x, y) else 0.0)
        else:
            out.append(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]))
    return out


@pytest.mark.parametrize(("dataset", "index"), FRAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_family_matches_numpy(dataset, index, dtype):
    _, out = infer(dataset, index)
    ref = build_bases(out, BasisConfig(), 1000)
    got = TorchAnalyticBases(dtype=dtype)(out, BasisConfig(), 1000)
    assert got.names == ref.names and got.tier == ref.tier == 3
    assert got.maps.shape == ref.maps.shape and got.maps.dtype == np.float32
    corr = _correlations(got.maps, ref.maps)
    assert min(corr) > MIN_CORRELATION, dict(zip(ref.names, corr, strict=True))
    np.testing.assert_allclose(got.maps, ref.maps, atol=1e-3)
    np.testing.assert_array_equal(got.maps[0], 1.0)
    np.testing.assert_allclose(got.inv_rel, ref.inv_rel, rtol=1e-5)
    np.testing.assert_allclose(got.inv_rel_work, ref.inv_rel_work, rtol=1e-5)
    assert got.scale_inv_rel == pytest.approx(ref.scale_inv_rel, rel=1e-6)
    assert got.constant_relative == ref.constant_relative


@pytest.mark.parametrize(("pattern", "n"), [("uniform", 5), ("uniform", 20), ("vio", 40), ("lidar", 200)])
def test_tiers_and_selection_match_numpy(pattern, n):
    frame, out = infer("nyu", 1)
    h, w = out.shape
    anchors = draw_anchors(frame, pattern, n, seed=3, noise=0.02).anchors.sanitized(w, h, 0.1, frame.max_depth_m)
    provider = TorchAnalyticBases()
    for given in (None, anchors):
        ref = build_bases(out, BasisConfig(), len(anchors), given)
        got = provider(out, BasisConfig(), len(anchors), given)
        assert (got.tier, got.names) == (ref.tier, ref.names)
        assert min(_correlations(got.maps, ref.maps)) > MIN_CORRELATION


@pytest.mark.parametrize(("dataset", "index", "n", "cap"), [("nyu", 0, 200, 10.0), ("kitti_semidense", 1, 500, 80.0)])
def test_fitted_depth_matches_numpy_bases(dataset, index, n, cap):
    """The pipeline with torch-built bases gives the AbsRel of the numpy bases on the same anchors."""
    frame, out = infer(dataset, index)
    cfg = PipelineConfig(max_depth_m=cap)
    errors = []
    for bases_fn in (None, TorchAnalyticBases()):
        draw = draw_anchors(frame, "uniform", n, seed=5, noise=0.02)
        mask = evaluation_mask(draw.truth_depth_m, 1e-3, cap, draw.anchors)
        res = Pipeline(None, cfg, bases_fn=bases_fn).process_output(out, draw.anchors)
        assert np.all(np.isfinite(res.depth_m))
        errors.append(compute_metrics(res.depth_m, draw.truth_depth_m, mask).absrel)
    assert errors[1] == pytest.approx(errors[0], abs=1e-4), errors  # measured |delta| <= 3e-9


def test_batch_equals_frame_by_frame():
    outs = [infer("nyu", i)[1] for i in (0, 1)]
    cfg = BasisConfig()
    rel = torch.stack([torch.from_numpy(o.relative) for o in outs])
    feat = torch.stack([torch.from_numpy(pick_feature(o, "")) for o in outs])
    batch = analytic_bases(rel, outs[0].kind, feat, cfg)
    for i, o in enumerate(outs):
        single = analytic_bases(torch.from_numpy(o.relative), o.kind, torch.from_numpy(pick_feature(o, "")), cfg)
        torch.testing.assert_close(batch.maps[i], single.maps[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.scale_inv_rel[i], single.scale_inv_rel[0])


def test_invalid_and_flat_relative_maps_follow_numpy():
    """Maps with invalid pixels take numpy's masked path; a flat map keeps the position maps only."""
    _, out = infer("kitti_semidense", 0)
    rel = out.relative.copy()
    rel[:40] = 0.0  # a band of invalid depth (sky)
    rel[100, 100:200] = np.nan
    holes = dataclasses.replace(out, relative=rel)
    g_ref, med_ref, const_ref = relative_inverse_depth(holes)
    g, med, const = relative_inverse_depth_torch(torch.from_numpy(rel)[None], holes.kind)
    np.testing.assert_allclose(g[0].numpy(), g_ref, rtol=1e-5)
    assert float(med[0]) == pytest.approx(med_ref, rel=1e-6) and bool(const[0]) == const_ref
    ref = build_bases(holes, BasisConfig(), 1000)
    got = TorchAnalyticBases()(holes, BasisConfig(), 1000)
    assert got.names == ref.names and min(_correlations(got.maps, ref.maps)) > MIN_CORRELATION
    flat = BackboneOutput(np.full_like(rel, 3.0), out.kind, out.metric, out.features)
    ref, got = build_bases(flat, BasisConfig(), 1000), TorchAnalyticBases()(flat, BasisConfig(), 1000)
    assert got.constant_relative and got.names == ref.names and got.k < 13
    np.testing.assert_allclose(got.maps, ref.maps, atol=1e-6)
    assert np.all(np.isfinite(got.inv_rel)) and np.all(np.isfinite(got.maps))


def test_cuda_matches_numpy():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine (torch.cuda.is_available() is False)")
    _, out = infer("kitti_semidense", 0)
    ref = build_bases(out, BasisConfig(), 1000)
    got = TorchAnalyticBases("cuda")(out, BasisConfig(), 1000)
    assert got.names == ref.names and min(_correlations(got.maps, ref.maps)) > MIN_CORRELATION
