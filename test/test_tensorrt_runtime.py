"""TensorRT runtime on a real GPU: engine build, cache reuse, corrupt-cache rebuild, agreement with PyTorch.

Skips with the reason where TensorRT or CUDA is missing; `import_tensorrt`'s error path runs everywhere.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scale_field_ros.tensorrt_runtime import TensorRTUnavailable, import_tensorrt  # noqa: E402

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(
    not (HAVE_TRT and HAVE_CUDA),
    reason=f"needs TensorRT 10 and CUDA (tensorrt installed: {HAVE_TRT}, CUDA device: {HAVE_CUDA})",
)


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: the missing-package message cannot be exercised")
def test_missing_tensorrt_says_how_to_install():
    with pytest.raises(TensorRTUnavailable, match="pip install 'tensorrt>=10,<11'"):
        import_tensorrt()


@pytest.mark.parametrize("version", ["8.6.1", "11.4.0.106"])
def test_tensorrt_other_than_10_is_refused_with_the_reason(monkeypatch, version):
    # 11 removed BuilderFlag.FP16, which the FP16 build sets; 8 lacks the name-based I/O API
    import sys
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    with pytest.raises(TensorRTUnavailable, match=f"TensorRT {version} found"):
        import_tensorrt()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from scale_field_ros import depth_anything, export

    module, meta = export.build_graph(
        "depth_anything_v2_small", random_init=True, config=depth_anything.reduced_config("depth_anything_v2_small")
    )
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    meta = export.export_onnx(module, meta, path, height=14 * 12, width=14 * 16)
    return module, meta, path


@needs_gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-3), ("fp16", 2e-2)])
def test_engine_matches_torch_and_is_cached(tiny_onnx, tmp_path, precision, tolerance):
    from scale_field_ros.tensorrt_runtime import TensorRTRunner, load_or_build_engine
    from scale_field_ros.torch_runtime import TorchRunner

    module, meta, path = tiny_onnx
    runner = TensorRTRunner(path, meta, precision=precision, cache_dir=tmp_path)
    x = torch.randn(1, 3, *meta.fixed_hw, generator=torch.Generator().manual_seed(0)).cuda()
    ref = TorchRunner(module, "cuda").run(x)
    for a, b in zip(runner.run(x), ref, strict=True):
        diff = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)
        assert diff < tolerance
    _, engine_file, built = load_or_build_engine(path, (1, 3, *meta.fixed_hw), precision, tmp_path)
    assert not built  # second request is served from the cache
    engine_file.write_bytes(engine_file.read_bytes()[:-64])  # truncate: must be rebuilt, not loaded
    _, _, built = load_or_build_engine(path, (1, 3, *meta.fixed_hw), precision, tmp_path)
    assert built


@needs_gpu
def test_graph_backbone_on_tensorrt_real_image(tiny_onnx, tmp_path):
    from scale_field_ros.datasets import load_dataset, shared_root
    from scale_field_ros.graph_backbone import GraphBackbone
    from scale_field_ros.tensorrt_runtime import TensorRTRunner

    root = shared_root() / "data" / "nyu"
    if not root.exists():
        pytest.skip("shared/data/nyu not available")
    _, meta, path = tiny_onnx
    rgb = load_dataset(root).frame(0).rgb
    out = GraphBackbone(meta, TensorRTRunner(path, meta, cache_dir=tmp_path)).infer(rgb)
    assert out.relative.shape == rgb.shape[:2] and np.all(np.isfinite(out.relative))


def test_an_unwritable_engine_cache_keeps_the_engine_just_built(monkeypatch, tmp_path):
    # the build itself needs TensorRT and a GPU; what is checked here is what happens to its result
    from scale_field_ros import tensorrt_runtime
    from scale_field_ros.engine_cache import EngineKey

    key = EngineKey("0" * 64, "10.9.0", "Test GPU", (8, 9), "fp16", (1, 3, 224, 224))
    monkeypatch.setattr(tensorrt_runtime, "make_engine_key", lambda *a: key)
    monkeypatch.setattr(tensorrt_runtime, "build_engine", lambda *a, **k: b"serialized engine")
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    onnx_path = tmp_path / "graph.onnx"
    onnx_path.write_bytes(b"onnx")
    engine, path, built = tensorrt_runtime.load_or_build_engine(onnx_path, key.input_shape, cache_dir=blocked)
    assert engine == b"serialized engine" and built and not path.exists()
