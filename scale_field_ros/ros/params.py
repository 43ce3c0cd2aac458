"""The node's parameters: one table of specs, read by the node (declare, validate), by tests and by docs.

Node-only parameters are listed in `NODE_PARAMS` with their ranges. Pipeline parameters are derived from
`PipelineConfig` itself (flat dotted keys such as `solver.huber_k`, the keys `PipelineConfig.from_dict`
takes), so a field added to the pipeline becomes a ROS parameter without a second list of defaults;
`PIPELINE_OVERRIDES` adds descriptions, ranges and the node's own defaults (the filter is on in the node).
Validation is pure (`check_value`, `settings_from_values`) so it runs the same at start and on change.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bases import BASIS_SOURCES
from ..camera import as_transform
from ..pipeline import PipelineConfig
from ..residual_grid import LOCAL_METHODS

IDENTITY_16 = tuple(float(x) for x in np.eye(4).ravel())
RUNTIME_CHOICES = ("auto", "tensorrt", "torch", "onnxruntime")
RELIABILITY_CHOICES = ("best_effort", "reliable")

Value = bool | int | float | str | tuple


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, default (its type is the parameter's type), meaning and allowed values.

    read_only: only read at start (model, topics, QoS); ROS refuses changes to it at run time.
    pipeline: part of `PipelineConfig` (passed to `PipelineConfig.from_dict`).
    """

    name: str
    default: Value
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False
    pipeline: bool = False

    @property
    def kind(self) -> str:
        return _kind(self.default)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (tuple, list)):
        if value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return "int_array"
        if value and all(isinstance(x, str) for x in value):
            return "string_array"
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return "double_array"
        return "mixed_array"
    raise TypeError(f"unsupported parameter value {value!r}")


NODE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("backbone", "fastdepth", "relative-depth network", read_only=True),
    ParamSpec("model_path", "", "model file; empty: the backbone's default model", read_only=True),
    ParamSpec("runtime", "auto", "inference runtime", choices=RUNTIME_CHOICES, read_only=True),
    ParamSpec("device", "cpu", "inference device: cpu, or a torch device such as cuda", read_only=True),
    ParamSpec("threads", 0, "inference threads; 0: the runtime's default", min=0, max=256, read_only=True),
    ParamSpec(
        "use_compressed", False, "subscribe to image/compressed (CompressedImage) instead of image", read_only=True
    ),
    ParamSpec(
        "input_reliability",
        "best_effort",
        "QoS reliability of the subscriptions; best_effort matches sensor drivers, reliable matches "
        "reliable publishers across processes for large images",
        choices=RELIABILITY_CHOICES,
        read_only=True,
    ),
    ParamSpec(
        "image_rectified",
        False,
        "the input image is rectified (an image_rect topic): intrinsics from camera_info's P, its distortion "
        "ignored; false: a raw image, K and the distortion",
    ),
    ParamSpec("input_queue_depth", 5, "KEEP_LAST depth of the subscriptions", min=1, max=100, read_only=True),
    ParamSpec("output_queue_depth", 2, "KEEP_LAST depth of the (reliable) publishers", min=1, max=100, read_only=True),
    ParamSpec(
        "odom_queue_depth",
        100,
        "KEEP_LAST depth of the odometry subscription (poses are small and bursty: a shallow queue drops them)",
        min=1,
        max=10000,
        read_only=True,
    ),
    ParamSpec(
        "T_cam_anchor",
        IDENTITY_16,
        "anchor frame -> camera optical frame, 16 row-major values; identity: anchors already in the camera frame",
    ),
    ParamSpec(
        "anchors_in_world",
        False,
        "anchors are world-frame landmarks (VIO), brought into the camera with odom and T_body_cam",
    ),
    ParamSpec("T_body_cam", IDENTITY_16, "camera optical frame -> odometry body frame, 16 row-major values"),
    ParamSpec("motion_compensation", True, "with odometry, move each anchor set from its own stamp to the image stamp"),
    ParamSpec(
        "deskew",
        True,
        "with motion_compensation and a per-point time field in the cloud (t, time or timestamp), "
        "move each point from its own time",
    ),
    ParamSpec(
        "anchor_max_age", 0.06, "use anchor sets stamped within this many seconds of the image", min=0.0, max=10.0
    ),
    ParamSpec(
        "anchor_max_future",
        1.0,
        "refuse anchor sets and odometry stamped this far (s) after the latest image",
        min=0.0,
        max=3600.0,
    ),
    ParamSpec(
        "odom_max_extrapolation",
        0.1,
        "continue the odometry's motion (constant velocity) up to this far (s) outside the buffered poses",
        min=0.0,
        max=10.0,
    ),
    ParamSpec(
        "point_decimation", 4, "publish every n-th pixel (in rows and columns) in metric_depth/points", min=1, max=64
    ),
    ParamSpec("warn_period", 10.0, "seconds between repeats of one warning cause", min=0.1, max=3600.0),
)

