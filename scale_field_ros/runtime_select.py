"""Which runtime runs the backbone: the fastest one this machine and this model support.

`runtime: auto` tries, in order, TensorRT (CUDA), torch on CUDA, ONNX Runtime with its CUDA provider,
ONNX Runtime on CPU, torch on CPU, then TFLite, skipping what is not installed, has no GPU, or cannot
run the given model file, and says why it picked what it picked. The choice is a pure function of
`RuntimeAvailability` (probed once from the machine), so it is tested without a GPU.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

TENSORRT = "tensorrt"
TORCH_CUDA = "torch-cuda"
ORT_CUDA = "onnxruntime-cuda"
ORT_CPU = "onnxruntime-cpu"
TORCH_CPU = "torch-cpu"
TFLITE = "tflite"
AUTO_ORDER = (TENSORRT, TORCH_CUDA, ORT_CUDA, ORT_CPU, TORCH_CPU, TFLITE)
FAMILIES = {"torch": (TORCH_CUDA, TORCH_CPU), "onnxruntime": (ORT_CUDA, ORT_CPU), TENSORRT: (TENSORRT,)}
REQUESTS = tuple(dict.fromkeys(("auto", *FAMILIES, *AUTO_ORDER)))  # what `runtime:` accepts (tensorrt is both)
DEVICES = ("auto", "cuda", "cpu")
GPU_RUNTIMES = frozenset({TENSORRT, TORCH_CUDA, ORT_CUDA})


class RuntimeUnavailable(ValueError):
    """An explicitly requested runtime cannot run here (or cannot run this model)."""


@dataclass(frozen=True)
class RuntimeAvailability:
    """What this machine offers. Empty/None fields mean absent; the `*_note` fields say why."""

    cuda_device: str | None = None  # torch's CUDA device name
    tensorrt_version: str | None = None
    onnxruntime_providers: tuple[str, ...] = ()
    torch: bool = False
    tflite: bool = False
    tensorrt_note: str = "tensorrt not installed"

    def why_not(self, runtime: str) -> str:
        """'' when `runtime` can run here, else the reason it cannot."""
        if runtime == TENSORRT:
            if self.tensorrt_version is None:
                return self.tensorrt_note
            return "" if self.cuda_device else "TensorRT installed but torch sees no CUDA device"
        if runtime in (TORCH_CUDA, TORCH_CPU) and not self.torch:
            return "torch not installed"
        if runtime == TORCH_CUDA:
            return "" if self.cuda_device else "torch sees no CUDA device"
        if runtime == ORT_CUDA:
            return "" if "CUDAExecutionProvider" in self.onnxruntime_providers else "no onnxruntime CUDA provider"
        if runtime == ORT_CPU:
            return "" if "CPUExecutionProvider" in self.onnxruntime_providers else "onnxruntime not installed"
        if runtime == TFLITE:
            return "" if self.tflite else "no TFLite interpreter installed"
        return ""  # torch-cpu with torch present


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str  # one of AUTO_ORDER
    reason: str

    @property
    def device(self) -> str:
        return "cuda" if self.runtime in GPU_RUNTIMES else "cpu"

    def __iter__(self):  # `runtime, reason = select_runtime(...)`
        return iter((self.runtime, self.reason))


def device_class(device: str) -> str:
    """ "auto", "cpu" or "cuda" for a device string ("cuda:1" -> "cuda"); ValueError otherwise."""
    d = str(device)
    if d in DEVICES:
        return d
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda"
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def device_index(device: str) -> int:
    """The CUDA device number of a device string ("cuda:1" -> 1; "cuda", "auto", "cpu" -> 0)."""
    d = str(device)
    return int(d[5:]) if device_class(d) == "cuda" and d.startswith("cuda:") else 0


def select_runtime(
    requested: str,
    available: RuntimeAvailability,
    supported: tuple[str, ...] = AUTO_ORDER,
    device: str = "auto",
) -> RuntimeChoice:
    """The runtime to use and why.

    requested: "auto", a family ("torch", "onnxruntime", "tensorrt") or a concrete name from AUTO_ORDER.
    supported: the concrete runtimes the model can run on (e.g. an .onnx file cannot run in torch).
    device: "auto", or "cuda"/"cpu" to restrict the choice.
    An explicit request that cannot be met raises `RuntimeUnavailable` naming the reason.
    """
    device = device_class(device)
    if requested == "auto":
        candidates = AUTO_ORDER
    elif requested in FAMILIES:
        candidates = FAMILIES[requested]
    elif requested in AUTO_ORDER:
        candidates = (requested,)
    else:
        raise ValueError(f"unknown runtime {requested!r}; expected auto, {', '.join(FAMILIES)} or one of {AUTO_ORDER}")
    skipped = []
    for runtime in candidates:
        if runtime not in supported:
            skipped.append(f"{runtime}: not supported for this model")
            continue
        if device != "auto" and (runtime in GPU_RUNTIMES) != (device == "cuda"):
            skipped.append(f"{runtime}: device {device} requested")
            continue
        why = available.why_not(runtime)
        if why:
            skipped.append(f"{runtime}: {why}")
            continue
        if runtime in GPU_RUNTIMES:
            here = f"on {available.cuda_device or 'the GPU'}"
        else:
            here = "on the CPU"
        why_this = f"requested {requested}" if requested != "auto" else "auto: fastest available"
        reason = f"{runtime} {here} ({why_this})"
        if skipped:
            reason += "; skipped " + "; ".join(skipped)
        return RuntimeChoice(runtime, reason)
    raise RuntimeUnavailable(f"runtime {requested!r} (device {device}) cannot run here: " + "; ".join(skipped))


def probe_runtimes() -> RuntimeAvailability:
    """What this machine offers, without building anything (imports torch/onnxruntime/tensorrt if installed)."""
    cuda_device = None
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        import torch

        if torch.cuda.is_available():
            cuda_device = torch.cuda.get_device_name(0)
    providers: tuple[str, ...] = ()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    trt_version, trt_note = None, "tensorrt not installed"
    if importlib.util.find_spec("tensorrt") is not None:
        from scale_field_ros.tensorrt_runtime import TensorRTUnavailable, import_tensorrt

        try:
            trt_version = str(import_tensorrt().__version__)
        except (TensorRTUnavailable, ImportError, OSError) as exc:  # e.g. libnvinfer missing
            trt_note = str(exc)
    tflite = any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))
    if not tflite and importlib.util.find_spec("tensorflow") is not None:
        tflite = True
    return RuntimeAvailability(
        cuda_device=cuda_device,
        tensorrt_version=trt_version,
        onnxruntime_providers=providers,
        torch=has_torch,
        tflite=tflite,
        tensorrt_note=trt_note,
    )
