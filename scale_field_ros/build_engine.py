"""`scale-field build-engine`: build and cache the TensorRT engine of an exported ONNX graph ahead of time.

The runtime finds the engine in the same cache (keyed by ONNX hash, TensorRT version, GPU, precision
and input shape), so the first frame on a robot does not wait minutes for a build.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", required=True, type=Path, help="graph written by `scale-field export`")
    parser.add_argument("--fp32", action="store_true", help="FP32 engine (default FP16)")
    parser.add_argument("--width", type=int, default=None, help="network input width, for a dynamic-size ONNX")
    parser.add_argument("--height", type=int, default=None, help="network input height, for a dynamic-size ONNX")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine cache (default $SCALE_FIELD_CACHE)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a valid cached engine exists")
    parser.add_argument("--device", default="cuda", help="the GPU to build for: cuda or cuda:N (the node's device)")


def engine_input_shape(fixed_hw: tuple[int, int] | None, multiple: int, width: int | None, height: int | None):
    """1x3xHxW the engine is built for: the ONNX's own size, or --width/--height for a dynamic graph."""
    if fixed_hw is not None:
        if width is not None or height is not None:
            given = (height, width)
            if given != tuple(fixed_hw):
                raise ValueError(f"the ONNX is fixed at {fixed_hw[1]}x{fixed_hw[0]}; drop --width/--height")
        return (1, 3, *fixed_hw)
    if width is None or height is None:
        raise ValueError("the ONNX has a dynamic input size: give --width and --height (network input, e.g. 700x518)")
    if width % multiple or height % multiple:
        raise ValueError(f"--width/--height must be multiples of {multiple}, got {width}x{height}")
    return (1, 3, height, width)


def run(args: argparse.Namespace) -> int:
    from scale_field_ros.onnxruntime_runtime import read_graph_meta
    from scale_field_ros.runtime_select import device_class, device_index
    from scale_field_ros.tensorrt_runtime import TensorRTUnavailable, load_or_build_engine

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        on_gpu = device_class(args.device) == "cuda"  # the one parser of device strings
    except ValueError:
        on_gpu = False
    if not on_gpu:
        print(f"scale-field build-engine: error: --device must be cuda or cuda:N, got {args.device!r}", file=sys.stderr)
        return 2
    meta = read_graph_meta(args.onnx)
    shape = engine_input_shape(meta.fixed_hw, meta.multiple, args.width, args.height)
    precision = "fp32" if args.fp32 else "fp16"
    try:
        _, path, built = load_or_build_engine(
            args.onnx,
            shape,
            precision,
            args.cache_dir,
            force_rebuild=args.force,
            device_index=device_index(args.device),
        )
    except TensorRTUnavailable as exc:
        print(f"scale-field build-engine: error: {exc}", file=sys.stderr)
        return 2
    print(f"{'built' if built else 'cached'} {precision} engine for {args.onnx} at {shape}: {path}")
    return 0