# Descriptions, ranges and node defaults for pipeline keys; keys missing from PipelineConfig are ignored.
PIPELINE_OVERRIDES: dict[str, dict[str, Any]] = {
    "min_depth_m": dict(description="nearest metric depth published (m)", min=0.0, max=1000.0),
    "max_depth_m": dict(
        description="farthest metric depth published (m); anchors beyond are ignored", min=0.0, max=1000.0
    ),
    "filter.enabled": dict(default=True, description="temporal Kalman filter on the scale-field weights"),
    "filter.process_noise": dict(
        description="std of the weights' random walk after 1 s, as a fraction of their prior std", min=0.0, max=100.0
    ),
    "filter.max_coast_s": dict(
        description="coasting (no usable anchors) longer than this is flagged (s)", min=0.0, max=3600.0
    ),
    "filter.reset_nis_threshold": dict(
        description="reset the filter when NIS per degree of freedom exceeds this", min=0.0, max=1e9
    ),
    "filter.backwards_tolerance_s": dict(
        description="reset when a stamp goes back by more than this (s)", min=0.0, max=3600.0
    ),
    "filter.local_process_noise": dict(
        description="std of the per-pixel local log-depth correction's random walk after 1 s", min=0.0, max=100.0
    ),
    "noise_rel": dict(description="assumed relative std of an anchor's depth", min=1e-6, max=10.0),
    "basis.work_long_side": dict(description="long side (px) of the working resolution of the bases", min=8, max=4096),
    "basis.poly_degree": dict(description="degree of the image-position polynomial bases", min=0, max=8),
    "basis.depth_bins": dict(description="soft bins over relative depth (0 or 1: none)", min=0, max=64),
    "basis.feature_components": dict(
        description="principal components of backbone features used as bases", min=0, max=64
    ),
    "basis.feature_name": dict(
        description="backbone feature map for the PCA bases; empty: the finest with at least 8 channels"
    ),
    "basis.guided_radius": dict(description="guided-filter radius (working px) of the feature bases", min=0, max=64),
    "basis.guided_eps": dict(description="guided-filter regularisation of the feature bases", min=0.0, max=1e3),
    "basis.tier_anchors": dict(description="anchors needed for basis tiers 1 (linear), 2 (+depth bins), 3 (+features)"),
    "solver.huber_k": dict(description="Huber threshold in robust standard deviations", min=0.0, max=100.0),
    "solver.outlier_sigmas": dict(description="anchors beyond this many robust sigmas are rejected", min=0.0, max=1e3),
    "solver.irls_iterations": dict(description="robust reweighting iterations", min=0, max=100),
    "solver.min_anchors_full": dict(description="fewer anchors fit scale and shift only", min=0, max=1000000),
    "solver.min_anchors_shift": dict(description="fewer anchors fit the scale only", min=0, max=1000000),
    "solver.min_relative_spread": dict(
        description="relative spread of the relative depth below which no shift is fitted", min=0.0, max=1.0
    ),
    "prior.scale_rel_std": dict(description="prior std of the global scale, relative to it", min=0.0, max=1e3),
    "prior.basis_rel_std": dict(
        description="prior std of a basis weight, relative to the global scale", min=0.0, max=1e3
    ),
    "prior.shift_rel_std": dict(description="prior std of the global shift, relative to the scale", min=0.0, max=1e3),
    "local.enabled": dict(description="edge-aware local correction of the field from the anchors' residuals"),
    "local.min_anchors": dict(description="fewer inlier anchors: no local correction", min=0, max=1000000),
    "local.cell_factor": dict(
        description="grid cell of the local correction, in mean anchor spacings", min=0.0, max=100.0
    ),
    "local.min_cell_px": dict(
        description="smallest grid cell of the local correction (working-res px)", min=0.01, max=1000.0
    ),
    "local.log_depth_cell": dict(
        description="grid step of the local correction along log relative depth", min=0.001, max=10.0
    ),
    "local.blur_passes": dict(description="smoothing passes over the local correction grid", min=0, max=100),
    "local.prior_count": dict(
        description="pseudo-anchors of zero correction that shrink sparse corrections", min=0.001, max=1000.0
    ),
    "local.max_abs_log": dict(description="largest local correction, in log depth", min=0.0, max=10.0),
    "local.outlier_log": dict(
        description="log residual off its neighbours' median that marks an outlier", min=0.0, max=10.0
    ),
    "local.neighbours": dict(description="neighbours compared in the outlier test", min=1, max=1000),
    "local.method": dict(description="local correction method", choices=LOCAL_METHODS),
    "local.pushpull_tau": dict(
        description="push-pull: anchor weight at which a level trusts itself and the coarser one equally",
        min=0.0,
        max=100.0,
    ),
    "basis.select": dict(description="choose the basis tier (or scale only) by spatially blocked cross-validation"),
    "basis.select_skip_anchors": dict(
        description="this many anchors covering the whole image skip the selection (full family)", min=0, max=1000000
    ),
    "basis.select_tolerance": dict(
        description="held-out error a richer tier must gain (fraction) to be chosen", min=0.0, max=10.0
    ),
    "basis.coverage_penalty": dict(
        description="extra gain asked of richer tiers per missing anchor coverage", min=0.0, max=10.0
    ),
    "basis.source": dict(
        description="basis maps: analytic, or learned (a trained basis head)", choices=BASIS_SOURCES, read_only=True
    ),
    "basis.checkpoint": dict(description="basis head checkpoint for basis.source learned", read_only=True),
    "solver.irls_tolerance": dict(
        description="robust reweighting stops when the weights change less than this (relative)", min=0.0, max=1.0
    ),
}


