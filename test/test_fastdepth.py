"""FastDepth on its published weights: our float network against the int8 TFLite graph, ONNX Runtime
against PyTorch, accuracy on real NYU frames, and clear errors for bad model files."""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np
import pytest

from scale_field_ros.backbone import Backbone, DepthKind

FEATURE_SHAPES = {
    "dec1": (200, 7, 7),
    "dec2": (256, 14, 14),
    "dec3": (120, 28, 28),
    "dec4": (56, 56, 56),
    "dec5": (16, 112, 112),
}


@pytest.fixture(scope="module")
def frames(nyu):
    return list(nyu.frames())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Keep the ONNX export cache of these tests out of the user's cache folder."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCALE_FIELD_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def torch_backbone(fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    return load_backbone(model_path=fastdepth_path, runtime="torch", threads=1)


@pytest.fixture(scope="module")
def ort_backbone(cache, fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    return load_backbone(model_path=fastdepth_path, runtime="onnxruntime", threads=1)


def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def test_float_network_reproduces_the_int8_graph(frames, fastdepth_path):
    """Same 224x224 uint8 input into LiteRT (int8) and our dequantised float network."""
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    import torch

    from scale_field_ros.tflite_weights import load_fastdepth

    model, weights = load_fastdepth(fastdepth_path)
    interpreter = interpreter_mod.Interpreter(model_path=str(fastdepth_path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert weights.output_scale == pytest.approx(out["quantization"][0])
    for frame in frames:
        small = cv2.resize(frame.rgb, (224, 224), interpolation=cv2.INTER_AREA)
        interpreter.set_tensor(inp["index"], small[None])
        interpreter.invoke()
        scale, zero_point = out["quantization"]
        ref_m = (interpreter.get_tensor(out["index"])[0, :, :, 0].astype(np.float32) - zero_point) * scale
        x = torch.from_numpy(small.transpose(2, 0, 1)[None].astype(np.float32) * weights.input_scale)
        with torch.inference_mode():
            depth, _ = model(x)
        ours_m = depth[0, 0].numpy()
        # Measured on the 3 NYU frames: correlation 0.9990-0.9994, mean |diff| 0.031-0.038 m.
        assert np.corrcoef(ours_m.ravel(), ref_m.ravel())[0, 1] > 0.99
        assert np.abs(ours_m - ref_m).mean() < 0.1


def test_onnxruntime_matches_torch(frames, torch_backbone, ort_backbone):
    assert ort_backbone.runtime == "onnxruntime" and torch_backbone.runtime == "torch"
    for frame in frames:
        a, b = torch_backbone.infer(frame.rgb), ort_backbone.infer(frame.rgb)
        # Measured: about 5e-7 on depth, 1e-6 on features (float32 rounding).
        assert _max_rel_diff(a.relative, b.relative) < 1e-4
        assert a.features.keys() == b.features.keys()
        for name in a.features:
            assert _max_rel_diff(a.features[name], b.features[name]) < 1e-4


def test_output_contract(frames, ort_backbone):
    assert isinstance(ort_backbone, Backbone)
    rgb = frames[0].rgb
    out = ort_backbone.infer(rgb)
    assert out.shape == rgb.shape[:2] and out.relative.dtype == np.float32
    assert out.kind is DepthKind.DEPTH and out.metric
    assert {k: v.shape for k, v in out.features.items()} == FEATURE_SHAPES
    for fmap in out.features.values():
        assert fmap.dtype == np.float32 and np.all(np.isfinite(fmap))


def test_raw_depth_is_roughly_metric_on_nyu(frames, torch_backbone):
    for frame in frames:
        depth_m = torch_backbone.infer(frame.rgb).relative
        gt = frame.depth_m
        valid = (gt > 1e-3) & (gt <= frame.max_depth_m)
        abs_rel = float(np.mean(np.abs(depth_m[valid] - gt[valid]) / gt[valid]))
        # Measured (whole frame resized to 224x224, no alignment): AbsRel 0.134, 0.115, 0.114.
        assert 0.05 < abs_rel < 0.2


def test_exported_onnx_file_is_accepted_as_model_path(frames, ort_backbone, cache):
    from scale_field_ros.backbones import load_backbone

    exported = sorted(cache.glob("fastdepth-*.onnx"))
    assert len(exported) == 1
    direct = load_backbone(model_path=exported[0], runtime="auto", threads=1)
    assert direct.runtime == "onnxruntime"
    rgb = frames[1].rgb
    assert _max_rel_diff(ort_backbone.infer(rgb).relative, direct.infer(rgb).relative) < 1e-6
    with pytest.raises(ValueError, match="only with runtime 'onnxruntime'"):
        load_backbone(model_path=exported[0], runtime="torch")


def test_depth_only_onnx_file_runs_without_features(tmp_path, frames, ort_backbone, fastdepth_path):
    """A FastDepth ONNX export of the depth alone (as other tools write it) is accepted: the same depth, no
    features, and the pipeline still builds its bases from the depth."""
    import torch

    from scale_field_ros.backbones import load_backbone
    from scale_field_ros.bases import build_bases
    from scale_field_ros.basis_set import BasisConfig
    from scale_field_ros.fastdepth import DEPTH_OUTPUT, INPUT_SIZE
    from scale_field_ros.onnx_export import export_onnx
    from scale_field_ros.patterns import draw_anchors
    from scale_field_ros.pipeline import Pipeline, PipelineConfig
    from scale_field_ros.tflite_weights import load_fastdepth

    class DepthOnly(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)[0]

    model, _ = load_fastdepth(fastdepth_path)
    path = export_onnx(DepthOnly(model), tmp_path / "depth_only.onnx", (INPUT_SIZE, INPUT_SIZE), [DEPTH_OUTPUT])
    backbone = load_backbone(model_path=path, runtime="onnxruntime", threads=1)
    frame = frames[0]
    out = backbone.infer(frame.rgb)
    assert out.features == {}
    assert _max_rel_diff(ort_backbone.infer(frame.rgb).relative, out.relative) < 1e-6
    result = Pipeline(None, PipelineConfig(max_depth_m=frame.max_depth_m)).process_output(
        out, draw_anchors(frame, "uniform", 200, seed=0).anchors
    )
    assert np.all(np.isfinite(result.depth_m)) and result.fit.level.value == "full"
    names = build_bases(out, BasisConfig(), 1000).names
    assert "depth0" in names and not any(name.startswith("pca") for name in names)


def _retarget_resize_to_bilinear(data: bytes) -> bytes:
    """A well-formed TFLite whose graph differs from FastDepth: nearest-neighbour resizing becomes bilinear."""
    import tflite

    patched = bytearray(data)
    model = tflite.Model.GetRootAsModel(data, 0)
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == tflite.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR:
            table = code._tab  # flatbuffer table: field slots 4 (deprecated int8 code) and 10 (int32 code)
            for slot, fmt in ((4, "<b"), (10, "<i")):
                offset = table.Offset(slot)
                if offset:
                    struct.pack_into(fmt, patched, table.Pos + offset, tflite.BuiltinOperator.RESIZE_BILINEAR)
    assert bytes(patched) != data
    return bytes(patched)


def _scale_of_first_int8_weight_set_to(data: bytes, value: float) -> bytes:
    """The file with the first per-channel scale of the first int8 weight tensor overwritten (a flipped byte)."""
    import tflite

    patched = bytearray(data)
    graph = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        quant = tensor.Quantization()
        if tensor.Type() == tflite.TensorType.INT8 and quant is not None and quant.ScaleLength() > 1:
            table = quant._tab  # QuantizationParameters: field slot 8 is the scale vector
            struct.pack_into("<f", patched, table.Vector(table.Offset(8)), value)
            return bytes(patched)
    raise AssertionError("no per-channel int8 weights in the file")


@pytest.mark.parametrize("case", ["missing", "truncated", "not_tflite", "other_graph", "bad_onnx", "damaged_scale"])
def test_bad_model_files_raise_one_clear_error(tmp_path, case, fastdepth_path):
    from scale_field_ros.backbones import ModelFileError, load_backbone

    data = fastdepth_path.read_bytes()
    path = tmp_path / ("model.onnx" if case == "bad_onnx" else "model.tflite")
    if case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_tflite":
        path.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    elif case == "other_graph":
        path.write_bytes(_retarget_resize_to_bilinear(data))
    elif case == "bad_onnx":
        path.write_bytes(data)  # a TFLite renamed .onnx
    elif case == "damaged_scale":
        path.write_bytes(_scale_of_first_int8_weight_set_to(data, 1e30))
    expected = {
        "missing": "does not exist",
        "truncated": "truncated",
        "not_tflite": "not a TFLite flatbuffer",
        "other_graph": "operator counts",
        "bad_onnx": "not a readable ONNX model",
        "damaged_scale": "the file is damaged",
    }[case]
    for runtime in ("torch", "onnxruntime"):
        if case == "bad_onnx" and runtime == "torch":
            continue
        with pytest.raises(ModelFileError, match=expected) as info:
            load_backbone(model_path=path, runtime=runtime)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_default_model_path_points_at_shared_models(fastdepth_path):
    from scale_field_ros.backbones import default_model_path

    assert default_model_path() == fastdepth_path
    assert os.path.getsize(default_model_path()) > 0


def test_damaged_onnx_cache_entry_is_rebuilt(frames, ort_backbone, cache, fastdepth_path):
    from scale_field_ros.backbones import load_backbone

    (exported,) = cache.glob("fastdepth-*.onnx")
    exported.write_bytes(b"not an onnx file")
    rebuilt = load_backbone(model_path=fastdepth_path, runtime="onnxruntime", threads=1)
    rgb = frames[2].rgb
    assert _max_rel_diff(ort_backbone.infer(rgb).relative, rebuilt.infer(rgb).relative) < 1e-6


def test_an_installed_package_without_shared_models_says_what_to_set(tmp_path, monkeypatch):
    # a colcon or pip install has no ../shared beside it: without model_path the node must say what to give
    from scale_field_ros.backbones import ModelFileError, load_backbone

    monkeypatch.setenv("SCALE_FIELD_SHARED", str(tmp_path))
    with pytest.raises(ModelFileError, match="set model_path"):
        load_backbone("fastdepth")
