"""The ament_python package is well formed: package.xml declares what the code imports."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROS_PACKAGES = {
    "rclpy",
    "sensor_msgs",
    "std_msgs",
    "geometry_msgs",
    "nav_msgs",
    "diagnostic_msgs",
    "visualization_msgs",
    "builtin_interfaces",
    "rcl_interfaces",
}
# rosdep keys of the Python packages we import
PYTHON_KEYS = {"numpy": "python3-numpy", "scipy": "python3-scipy", "cv2": "python3-opencv", "yaml": "python3-yaml"}


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "scale_field_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_package_xml_is_format_3_with_ament_python():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "scale_field_ros"
    assert root.find("export/build_type").text == "ament_python"
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}


def test_package_xml_declares_every_ros_and_python_import():
    declared = {e.text for e in ET.parse(ROOT / "package.xml").getroot().findall("exec_depend")}
    imported = imported_top_level_modules()
    missing = sorted((imported & ROS_PACKAGES) - declared)
    missing += sorted(key for module, key in PYTHON_KEYS.items() if module in imported and key not in declared)
    assert not missing, f"package.xml lacks exec_depend for {missing}"


def test_setup_installs_launch_config_and_resource_marker():
    setup_py = (ROOT / "setup.py").read_text()
    for needed in ("resource_index/packages", "launch/*.launch.py", "config/*.yaml", "config/*.rviz"):
        assert needed in setup_py
    assert (ROOT / "resource" / "scale_field_ros").is_file()
    scripts = set(re.findall(r'"([\w-]+) = scale_field_ros', setup_py))
    assert scripts == {"scale_field_node", "scale-field"}