def _ros_value(value: Any) -> Value:
    """A dataclass default as a ROS parameter value (enums as their string value, sequences as tuples)."""
    if isinstance(value, enum.Enum):
        return _ros_value(value.value)
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list, np.ndarray)):
        return tuple(x.item() if isinstance(x, np.generic) else x for x in value)
    raise TypeError(f"pipeline default {value!r} has no ROS parameter type")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def pipeline_param_specs() -> tuple[ParamSpec, ...]:
    specs = []
    for key, value in _flatten(PipelineConfig()).items():
        extra = dict(PIPELINE_OVERRIDES.get(key, {}))
        default = extra.pop("default", _ros_value(value))
        description = extra.pop("description", f"pipeline setting {key}")
        specs.append(ParamSpec(key, default, description, pipeline=True, **extra))
    return tuple(specs)


def all_param_specs() -> tuple[ParamSpec, ...]:
    return NODE_PARAMS + pipeline_param_specs()


def check_value(spec: ParamSpec, value: Any) -> str:
    """'' when `value` is acceptable for `spec`, else the reason it is not."""
    kind = spec.kind
    got = _kind(value) if isinstance(value, (bool, int, float, str, tuple, list)) else type(value).__name__
    if kind == "double" and got == "int":
        value, got = float(value), "double"
    if kind == "double_array" and got == "int_array":
        got = "double_array"
    if kind.endswith("_array") and got.endswith("_array") and len(value) == 0:
        got = kind  # an empty list carries no element type
    if got != kind:
        return f"{spec.name} must be a {kind}, got {got} {value!r}"
    if kind in ("int", "double"):
        if not math.isfinite(value):
            return f"{spec.name} must be finite, got {value}"
        if spec.min is not None and value < spec.min:
            return f"{spec.name} must be >= {spec.min}, got {value}"
        if spec.max is not None and value > spec.max:
            return f"{spec.name} must be <= {spec.max}, got {value}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if spec.name.startswith("T_"):
        try:
            as_transform(value, spec.name)
        except ValueError as exc:
            return str(exc)
    return ""


@dataclass(frozen=True)
class NodeSettings:
    """Typed node-only settings (the pipeline's live in `PipelineConfig`)."""

    backbone: str
    model_path: Path | None
    runtime: str
    device: str
    threads: int
    use_compressed: bool
    image_rectified: bool
    input_reliability: str
    input_queue_depth: int
    output_queue_depth: int
    odom_queue_depth: int
    T_cam_anchor: np.ndarray
    anchors_in_world: bool
    T_body_cam: np.ndarray
    motion_compensation: bool
    deskew: bool
    anchor_max_age: float
    anchor_max_future: float
    odom_max_extrapolation: float
    point_decimation: int
    warn_period: float


