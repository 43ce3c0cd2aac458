"""Graphs with the analytic bases: FastDepth and a random Depth Anything V2, ONNX Runtime against PyTorch,
and the graph's bases against numpy's `build_bases` on the graph's own outputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from scale_field_ros import depth_anything, export  # noqa: E402
from scale_field_ros.backbone import BackboneOutput  # noqa: E402
from scale_field_ros.bases import build_bases  # noqa: E402
from scale_field_ros.basis_set import BasisConfig  # noqa: E402
from scale_field_ros.datasets import load_dataset, shared_root  # noqa: E402
from scale_field_ros.graph_backbone import BASIS_OUTPUTS, GraphBackbone, preprocess  # noqa: E402
from scale_field_ros.onnxruntime_runtime import OnnxRuntimeRunner, read_graph_meta  # noqa: E402
from scale_field_ros.torch_runtime import TorchRunner  # noqa: E402

MAX_REL_DIFF = 1e-3
MODEL = shared_root() / "models" / "fastdepth_224.tflite"


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def _images():
    root = shared_root() / "data"
    if not (root / "nyu").exists() or not (root / "kitti_semidense").exists():
        pytest.skip("shared/data (nyu, kitti_semidense) not available")
    return [load_dataset(root / "nyu").frame(0).rgb, load_dataset(root / "kitti_semidense").frame(0).rgb]


@pytest.fixture(scope="module")
def fastdepth_onnx(tmp_path_factory):
    """FastDepth with bases, exported by the CLI at its default size (the shared TFLite weights)."""
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is not present")
    from scale_field_ros.cli import main

    path = tmp_path_factory.mktemp("onnx") / "fastdepth_bases.onnx"
    assert main(["export", "--backbone", "fastdepth", "--out", str(path)]) == 0
    return path


def test_fastdepth_graph_with_bases_is_valid_and_self_describing(fastdepth_onnx):
    model = onnx.load(str(fastdepth_onnx))
    onnx.checker.check_model(model, full_check=True)
    meta = read_graph_meta(fastdepth_onnx)
    names = [o.name for o in model.graph.output]
    assert names == ["relative", "dec1", "dec2", "dec3", "dec4", "dec5", *BASIS_OUTPUTS] == list(meta.output_names)
    assert meta.fixed_hw == (224, 224) and meta.feature_names == ("dec1", "dec2", "dec3", "dec4", "dec5")
    k = [d.dim_value for d in model.graph.output[-2].type.tensor_type.shape.dim][1]
    assert k == len(meta.basis_names) and meta.basis_names == build_bases_names()


def build_bases_names() -> tuple[str, ...]:
    frame_out = BackboneOutput(
        np.linspace(1, 2, 224 * 224, dtype=np.float32).reshape(224, 224),
        depth_anything.KIND,
        False,
        {"dec5": np.random.default_rng(0).standard_normal((16, 112, 112)).astype(np.float32)},
    )
    return build_bases(frame_out, BasisConfig(), 1000).names


def test_fastdepth_bases_onnxruntime_matches_torch_and_numpy(fastdepth_onnx):
    """ONNX Runtime equals PyTorch on every output; the graph's bases equal numpy's on the graph's outputs."""
    module, meta = export.build_graph("fastdepth", bases="analytic")
    meta = read_graph_meta(fastdepth_onnx)
    ort_runner = OnnxRuntimeRunner(fastdepth_onnx, providers=["CPUExecutionProvider"])
    for rgb in _images():
        image = preprocess(rgb, meta.fixed_hw, meta, torch.device("cpu"))
        ours, ref = ort_runner.run(image), TorchRunner(module).run(image)
        for name, a, b in zip(meta.output_names, ours, ref, strict=True):
            assert a.shape == b.shape and max_rel_diff(a.numpy(), b.numpy()) < MAX_REL_DIFF, name
        n_feat = len(meta.feature_names)
        feats = {n: o[0].numpy() for n, o in zip(meta.feature_names, ref[1 : 1 + n_feat], strict=True)}
        numpy_bases = build_bases(BackboneOutput(ref[0][0].numpy(), meta.kind, True, feats), BasisConfig(), 1000)
        assert numpy_bases.names == meta.basis_names
        graph_maps = ours[-2][0].numpy()
        for i, (a, b) in enumerate(zip(graph_maps[1:], numpy_bases.maps[1:], strict=True)):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99999, meta.basis_names[i + 1]
        np.testing.assert_allclose(ours[-1][0].numpy(), numpy_bases.inv_rel_work, rtol=1e-4)
        # the runner's BackboneOutput carries the bases beside the features; they are never taken for a feature
        out = GraphBackbone(meta, ort_runner).infer(rgb)
        assert set(BASIS_OUTPUTS) <= set(out.features)
        assert build_bases(out, BasisConfig(), 1000).names == meta.basis_names


