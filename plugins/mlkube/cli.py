"""The ``mlkube`` command: run the lifecycle, run one step, manage serving, render Argo.

Each subcommand imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from mlkube.errors import MlkubeError

# Subcommand groups that live beside their adapter: module with add_parser(subparsers).
_GROUPS = ("mlkube.local.cli", "mlkube.argo.cli")


def _step(argv: list[str]) -> int:
    from mlkube import spec

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mlkube step {" + ",".join(spec.STEPS) + "} [options]")
        return 0 if argv else 2
    step = spec.get(argv[0])
    module = importlib.import_module(step.module)
    main: Callable[[list[str]], int] = module.main
    return main(argv[1:])


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand group registered."""
    parser = argparse.ArgumentParser(prog="mlkube", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("step", help="run one step program: mlkube step <step> [options]",
                   add_help=False)
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mlkube"):
                continue  # that adapter is not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlkube`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "step":
        try:
            return _step(argv[1:])
        except MlkubeError as exc:
            print(f"mlkube step: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except MlkubeError as exc:
        print(f"mlkube {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
