"""TensorRT 10 runtime: build an engine from an exported ONNX graph, cache it, run it on torch CUDA buffers.

- Build: ONNX parser -> builder config (FP16 by default, FP32 on request, workspace limit, a
  persistent timing cache per GPU model and TensorRT version) -> serialized engine. A first build
  takes minutes on a Jetson; progress is logged per builder phase.
- Cache: `engine_cache` keys the engine by the ONNX file's hash, TensorRT version, GPU name and
  compute capability, precision and input shape; a stale or corrupt file is rebuilt, never loaded.
- Run: input and outputs are preallocated torch CUDA tensors whose addresses are bound once
  (`set_tensor_address`); each frame copies the pre-processed image in and calls `execute_async_v3`
  on a dedicated torch CUDA stream. No pycuda.

`tensorrt` is imported lazily: without it, everything else in the package works and asking for this
runtime raises `TensorRTUnavailable` saying how to get it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scale_field_ros.engine_cache import (
    EngineKey,
    default_cache_dir,
    engine_path,
    read_engine,
    timing_cache_path,
    write_engine,
)
from scale_field_ros.graph_backbone import INPUT_NAME, GraphMeta
from scale_field_ros.hashing import file_sha256

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)
DEFAULT_WORKSPACE_BYTES = 2 << 30  # 2 GiB: enough tactics for ViT-L, fits an 8 GB Jetson


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA device for it) is missing."""


def import_tensorrt():
    """The `tensorrt` module (TensorRT 10), or `TensorRTUnavailable` saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install 'tensorrt>=10,<11'` (desktop) or use the JetPack "
            f"python3-libnvinfer package on Jetson ({exc})"
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found; the name-based I/O API needs TensorRT 10+")
    if major > 10:  # 11 removed BuilderFlag.FP16 (weakly typed networks), which the FP16 build sets
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} found; this runtime is written for TensorRT 10: pip install 'tensorrt>=10,<11'"
        )
    return trt


def gpu_identity(device_index: int = 0) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) from torch, or `TensorRTUnavailable` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA device, and torch sees none")
    count = torch.cuda.device_count()
    if not 0 <= device_index < count:
        raise TensorRTUnavailable(f"CUDA device {device_index} requested; torch sees {count} (cuda:0..{count - 1})")
    return torch.cuda.get_device_name(device_index), tuple(torch.cuda.get_device_capability(device_index))


def make_engine_key(
    onnx_path: str | Path, precision: str, input_shape: tuple[int, ...], device_index: int = 0
) -> EngineKey:
    trt = import_tensorrt()
    name, capability = gpu_identity(device_index)
    return EngineKey(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=str(trt.__version__),
        gpu_name=name,
        compute_capability=capability,
        precision=precision,
        input_shape=tuple(int(d) for d in input_shape),
    )


def _progress_monitor(trt):
    """An `IProgressMonitor` that logs builder phases (steps at most every 10 s)."""

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._t0 = time.perf_counter()
            self._last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                LOG.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            now = time.perf_counter()
            if now - self._last > 10.0:
                self._last = now
                LOG.info("TensorRT build: %s step %d (%.0f s elapsed)", phase_name, step, now - self._t0)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return BuildProgress()


def build_engine(
    onnx_path: str | Path,
    input_shape: tuple[int, ...],
    precision: str = "fp16",
    timing_cache: str | Path | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    device_index: int = 0,
) -> bytes:
    """Serialized engine for `onnx_path` at `input_shape` (optimisation profile min = opt = max), built on CUDA
    device `device_index` (TensorRT builds on the current device: its kernels are timed there)."""
    import torch

    with torch.cuda.device(device_index):
        return _build_engine_here(onnx_path, input_shape, precision, timing_cache, workspace_bytes)


def _build_engine_here(onnx_path, input_shape, precision, timing_cache, workspace_bytes) -> bytes:
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision != "fp32":
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    inp = network.get_input(0)
    if inp.name != INPUT_NAME:
        raise ValueError(f"{onnx_path}: first input is {inp.name!r}, expected {INPUT_NAME!r} (use scale-field export)")
    if any(d < 0 for d in inp.shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, input_shape, input_shape, input_shape)
        config.add_optimization_profile(profile)
    elif tuple(inp.shape) != tuple(input_shape):
        raise ValueError(f"{onnx_path} has fixed input {tuple(inp.shape)}, asked to build for {tuple(input_shape)}")
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, False):
            LOG.warning("timing cache %s unusable; starting an empty one", timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), False)
    # Held in a local until the build returns: the binding may not keep the python object alive.
    monitor = _progress_monitor(trt)
    try:
        config.progress_monitor = monitor
    except (AttributeError, TypeError):  # older 10.x bindings without progress monitors
        LOG.info("TensorRT build progress is not reported by this TensorRT version")
    LOG.info("building TensorRT %s %s engine for %s at %s; the first build can take minutes",
             trt.__version__, precision, onnx_path, "x".join(map(str, input_shape)))  # fmt: skip
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT engine build failed for {onnx_path}; see the TensorRT log above")
    LOG.info("TensorRT engine built in %.0f s", time.perf_counter() - t0)
    del monitor
    if timing_cache is not None:
        try:
            _write_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
        except OSError as exc:  # a cache folder we cannot write must not cost the engine just built
            LOG.warning("TensorRT timing cache not written to %s: %s", timing_cache, exc)
    return bytes(serialized)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def load_or_build_engine(
    onnx_path: str | Path,
    input_shape: tuple[int, ...],
    precision: str = "fp16",
    cache_dir: str | Path | None = None,
    force_rebuild: bool = False,
    device_index: int = 0,
) -> tuple[bytes, Path, bool]:
    """(engine bytes, cache file, whether it was built now) for CUDA device `device_index` (the engine is built
    on it and keyed by its name and capability). Rebuilds when the cached file is stale or corrupt."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = make_engine_key(onnx_path, precision, input_shape, device_index)
    path = engine_path(cache_dir, key, onnx_path)
    if not force_rebuild:
        found = read_engine(path, key)
        if found.engine is not None:
            LOG.info("TensorRT engine from cache %s", path)
            return found.engine, path, False
        LOG.info("building TensorRT engine: %s", found.reason)
    timing_cache = timing_cache_path(cache_dir, key)
    engine = build_engine(onnx_path, input_shape, precision, timing_cache=timing_cache, device_index=device_index)
    try:
        write_engine(path, key, engine)
        LOG.info("TensorRT engine cached at %s", path)
    except OSError as exc:  # used from memory; the next start builds it again
        LOG.warning("TensorRT engine not cached at %s (%s): it will be built again on the next start", path, exc)
    return engine, path, True


