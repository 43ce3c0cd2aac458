"""A backbone made of one network graph plus torch pre/post-processing, for any runtime.

Every accelerated runtime (torch on CUDA or CPU, ONNX Runtime, TensorRT) runs the same graph:
normalised 1x3xHxW float32 image in, named outputs out (`relative` 1xHxW first, then feature maps
1xCxhxw). What differs is only the `GraphRunner`. Pre-processing (resize, ImageNet normalisation)
and post-processing (resize back to the camera's resolution) run in torch on the runner's device,
so on a GPU the image is uploaded once as uint8 and only the small outputs come back.

`GraphMeta` describes a graph (what its output means, how to feed it); it is stored in the ONNX
file's metadata so an exported file or engine built from it is self-describing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from scale_field_ros.backbone import BackboneOutput, DepthKind, to_rgb8

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)
META_KEY = "scale_field_ros.graph"
RELATIVE_OUTPUT = "relative"
BASES_OUTPUT = "bases"  # 1xKxhxw analytic basis maps (`bases_torch`), when the graph computes them
INV_REL_WORK_OUTPUT = "inv_rel_work"  # 1xhxw relative inverse depth at their working resolution, median 1
BASIS_OUTPUTS = (BASES_OUTPUT, INV_REL_WORK_OUTPUT)  # last outputs of a graph with bases, in this order
LEARNED_BASES_OUTPUT = "learned_bases"  # a trained basis head's maps, in FastDepth's graph (`basis_head`)
LEARNED_HEAD_META_KEY = "scale_field_ros.learned_bases_head"  # ... and the weights digest of the head behind them
INPUT_NAME = "image"
ASPECT_TOLERANCE = 0.02  # relative aspect change above which a fixed-size graph distorts visibly


@dataclass(frozen=True)
class GraphMeta:
    """How to feed a graph and read its outputs."""

    backbone: str  # e.g. "depth_anything_v2_small"
    kind: DepthKind
    metric: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    multiple: int  # input sides must be multiples of this (the ViT patch size)
    short_side: int  # input short side for dynamic graphs; aspect ratio is kept
    output_names: tuple[str, ...]
    fixed_hw: tuple[int, int] | None = None  # (H, W) when exported at a fixed input size
    basis_names: tuple[str, ...] = ()  # names of the `bases` output's maps; () when the graph has no bases
    basis_config: str = ""  # `BasisConfig.maps_signature()` the bases were built with

    def __post_init__(self) -> None:
        if not self.output_names or self.output_names[0] != RELATIVE_OUTPUT:
            raise ValueError(f"first graph output must be {RELATIVE_OUTPUT!r}, got {self.output_names}")
        if bool(self.basis_names) != (self.output_names[-len(BASIS_OUTPUTS) :] == BASIS_OUTPUTS):
            raise ValueError(
                f"outputs {self.output_names} must end with {BASIS_OUTPUTS} exactly when basis names are given"
            )
        if self.multiple < 1 or self.short_side < self.multiple:
            raise ValueError(f"bad input geometry: multiple {self.multiple}, short side {self.short_side}")
        if self.fixed_hw is not None and any(s % self.multiple for s in self.fixed_hw):
            raise ValueError(f"fixed input size {self.fixed_hw} is not a multiple of {self.multiple}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The feature-map outputs (between `relative` and the basis outputs)."""
        return self.output_names[1 : len(self.output_names) - (len(BASIS_OUTPUTS) if self.basis_names else 0)]

    def to_json(self) -> str:
        d = asdict(self)
        d["kind"] = self.kind.value
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> GraphMeta:
        try:
            d = json.loads(text)
            d["kind"] = DepthKind(d["kind"])
            for key in ("mean", "std", "output_names", "basis_names"):
                if key in d:
                    d[key] = tuple(d[key])
            if d.get("fixed_hw") is not None:
                d["fixed_hw"] = tuple(int(s) for s in d["fixed_hw"])
            return GraphMeta(**d)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"graph metadata is not valid: {exc}") from exc


MAX_DYNAMIC_SIDE = 2044  # largest dynamic side; TensorRT profiles and position-embedding resizes stay sane


