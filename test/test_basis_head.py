"""The learned basis head: shared solve path, gradients, checkpoint, ONNX export, provider on real frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from field_backbone import backbone as fastdepth_backbone
from field_backbone import infer

from scale_field_ros import field_torch as ft
from scale_field_ros.backbone import BackboneOutput
from scale_field_ros.basis_head import (
    BASES_OUTPUT,
    BasisHead,
    CheckpointError,
    HeadSpec,
    LearnedBases,
    load_checkpoint,
    n_parameters,
    save_checkpoint,
)
from scale_field_ros.basis_set import BasisConfig
from scale_field_ros.field import PriorConfig, anchor_design, loose_prior, prior_around, relative_to_fit
from scale_field_ros.patterns import draw_anchors
from scale_field_ros.pipeline import Pipeline, PipelineConfig
from scale_field_ros.solver import FitLevel, SolverConfig, solve

TAPS = ("dec3", "dec4")


def _fastdepth():
    bb = fastdepth_backbone()
    if getattr(bb, "name", "") != "fastdepth" or "dec4" not in infer("nyu", 0)[1].features:
        pytest.skip("needs the product's FastDepth backbone (decoder features dec3/dec4)")
    return bb


def _head(k=4, hidden=16, seed=0):
    torch.manual_seed(seed)
    out = infer("nyu", 0)[1]
    return BasisHead(HeadSpec("fastdepth", TAPS, tuple(out.features[t].shape[0] for t in TAPS), k, hidden))


def test_head_is_light_and_provider_returns_a_basis_set():
    _fastdepth()
    head = _head(k=6, hidden=32)
    assert 5_000 < n_parameters(head) < 100_000
    frame, out = infer("sun3d_seq", 0)
    bases = LearnedBases(head)(out, BasisConfig(), 200)
    assert bases.k == 7 and bases.names[0] == "const" and np.all(bases.maps[0] == 1)
    assert bases.full_shape == frame.depth_m.shape and bases.maps.shape[1:] == bases.work_shape
    np.testing.assert_allclose(np.sqrt(np.mean(bases.maps[1:] ** 2, axis=(1, 2))), 1.0, rtol=1e-3)
    res = Pipeline(None, PipelineConfig(max_depth_m=10.0), bases_fn=LearnedBases(head)).process_output(
        out, draw_anchors(frame, "uniform", 200, seed=0).anchors
    )
    assert res.basis_signature.endswith("learned5") and np.isfinite(res.depth_m).all() and res.fit.level.value == "full"


def test_differentiable_solve_on_learned_bases_matches_numpy():
    _fastdepth()
    frame, out = infer("nyu", 1)
    bases = LearnedBases(_head())(out, BasisConfig(), 300)
    a = draw_anchors(frame, "lidar", 300, seed=3, noise=0.02, outliers=0.05).anchors.sanitized(640, 480, 0.1, 10.0)
    design = anchor_design(bases, a, 0.02)
    ga = solve(design, loose_prior(bases, PriorConfig(), design), SolverConfig(), FitLevel.SCALE_SHIFT)
    prior = prior_around(bases, ga.weights[0], ga.weights[-1], PriorConfig())
    ref = solve(relative_to_fit(design, solve(design, prior).weights), prior)  # the pipeline's refit

    def t(x):
        return torch.as_tensor(np.asarray(x), dtype=torch.float64)[None]

    maps = t(bases.maps).requires_grad_(True)
    td = ft.anchor_design(
        maps, t(bases.inv_rel), t(a.u), t(a.v), t(a.depth_m), t(a.weight), torch.ones(1, len(a), dtype=bool), 0.02
    )
    fit = ft.fit_field(td, torch.tensor([bases.scale_inv_rel], dtype=torch.float64))
    np.testing.assert_allclose(fit.weights[0].detach().numpy(), ref.weights, rtol=1e-4, atol=1e-6)
    fit.weights.square().sum().backward()
    assert torch.isfinite(maps.grad).all() and maps.grad[:, 1:].abs().sum() > 0


def test_gradients_reach_the_head_finite_difference():
    """Autograd gradient of the end-to-end loss (head -> bases -> ridge solve -> loss) equals central differences."""
    _fastdepth()
    from scale_field_ros.train import Sample, TrainConfig, learned_stack, make_view, sample_loss

    frame, _ = infer("nyu", 2)
    view = make_view(frame, fastdepth_backbone(), TAPS, 40)  # small working resolution: a tiny case
    view = dataclasses.replace(view, taps=tuple(f.double() for f in view.taps), g=view.g.double())
    rng = np.random.default_rng(0)
    a = draw_anchors(frame, "uniform", 40, seed=1).anchors
    gt = frame.depth_m
    pix = rng.choice(np.flatnonzero(gt.ravel() > 0), 500, replace=False)
    rows, cols = np.divmod(pix, gt.shape[1])
    sample = Sample(view, a.u, a.v, a.depth_m, a.weight, cols, rows, 1.0 / gt.ravel()[pix])
    head = _head(k=2, hidden=4).double()
    cfg, basis_cfg = TrainConfig(), BasisConfig(work_long_side=40)

    def loss_fn():
        return sample_loss(learned_stack(head, [sample], basis_cfg)[0], sample, cfg, "l1_inv")

    loss = loss_fn()
    loss.backward()
    checked = 0
    for param in (head.body[4].weight, head.body[0].weight, head.proj[1].weight):
        flat = param.data.view(-1)
        grad = param.grad.view(-1)
        for i in np.argsort(-grad.abs().numpy())[:2]:
            old = float(flat[i])
            eps = 1e-5 * max(1.0, abs(old))
            with torch.no_grad():
                flat[i] = old + eps
                up = float(loss_fn())
                flat[i] = old - eps
                down = float(loss_fn())
                flat[i] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - float(grad[i])) <= 1e-3 * abs(fd) + 1e-7, (param.shape, i, fd, float(grad[i]))
            checked += 1
    assert checked == 6 and float(head.proj[1].weight.grad.abs().sum()) > 0


def test_checkpoint_round_trip_and_wrong_backbone(tmp_path):
    _fastdepth()
    head = _head(k=3)
    path = save_checkpoint(tmp_path / "head.pt", head, {"note": "test"})
    loaded, record = load_checkpoint(path, "fastdepth")
    assert loaded.spec == head.spec and record == {"note": "test"}
    out = infer("kitti_semidense", 0)[1]
    np.testing.assert_array_equal(
        LearnedBases(head)(out, BasisConfig(), 100).maps, LearnedBases(loaded)(out, BasisConfig(), 100).maps
    )
    with pytest.raises(CheckpointError, match="trained for backbone 'fastdepth'"):
        load_checkpoint(path, "depth_anything_v2_small")
    foreign = BackboneOutput(out.relative, out.kind, out.metric, {"dec4": np.zeros((8, 56, 56), np.float32)})
    with pytest.raises(CheckpointError, match="needs feature 'dec3' with 120 channels"):
        LearnedBases(loaded)(foreign, BasisConfig(), 100)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a basis head checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_onnx_export_with_head_matches_pytorch(tmp_path, fastdepth_path):
    _fastdepth()
    pytest.importorskip("onnxruntime")
    from scale_field_ros.backbones import load_backbone
    from scale_field_ros.basis_head import FastDepthWithHead, export_fastdepth_with_head
    from scale_field_ros.tflite_weights import load_fastdepth

    head = _head(k=3)
    ckpt = save_checkpoint(tmp_path / "head.pt", head)
    onnx_path = export_fastdepth_with_head(fastdepth_path, ckpt, tmp_path / "fastdepth_head.onnx")
    ort_backbone = load_backbone("fastdepth", onnx_path, runtime="onnxruntime")
    frame, torch_out = infer("sun3d_seq", 1)
    ort_out = ort_backbone.infer(frame.rgb)
    assert ort_out.features[BASES_OUTPUT].shape == (3, 56, 56)
    # PyTorch: the same combined module on the same preprocessed input
    model, _ = load_fastdepth(fastdepth_path)
    with torch.no_grad():
        x = torch.from_numpy(ort_backbone.preprocess(frame.rgb))
        depth, _, maps = FastDepthWithHead(model.eval(), head.eval())(x)
    np.testing.assert_allclose(ort_out.features[BASES_OUTPUT], maps[0].numpy(), rtol=1e-3, atol=1e-3)
    # the provider uses the graph's maps; they match the head run here on the torch backbone's features
    from_graph = LearnedBases(head)(ort_out, BasisConfig(), 100).maps
    from_head = LearnedBases(head)(torch_out, BasisConfig(), 100).maps
    assert np.corrcoef(from_graph.ravel(), from_head.ravel())[0, 1] > 0.95
    # a checkpoint whose head did not make the graph's maps (retrained, not re-exported): its own head runs, with a
    # warning, on the same graph output's features, instead of the graph's maps being used as if they were its own
    other = LearnedBases(_head(k=3, seed=1))
    assert ort_out.learned_bases_head == LearnedBases(head).digest != other.digest
    with pytest.warns(UserWarning, match="re-export"):
        mine = other(ort_out, BasisConfig(), 100).maps
    without_graph_maps = dataclasses.replace(
        ort_out, features={k: v for k, v in ort_out.features.items() if k != BASES_OUTPUT}
    )
    np.testing.assert_allclose(mine, other(without_graph_maps, BasisConfig(), 100).maps, atol=1e-6)
    assert np.corrcoef(mine.ravel(), from_graph.ravel())[0, 1] < 0.9


def test_pipeline_uses_the_configured_learned_head_and_falls_back_without_one(tmp_path):
    bb = _fastdepth()
    path = save_checkpoint(tmp_path / "head.pt", _head(k=3), {})
    frame, out = infer("nyu", 0)
    anchors = draw_anchors(frame, "uniform", 200, seed=1).anchors
    learned_cfg = PipelineConfig(max_depth_m=10.0, basis=BasisConfig(source="learned", checkpoint=str(path)))
    pipe = Pipeline(bb, learned_cfg)
    assert isinstance(pipe.bases_fn, LearnedBases)
    res = pipe.process_output(out, anchors)
    assert "learned" in res.basis_signature and np.isfinite(res.depth_m).all()
    with pytest.warns(UserWarning, match="without a checkpoint"):
        fallback = Pipeline(bb, PipelineConfig(max_depth_m=10.0, basis=BasisConfig(source="learned")))
    assert "learned" not in fallback.process_output(out, anchors).basis_signature
    with pytest.raises(CheckpointError, match="trained for backbone 'fastdepth'"):
        Pipeline(type("Other", (), {"name": "depth_anything_v2_small"})(), learned_cfg)


def test_a_checkpoint_with_damaged_weights_is_refused(tmp_path):
    _fastdepth()
    path = save_checkpoint(tmp_path / "head.pt", _head(k=3))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the weights' payload: the archive itself still reads
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "flipped.pt", "fastdepth")


def test_non_finite_features_do_not_reach_the_learned_maps():
    # one inf in a tap made every learned map NaN and the fit fall to the prior ("no usable anchors")
    _fastdepth()
    frame, out = infer("sun3d_seq", 0)
    features = dict(out.features)
    features["dec4"] = features["dec4"].copy()
    features["dec4"][0, 10, 10] = np.inf
    features["dec3"] = features["dec3"].copy()
    features["dec3"][3, 5, 5] = np.nan
    glitched = BackboneOutput(out.relative, out.kind, out.metric, features)
    bases = LearnedBases(_head())(glitched, BasisConfig(), 200)
    assert np.isfinite(bases.maps).all()
    res = Pipeline(None, PipelineConfig(max_depth_m=10.0), bases_fn=LearnedBases(_head())).process_output(
        glitched, draw_anchors(frame, "uniform", 200, seed=0).anchors
    )
    assert res.fit.level.value == "full" and np.isfinite(res.depth_m).all()
