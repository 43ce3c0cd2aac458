"""Concrete backbones and `load_backbone`, the one way the pipeline, CLI and ROS node get a network.

FastDepth runs from its published TFLite file: the weights are dequantised into our PyTorch
definition (`fastdepth.py`), which runs as is (runtime "torch") or after a cached ONNX export under
ONNX Runtime (runtime "onnxruntime", the CPU default). On TensorRT or ONNX Runtime's CUDA provider it runs
as an exported graph (`scale-field export --backbone fastdepth`: the network plus the analytic basis maps,
224x224) through `graph_backbone`, exported into the cache on first use; such a graph file can also be
given as the model file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .backbone import Backbone, BackboneOutput, DepthKind, to_rgb8
from .depth_anything import VARIANTS as DEPTH_ANYTHING_VARIANTS
from .graph_backbone import LEARNED_HEAD_META_KEY
from .runtime_select import (
    ORT_CPU,
    ORT_CUDA,
    REQUESTS,
    TENSORRT,
    TORCH_CPU,
    TORCH_CUDA,
    device_class,
    device_index,
    probe_runtimes,
    select_runtime,
)

LOG = logging.getLogger(__name__)

RUNTIMES = REQUESTS
BACKBONES = ("fastdepth", *DEPTH_ANYTHING_VARIANTS)
# Bump when the network definition or export changes, so stale cached ONNX files are not reused.
EXPORT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is missing, truncated or not the expected network; the message names the file."""


def default_model_path() -> Path:
    """shared/models/fastdepth_224.tflite beside the checkout (env SCALE_FIELD_SHARED overrides shared/)."""
    from .datasets import shared_root

    return shared_root() / "models" / "fastdepth_224.tflite"


def cache_dir() -> Path:
    """Writable folder for derived model files (ONNX exports): $SCALE_FIELD_CACHE, else the user cache."""
    env = os.environ.get("SCALE_FIELD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scale_field_ros"


def load_backbone(
    name: str = "fastdepth",
    model_path: str | Path | None = None,
    runtime: str = "auto",
    threads: int = 0,
    device: str = "auto",
    **options,
) -> Backbone:
    """Build a backbone by name.

    model_path: the network file (FastDepth: its .tflite, or an ONNX file exported from it for
        runtime "onnxruntime"); None uses `default_model_path()`.
    runtime: "auto" (fastest available, see `runtime_select`; the choice and why are logged), a
        family "torch" / "onnxruntime" / "tensorrt", or a concrete name such as "torch-cuda".
    threads: intra-op threads for the runtime; 0 keeps the runtime's default.
    device: "auto", "cpu" or "cuda[:N]": restricts the runtime choice to that device.
    options: precision ("fp16"/"fp32" TensorRT), cache_dir (engines); Depth Anything also random_init and
        available (a `RuntimeAvailability` instead of probing); FastDepth also available.
    Raises `ModelFileError` for a missing/truncated/foreign file, ValueError for unknown names.
    Depth Anything names: model_path is a hub id, a local transformers folder or an exported .onnx.
    """
    if name in DEPTH_ANYTHING_VARIANTS:
        from . import depth_anything

        return depth_anything.load_backbone(name, model_path, runtime, int(threads), device, **options)
    if name != "fastdepth":
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    unknown = set(options) - {"precision", "cache_dir", "available"}
    if unknown:
        raise ValueError(f"options {sorted(unknown)} apply to Depth Anything backbones only")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    threads = int(threads)
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = runtime default), got {threads}")
    path = Path(model_path) if model_path is not None else default_model_path()
    if model_path is None and not path.is_file():
        # the default lives beside a source checkout; an installed package (colcon, pip) has no shared/ there
        raise ModelFileError(
            f"no model_path given and the default {path} does not exist: set model_path (node parameter, "
            "--model) to the FastDepth .tflite, or SCALE_FIELD_SHARED to the folder that holds models/"
        )
    is_onnx = path.suffix.lower() == ".onnx"
    graph_file = is_onnx and _is_graph_onnx(path)
    # FastDepth's own ONNX export runs in ONNX Runtime on the CPU; an exported graph (with its metadata) on any
    # ONNX-based runtime (TensorRT only without bases); the TFLite weights in torch, or on the GPU runtimes as a
    # graph exported on first use.
    if graph_file:
        from .graph_backbone import graph_runtimes, refuse_tensorrt_for_bases
        from .onnxruntime_runtime import read_graph_meta

        meta = read_graph_meta(path)
        refuse_tensorrt_for_bases(meta, runtime)
        supported = graph_runtimes(meta)
    else:
        supported = (ORT_CPU,) if is_onnx else (TENSORRT, TORCH_CUDA, ORT_CUDA, ORT_CPU, TORCH_CPU)
    if is_onnx and not graph_file and runtime not in ("auto", "onnxruntime", ORT_CPU):
        raise ValueError(f"{path} is an ONNX file: it runs only with runtime 'onnxruntime', not {runtime!r}")
    available = options.get("available") or probe_runtimes()
    choice = select_runtime(runtime, available, supported, device_class(device))
    LOG.info("fastdepth runtime: %s", choice.reason)
    if graph_file or choice.runtime in (TENSORRT, ORT_CUDA):
        from .graph_backbone import graph_backbone_on

        # TensorRT runs the network alone: the graph's bases sort whole rows (medians, quantiles), and TensorRT's
        # TopK stops at k = 3840 (FastDepth's need 50176); the bases are then built on the CPU, as for ORT CPU
        bases = "none" if choice.runtime == TENSORRT else "analytic"
        onnx_path = path if graph_file else fastdepth_graph_onnx(path, bases)
        return graph_backbone_on(
            onnx_path,
            choice.runtime,
            threads,
            options.get("precision", "fp16"),
            options.get("cache_dir"),
            device_index(device),
        )
    runtime = "onnxruntime" if choice.runtime == ORT_CPU else "torch"
    device = "cpu" if choice.device == "cpu" else (device if str(device).startswith("cuda") else "cuda")
    if is_onnx:
        if runtime != "onnxruntime":
            raise ValueError(f"{path} is an ONNX file: it runs only with runtime 'onnxruntime', not {runtime!r}")
        (depth_name, *feature_names), props = _check_onnx_file(path)
        runner = _ort_runner(path, [depth_name, *feature_names], threads)
        backbone = FastDepthBackbone(runner, runtime, path, _ort_threads(threads), tuple(feature_names))
        backbone.learned_bases_head = props.get(LEARNED_HEAD_META_KEY, "")
        return backbone
    from .fastdepth import DEPTH_OUTPUT, FEATURE_NAMES, FastDepthGraph
    from .tflite_weights import load_fastdepth

    model, weights = load_fastdepth(path)
    if runtime == "torch":
        import torch

        from .torch_runtime import TorchRunner

        if threads > 0:
            torch.set_num_threads(threads)
        runner, used_threads = TorchRunner(FastDepthGraph(model), device), torch.get_num_threads()
    else:
        onnx_path = _cached_onnx(model, weights.sha256)
        runner, used_threads = _ort_runner(onnx_path, [DEPTH_OUTPUT, *FEATURE_NAMES], threads), _ort_threads(threads)
    quantisation = (weights.input_scale, weights.input_zero_point)
    return FastDepthBackbone(runner, runtime, path, used_threads, FEATURE_NAMES, *quantisation)