def network_input_size(
    height: int, width: int, short_side: int, multiple: int, max_side: int = MAX_DYNAMIC_SIDE
) -> tuple[int, int]:
    """(H, W) for the network: short side scaled to at least `short_side`, aspect kept, sides multiples of `multiple`.

    Rounds each side to the nearest multiple, but never below `short_side` on the short side (the
    "lower bound" policy of the Depth Anything processor), so the aspect error is under one patch. A long side
    that would pass `max_side` (a 64 x 640 strip: 518 x 5180, minutes and tens of GB on a CPU) is brought to
    it instead, the short side following below `short_side`.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = short_side / min(height, width)

    def side(length: int) -> int:
        return max(multiple, int(round(length * scale / multiple)) * multiple)

    h_in, w_in = side(height), side(width)
    lower = math.ceil(short_side / multiple) * multiple
    if height <= width:
        h_in = max(h_in, lower)
    else:
        w_in = max(w_in, lower)
    if max(h_in, w_in) > max_side:
        fit = max_side / max(height, width)
        h_in, w_in = (max(multiple, int(length * fit) // multiple * multiple) for length in (height, width))
    return h_in, w_in


@dataclass(frozen=True)
class StageTimes:
    """Milliseconds of the last `infer` call, with the device synchronised at stage borders."""

    preprocess: float = 0.0
    network: float = 0.0
    postprocess: float = 0.0


class GraphRunner(Protocol):
    """Runs the graph on its device: normalised 1x3xHxW tensor -> outputs in `GraphMeta.output_names` order."""

    name: str  # runtime name, e.g. "tensorrt", "torch-cuda", "onnxruntime-cpu"
    device: torch.device
    fixed_hw: tuple[int, int] | None  # input size the runner is bound to, None when any size works

    def run(self, image: torch.Tensor) -> list[torch.Tensor]: ...


def preprocess(rgb: np.ndarray, size_hw: tuple[int, int], meta: GraphMeta, device: torch.device) -> torch.Tensor:
    """RGB uint8 HxWx3 -> normalised float32 1x3xHxW on `device` (uploaded as uint8, resized there)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    img = torch.from_numpy(rgb).to(device, non_blocking=True)
    x = img.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(size_hw):
        # Antialiased bicubic, clamped: cubic overshoot would push values outside the trained range.
        x = F.interpolate(x, size=size_hw, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    mean = torch.tensor(meta.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def resize_relative(relative: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """1xhxw network output -> HxW at the camera's resolution (bilinear)."""
    import torch.nn.functional as F  # noqa: N812

    x = relative.float().reshape(1, 1, *relative.shape[-2:])
    if tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False)
    return x[0, 0]


@dataclass
class GraphBackbone:
    """`Backbone` over a `GraphRunner`: the product's backbone for every accelerated runtime."""

    meta: GraphMeta
    runner: GraphRunner
    name: str = ""
    runtime: str = ""
    last_times: StageTimes = field(default_factory=StageTimes)
    _warned_aspect: bool = False

    def __post_init__(self) -> None:
        self.name = self.name or self.meta.backbone
        self.runtime = self.runtime or self.runner.name

    def network_input_hw(self, height: int, width: int) -> tuple[int, int]:
        fixed = self.runner.fixed_hw or self.meta.fixed_hw
        if fixed is None:
            return network_input_size(height, width, self.meta.short_side, self.meta.multiple)
        aspect_change = abs((fixed[1] / fixed[0]) / (width / height) - 1.0)
        if aspect_change > ASPECT_TOLERANCE and not self._warned_aspect:
            LOG.warning(
                "%s: graph input is fixed at %dx%d but images are %dx%d; the image is stretched "
                "(aspect off by %.0f%%). Export with --width/--height matching the camera, or dynamic.",
                self.name,
                fixed[1],
                fixed[0],
                width,
                height,
                100 * aspect_change,
            )
            self._warned_aspect = True
        return fixed

    def infer(self, rgb: np.ndarray) -> BackboneOutput:
        import torch

        rgb8 = to_rgb8(rgb)
        height, width = rgb8.shape[:2]
        device = self.runner.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        with torch.inference_mode():
            t0 = time.perf_counter()
            image = preprocess(rgb8, self.network_input_hw(height, width), self.meta, device)
            sync()
            t1 = time.perf_counter()
            outputs = self.runner.run(image)
            sync()
            t2 = time.perf_counter()
            if len(outputs) != len(self.meta.output_names):
                raise RuntimeError(
                    f"{self.runtime} returned {len(outputs)} outputs, graph declares {self.meta.output_names}"
                )
            relative = resize_relative(outputs[0], (height, width))
            relative_np = relative.cpu().numpy().astype(np.float32, copy=False)
            # feature maps, then (graphs with bases) the basis outputs under their names: see `bases.pick_feature`
            names = self.meta.output_names[1:]
            features = {  # C x h x w each (inv_rel_work: 1 x h x w)
                name: out.reshape(-1, *out.shape[-2:]).float().cpu().numpy()
                for name, out in zip(names, outputs[1:], strict=True)
            }
            t3 = time.perf_counter()
        self.last_times = StageTimes(1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2))
        if not np.all(np.isfinite(relative_np)):
            # FP16 overflow or a broken engine: keep the frame usable downstream, but say so.
            LOG.warning("%s (%s) produced non-finite relative depth; replaced by 0", self.name, self.runtime)
            relative_np = np.nan_to_num(relative_np, nan=0.0, posinf=0.0, neginf=0.0)
        if self.meta.kind is DepthKind.INVERSE_DEPTH:
            relative_np = np.maximum(relative_np, 0.0)  # bilinear resize keeps >= 0; guards engines without the ReLU
        return BackboneOutput(
            relative=relative_np,
            kind=self.meta.kind,
            metric=self.meta.metric,
            features=features,
            graph_basis_config=self.meta.basis_config,
        )


TENSORRT_WITH_BASES = (
    "the graph was exported with its bases (scale-field export --bases analytic), which TensorRT cannot build: "
    "they sort whole rows and TensorRT's TopK stops at k = 3840; export with --bases none for TensorRT (the bases "
    "are then built on the CPU), or run this file on onnxruntime"
)


def graph_runtimes(meta: GraphMeta) -> tuple[str, ...]:
    """The runtimes that can run an exported graph: ONNX Runtime always, TensorRT only without the bases."""
    from scale_field_ros import runtime_select as rs

    return (rs.ORT_CUDA, rs.ORT_CPU) if meta.basis_names else (rs.TENSORRT, rs.ORT_CUDA, rs.ORT_CPU)


def refuse_tensorrt_for_bases(meta: GraphMeta, runtime: str) -> None:
    """ValueError with the reason when TensorRT is asked for a graph with bases (`runtime` a request or a choice)."""
    if meta.basis_names and str(runtime).startswith("tensorrt"):
        raise ValueError(TENSORRT_WITH_BASES)


def graph_backbone_on(
    onnx_path, runtime: str, threads: int = 0, precision: str = "fp16", cache_dir=None, device_index: int = 0
) -> GraphBackbone:
    """A `GraphBackbone` running the exported graph `onnx_path` on an ONNX-based runtime of `runtime_select`
    (tensorrt, onnxruntime-cuda or onnxruntime-cpu), the GPU ones on CUDA device `device_index`; the graph's
    metadata says everything else."""
    from scale_field_ros import runtime_select as rs
    from scale_field_ros.onnxruntime_runtime import OnnxRuntimeRunner, read_graph_meta

    meta = read_graph_meta(onnx_path)
    refuse_tensorrt_for_bases(meta, runtime)
    if runtime == rs.TENSORRT:
        from scale_field_ros.tensorrt_runtime import TensorRTRunner

        runner = TensorRTRunner(onnx_path, meta, precision=precision, cache_dir=cache_dir, device_index=device_index)
        return GraphBackbone(meta, runner)
    if runtime not in (rs.ORT_CUDA, rs.ORT_CPU):
        raise ValueError(f"an exported graph runs on tensorrt or onnxruntime, not {runtime!r}")
    providers: list = ["CPUExecutionProvider"]
    if runtime == rs.ORT_CUDA:
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device_index)}))
    return GraphBackbone(meta, OnnxRuntimeRunner(onnx_path, providers=providers, threads=threads))
