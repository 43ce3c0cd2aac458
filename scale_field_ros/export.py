"""`scale-field export`: one ONNX graph of backbone + basis features with named outputs.

The graph is what ONNX Runtime and TensorRT execute: input `image` (normalised float32 1x3xHxW),
outputs `relative` (1xHxW) then the feature maps the bases use (1xCxhxw), then with `--bases analytic`
(the default) the analytic basis maps `bases` (1xKxhxw) and `inv_rel_work` (1xhxw), named as in `GraphMeta`,
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
from scale_field_ros.graph_backbone import INPUT_NAME, MAX_DYNAMIC_SIDE, META_KEY, RELATIVE_OUTPUT, GraphMeta

LOG = logging.getLogger(__name__)
OPSET = 18


BASES_CHOICES = ("analytic", "none")
BASES_CLI_CHOICES = ("auto", *BASES_CHOICES)


def backbone_names() -> tuple[str, ...]:
    return ("fastdepth", *depth_anything.VARIANTS)


def build_graph(
    backbone: str,
    model_path: str | Path | None = None,
    *,
    random_init: bool = False,
    feature_levels: tuple[int, ...] | None = None,
    config=None,
    bases: str = "none",
    basis_config=None,
):
    """(torch module, GraphMeta without fixed size) for a backbone name.

    bases "analytic" appends the full analytic basis family (`bases_torch.with_bases`, outputs `bases` and
    `inv_rel_work`, built with `basis_config`, default `BasisConfig()`); such a graph exports at a fixed size.
    FastDepth: model_path is its .tflite file (default: the shared one); random_init keeps untrained weights.
    """
    if bases not in BASES_CHOICES:
        raise ValueError(f"bases must be one of {BASES_CHOICES}, got {bases!r}")
    if backbone in depth_anything.VARIANTS:
        model = depth_anything.load_model(backbone, model_path, random_init=random_init, config=config)
        levels = depth_anything.DEFAULT_FEATURE_LEVELS if feature_levels is None else feature_levels
        graph = depth_anything.build_graph(model, levels)
        meta = depth_anything.graph_meta(backbone, graph)
    elif backbone == "fastdepth":
        graph, meta = _fastdepth_graph(model_path, random_init)
    else:
        raise ValueError(f"no exportable graph for backbone {backbone!r}; expected one of {backbone_names()}")
    if bases == "none":
        return graph, meta
    from .bases_torch import with_bases
    from .basis_set import BasisConfig

    return with_bases(graph, meta, basis_config or BasisConfig())


def _fastdepth_graph(model_path: str | Path | None, random_init: bool):
    """FastDepth's graph and meta; the input normalisation is the TFLite graph's input quantisation."""
    from . import fastdepth
    from .backbone import DepthKind

    if random_init:
        scale, zero_point = 1.0 / 255.0, 0
        model = fastdepth.FastDepth()
    else:
        from .backbones import default_model_path
        from .tflite_weights import load_fastdepth

        model, weights = load_fastdepth(model_path if model_path is not None else default_model_path())
        scale, zero_point = weights.input_scale, weights.input_zero_point
    # network input = (255 x - zero_point) * scale = (x - mean) / std for x in [0, 1]
    mean, std = zero_point / 255.0, 1.0 / (255.0 * scale)
    meta = GraphMeta(
        backbone="fastdepth",
        kind=DepthKind.DEPTH,
        metric=True,
        mean=(mean,) * 3,
        std=(std,) * 3,
        multiple=fastdepth.MULTIPLE,
        short_side=fastdepth.INPUT_SIZE,
        output_names=(RELATIVE_OUTPUT, *fastdepth.FEATURE_NAMES),
    )
    return fastdepth.FastDepthGraph(model.eval()).eval(), meta


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
    if meta.basis_names and not fixed:
        raise ValueError(
            "a graph with bases exports at a fixed input size: give --width and --height (or --bases none)"
        )
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
    parser.add_argument(
        "--model",
        default=None,
        help="Depth Anything: hub id or local folder (default: the variant's hub id); "
        "fastdepth: its .tflite file (default: shared/models/fastdepth_224.tflite)",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights (no download, no model file)")
    parser.add_argument(
        "--width", type=int, default=None, help="fixed input width (multiple of 14; fastdepth: 32, default 224)"
    )
    parser.add_argument("--height", type=int, default=None, help="fixed input height (as --width)")
    parser.add_argument(
        "--bases",
        choices=BASES_CLI_CHOICES,
        default="auto",
        help="analytic: append the analytic basis maps (outputs bases, inv_rel_work; needs a fixed size); "
        "none: backbone outputs only (any size); auto (default): analytic at a fixed size, none when dynamic",
    )
    parser.add_argument("--out", required=True, type=Path, help="output .onnx file")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    height, width = args.height, args.width
    if args.backbone == "fastdepth" and height is None and width is None:
        from .fastdepth import INPUT_SIZE

        height = width = INPUT_SIZE  # the size FastDepth was trained at (its TFLite graph is fixed at it)
    fixed = height is not None and width is not None
    bases = args.bases if args.bases != "auto" else ("analytic" if fixed else "none")
    if args.bases == "auto" and not fixed:
        LOG.info("dynamic input size: exporting without the basis maps (they need a fixed size)")
    if bases == "analytic" and not fixed:
        raise ValueError("--bases analytic needs a fixed input size (--width and --height); or use --bases none")
    module, meta = build_graph(args.backbone, args.model, random_init=args.random_init, bases=bases)
    meta = export_onnx(module, meta, args.out, height=height, width=width)
    size = "dynamic" if meta.fixed_hw is None else f"{meta.fixed_hw[1]}x{meta.fixed_hw[0]}"
    print(f"wrote {args.out} ({size} input; outputs {', '.join(meta.output_names)})")
    return 0