def settings_from_values(values: dict[str, Any]) -> tuple[NodeSettings, PipelineConfig]:
    """Validate a complete set of parameter values; raises ValueError with every reason found."""
    specs = {s.name: s for s in all_param_specs()}
    reasons = [r for name, spec in specs.items() if (r := check_value(spec, values.get(name, spec.default)))]
    unknown = sorted(set(values) - set(specs))
    if unknown:
        reasons.append(f"unknown parameters: {', '.join(unknown)}")
    if reasons:
        raise ValueError("; ".join(reasons))
    merged = {name: values.get(name, spec.default) for name, spec in specs.items()}
    for name, spec in specs.items():
        if spec.kind == "double":
            merged[name] = float(merged[name])
        elif spec.kind == "double_array":
            merged[name] = tuple(float(x) for x in merged[name])
    pipeline = {name: merged[name] for name, spec in specs.items() if spec.pipeline}
    config = PipelineConfig.from_dict(pipeline)  # raises ValueError with its own reason (e.g. depth range)
    node = {name: merged[name] for name, spec in specs.items() if not spec.pipeline}
    node["model_path"] = Path(node["model_path"]).expanduser() if node["model_path"] else None
    node["T_cam_anchor"] = as_transform(node["T_cam_anchor"], "T_cam_anchor")
    node["T_body_cam"] = as_transform(node["T_body_cam"], "T_body_cam")
    return NodeSettings(**node), config


# --- rclpy side -------------------------------------------------------------------------------------------------


def descriptor(spec: ParamSpec):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {
        "bool": ParameterType.PARAMETER_BOOL,
        "int": ParameterType.PARAMETER_INTEGER,
        "double": ParameterType.PARAMETER_DOUBLE,
        "string": ParameterType.PARAMETER_STRING,
        "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY,
        "int_array": ParameterType.PARAMETER_INTEGER_ARRAY,
        "string_array": ParameterType.PARAMETER_STRING_ARRAY,
    }
    text = spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    # doubles take integers too (`anchor_max_age: 1`, a transform written [0, -1, 0, ...]): rclpy's static typing
    # would refuse them before any check of ours; `check_value` still refuses every other type, with its reason
    numeric = spec.kind in ("double", "double_array")
    d = ParameterDescriptor(
        name=spec.name, type=types[spec.kind], description=text, read_only=spec.read_only, dynamic_typing=numeric
    )
    # an open end of a range is the type's limit (rcl ranges are closed)
    if spec.kind == "int" and (spec.min is not None or spec.max is not None):
        lo = -(2**63) if spec.min is None else int(spec.min)
        hi = 2**63 - 1 if spec.max is None else int(spec.max)
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
    if spec.kind == "double" and (spec.min is not None or spec.max is not None):
        lo = -sys.float_info.max if spec.min is None else float(spec.min)
        hi = sys.float_info.max if spec.max is None else float(spec.max)
        d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    if spec.kind == "double_array":
        d.additional_constraints = "16 values, row-major 4x4 rigid transform" if spec.name.startswith("T_") else ""
    return d


def declare_parameters(node) -> dict[str, Any]:
    """Declare every parameter on `node` (overrides from a params file apply) and return the values; an override
    that rclpy itself refuses (a string for a number, out of a declared range) raises ValueError with its reason."""
    from rclpy.exceptions import ParameterException

    values = {}
    for spec in all_param_specs():
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        try:
            param = node.declare_parameter(spec.name, default, descriptor(spec))
        except ParameterException as exc:
            raise ValueError(f"parameter {spec.name}: {exc}") from exc
        values[spec.name] = _plain(param.value)
    return values


