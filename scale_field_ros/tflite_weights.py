"""Import FastDepth weights from its int8 TFLite flatbuffer into our PyTorch definition.

The graph is read with the `tflite` flatbuffer parser (no interpreter). Every CONV_2D /
DEPTHWISE_CONV_2D is checked against the module's conv units in graph order (kernel shape, stride,
padding, fused activation, the PAD before it) and dequantised:
- weights int8 with one scale per output channel: w = (q - zero_point) * scale[channel];
- biases int32 with scale input_scale * weight_scale[channel] (stored on the bias tensor itself).
Anything that does not fit raises `ModelFileError` naming the file and what was expected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbones import ModelFileError
from .hashing import file_sha256

TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier, bytes 4..8
# Operator histogram of the published FastDepth 224x224 graph.
EXPECTED_OPS = Counter(
    {"CONV_2D": 20, "DEPTHWISE_CONV_2D": 18, "PAD": 19, "RESIZE_NEAREST_NEIGHBOR": 5, "ADD": 3, "QUANTIZE": 2}
)
_TENSOR_DTYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 9: np.int8}  # tflite.TensorType values we read
_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}  # tflite.ActivationFunctionType
_PADDING_VALID = 1  # tflite.Padding.VALID
EXPECTED = (
    "a FastDepth 224x224 TFLite graph (MobileNet-v1 encoder + NNConv5 decoder: "
    "20 CONV_2D, 18 DEPTHWISE_CONV_2D, 19 PAD, 5 RESIZE_NEAREST_NEIGHBOR, 3 ADD)"
)


@dataclass(frozen=True)
class FastDepthWeights:
    """Float weights for `FastDepth` plus the graph's I/O quantisation, read from one TFLite file."""

    state_dict: dict  # name -> torch.Tensor, loadable into fastdepth.FastDepth
    input_scale: float  # float input = (uint8 pixel - input_zero_point) * input_scale
    input_zero_point: int
    output_scale: float  # metres per uint8 step of the int8 graph's output
    sha256: str  # of the model file


MAX_ABS_WEIGHT = 1e4  # bound on any dequantised weight or bias (the shared FastDepth's largest is 10.8)


def read_model_bytes(path: str | Path) -> bytes:
    """The file's bytes if it looks like a TFLite flatbuffer, else `ModelFileError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; expected {EXPECTED}")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise ModelFileError(
            f"model file {path} is not a TFLite flatbuffer (no 'TFL3' identifier); expected {EXPECTED}"
        )
    return data


class _Graph:
    """Thin accessor over the parsed flatbuffer: operators with names, tensors with data and quantisation."""

    def __init__(self, data: bytes) -> None:
        import tflite

        self._tflite = tflite
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise ValueError(f"expected 1 subgraph, found {self.model.SubgraphsLength()}")
        self.graph = self.model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = []
        for k in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(k)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            self.ops.append((name, op))

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(x) for x in self.graph.Tensors(index).ShapeAsNumpy())

    def quant(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        q = self.graph.Tensors(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return np.ones(1, np.float64), np.zeros(1, np.int64), 0
        return (
            q.ScaleAsNumpy().astype(np.float64),
            q.ZeroPointAsNumpy().astype(np.int64),
            int(q.QuantizedDimension()),
        )

    def array(self, index: int) -> np.ndarray:
        """A constant tensor's stored values in their own dtype and shape."""
        tensor = self.graph.Tensors(index)
        dtype = _TENSOR_DTYPES.get(tensor.Type())
        if dtype is None:
            raise ValueError(f"tensor {tensor.Name().decode()} has unsupported type {tensor.Type()}")
        raw = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        shape = self.shape(index)
        if not isinstance(raw, np.ndarray) or raw.size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise ValueError(f"tensor {tensor.Name().decode()} has no or short data for shape {shape}")
        return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)

    def dequantized(self, index: int) -> np.ndarray:
        values = self.array(index)
        if values.dtype == np.float32:
            return values
        scale, zero_point, axis = self.quant(index)
        bshape = [1] * values.ndim
        if scale.size > 1:
            bshape[axis] = scale.size
        real = (values.astype(np.float64) - zero_point.reshape(bshape)) * scale.reshape(bshape)
        # a flipped byte in a scale or a value loads without a parse error; trained FastDepth's weights stay
        # below 11 in magnitude, so far beyond that the file is damaged (it gave a bias of 4e13 and plausible depth)
        peak = float(np.max(np.abs(real))) if real.size else 0.0
        if not (np.isfinite(peak) and peak <= MAX_ABS_WEIGHT):
            name = self.graph.Tensors(index).Name().decode()
            raise ValueError(f"tensor {name} dequantises to {peak:.3g}, beyond {MAX_ABS_WEIGHT:g}: the file is damaged")
        return real.astype(np.float32)

    def options(self, op, cls_name: str):
        opts = getattr(self._tflite, cls_name)()
        table = op.BuiltinOptions()
        opts.Init(table.Bytes, table.Pos)
        return opts


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def read_fastdepth_weights(path: str | Path) -> FastDepthWeights:
    """Read and dequantise a FastDepth TFLite file; `ModelFileError` if it is missing, truncated or foreign."""
    data = read_model_bytes(path)
    try:
        return _read(data, file_sha256(path))
    except ModelFileError:
        raise
    except Exception as exc:  # any parse failure of a damaged flatbuffer lands here, with its reason
        raise ModelFileError(
            f"model file {path} is truncated, corrupt or not FastDepth ({exc}); expected {EXPECTED}"
        ) from exc


