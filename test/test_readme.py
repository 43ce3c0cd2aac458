"""The README's generated blocks (parameters, accuracy, benchmarks) match the code and the generated docs."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_generated_blocks_are_current():
    readme = (ROOT / "README.md").read_text()
    assert load_script().render(readme) == readme, "README.md is out of date: run python scripts/update_readme.py"


def test_readme_lists_every_node_parameter():
    from scale_field_ros.ros.params import all_param_specs

    readme = (ROOT / "README.md").read_text()
    missing = [s.name for s in all_param_specs() if f"| `{s.name}` |" not in readme]
    assert not missing, f"README parameter table lacks {missing}"
