"""Generic ONNX export of a PyTorch backbone network with named outputs.

Any module whose forward takes one Bx3xHxW image tensor and returns tensors, possibly nested in
tuples, lists or dicts, is exported with its outputs flattened in order and named by the caller.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

DEFAULT_OPSET = 17
INPUT_NAME = "image"


def flatten_outputs(out) -> list:
    """Tensors of a nested (tuple / list / dict) network output in order, dicts by insertion order."""
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    return [out]


def export_onnx(
    module,
    path: str | Path,
    input_hw: tuple[int, int],
    output_names: list[str] | tuple[str, ...],
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    input_name: str = INPUT_NAME,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export `module` (eval mode, CPU) to ONNX at `path`, written atomically; returns the path.

    input_hw: (height, width) of the example input (batch 1, 3 channels, float32).
    output_names: one name per flattened output tensor; a count mismatch raises ValueError.
    dynamic: make batch, height and width of the input (and all outputs' leading axes) symbolic.
    metadata: key -> value pairs written into the file's metadata_props (what the graph computes with).
    """
    import torch

    class _Flat(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return tuple(flatten_outputs(self.inner(x)))

    flat = _Flat(module).eval()
    example = torch.zeros(1, 3, int(input_hw[0]), int(input_hw[1]), dtype=torch.float32)
    with torch.inference_mode():
        n_out = len(flat(example))
    if n_out != len(output_names):
        raise ValueError(f"module returns {n_out} tensors but {len(output_names)} output names were given")
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {input_name: {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes.update({name: {0: "batch"} for name in output_names})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent reader never sees a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                flat,
                (example,),
                tmp,
                input_names=[input_name],
                output_names=list(output_names),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,  # the dynamo exporter needs onnxscript; the TorchScript one covers conv nets
            )
        if metadata:
            import onnx

            model = onnx.load(tmp)
            for key, value in metadata.items():
                model.metadata_props.add(key=key, value=value)
            onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
