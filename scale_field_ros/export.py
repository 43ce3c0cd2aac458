"""`scale-field export`: one ONNX graph of backbone + basis features with named outputs.

The graph is what ONNX Runtime and TensorRT execute: input `image` (normalised float32 1x3xHxW),
outputs `relative` (1xHxW) then the feature maps the bases use (1xCxhxw), named as in `GraphMeta`,
which is written into the file's metadata so runtimes need nothing else. Fixed size (--width/
--height, multiples of the patch size) gives the fastest engines; without them the height and width
are dynamic (multiples of the patch size).

Uses the torch.export based ONNX exporter (needs `onnxscript`): the TorchScript tracer would freeze
the input size into the graph's resize ops.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from scale_field_ros import depth_anything
from scale_field_ros.graph_backbone import INPUT_NAME, META_KEY, GraphMeta

LOG = logging.getLogger(__name__)
OPSET = 18
MAX_DYNAMIC_SIDE = 2044  # largest dynamic side; TensorRT profiles and position-embedding resizes stay sane


def backbone_names() -> tuple[str, ...]:
    return tuple(depth_anything.VARIANTS)


def build_graph(
    backbone: str,
    model_path: str | Path | None = None,
    *,
    random_init: bool = False,
    feature_levels: tuple[int, ...] | None = None,
    config=None,
):
    """(torch module, GraphMeta without fixed size) for a backbone name."""
    if backbone in depth_anything.VARIANTS:
        model = depth_anything.load_model(backbone, model_path, random_init=random_init, config=config)
        levels = depth_anything.DEFAULT_FEATURE_LEVELS if feature_levels is None else feature_levels
        graph = depth_anything.build_graph(model, levels)
        return graph, depth_anything.graph_meta(backbone, graph)
    raise ValueError(f"no exportable graph for backbone {backbone!r}; expected one of {backbone_names()}")


def export_onnx(
    module,
    meta: GraphMeta,
    out: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
) -> GraphMeta:
    """Export `module` to `out`: fixed size when height and width are given, else dynamic. Returns the meta written."""
    import dataclasses

    import onnx
    import torch

    out = Path(out)
    if (height is None) != (width is None):
        raise ValueError("give both --width and --height for a fixed-size export, or neither for a dynamic one")
    fixed = height is not None
    m = meta.multiple
    if fixed:
        if height % m or width % m or min(height, width) < 2 * m:
            raise ValueError(f"export size {width}x{height} must be multiples of {m}, at least {2 * m} a side")
        example_hw = (height, width)
    else:
        example_hw = (meta.short_side, meta.short_side + 4 * m)  # non-square: no square-only shortcut gets traced
    meta = dataclasses.replace(meta, fixed_hw=example_hw if fixed else None)
    example = torch.zeros(1, 3, *example_hw)
    dynamic_shapes = None
    if not fixed:
        hp = torch.export.Dim("patches_h", min=2, max=MAX_DYNAMIC_SIDE // m)
        wp = torch.export.Dim("patches_w", min=2, max=MAX_DYNAMIC_SIDE // m)
        dynamic_shapes = {next(iter(_forward_params(module))): {2: m * hp, 3: m * wp}}
    t0 = time.perf_counter()
    LOG.info("exporting %s (%s) to %s", meta.backbone, f"{width}x{height}" if fixed else "dynamic size", out)
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(meta.output_names),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            verbose=False,
        )
    program.model.metadata_props[META_KEY] = meta.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    names = tuple(o.name for o in onnx.load(str(out), load_external_data=False).graph.output)
    if names != meta.output_names:
        raise RuntimeError(f"exported outputs {names} differ from the declared {meta.output_names}")
    LOG.info("exported %s in %.1f s", out, time.perf_counter() - t0)
    return meta


def _forward_params(module) -> list[str]:
    import inspect

    return list(inspect.signature(module.forward).parameters)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, choices=backbone_names())
    parser.add_argument("--model", default=None, help="hub id or local folder (default: the variant's hub id)")
    parser.add_argument("--random-init", action="store_true", help="random weights from the config (no download)")
    parser.add_argument("--width", type=int, default=None, help="fixed input width (multiple of 14)")
    parser.add_argument("--height", type=int, default=None, help="fixed input height (multiple of 14)")
    parser.add_argument("--out", required=True, type=Path, help="output .onnx file")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module, meta = build_graph(args.backbone, args.model, random_init=args.random_init)
    meta = export_onnx(module, meta, args.out, height=args.height, width=args.width)
    size = "dynamic" if meta.fixed_hw is None else f"{meta.fixed_hw[1]}x{meta.fixed_hw[0]}"
    print(f"wrote {args.out} ({size} input; outputs {', '.join(meta.output_names)})")
    return 0
