"""FastDepth as a PyTorch module, shaped exactly like the published 224x224 TFLite graph.

FastDepth (Wofk et al., ICRA 2019) is a MobileNet-v1 encoder followed by an NNConv5 decoder: five
stages of 5x5 depthwise-separable convolution + nearest-neighbour 2x upsampling, with additive skip
connections from the encoder. The released model is NetAdapt-pruned, so channel widths are irregular;
they are listed here as read from the TFLite graph (see `tflite_weights.py`).

Layout mirrored from the graph:
- every 3x3 (depthwise) conv is preceded by a symmetric 1-pixel zero PAD and run VALID, which equals
  PyTorch's `padding=1`; encoder convs have fused ReLU6 and bias, no batch norm (folded);
- every decoder 5x5 depthwise conv is preceded by a 2-pixel PAD (`padding=2`), decoder convs use ReLU;
- upsampling is RESIZE_NEAREST_NEIGHBOR without align_corners / half-pixel centres, i.e. index i -> i // 2,
  which is exactly `F.interpolate(mode="nearest", scale_factor=2)`;
- skips: decoder stage 2/3/4 outputs (after upsampling) are added to encoder blocks 5/3/1;
- a final 1x1 conv with ReLU maps 16 channels to depth in metres.

The network expects RGB scaled to [0, 1] (the int8 graph's input scale is 1/255, zero point 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 224  # the graph's fixed input side (square)
MULTIPLE = 32  # five stride-2 stages: other input sides must be multiples of this
STEM_CHANNELS = 16
# Pointwise output widths of the 13 depthwise-separable encoder blocks and the blocks that halve resolution.
ENCODER_CHANNELS = (56, 88, 120, 144, 256, 408, 376, 272, 288, 296, 328, 480, 512)
ENCODER_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
# Decoder stage output widths.
DECODER_CHANNELS = (200, 256, 120, 56, 16)
SKIP_FROM_BLOCK = {1: 4, 2: 2, 3: 0}  # decoder stage -> encoder block whose output it adds (0-based)
# Names and resolutions (at 224x224 input) of the decoder features `forward` returns beside the depth.
FEATURE_NAMES = ("dec1", "dec2", "dec3", "dec4", "dec5")
DEPTH_OUTPUT = "depth"


class ConvUnit(nn.Module):
    """Conv + bias + fused activation, the unit every TFLite CONV_2D / DEPTHWISE_CONV_2D maps to."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, depthwise: bool, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=c_in if depthwise else 1,
            bias=True,
        )
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.act == "relu6":
            return F.relu6(x)
        if self.act == "relu":
            return F.relu(x)
        return x


class _SeparableBlock(nn.Module):
    """Depthwise kxk conv then pointwise 1x1 conv, each with its own activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, act: str) -> None:
        super().__init__()
        self.dw = ConvUnit(c_in, c_in, kernel, stride, depthwise=True, act=act)
        self.pw = ConvUnit(c_in, c_out, 1, 1, depthwise=False, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class FastDepth(nn.Module):
    """FastDepth network. `forward(x)` takes Bx3x224x224 RGB in [0, 1] and returns
    `(depth, features)`: depth Bx1x224x224 in metres (indoor-trained, roughly metric) and the five
    decoder stage outputs before upsampling, named by `FEATURE_NAMES`:
    dec1 200x7x7, dec2 256x14x14, dec3 120x28x28, dec4 56x56x56, dec5 16x112x112.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvUnit(3, STEM_CHANNELS, 3, 2, depthwise=False, act="relu6")
        blocks = []
        c_in = STEM_CHANNELS
        for c_out, stride in zip(ENCODER_CHANNELS, ENCODER_STRIDES, strict=True):
            blocks.append(_SeparableBlock(c_in, c_out, 3, stride, act="relu6"))
            c_in = c_out
        self.encoder = nn.ModuleList(blocks)
        stages = []
        for c_out in DECODER_CHANNELS:
            stages.append(_SeparableBlock(c_in, c_out, 5, 1, act="relu"))
            c_in = c_out
        self.decoder = nn.ModuleList(stages)
        self.head = ConvUnit(c_in, 1, 1, 1, depthwise=False, act="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.stem(x)
        skips: dict[int, torch.Tensor] = {}
        wanted = set(SKIP_FROM_BLOCK.values())
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i in wanted:
                skips[i] = x
        features: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.decoder):
            x = stage(x)
            features[FEATURE_NAMES[i]] = x
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if i in SKIP_FROM_BLOCK:
                x = x + skips[SKIP_FROM_BLOCK[i]]
        return self.head(x), features


def conv_units(model: FastDepth) -> list[tuple[str, ConvUnit]]:
    """All conv units in the order the TFLite graph runs them, as (state-dict prefix, unit)."""
    units: list[tuple[str, ConvUnit]] = [("stem", model.stem)]
    for i, block in enumerate(model.encoder):
        units += [(f"encoder.{i}.dw", block.dw), (f"encoder.{i}.pw", block.pw)]
    for i, stage in enumerate(model.decoder):
        units += [(f"decoder.{i}.dw", stage.dw), (f"decoder.{i}.pw", stage.pw)]
    units.append(("head", model.head))
    return units


class FastDepthGraph(nn.Module):
    """FastDepth as a backbone graph (`graph_backbone`): normalised Bx3xHxW image (sides multiples of 32)
    -> (depth BxHxW in metres, dec1..dec5)."""

    def __init__(self, model: FastDepth) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        depth, features = self.model(image)
        return (depth[:, 0], *(features[name] for name in FEATURE_NAMES))
