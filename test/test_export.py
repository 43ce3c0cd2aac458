"""ONNX export of backbone + features: checker-valid, named outputs, ONNX Runtime agrees with PyTorch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from scale_field_ros import depth_anything, export  # noqa: E402
from scale_field_ros.graph_backbone import GraphBackbone, preprocess  # noqa: E402
from scale_field_ros.onnxruntime_runtime import OnnxRuntimeRunner, read_graph_meta  # noqa: E402
from scale_field_ros.torch_runtime import TorchRunner  # noqa: E402

MAX_REL_DIFF = 1e-3


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


@pytest.fixture(scope="module")
def tiny_graph():
    return export.build_graph(
        "depth_anything_v2_small", random_init=True, config=depth_anything.reduced_config("depth_anything_v2_small")
    )


@pytest.fixture(scope="module")
def dynamic_onnx(tiny_graph, tmp_path_factory):
    module, meta = tiny_graph
    path = tmp_path_factory.mktemp("onnx") / "da_tiny_dynamic.onnx"
    written = export.export_onnx(module, meta, path)
    return path, written


def _real_images():
    from scale_field_ros.datasets import load_dataset, shared_root

    root = shared_root() / "data"
    if not (root / "nyu").exists() or not (root / "kitti_semidense").exists():
        pytest.skip("shared/data (nyu, kitti_semidense) not available")
    return [load_dataset(root / "nyu").frame(0).rgb, load_dataset(root / "kitti_semidense").frame(0).rgb]


def test_dynamic_export_is_valid_and_self_describing(dynamic_onnx):
    path, meta = dynamic_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["relative", "neck_fused_1"]
    assert [i.name for i in model.graph.input] == ["image"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param  # height and width are symbolic
    assert read_graph_meta(path) == meta and meta.fixed_hw is None


def test_onnxruntime_matches_torch_on_real_images(tiny_graph, dynamic_onnx):
    """The graph TensorRT would consume, run by ONNX Runtime at two real aspect ratios, against PyTorch."""
    module, _ = tiny_graph
    path, meta = dynamic_onnx
    meta = dataclasses.replace(meta, short_side=14 * 12)  # real aspect ratios, a quarter of the pixels of 518
    ort_runner = OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])
    torch_runner = TorchRunner(module)
    for rgb in _real_images():
        ort_backbone = GraphBackbone(meta, ort_runner)
        torch_backbone = GraphBackbone(meta, torch_runner)
        image = preprocess(rgb, ort_backbone.network_input_hw(*rgb.shape[:2]), meta, torch.device("cpu"))
        ours = ort_runner.run(image)
        ref = torch_runner.run(image)
        for name, a, b in zip(meta.output_names, ours, ref, strict=True):
            assert a.shape == b.shape, name
            assert max_rel_diff(a.numpy(), b.numpy()) < MAX_REL_DIFF, name
        out_ort, out_torch = ort_backbone.infer(rgb), torch_backbone.infer(rgb)
        assert out_ort.relative.shape == rgb.shape[:2]
        assert max_rel_diff(out_ort.relative, out_torch.relative) < MAX_REL_DIFF


def test_fixed_size_export(tiny_graph, tmp_path):
    module, meta = tiny_graph
    path = tmp_path / "fixed.onnx"
    written = export.export_onnx(module, meta, path, height=14 * 8, width=14 * 11)
    assert written.fixed_hw == (112, 154)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 112, 154]
    runner = OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])
    assert runner.fixed_hw == (112, 154)
    x = torch.randn(1, 3, 112, 154, generator=torch.Generator().manual_seed(3))
    for a, b in zip(runner.run(x), TorchRunner(module).run(x), strict=True):
        assert max_rel_diff(a.numpy(), b.numpy()) < MAX_REL_DIFF


def test_export_rejects_bad_sizes_and_backbones(tiny_graph, tmp_path):
    module, meta = tiny_graph
    with pytest.raises(ValueError, match="multiples of 14"):
        export.export_onnx(module, meta, tmp_path / "x.onnx", height=100, width=140)
    with pytest.raises(ValueError, match="both"):
        export.export_onnx(module, meta, tmp_path / "x.onnx", height=112)
    with pytest.raises(ValueError, match="no exportable graph"):
        export.build_graph("resnet")


def test_foreign_onnx_is_refused(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ValueError, match="garbage.onnx"):
        read_graph_meta(bad)


def test_cli_export_reports_bad_size(tmp_path, capsys):
    from scale_field_ros.cli import main

    argv = ["export", "--backbone", "depth_anything_v2_small", "--random-init", "--width", "100", "--height", "140"]
    assert main([*argv, "--out", str(tmp_path / "x.onnx")]) == 2
    assert "multiples of 14" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