def _plain(value: Any) -> Any:
    """rclpy parameter values (lists, array.array) -> tuples of Python scalars, as in the spec table."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return tuple(x.item() if isinstance(x, np.generic) else x for x in value)


def apply_changes(current: dict[str, Any], params) -> tuple[dict[str, Any], NodeSettings, PipelineConfig]:
    """Values after a set-parameters request, validated as a whole; raises ValueError with the reason.
    Parameters that are not this node's own (rclpy's `use_sim_time`, QoS overrides) pass unchecked."""
    updated = dict(current)
    for p in params:
        if p.name in current:
            updated[p.name] = _plain(p.value)
    settings, config = settings_from_values(updated)
    return updated, settings, config


# --- the params file ---------------------------------------------------------------------------------------------

PARAMS_FILE_HEADER = """\
# Parameters of scale_field_node (ros2 run scale_field_ros scale_field_node --ros-args --params-file ...).
# Generated from the node's parameter table (scale_field_ros/ros/params.py), where ranges and allowed values
# live: python -m scale_field_ros.ros.params config/params.yaml. test_node_params checks it is up to date.
"""


def _yaml_scalar(value: Any) -> str:
    """A value as YAML that both PyYAML and rcl's parser read back as the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text:  # YAML 1.1 needs a dot for a float: 1e-06 -> 1.0e-06
            mantissa, _, exponent = text.partition("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no YAML scalar for {value!r}")


def _yaml_value(spec: ParamSpec, indent: str) -> str:
    value = spec.default
    if not isinstance(value, tuple):
        return _yaml_scalar(value)
    items = [_yaml_scalar(x) for x in value]
    if spec.name.startswith("T_") and len(items) == 16:  # a 4x4 transform: one row per line
        pad = indent + " " * (len(spec.name.rpartition(".")[2]) + 3)
        rows = [", ".join(items[i : i + 4]) for i in range(0, 16, 4)]
        return "[" + f",\n{pad}".join(rows) + "]"
    return "[" + ", ".join(items) + "]"


def _comment(spec: ParamSpec) -> str:
    text = spec.description
    if spec.choices:
        text += f" (one of: {', '.join(spec.choices)})"
    if spec.min is not None or spec.max is not None:
        lo = "-inf" if spec.min is None else f"{spec.min:g}"
        hi = "inf" if spec.max is None else f"{spec.max:g}"
        text += f" [{lo}, {hi}]"
    if spec.read_only:
        text += "; read at start only"
    return text


def params_yaml(node_name: str = "scale_field_node") -> str:
    """config/params.yaml: every declared parameter with its default, description and range."""
    # keyed /**/name: the section applies to the node in any namespace (a bare name matches only the root one)
    lines = [PARAMS_FILE_HEADER.rstrip("\n"), f"/**/{node_name}:", "  ros__parameters:"]
    sections: dict[str, list[ParamSpec]] = {}
    for spec in all_param_specs():
        head, dot, _ = spec.name.partition(".")
        if not dot:
            lines += [f"    # {_comment(spec)}", f"    {spec.name}: {_yaml_value(spec, '    ')}"]
        else:
            sections.setdefault(head, []).append(spec)
    for head, specs in sections.items():
        lines += ["", f"    {head}:"]
        for spec in specs:
            key = spec.name.partition(".")[2]
            lines += [f"      # {_comment(spec)}", f"      {key}: {_yaml_value(spec, '      ')}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the params file (default config/params.yaml beside the package) or, with --check, compare."""
    import argparse

    parser = argparse.ArgumentParser(description="write or check the node's params file")
    parser.add_argument("path", nargs="?", default=str(Path(__file__).resolve().parents[2] / "config" / "params.yaml"))
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the table")
    args = parser.parse_args(argv)
    path = Path(args.path)
    text = params_yaml()
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'out of date'}")
        return 0 if same else 1
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------------------------ parameters files

NODE_NAME = "scale_field_node"


def params_file_values(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The node's parameters in a ROS 2 parameters YAML as flat dotted keys (`filter.enabled`), lists as tuples.

    Sections apply as in ROS: `/**` (every node) first, then the node's own (`/**/scale_field_node`, in any
    namespace, then `scale_field_node` or `/scale_field_node`), each under `ros__parameters`.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameters file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"parameters file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"parameters file {path} must map node names to ros__parameters")
    names = ("/**", "**", f"/**/{node_name}", node_name, f"/{node_name}")
    sections = [doc[n] for n in names if n in doc]
    if not sections:
        raise ValueError(f"parameters file {path} has no section for {node_name} (found: {', '.join(map(str, doc))})")
    values: dict[str, Any] = {}
    for section in sections:
        params = section.get("ros__parameters") if isinstance(section, dict) else None
        if not isinstance(params, dict):
            raise ValueError(f"parameters file {path}: the {node_name} section has no ros__parameters mapping")
        values.update(_flatten_yaml(params))
    return values


def _flatten_yaml(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten_yaml(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out
