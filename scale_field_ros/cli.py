"""`scale-field` command line: one subcommand per module, each a thin adapter over the library.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`; modules are imported
only when their subcommand runs, so a missing optional dependency affects only that subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("scale_field_ros.bench", "per-stage latency benchmark, written as JSON"),
    "demo": ("scale_field_ros.demo", "the main job: metric depth for a sample of shared/data"),
    "make-bag": ("scale_field_ros.make_bag", "write a dataset folder as a ROS 2 bag"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scale-field", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"scale-field {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
