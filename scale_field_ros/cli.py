"""`scale-field` command line: one subcommand per module, each a thin adapter over the library.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`. Only the module of
the subcommand being run is imported, so `scale-field --help` is fast and a missing optional
dependency affects only the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .alloc import keep_frame_buffers

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("scale_field_ros.bench", "per-stage latency benchmark, written as JSON"),
    "eval": ("scale_field_ros.evaluate", "accuracy of the scale field against the baselines, written as JSON"),
    "demo": ("scale_field_ros.demo", "the main job: metric depth for a sample of shared/data"),
    "export": ("scale_field_ros.export", "export backbone + basis features as one ONNX graph"),
    "build-engine": ("scale_field_ros.build_engine", "build (and cache) the TensorRT engine of an exported ONNX"),
    "train": ("scale_field_ros.train", "train the learned basis head end to end through the ridge solve"),
    "make-bag": ("scale_field_ros.make_bag", "write a dataset folder as a ROS 2 bag"),
    "run": ("scale_field_ros.run_offline", "the node without ROS: a bag or dataset folder in, metric depth out"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; the chosen `command`'s arguments are added (importing only its module)."""
    parser = argparse.ArgumentParser(prog="scale-field", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    # this process is ours: per-frame full-resolution arrays reuse freed heap instead of fresh pages
    keep_frame_buffers()
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (OSError, ValueError) as exc:  # missing or unwritable files, bad arguments or data: said, no traceback
        print(f"scale-field {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