class FastDepthBackbone:
    """FastDepth behind the `Backbone` protocol: any RGB image in, metres-ish depth at its resolution out.
    `runner`: a `graph_backbone.GraphRunner` whose outputs are the depth, then the features `feature_names`;
    `threads`: the intra-op threads it runs on."""

    name = "fastdepth"
    learned_bases_head = ""  # a graph with a basis head's maps: that head's weights digest (file metadata)

    def __init__(
        self,
        runner,
        runtime: str,
        model_path: Path,
        threads: int,
        feature_names: tuple[str, ...],
        input_scale: float = 1.0 / 255.0,
        input_zero_point: int = 0,
    ) -> None:
        from .fastdepth import INPUT_SIZE

        self._runner = runner
        self.runtime = runtime
        self.model_path = model_path
        self.input_size = INPUT_SIZE
        self.threads = threads
        self._feature_names = tuple(feature_names)
        # The int8 graph's input quantisation tells what float the network expects per uint8 pixel.
        self._input_scale = np.float32(input_scale)
        self._input_zero_point = np.float32(input_zero_point)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """RGB image -> 1x3xSxS float32 network input (whole image resized, (pixel - zero_point) * scale)."""
        image = to_rgb8(rgb)
        h, w = image.shape[:2]
        s = self.input_size
        # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
        interp = cv2.INTER_AREA if h * w > s * s else cv2.INTER_LINEAR
        small = cv2.resize(image, (s, s), interpolation=interp)
        x = np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32)
        return (x - self._input_zero_point) * self._input_scale

    def infer(self, rgb: np.ndarray) -> BackboneOutput:
        import torch

        image = to_rgb8(rgb)
        h, w = image.shape[:2]
        depth, *features = (t.cpu().numpy() for t in self._runner.run(torch.from_numpy(self.preprocess(image))))
        depth_small = depth.reshape(depth.shape[-2:])  # 1x1xSxS from an ONNX export, 1xSxS from the torch graph
        depth_m = cv2.resize(depth_small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32, copy=False)
        return BackboneOutput(
            relative=depth_m,
            kind=DepthKind.DEPTH,
            metric=True,  # trained on NYU in metres: roughly metric indoors, still to be corrected
            features={
                k: np.ascontiguousarray(v[0], dtype=np.float32)
                for k, v in zip(self._feature_names, features, strict=True)
            },
            learned_bases_head=self.learned_bases_head,
        )