def _torch_dtype(trt, dtype):
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.INT8: torch.int8,
        trt.DataType.UINT8: torch.uint8,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise ValueError(f"TensorRT tensor type {dtype} has no torch equivalent")
    return table[dtype]


class TensorRTRunner:
    """`GraphRunner` over a TensorRT engine built (or loaded from cache) for the graph in `onnx_path`.

    A dynamic-size ONNX gets one engine per input size, built the first time that size is seen; a
    fixed-size ONNX builds at its own size.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        meta: GraphMeta,
        precision: str = "fp16",
        cache_dir: str | Path | None = None,
        device_index: int = 0,
    ) -> None:
        import torch

        self.trt = import_tensorrt()
        gpu_identity(device_index)
        self.onnx_path = Path(onnx_path)
        self.meta = meta
        self.precision = precision
        self.cache_dir = cache_dir
        self.device = torch.device("cuda", device_index)
        self.name = "tensorrt" if precision == "fp16" else f"tensorrt-{precision}"
        self.fixed_hw = meta.fixed_hw
        self.stream = torch.cuda.Stream(device=self.device)
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self._shape: tuple[int, ...] | None = None
        if self.fixed_hw is not None:
            self._bind((1, 3, *self.fixed_hw))

    def _deserialize(self, shape: tuple[int, ...]):
        index = self.device.index
        engine_bytes, path, built = load_or_build_engine(
            self.onnx_path, shape, self.precision, self.cache_dir, device_index=index
        )
        engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None and not built:
            # Hash-intact but unloadable (e.g. a driver update): rebuild once rather than fail.
            LOG.warning("cached engine %s does not deserialize; rebuilding", path)
            engine_bytes, path, _ = load_or_build_engine(
                self.onnx_path, shape, self.precision, self.cache_dir, force_rebuild=True, device_index=index
            )
            engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise RuntimeError(f"TensorRT cannot deserialize the engine it just built ({path})")
        return engine

    def _bind(self, shape: tuple[int, ...]) -> None:
        import torch

        with torch.cuda.device(self.device):  # engine, context and buffers on the runner's device, not the current
            self._bind_here(shape)

    def _bind_here(self, shape: tuple[int, ...]) -> None:
        import torch

        trt = self.trt
        engine = self._deserialize(shape)
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or set(outputs) != set(self.meta.output_names):
            raise ValueError(
                f"engine I/O {inputs} -> {outputs} does not match the graph's {INPUT_NAME} -> {self.meta.output_names}"
            )
        if not context.set_input_shape(INPUT_NAME, shape):
            raise ValueError(f"engine rejects input shape {shape}")
        buffers: dict[str, torch.Tensor] = {}
        for name in names:
            dims = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in dims):
                raise RuntimeError(f"TensorRT left {name} with unresolved shape {dims}")
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            buffers[name] = torch.empty(dims, dtype=dtype, device=self.device)
            context.set_tensor_address(name, buffers[name].data_ptr())
        self._engine, self._context, self._buffers, self._shape = engine, context, buffers, tuple(shape)
        LOG.info("TensorRT %s engine bound for input %s", self.precision, shape)

    def run(self, image: torch.Tensor) -> list[torch.Tensor]:
        import torch

        shape = tuple(image.shape)
        if shape != self._shape:
            if self.fixed_hw is not None:
                raise ValueError(f"engine input is fixed at {self._shape}, got {shape}")
            if self._shape is not None:
                LOG.warning("input size changed %s -> %s: switching TensorRT engine", self._shape, shape)
            self._bind(shape)
        producer = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(producer)  # the pre-processed image is ready before the engine reads it
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self._buffers[INPUT_NAME].copy_(image.to(self.device), non_blocking=True)
            if not self._context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
            # Copies, so a caller holding the outputs is not overwritten by the next frame.
            outs = [self._buffers[name].float().clone() for name in self.meta.output_names]
        producer.wait_stream(self.stream)
        return outs
