"""Depth Anything V2 graph: shapes, feature taps, the restated head against transformers' forward."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scale_field_ros import depth_anything  # noqa: E402
from scale_field_ros.backbone import DepthKind  # noqa: E402
from scale_field_ros.graph_backbone import MAX_DYNAMIC_SIDE, GraphBackbone, network_input_size  # noqa: E402
from scale_field_ros.torch_runtime import TorchRunner  # noqa: E402


def tiny_config():
    return depth_anything.reduced_config("depth_anything_v2_small")


@pytest.fixture(scope="module")
def tiny_model():
    return depth_anything.load_model("depth_anything_v2_small", random_init=True, config=tiny_config())


def test_graph_matches_transformers_forward(tiny_model):
    graph = depth_anything.build_graph(tiny_model, feature_levels=(0, 1, 2, 3))
    x = torch.randn(1, 3, 14 * 9, 14 * 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = graph(x)
        ref = tiny_model(pixel_values=x).predicted_depth
    assert graph.output_names == ("relative", "neck_fused_0", "neck_fused_1", "neck_fused_2", "neck_fused_3")
    torch.testing.assert_close(ours[0], ref, rtol=0, atol=0)
    # Fused maps coarsest first: 1, 2, 4 and 8 times the patch grid, fusion_hidden_size channels.
    for level, fmap in enumerate(ours[1:]):
        assert fmap.shape == (1, 16, 9 * 2**level, 13 * 2**level)


def test_bad_feature_level_and_variant(tiny_model):
    with pytest.raises(ValueError, match="feature level"):
        depth_anything.build_graph(tiny_model, feature_levels=(4,))
    with pytest.raises(ValueError, match="unknown Depth Anything variant"):
        depth_anything.variant("depth_anything_v2_giant")


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="random_init"):
        depth_anything.load_model("depth_anything_v2_small", tmp_path / "nope")


def test_small_config_real_shapes_at_518():
    """The published Small architecture (24.8M parameters) at its training resolution."""
    model = depth_anything.load_model("depth_anything_v2_small", random_init=True)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(24.8e6, rel=0.01)
    graph = depth_anything.build_graph(model)
    with torch.no_grad():
        relative, fused = graph(torch.zeros(1, 3, 518, 518))
    assert relative.shape == (1, 518, 518)
    assert fused.shape == (1, 64, 74, 74)


@pytest.mark.parametrize("name", ["depth_anything_v2_base", "depth_anything_v2_large"])
def test_larger_variant_configs(name):
    v = depth_anything.variant(name)
    cfg = depth_anything.model_config(name)
    assert cfg.backbone_config.hidden_size == v.hidden_size == cfg.reassemble_hidden_size
    assert cfg.backbone_config.out_features == [f"stage{i}" for i in v.out_indices]
    assert cfg.neck_hidden_sizes[-1] <= v.hidden_size


def test_network_input_size_keeps_aspect_and_patch_multiple():
    for h, w in [(480, 640), (375, 1242), (640, 480), (518, 518), (64, 640), (17, 4000)]:
        h_in, w_in = network_input_size(h, w, 518, 14)
        assert h_in % 14 == 0 and w_in % 14 == 0
        # the long side stays within the exported graphs' dynamic range; below it, the short side reaches 518
        assert max(h_in, w_in) <= MAX_DYNAMIC_SIDE
        assert min(h_in, w_in) >= 518 or max(h, w) * 518 / min(h, w) > MAX_DYNAMIC_SIDE
        # Rounding to whole patches moves the aspect ratio by at most one patch
        long_in = max(h_in, w_in)
        assert abs(min(h_in, w_in) - min(h, w) * long_in / max(h, w)) <= 14


def test_backbone_on_real_image(tiny_model):
    from scale_field_ros.datasets import load_dataset, shared_root

    root = shared_root()
    if not (root / "data" / "nyu").exists():
        pytest.skip("shared/data/nyu not available")
    rgb = load_dataset(root / "data" / "nyu").frame(0).rgb
    graph = depth_anything.build_graph(tiny_model)
    backbone = GraphBackbone(depth_anything.graph_meta("depth_anything_v2_small", graph), TorchRunner(graph))
    out = backbone.infer(rgb)
    assert backbone.runtime == "torch-cpu"
    assert out.kind is DepthKind.INVERSE_DEPTH and out.metric is False
    assert out.relative.shape == rgb.shape[:2] and out.relative.dtype == np.float32
    assert np.all(np.isfinite(out.relative)) and out.relative.min() >= 0
    h_in, w_in = network_input_size(*rgb.shape[:2], 518, 14)
    assert out.features["neck_fused_1"].shape == (16, 2 * h_in // 14, 2 * w_in // 14)


def test_load_backbone_picks_runtime_and_caches_export(tmp_path, nyu):
    """auto on this CPU machine: exported once to the cache, run by ONNX Runtime; torch on request."""
    from scale_field_ros.runtime_select import RuntimeAvailability, RuntimeUnavailable

    cpu = RuntimeAvailability(onnxruntime_providers=("CPUExecutionProvider",), torch=True)
    # The published Small exports slowly on 2 shared cores; the reduced architecture takes the same code path.
    reduced = depth_anything.reduced_config("depth_anything_v2_small")
    kw = {"random_init": True, "cache_dir": tmp_path, "available": cpu, "config": reduced}
    ort_backbone = depth_anything.load_backbone("depth_anything_v2_small", **kw)
    assert ort_backbone.runtime == "onnxruntime-cpu"
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    torch_backbone = depth_anything.load_backbone("depth_anything_v2_small", runtime="torch", **kw)
    assert torch_backbone.runtime == "torch-cpu"
    rgb = nyu.frame(0).rgb
    a, b = ort_backbone.infer(rgb), torch_backbone.infer(rgb)
    assert np.max(np.abs(a.relative - b.relative)) <= 1e-3 * np.max(np.abs(b.relative))
    # Second load reuses the cached export; the .onnx itself runs only where ONNX runs.
    again = depth_anything.load_backbone("depth_anything_v2_small", **kw)
    assert list((tmp_path / "onnx").glob("*.onnx")) == exported and again.runtime == "onnxruntime-cpu"
    # a damaged cache file (a write cut short) is exported again, not failed on at every start
    data = exported[0].read_bytes()
    exported[0].write_bytes(data[: len(data) // 2])
    repaired = depth_anything.load_backbone("depth_anything_v2_small", **kw)
    assert exported[0].stat().st_size == len(data) and repaired.runtime == "onnxruntime-cpu"
    with pytest.raises(RuntimeUnavailable, match="not supported"):
        depth_anything.load_backbone("depth_anything_v2_small", exported[0], runtime="torch", available=cpu)
    with pytest.raises(RuntimeUnavailable, match="tensorrt"):
        depth_anything.load_backbone("depth_anything_v2_small", exported[0], runtime="tensorrt", available=cpu)


def test_a_numbered_cuda_device_reaches_the_runners(monkeypatch, tmp_path):
    """`device: cuda:1` runs on that GPU, not on cuda:0: torch gets the device, TensorRT and ONNX Runtime its
    index (each runner is replaced by a recorder: this machine may have no second GPU, or none)."""
    from scale_field_ros import graph_backbone, torch_runtime
    from scale_field_ros.runtime_select import RuntimeAvailability

    gpu = RuntimeAvailability(
        cuda_device="Test GPU",
        tensorrt_version="10.9.0",
        onnxruntime_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        torch=True,
    )
    seen = {}
    monkeypatch.setattr(torch_runtime, "TorchRunner", lambda module, device: seen.setdefault("torch", device))
    monkeypatch.setattr(graph_backbone, "GraphBackbone", lambda meta, runner: runner)
    kw = {"random_init": True, "cache_dir": tmp_path, "available": gpu, "config": tiny_config(), "device": "cuda:1"}
    assert depth_anything.load_backbone("depth_anything_v2_small", runtime="torch", **kw) == "cuda:1"

    def graph_runner(*args, **kwargs):
        seen["graph"] = (args[1], kwargs.get("device_index", args[5] if len(args) > 5 else None))
        return "graph"

    monkeypatch.setattr(graph_backbone, "graph_backbone_on", graph_runner)
    for runtime in ("tensorrt", "onnxruntime-cuda"):
        assert depth_anything.load_backbone("depth_anything_v2_small", runtime=runtime, **kw) == "graph"
        assert seen["graph"] == (runtime, 1)


def test_onnxruntime_cuda_provider_takes_the_device_index(monkeypatch, tmp_path):
    from scale_field_ros import graph_backbone, onnxruntime_runtime

    path = depth_anything.cached_onnx(
        "depth_anything_v2_small", None, random_init=True, cache_dir=tmp_path, config=tiny_config()
    )
    seen = {}

    def runner(onnx_path, providers=None, threads=0):
        seen["providers"] = providers
        return "runner"

    monkeypatch.setattr(onnxruntime_runtime, "OnnxRuntimeRunner", runner)
    monkeypatch.setattr(graph_backbone, "GraphBackbone", lambda meta, r: r)
    graph_backbone.graph_backbone_on(path, "onnxruntime-cuda", device_index=2)
    assert seen["providers"] == [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
def test_a_cuda_device_beyond_the_last_is_refused_clearly(tiny_model):
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match="CUDA device"):
        TorchRunner(depth_anything.build_graph(tiny_model), missing)