def test_depth_anything_graph_with_bases(tmp_path):
    cfg = depth_anything.reduced_config("depth_anything_v2_small")
    module, meta = export.build_graph("depth_anything_v2_small", random_init=True, config=cfg, bases="analytic")
    assert meta.output_names[-2:] == BASIS_OUTPUTS and meta.basis_names[-1] == "pca3"
    with pytest.raises(ValueError, match="fixed input size"):
        export.export_onnx(module, meta, tmp_path / "dynamic.onnx")
    path = tmp_path / "da_bases.onnx"
    written = export.export_onnx(module, meta, path, height=14 * 8, width=14 * 11)
    assert read_graph_meta(path) == written
    runner = OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])
    rgb = _images()[1]
    image = preprocess(rgb, written.fixed_hw, written, torch.device("cpu"))
    ours, ref = runner.run(image), TorchRunner(module).run(image)
    assert ours[-2].shape[1] == len(meta.basis_names)
    for name, a, b in zip(written.output_names, ours, ref, strict=True):
        assert a.shape == b.shape and max_rel_diff(a.numpy(), b.numpy()) < MAX_REL_DIFF, name


def test_pipeline_uses_the_graph_bases(fastdepth_onnx):
    """`build_bases` takes the graph's maps when the backbone output has them; the fitted depth stays as
    accurate as with bases built from the camera-resolution map (measured |delta AbsRel| <= 0.006)."""
    import dataclasses

    from scale_field_ros.metrics import compute_metrics, evaluation_mask
    from scale_field_ros.patterns import draw_anchors
    from scale_field_ros.pipeline import Pipeline, PipelineConfig

    meta = read_graph_meta(fastdepth_onnx)
    backbone = GraphBackbone(meta, OnnxRuntimeRunner(fastdepth_onnx, providers=["CPUExecutionProvider"]))
    for dataset, n, cap in (("nyu", 200, 10.0), ("kitti_semidense", 100, 80.0)):
        frame = load_dataset(shared_root() / "data" / dataset).frame(1)
        out = backbone.infer(frame.rgb)
        plain = dataclasses.replace(out, features={k: v for k, v in out.features.items() if k not in BASIS_OUTPUTS})
        from_graph, built = build_bases(out, BasisConfig(), 1000), build_bases(plain, BasisConfig(), 1000)
        assert from_graph.names == built.names == meta.basis_names
        assert from_graph.work_shape == tuple(out.features["bases"].shape[1:]) != built.work_shape
        np.testing.assert_allclose(np.median(from_graph.inv_rel_work), 1.0, atol=0.05)  # units of inv_rel
        errors = []
        for o in (plain, out):
            draw = draw_anchors(frame, "uniform", n, seed=5, noise=0.02)
            mask = evaluation_mask(draw.truth_depth_m, 1e-3, cap, draw.anchors)
            res = Pipeline(None, PipelineConfig(max_depth_m=cap)).process_output(o, draw.anchors)
            errors.append(compute_metrics(res.depth_m, draw.truth_depth_m, mask).absrel)
        assert errors[1] == pytest.approx(errors[0], abs=0.01), errors


