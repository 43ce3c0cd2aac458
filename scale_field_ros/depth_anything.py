"""Depth Anything V2 (Small / Base / Large) through Hugging Face `transformers`.

The network predicts affine-invariant *inverse* depth (disparity-like: large is near, unknown scale
and shift), so the backbone it feeds reports `DepthKind.INVERSE_DEPTH` and `metric=False`.

Real use: weights come from `from_pretrained` on a hub id (default `depth-anything/Depth-Anything-V2-
Small-hf` etc., downloaded on first use into the Hugging Face cache) or on a local folder holding
`config.json` + `model.safetensors` (e.g. `huggingface-cli download depth-anything/Depth-Anything-V2-
Small-hf --local-dir models/da2_small`). `random_init=True` builds the same architecture from its
config with random weights: the right shapes and graph, meaningless depth; for tests and for timing.

`DepthAnythingGraph` is the torch module that every runtime executes (directly for torch, exported to
ONNX for ONNX Runtime and TensorRT): normalised image in, relative inverse depth plus the DPT neck's
fused feature maps out. It composes the model's own backbone and neck modules; only the 3-convolution
depth head's forward is restated, because transformers' head sizes its upsampling with python
`int()` on the patch grid, which freezes the input size into an exported graph. The restated head is
checked against `DepthAnythingForDepthEstimation.forward` in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scale_field_ros.backbone import DepthKind

if TYPE_CHECKING:  # torch/transformers are imported lazily so `scale-field --help` stays fast
    import torch

PATCH_SIZE = 14
DEFAULT_SHORT_SIDE = 518  # the resolution the V2 models were trained at
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KIND = DepthKind.INVERSE_DEPTH
METRIC = False


@dataclass(frozen=True)
class Variant:
    """Architecture of one Depth Anything V2 size (values of the published configs)."""

    name: str
    hub_id: str
    hidden_size: int
    num_heads: int
    num_layers: int
    out_indices: tuple[int, ...]  # encoder layers tapped by the DPT neck (1-based, 0 is the stem)
    neck_hidden_sizes: tuple[int, ...]
    fusion_hidden_size: int


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "depth_anything_v2_small",
            "depth-anything/Depth-Anything-V2-Small-hf",
            384,
            6,
            12,
            (3, 6, 9, 12),
            (48, 96, 192, 384),
            64,
        ),
        Variant(
            "depth_anything_v2_base",
            "depth-anything/Depth-Anything-V2-Base-hf",
            768,
            12,
            12,
            (3, 6, 9, 12),
            (96, 192, 384, 768),
            128,
        ),
        Variant(
            "depth_anything_v2_large",
            "depth-anything/Depth-Anything-V2-Large-hf",
            1024,
            16,
            24,
            (5, 12, 18, 24),
            (256, 512, 1024, 1024),
            256,
        ),
    )
}

# Fused neck maps, coarsest first: strides 14, 7, 3.5 and 1.75 input pixels. Level 1 (stride 7,
# `fusion_hidden_size` channels) is fine enough for image-adaptive bases and small enough to copy.
DEFAULT_FEATURE_LEVELS = (1,)


def feature_name(level: int) -> str:
    return f"neck_fused_{level}"


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown Depth Anything variant {name!r}; expected one of {sorted(VARIANTS)}") from None


def model_config(name: str, **overrides: object):
    """`DepthAnythingConfig` of a variant; `overrides` replace top-level or (prefixed `backbone_`) DINOv2 fields."""
    from transformers import DepthAnythingConfig

    v = variant(name)
    backbone = {
        "model_type": "dinov2",
        "hidden_size": v.hidden_size,
        "num_attention_heads": v.num_heads,
        "num_hidden_layers": v.num_layers,
        "out_indices": list(v.out_indices),
        "reshape_hidden_states": False,
        "image_size": DEFAULT_SHORT_SIDE,
        "patch_size": PATCH_SIZE,
    }
    top: dict[str, object] = {
        "reassemble_hidden_size": v.hidden_size,
        "neck_hidden_sizes": list(v.neck_hidden_sizes),
        "fusion_hidden_size": v.fusion_hidden_size,
        "head_hidden_size": 32,
        "depth_estimation_type": "relative",
        "patch_size": PATCH_SIZE,
    }
    for key, value in overrides.items():
        if key.startswith("backbone_"):
            backbone[key.removeprefix("backbone_")] = value
        else:
            top[key] = value
    return DepthAnythingConfig(backbone_config=backbone, **top)


def load_model(name: str, model_path: str | Path | None = None, *, random_init: bool = False, config=None):
    """A `DepthAnythingForDepthEstimation` in eval mode.

    model_path: hub id or local folder for `from_pretrained`; None means the variant's hub id.
    random_init: build from `config` (default: the variant's) with random weights, no download.
    """
    import torch
    from transformers import DepthAnythingForDepthEstimation

    if random_init:
        cfg = config if config is not None else model_config(name)
        torch.manual_seed(0)  # reproducible random weights, so exports and tests are repeatable
        return DepthAnythingForDepthEstimation(cfg).eval()
    source = str(model_path) if model_path is not None else variant(name).hub_id
    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot load Depth Anything weights from {source!r} ({exc}). Give a local folder with "
            "config.json and model.safetensors (huggingface-cli download <hub id> --local-dir DIR), "
            "or use random_init for a weightless build"
        ) from exc
    if model.config.depth_estimation_type != "relative":
        raise ValueError(
            f"{source!r} is a metric Depth Anything checkpoint; this backbone expects the relative "
            "(affine-invariant inverse depth) V2 models"
        )
    return model.eval()


def _graph_class():
    from torch import nn

    class DepthAnythingGraph(nn.Module):
        """Normalised 1x3xHxW image (H, W multiples of 14) -> (inverse depth 1xHxW, fused maps...)."""

        def __init__(self, model, feature_levels: tuple[int, ...] = DEFAULT_FEATURE_LEVELS) -> None:
            super().__init__()
            n_levels = len(model.config.neck_hidden_sizes)
            for level in feature_levels:
                if not 0 <= level < n_levels:
                    raise ValueError(f"feature level {level} outside 0..{n_levels - 1}")
            self.model = model
            self.feature_levels = tuple(feature_levels)
            self.patch_size = int(model.config.patch_size)

        @property
        def output_names(self) -> tuple[str, ...]:
            return ("relative", *(feature_name(level) for level in self.feature_levels))

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            height, width = image.shape[-2], image.shape[-1]
            patch_h, patch_w = height // self.patch_size, width // self.patch_size
            taps = self.model.backbone(image).feature_maps
            fused = self.model.neck(list(taps), patch_h, patch_w)
            head = self.model.head
            # Same layers and order as DepthAnythingDepthEstimationHead.forward, sized from the
            # (symbolic) input shape instead of python ints.
            x = head.conv1(fused[head.head_in_index])
            x = nn.functional.interpolate(
                x, size=(patch_h * self.patch_size, patch_w * self.patch_size), mode="bilinear", align_corners=True
            )
            x = head.activation1(head.conv2(x))
            inv_depth = (head.activation2(head.conv3(x)) * head.max_depth).squeeze(1)
            return (inv_depth, *(fused[level] for level in self.feature_levels))

    return DepthAnythingGraph


def build_graph(model, feature_levels: tuple[int, ...] = DEFAULT_FEATURE_LEVELS):
    """The runtime-agnostic `DepthAnythingGraph` module around a loaded model."""
    return _graph_class()(model, feature_levels).eval()


def graph_meta(name: str, graph, fixed_hw: tuple[int, int] | None = None):
    """`GraphMeta` describing a `DepthAnythingGraph` of variant `name`."""
    from scale_field_ros.graph_backbone import GraphMeta

    return GraphMeta(
        backbone=name,
        kind=KIND,
        metric=METRIC,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        multiple=graph.patch_size,
        short_side=DEFAULT_SHORT_SIDE,
        output_names=graph.output_names,
        fixed_hw=fixed_hw,
    )


def reduced_config(name: str):
    """The variant's architecture shrunk (4 narrow layers, thin neck): every code path, a fraction of the compute.

    For tests and smoke runs on CPU; the published sizes come from `model_config`.
    """
    return model_config(
        name,
        backbone_hidden_size=48,
        backbone_num_attention_heads=2,
        backbone_num_hidden_layers=4,
        backbone_out_indices=[1, 2, 3, 4],
        reassemble_hidden_size=48,
        neck_hidden_sizes=[8, 16, 32, 48],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )


def _source_fingerprint(name: str, source: str, random_init: bool, feature_levels: tuple[int, ...], config) -> str:
    """Digest of what an exported graph depends on: weights source, library versions, taps.

    Local folders contribute each file's size and mtime (cheap, changes when weights are replaced);
    a hub id is taken as immutable per transformers version.
    """
    import torch
    import transformers

    from scale_field_ros.hashing import text_digest

    parts = [name, "random-init" if random_init else source, transformers.__version__, torch.__version__]
    parts.append(",".join(map(str, feature_levels)))
    if config is not None:
        parts.append(config.to_json_string())
    folder = Path(source)
    if not random_init and folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return text_digest("\n".join(parts), 16)


def cached_onnx(
    name: str,
    model_path: str | Path | None = None,
    *,
    random_init: bool = False,
    cache_dir: str | Path | None = None,
    feature_levels: tuple[int, ...] = DEFAULT_FEATURE_LEVELS,
    config=None,
) -> Path:
    """The dynamic-size ONNX graph of a model, exported once into the cache (ONNX Runtime / TensorRT need it)."""
    import logging

    from scale_field_ros import export
    from scale_field_ros.engine_cache import default_cache_dir

    source = str(model_path) if model_path is not None else variant(name).hub_id
    digest = _source_fingerprint(name, source, random_init, feature_levels, config if random_init else None)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "onnx" / f"{name}-{digest}.onnx"
    if path.is_file():
        try:
            from .onnxruntime_runtime import read_graph_meta

            read_graph_meta(path)
            return path
        except (ValueError, OSError) as exc:  # a damaged cache file is exported again
            logging.getLogger(__name__).warning("cached graph %s is unreadable (%s): exporting it again", path, exc)
    logging.getLogger(__name__).info("exporting %s (%s) to %s for the ONNX-based runtimes", name, source, path)
    module, meta = export.build_graph(
        name, model_path, random_init=random_init, feature_levels=feature_levels, config=config
    )
    tmp = path.with_suffix(".partial.onnx")
    export.export_onnx(module, meta, tmp)
    tmp.replace(path)
    return path


def load_backbone(
    name: str = "depth_anything_v2_small",
    model_path: str | Path | None = None,
    runtime: str = "auto",
    threads: int = 0,
    device: str = "auto",  # "auto", "cpu", "cuda" or "cuda:N"
    *,
    random_init: bool = False,
    precision: str = "fp16",
    cache_dir: str | Path | None = None,
    available=None,
    config=None,
):
    """A ready `GraphBackbone` for a Depth Anything V2 variant on the best (or the requested) runtime.

    model_path: hub id or local folder of transformers weights, or an `.onnx` from `scale-field export`
    (then only ONNX Runtime and TensorRT apply). The chosen runtime and the reason are logged.
    `available` overrides the probed `RuntimeAvailability`; `config` the architecture for random_init.
    """
    import logging

    from scale_field_ros import runtime_select as rs
    from scale_field_ros.graph_backbone import GraphBackbone

    variant(name)
    onnx_given = model_path is not None and str(model_path).endswith(".onnx")
    supported = rs.AUTO_ORDER[:-1]
    if onnx_given:
        from scale_field_ros.graph_backbone import graph_runtimes, refuse_tensorrt_for_bases
        from scale_field_ros.onnxruntime_runtime import read_graph_meta

        given_meta = read_graph_meta(model_path)
        refuse_tensorrt_for_bases(given_meta, runtime)
        supported = graph_runtimes(given_meta)
    available = available if available is not None else rs.probe_runtimes()
    choice = rs.select_runtime(runtime, available, supported, device)
    logging.getLogger(__name__).info("%s backbone runtime: %s", name, choice.reason)

    if choice.runtime in (rs.TORCH_CUDA, rs.TORCH_CPU):
        from scale_field_ros.torch_runtime import TorchRunner

        graph = build_graph(load_model(name, model_path, random_init=random_init, config=config))
        runner = TorchRunner(graph, "cpu" if choice.device == "cpu" else f"cuda:{rs.device_index(device)}")
        if choice.device == "cpu" and threads > 0:
            import torch

            torch.set_num_threads(threads)
        return GraphBackbone(graph_meta(name, graph), runner)

    from scale_field_ros.graph_backbone import graph_backbone_on
    from scale_field_ros.onnxruntime_runtime import read_graph_meta

    onnx_path = (
        Path(model_path)
        if onnx_given
        else cached_onnx(name, model_path, random_init=random_init, cache_dir=cache_dir, config=config)
    )
    meta = read_graph_meta(onnx_path)
    if meta.backbone != name:
        raise ValueError(f"{onnx_path} holds a {meta.backbone} graph, not {name}")
    return graph_backbone_on(onnx_path, choice.runtime, threads, precision, cache_dir, rs.device_index(device))
