"""Basis maps built from real FastDepth output."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from field_backbone import infer

from scale_field_ros.backbone import BackboneOutput, DepthKind
from scale_field_ros.bases import build_bases, depth_partition, guided_upsample, relative_inverse_depth
from scale_field_ros.basis_set import BasisConfig, sample_maps


def test_family_grows_with_anchors_and_first_basis_is_constant():
    _, out = infer("nyu", 0)
    cfg = BasisConfig()
    sizes = []
    for n in (0, 10, 30, 200):
        b = build_bases(out, cfg, n)
        assert np.all(b.maps[0] == 1) and np.all(np.isfinite(b.maps))
        assert b.maps.shape[1:] == b.work_shape and max(b.work_shape) == cfg.work_long_side
        sizes.append(b.k)
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] > sizes[1]
    full = build_bases(out, cfg, 200)
    assert any(n.startswith("pca") for n in full.names) and any(n.startswith("depth") for n in full.names)
    assert np.allclose(np.sqrt(np.mean(full.maps[1:] ** 2, axis=(1, 2))), 1.0, atol=1e-3)
    assert np.isclose(np.median(full.inv_rel), 1.0, atol=1e-3)


def test_signature_and_pca_signs_are_deterministic():
    _, out = infer("sun3d_seq", 0)
    a = build_bases(out, BasisConfig(), 500)
    flipped = BackboneOutput(out.relative, out.kind, out.metric, {k: -v for k, v in out.features.items()})
    b = build_bases(flipped, BasisConfig(), 500)
    assert a.signature == b.signature
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-4)
    _, out_next = infer("sun3d_seq", 1)  # next frame of the sequence: same family
    assert build_bases(out_next, BasisConfig(), 500).signature == a.signature


def test_depth_bins_follow_relative_depth():
    frame, out = infer("nyu", 1)
    b = build_bases(out, BasisConfig(), 200)
    bins = [i for i, n in enumerate(b.names) if n.startswith("depth")]
    log_g = np.log(b.inv_rel_work).ravel()
    near_corr = np.corrcoef(b.maps[bins[-1]].ravel(), log_g)[0, 1]  # last bin: highest inverse depth = nearest
    far_corr = np.corrcoef(b.maps[bins[0]].ravel(), log_g)[0, 1]
    assert near_corr > 0.3 and far_corr < -0.3


def test_depth_partition_is_a_soft_bin_index_rising_with_relative_depth():
    # hats over log g: they sum to one and the soft bin index sum_i i * hat_i rises with log g. Measured on NYU,
    # KITTI and SUN3D frames, pixels sorted by log g: the smallest step is 0.0 (never falls); with the two hat
    # weights of a pixel swapped the index falls within each bin, the largest drop 0.002 to 0.005
    _, out = infer("nyu", 1)
    log_g = np.log(build_bases(out, BasisConfig(), 200).inv_rel_work)
    hats = np.stack(depth_partition(log_g, 4))
    np.testing.assert_allclose(hats.sum(axis=0), 1.0, atol=1e-6)
    soft = np.tensordot(np.arange(len(hats), dtype=np.float64), hats, axes=1).ravel()
    ordered = soft[np.argsort(log_g.ravel(), kind="stable")]
    assert np.diff(ordered).min() >= -1e-6
    assert ordered[0] == 0.0 and ordered[-1] == len(hats) - 1  # clamped to the first and last hat at the ends


def test_guided_upsample_follows_the_guide():
    # a source that is an affine function of the shrunk guide comes back as that function of the full guide
    # (a = 2, b = 1 everywhere; eps negligible): measured within 1e-4 on NYU, KITTI and SUN3D log g; ignoring
    # the guide (a = 0, the upsampled box mean) is off by 0.2 to 0.5 at depth edges
    _, out = infer("sun3d_seq", 0)
    guide = np.log(build_bases(out, BasisConfig(), 200).inv_rel_work).astype(np.float32)
    h, w = guide.shape
    small = cv2.resize(guide, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    up = guided_upsample(guide, np.stack([2 * small + 1, 3 - small], axis=-1), 4, 1e-9)
    assert up.shape == (2, h, w)
    np.testing.assert_allclose(up[0], 2 * guide + 1, atol=1e-3)
    np.testing.assert_allclose(up[1], 3 - guide, atol=1e-3)


def test_sampling_matches_maps_at_pixel_centres():
    _, out = infer("kitti_semidense", 0)
    b = build_bases(out, BasisConfig(), 200)
    h, w = b.work_shape
    fh, fw = b.full_shape
    j, i = np.array([3, 10, h - 2]), np.array([5, 40, w - 3])
    u = (i + 0.5) * fw / w - 0.5
    v = (j + 0.5) * fh / h - 0.5
    np.testing.assert_allclose(sample_maps(b.maps, u, v, b.full_shape), b.maps[:, j, i].T, atol=1e-4)


def test_flat_or_invalid_relative_depth_is_flagged_not_nan():
    _, out = infer("nyu", 0)
    for rel in (np.full(out.relative.shape, 3.0, np.float32), np.full(out.relative.shape, np.nan, np.float32)):
        bad = dataclasses.replace(out, relative=rel)
        g, med, constant = relative_inverse_depth(bad)
        assert constant and np.all(np.isfinite(g)) and med > 0
        b = build_bases(bad, BasisConfig(), 500)
        assert np.all(np.isfinite(b.maps)) and not any(n.startswith(("depth", "pca")) for n in b.names)
    inv = dataclasses.replace(out, relative=1.0 / out.relative, kind=DepthKind.INVERSE_DEPTH)
    np.testing.assert_allclose(relative_inverse_depth(inv)[0], relative_inverse_depth(out)[0], rtol=1e-4)


def test_non_finite_features_are_zeroed_not_a_crash():
    # np.nan_to_num's default turned inf into float32's largest value, and the PCA raised ValueError
    _, out = infer("nyu", 0)
    clean = build_bases(out, BasisConfig(), 1000)
    for bad_value in (np.inf, -np.inf, np.nan):
        feats = {name: f.copy() for name, f in out.features.items()}
        for f in feats.values():
            f[0, :4, :4] = bad_value
        b = build_bases(dataclasses.replace(out, features=feats), BasisConfig(), 1000)
        assert b.names == clean.names and np.all(np.isfinite(b.maps))


def test_basis_outputs_of_a_graph_are_never_taken_for_the_pca_feature():
    """A graph's own basis maps (analytic or a trained head's) ride in `features` too; the PCA uses the network's."""
    from scale_field_ros.bases import pick_feature

    frame, out = infer("nyu", 0)
    finest = pick_feature(out, "")
    rng = np.random.default_rng(0)
    extra = {
        name: rng.standard_normal((12, 2 * finest.shape[1], 2 * finest.shape[2])).astype(np.float32)
        for name in ("bases", "learned_bases")
    }
    with_maps = dataclasses.replace(out, features={**out.features, **extra})
    assert pick_feature(with_maps, "") is finest


def test_sampling_refuses_non_finite_coordinates():
    maps = np.ones((2, 4, 5), np.float32)
    with pytest.raises(ValueError, match="finite"):
        sample_maps(maps, np.array([1.0, np.nan]), np.array([1.0, 2.0]), (8, 10))