def test_graph_bases_with_other_settings_are_not_used(fastdepth_onnx):
    """A graph exported with other basis settings: its maps are ignored with a warning, the CPU builds them."""
    meta = read_graph_meta(fastdepth_onnx)
    assert meta.basis_config == BasisConfig().maps_signature()
    out = GraphBackbone(meta, OnnxRuntimeRunner(fastdepth_onnx, providers=["CPUExecutionProvider"])).infer(_images()[0])
    other = BasisConfig(guided_radius=BasisConfig().guided_radius + 2)
    with pytest.warns(UserWarning, match="basis settings"):
        bases = build_bases(out, other, 1000)
    assert bases.work_shape != tuple(out.features["bases"].shape[1:])  # built from the camera-resolution map
    assert build_bases(out, BasisConfig(), 1000).work_shape == tuple(out.features["bases"].shape[1:])


def test_fastdepth_graph_file_loads_as_a_graph_backbone(fastdepth_onnx):
    """An exported FastDepth graph given as the model file runs through `GraphBackbone` (the path TensorRT and
    ONNX Runtime CUDA take): its depth matches the TFLite-weights backbone's, its bases reach `build_bases`."""
    from scale_field_ros.backbones import FastDepthBackbone, load_backbone

    graph = load_backbone("fastdepth", fastdepth_onnx)
    plain = load_backbone("fastdepth")
    assert isinstance(graph, GraphBackbone) and isinstance(plain, FastDepthBackbone)
    assert graph.runtime == "onnxruntime-cpu" and graph.meta.backbone == "fastdepth"
    for rgb in _images():
        a, b = graph.infer(rgb), plain.infer(rgb)
        assert a.shape == b.shape == rgb.shape[:2]
        # same network and weights; the graph resizes the image on its own (antialiased bicubic, not cv2 area)
        assert np.corrcoef(a.relative.ravel(), b.relative.ravel())[0, 1] > 0.995  # measured 0.9995-0.9996
        assert np.median(np.abs(a.relative - b.relative) / b.relative) < 0.04  # measured 0.005 (nyu), 0.023
        assert build_bases(a, BasisConfig(), 1000).work_shape == tuple(a.features["bases"].shape[1:])


def test_gpu_runtimes_get_fastdepth_as_a_cached_graph(tmp_path, monkeypatch):
    """TensorRT / ONNX Runtime CUDA run FastDepth as the exported graph with bases, made once into the cache."""
    from scale_field_ros import backbones

    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is not present")
    monkeypatch.setenv("SCALE_FIELD_CACHE", str(tmp_path))
    path = backbones.fastdepth_graph_onnx(MODEL)
    assert path.parent == tmp_path / "onnx" and path.is_file()
    meta = read_graph_meta(path)
    assert meta.backbone == "fastdepth" and meta.fixed_hw == (224, 224) and meta.basis_names == build_bases_names()
    assert meta.basis_config == BasisConfig().maps_signature()
    stamp = path.stat().st_mtime_ns
    assert backbones.fastdepth_graph_onnx(MODEL) == path and path.stat().st_mtime_ns == stamp  # reused
    # TensorRT's graph is the network alone: the bases sort whole rows, and TensorRT's TopK stops at k = 3840
    import onnx

    plain = backbones.fastdepth_graph_onnx(MODEL, "none")
    assert plain != path and not read_graph_meta(plain).basis_names
    assert "TopK" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "TopK" not in {n.op_type for n in onnx.load(str(plain)).graph.node}


def test_a_graph_with_bases_is_kept_off_tensorrt_with_the_reason(fastdepth_onnx):
    """TensorRT cannot build the bases (TopK stops at k = 3840): `auto` on a machine with TensorRT takes ONNX Runtime
    for such a file, and asking for TensorRT says why and what to export instead, before any build."""
    from scale_field_ros.backbones import load_backbone
    from scale_field_ros.graph_backbone import graph_backbone_on
    from scale_field_ros.runtime_select import RuntimeAvailability

    gpu = RuntimeAvailability(
        cuda_device="Test GPU", tensorrt_version="10.9.0", onnxruntime_providers=("CPUExecutionProvider",), torch=True
    )
    assert load_backbone("fastdepth", fastdepth_onnx, available=gpu).runtime == "onnxruntime-cpu"
    for call in (
        lambda: load_backbone("fastdepth", fastdepth_onnx, runtime="tensorrt", available=gpu),
        lambda: graph_backbone_on(fastdepth_onnx, "tensorrt"),
    ):
        with pytest.raises(ValueError, match="--bases none"):
            call()
