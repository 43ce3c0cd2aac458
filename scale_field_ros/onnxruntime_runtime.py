"""Run an exported graph with ONNX Runtime: CUDA provider where installed, CPU otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from scale_field_ros.graph_backbone import META_KEY, GraphMeta

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)


def read_graph_meta(onnx_path: str | Path) -> GraphMeta:
    """The `GraphMeta` an `export` wrote into the ONNX file, or ValueError naming the file."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise ValueError(f"{path} is not a readable ONNX file: {exc}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise ValueError(f"{path} has no {META_KEY!r} metadata; export it with `scale-field export`")
    return GraphMeta.from_json(props[META_KEY])


def session_options(threads: int = 0):
    """ONNX Runtime session options for our backbones: `threads` intra-op threads (0: its default) and all graph
    optimisations. Spin-waiting stays on (ORT's default): with it off, or with 1 thread, the node's
    end-to-end latency rose from about 25 ms to 100-280 ms median on 2 cores (`scale-field bench --node`); the
    cause (stalls in publishing) is not yet understood."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxRuntimeRunner:
    """`GraphRunner` over an ONNX Runtime session; `providers` None picks CUDA when available. `outputs`: the
    outputs `run` returns, in order; None: those of the graph metadata `scale-field export` wrote (the file
    must carry it). A plain network export (FastDepth's own ONNX file) names its outputs instead."""

    def __init__(
        self,
        onnx_path: str | Path,
        providers: list | None = None,  # names, or (name, options) pairs as ONNX Runtime takes them
        threads: int = 0,
        outputs: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        import onnxruntime as ort
        import torch

        self.meta = read_graph_meta(onnx_path) if outputs is None else None
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options(threads), providers=providers)
        used = self.session.get_providers()
        on_cuda = bool(used) and used[0] == "CUDAExecutionProvider"
        self.name = "onnxruntime-cuda" if on_cuda else "onnxruntime-cpu"
        # Pre/post-processing stays on the CPU: outputs come back as numpy either way.
        self.device = torch.device("cpu")
        self.input_name = self.session.get_inputs()[0].name
        in_file = [o.name for o in self.session.get_outputs()]
        self.output_names = list(outputs) if outputs is not None else in_file
        if self.meta is not None and tuple(self.output_names) != self.meta.output_names:
            raise ValueError(f"{onnx_path}: outputs {self.output_names} differ from metadata {self.meta.output_names}")
        missing = [name for name in self.output_names if name not in in_file]
        if missing:
            raise ValueError(f"{onnx_path} has no outputs {missing} (it has {in_file})")
        self.fixed_hw = self.meta.fixed_hw if self.meta is not None else None
        LOG.info("onnxruntime session on %s (providers %s)", self.name, used)

    def run(self, image: torch.Tensor) -> list[torch.Tensor]:
        import torch

        arrays = self.session.run(self.output_names, {self.input_name: image.cpu().numpy()})
        return [torch.from_numpy(a) for a in arrays]