def _ort_runner(onnx_path: Path, outputs: list[str], threads: int):
    """A FastDepth ONNX export (`outputs`: the depth first) in ONNX Runtime on the CPU."""
    from .onnxruntime_runtime import OnnxRuntimeRunner

    try:
        return OnnxRuntimeRunner(onnx_path, ["CPUExecutionProvider"], threads, outputs)
    except Exception as exc:  # ONNX Runtime raises its own exception types on a file it cannot load
        raise ModelFileError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc


def _ort_threads(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


def _is_graph_onnx(path: Path) -> bool:
    """An ONNX file written by `scale-field export` (it carries the graph metadata)."""
    from .onnxruntime_runtime import read_graph_meta

    try:
        return read_graph_meta(path).backbone == "fastdepth"
    except (ValueError, FileNotFoundError):
        return False


def fastdepth_graph_onnx(tflite_path: Path, bases: str = "analytic") -> Path:
    """FastDepth, with the analytic bases (`bases` "analytic") or without ("none"), as one graph at 224x224
    (what `scale-field export --backbone fastdepth [--bases ...]` writes), exported once per weights file and
    basis choice into the cache for the GPU runtimes."""
    from .basis_set import BasisConfig
    from .export import build_graph, export_onnx
    from .fastdepth import INPUT_SIZE
    from .hashing import file_sha256, text_digest

    signature = file_sha256(tflite_path)[:16]
    if bases != "none":
        signature += "-" + text_digest(BasisConfig().maps_signature(), 8)
    name = f"fastdepth-graph-{bases}-{signature}-v{EXPORT_VERSION}.onnx"
    folders = (cache_dir() / "onnx", Path(tempfile.gettempdir()) / "scale_field_ros")
    for folder in folders:
        if (folder / name).is_file() and _is_graph_onnx(folder / name):
            return folder / name  # a damaged file fails the check and is exported again
    module, meta = build_graph("fastdepth", tflite_path, bases=bases)
    for folder in folders:
        target = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial.onnx")
            export_onnx(module, meta, partial, height=INPUT_SIZE, width=INPUT_SIZE)
            partial.replace(target)
            return target
        except OSError:
            continue  # cache folder not writable: fall back to the temp dir
    raise ModelFileError(f"could not write the graph export {name} to {cache_dir()} or the temp dir")


def _check_onnx_file(path: Path) -> tuple[list[str], dict[str, str]]:
    """The outputs of an ONNX file with FastDepth's interface (input 1x3x224x224, output 'depth'), the depth
    first and then the others (the features, in the file's order), and its metadata; else `ModelFileError`."""
    from .fastdepth import DEPTH_OUTPUT, INPUT_SIZE

    expected = f"an ONNX export of FastDepth (input 1x3x{INPUT_SIZE}x{INPUT_SIZE}, output '{DEPTH_OUTPUT}')"
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; expected {expected}")
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        outputs = [o.name for o in model.graph.output]
        props = {p.key: p.value for p in model.metadata_props}
    except Exception as exc:
        raise ModelFileError(f"model file {path} is not a readable ONNX model ({exc}); expected {expected}") from exc
    if dims != [1, 3, INPUT_SIZE, INPUT_SIZE] or DEPTH_OUTPUT not in outputs:
        raise ModelFileError(f"model file {path} has input {dims} and outputs {outputs}; expected {expected}")
    return [DEPTH_OUTPUT, *(name for name in outputs if name != DEPTH_OUTPUT)], props


def _cached_onnx(model, sha256: str) -> Path:
    """The ONNX export of `model`, made once per model file (keyed by its sha256) and reused."""
    from .fastdepth import DEPTH_OUTPUT, FEATURE_NAMES, INPUT_SIZE
    from .onnx_export import export_onnx

    name = f"fastdepth-{sha256[:16]}-v{EXPORT_VERSION}.onnx"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / "scale_field_ros"):
        target = folder / name
        if target.is_file():
            try:
                _check_onnx_file(target)
                return target
            except ModelFileError:
                pass  # damaged cache entry: export again over it
        try:
            return export_onnx(model, target, (INPUT_SIZE, INPUT_SIZE), [DEPTH_OUTPUT, *FEATURE_NAMES])
        except OSError:
            continue  # cache folder not writable: fall back to the temp dir
    raise ModelFileError(f"could not write the ONNX export {name} to {cache_dir()} or the temp dir")