def _read(data: bytes, sha256: str) -> FastDepthWeights:
    import torch

    from .fastdepth import INPUT_SIZE, SKIP_FROM_BLOCK, FastDepth, conv_units

    g = _Graph(data)
    found = Counter(name for name, _ in g.ops)
    _check(found == EXPECTED_OPS, f"operator counts {dict(found)} differ from {dict(EXPECTED_OPS)}")

    inputs, outputs = g.graph.InputsAsNumpy(), g.graph.OutputsAsNumpy()
    _check(len(inputs) == 1 and len(outputs) == 1, "expected one input and one output tensor")
    _check(g.shape(inputs[0]) == (1, INPUT_SIZE, INPUT_SIZE, 3), f"input shape {g.shape(inputs[0])}")
    _check(g.shape(outputs[0]) == (1, INPUT_SIZE, INPUT_SIZE, 1), f"output shape {g.shape(outputs[0])}")
    in_scale, in_zp, _ = g.quant(inputs[0])
    out_scale, _, _ = g.quant(outputs[0])

    model = FastDepth()
    units = conv_units(model)
    conv_ops = [(name, op) for name, op in g.ops if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    _check(len(conv_ops) == len(units), f"{len(conv_ops)} convolutions, expected {len(units)}")
    pad_of = {}  # tensor produced by a PAD -> its per-side spatial padding
    for name, op in g.ops:
        if name == "PAD":
            pads = g.array(op.Inputs(1)).reshape(-1, 2)
            pad_of[op.Outputs(0)] = pads
    producer = {}  # output tensor -> conv unit prefix, to check the skip connections
    state: dict[str, torch.Tensor] = {}
    for (prefix, unit), (name, op) in zip(units, conv_ops, strict=True):
        conv = unit.conv
        depthwise = conv.groups > 1
        _check(
            name == ("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"),
            f"{prefix}: found {name}",
        )
        opts = g.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
        act = _ACTIVATIONS.get(opts.FusedActivationFunction(), "?")
        _check(act == unit.act, f"{prefix}: activation {act}, expected {unit.act}")
        _check(
            (opts.StrideH(), opts.StrideW()) == conv.stride,
            f"{prefix}: stride {(opts.StrideH(), opts.StrideW())}, expected {conv.stride}",
        )
        _check(opts.Padding() == _PADDING_VALID, f"{prefix}: expected VALID padding after an explicit PAD")
        pad = conv.padding[0]
        if pad:
            pads = pad_of.get(op.Inputs(0))
            _check(
                pads is not None and pads.tolist() == [[0, 0], [pad, pad], [pad, pad], [0, 0]],
                f"{prefix}: expected a symmetric {pad}-pixel PAD before it",
            )
        weight = g.dequantized(op.Inputs(1))
        # TFLite stores conv kernels O,H,W,I and depthwise kernels 1,H,W,C; torch wants O,I,H,W.
        weight = weight[0].transpose(2, 0, 1)[:, None] if depthwise else weight.transpose(0, 3, 1, 2)
        _check(
            weight.shape == tuple(conv.weight.shape),
            f"{prefix}: kernel {weight.shape}, expected {tuple(conv.weight.shape)}",
        )
        bias = (
            g.dequantized(op.Inputs(2))
            if op.InputsLength() > 2 and op.Inputs(2) >= 0
            else np.zeros(conv.out_channels, np.float32)
        )
        _check(bias.shape == (conv.out_channels,), f"{prefix}: bias {bias.shape}")
        if g.array(op.Inputs(1)).dtype == np.int8 and g.array(op.Inputs(2)).dtype == np.int32:
            # An int8 conv accumulates in int32 at scale input_scale * weight_scale; the bias must share it.
            expected_scale = g.quant(op.Inputs(0))[0][0] * g.quant(op.Inputs(1))[0]
            _check(
                np.allclose(g.quant(op.Inputs(2))[0], expected_scale, rtol=1e-3),
                f"{prefix}: bias scale is not input_scale * weight_scale",
            )
        state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{prefix}.conv.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
        producer[op.Outputs(0)] = prefix

    added = sorted(
        producer.get(op.Inputs(0)) or producer.get(op.Inputs(1)) or "?" for name, op in g.ops if name == "ADD"
    )
    expected_skips = sorted(f"encoder.{b}.pw" for b in SKIP_FROM_BLOCK.values())
    _check(added == expected_skips, f"skip connections from {added}, expected {expected_skips}")

    model.load_state_dict(state)  # strict: every parameter must have come from the file
    return FastDepthWeights(
        state_dict=state,
        input_scale=float(in_scale[0]),
        input_zero_point=int(in_zp[0]),
        output_scale=float(out_scale[0]),
        sha256=sha256,
    )


def load_fastdepth(path: str | Path):
    """A `FastDepth` module in eval mode with the file's dequantised weights, and the `FastDepthWeights`."""
    from .fastdepth import FastDepth

    weights = read_fastdepth_weights(path)
    model = FastDepth()
    model.load_state_dict(weights.state_dict)
    model.eval()
    return model, weights
