"""Parameters: config/params.yaml matches the node's table; bad values are refused with their reason,
at start and on change; the params file loads through rclpy's own parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from node_harness import domain_id

from scale_field_ros.ros.params import (
    all_param_specs,
    check_value,
    params_file_values,
    params_yaml,
    settings_from_values,
)

rclpy = pytest.importorskip("rclpy")
from rclpy.parameter import Parameter  # noqa: E402

from scale_field_ros.ros.node import ScaleFieldNode  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = ROOT / "config" / "params.yaml"
pytestmark = pytest.mark.ros


class _NullBackbone:
    """Parameter tests never run inference; the node only needs something to hold."""

    name = "none"
    runtime = "none"

    def infer(self, rgb):  # pragma: no cover - never called here
        raise AssertionError("inference in a parameter test")


@pytest.fixture(scope="module")
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id(11))
    yield ctx
    rclpy.shutdown(context=ctx)


def test_params_file_lists_every_parameter_with_its_default():
    values = params_file_values(PARAMS_FILE)
    specs = {s.name: s for s in all_param_specs()}
    assert set(values) == set(specs)
    for name, spec in specs.items():
        assert values[name] == spec.default, name
        assert check_value(spec, spec.default) == ""
    settings, config = settings_from_values(values)
    assert config.filter.enabled  # the node filters by default; evaluation does not
    np.testing.assert_array_equal(settings.T_cam_anchor, np.eye(4))
    # descriptions and ranges too: regenerate with `python -m scale_field_ros.ros.params`
    assert PARAMS_FILE.read_text() == params_yaml(), "config/params.yaml is out of date"


def test_bad_values_are_refused_with_reasons():
    specs = {s.name: s for s in all_param_specs()}
    assert "one of" in check_value(specs["runtime"], "tensorflow")
    assert ">= 1" in check_value(specs["point_decimation"], 0)
    assert "16 values" in check_value(specs["T_cam_anchor"], (1.0, 0.0))
    assert "rotation" in check_value(specs["T_body_cam"], tuple(np.diag([1.0, 1.0, -1.0, 1.0]).ravel()))
    assert "must be a double" in check_value(specs["anchor_max_age"], "soon")
    # NaN fails no range comparison: it is refused for not being finite (infinity too, inside no range either)
    for value in (float("nan"), float("inf"), float("-inf")):
        assert "finite" in check_value(specs["anchor_max_age"], value), value
    with pytest.raises(ValueError, match="min_depth_m"):
        settings_from_values({"min_depth_m": 20.0, "max_depth_m": 10.0})
    with pytest.raises(ValueError, match="unknown"):
        settings_from_values({"no_such_parameter": 1})
    for name in ("local.prior_count", "local.log_depth_cell", "local.min_cell_px"):  # each divides in the grid
        with pytest.raises(ValueError, match=name):
            settings_from_values({name: 0.0})


def test_node_loads_params_file_and_declares_descriptors(context):
    ctx = rclpy.Context()
    args = ["--ros-args", "--params-file", str(PARAMS_FILE), "-p", "point_decimation:=8"]
    rclpy.init(context=ctx, args=args, domain_id=domain_id(12))
    try:
        node = ScaleFieldNode(backbone=_NullBackbone(), context=ctx)
        assert node.settings.point_decimation == 8
        assert node.config.filter.enabled
        d = node.describe_parameter("anchor_max_age")
        assert d.description and d.floating_point_range[0].to_value == 10.0
        assert node.describe_parameter("runtime").read_only
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_start_with_bad_value_is_refused(context):
    with pytest.raises(ValueError, match="T_cam_anchor"):
        ScaleFieldNode(
            backbone=_NullBackbone(), context=context, parameter_overrides=[Parameter("T_cam_anchor", value=[1.0] * 16)]
        )
    with pytest.raises(ValueError, match="min_depth_m"):
        ScaleFieldNode(
            backbone=_NullBackbone(),
            context=context,
            parameter_overrides=[Parameter("min_depth_m", value=50.0), Parameter("max_depth_m", value=10.0)],
        )


def test_changes_are_validated(context):
    node = ScaleFieldNode(backbone=_NullBackbone(), context=context)
    try:
        bad = node.set_parameters([Parameter("max_depth_m", value=0.05)])[0]
        assert not bad.successful and "min_depth_m" in bad.reason
        bad = node.set_parameters([Parameter("T_cam_anchor", value=[2.0] * 16)])[0]
        assert not bad.successful and "T_cam_anchor" in bad.reason
        ro = node.set_parameters([Parameter("runtime", value="torch")])[0]
        assert not ro.successful
        ok = node.set_parameters([Parameter("anchor_max_age", value=0.2), Parameter("filter.process_noise", value=0.2)])
        assert all(r.successful for r in ok)
        assert node.anchor_buffer.max_age_s == 0.2 and node.settings.anchor_max_age == 0.2
        node._swap_config()  # the inference thread does this between frames
        assert node.pipeline.config.filter.process_noise == 0.2
    finally:
        node.destroy_node()


def test_params_file_applies_in_a_namespace(tmp_path):
    # the file's section is keyed /**/scale_field_node: a namespaced node (launch's namespace:=) still reads it
    text = params_yaml().replace("    point_decimation: 4\n", "    point_decimation: 7\n")
    assert "point_decimation: 7" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(path)], domain_id=domain_id(13))
    try:
        node = ScaleFieldNode(backbone=_NullBackbone(), context=ctx, namespace="/robot1")
        assert node.get_fully_qualified_name() == "/robot1/scale_field_node"
        assert node.settings.point_decimation == 7
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_integers_are_accepted_for_doubles_and_other_types_refused(context):
    # a transform written with integers, as an axis swap usually is, and a whole number of seconds
    swap = [0, -1, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    node = ScaleFieldNode(
        backbone=_NullBackbone(),
        context=context,
        parameter_overrides=[Parameter("T_cam_anchor", value=swap), Parameter("anchor_max_age", value=1)],
    )
    try:
        np.testing.assert_array_equal(node.settings.T_cam_anchor, np.reshape(swap, (4, 4)))
        assert node.settings.anchor_max_age == 1.0 and isinstance(node.settings.anchor_max_age, float)
        assert node.set_parameters([Parameter("anchor_max_age", value=2)])[0].successful
        assert node.settings.anchor_max_age == 2.0
        bad = node.set_parameters([Parameter("anchor_max_age", value="soon")])[0]
        assert not bad.successful and "must be a double" in bad.reason
        bad = node.set_parameters([Parameter("anchor_max_age", value=20)])[0]  # an int is range-checked too
        assert not bad.successful and "<= 10" in bad.reason
        # NaN: rclpy's range refuses it (every double has one; without, the node's own check does, see
        # test_bad_values_are_refused_with_reasons)
        bad = node.set_parameters([Parameter("anchor_max_age", value=float("nan"))])[0]
        assert not bad.successful and node.settings.anchor_max_age == 2.0
        before = node.config.local.prior_count
        # a zero count divided the grid's correction by zero: depth at max_depth_m everywhere
        for value in (float("nan"), 0.0):
            bad = node.set_parameters([Parameter("local.prior_count", value=value)])[0]
            assert not bad.successful and "range" in bad.reason, bad.reason
        assert node.get_parameter("local.prior_count").value == before == node.config.local.prior_count
        bad = node.set_parameters([Parameter("local.method", value="delauney")])[0]
        assert not bad.successful and "one of" in bad.reason
    finally:
        node.destroy_node()
    with pytest.raises(ValueError, match="point_decimation"):  # rclpy's own refusal, as a reason
        ScaleFieldNode(
            backbone=_NullBackbone(), context=context, parameter_overrides=[Parameter("point_decimation", value=0.5)]
        )


def test_rclpy_parameters_can_still_be_set(context):
    node = ScaleFieldNode(backbone=_NullBackbone(), context=context)
    try:
        result = node.set_parameters([Parameter("use_sim_time", value=True)])[0]
        assert result.successful, result.reason
        assert node.get_parameter("use_sim_time").value is True
    finally:
        node.destroy_node()
