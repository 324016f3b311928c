"""The ``mlkube`` command: run the lifecycle, run one step, manage serving, render Argo.

Each subcommand imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from mlkube import __version__
from mlkube.errors import MlkubeError, missing_extra

# Subcommand groups that live beside their adapter: module with add_parser(subparsers), and the
# commands it registers (listed here so a group whose dependencies are missing can say so).
_GROUPS = {"mlkube.local.cli": ("run", "serve"), "mlkube.argo.cli": ("argo",),
           "mlkube.kube.cli": ("preflight",), "mlkube.kube.platform": ("platform",)}

# The parser's description: plain text, as --help prints it (the docstring above is reST).
DESCRIPTION = ("Run the machine-learning lifecycle: the whole pipeline locally, one step "
               "program, the local model servers, and the Argo Workflows objects.")


def _step(argv: list[str]) -> int:
    from mlkube import spec

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mlkube step {" + ",".join(spec.STEPS) + "} [options]")
        return 0 if argv else 2
    step = spec.get(argv[0])
    module = importlib.import_module(step.module)
    main: Callable[[list[str]], int] = module.main
    return main(argv[1:])


def _unavailable(sub: Any, commands: tuple[str, ...], error: MlkubeError) -> None:
    """Register ``commands`` as ones that only report ``error`` (their extra is missing)."""
    def handler(args: argparse.Namespace) -> NoReturn:
        raise error

    for command in commands:
        # Takes any arguments (none is an option: prefix_chars matches nothing) and fails.
        parser = sub.add_parser(command, help=f"unavailable: {error}", add_help=False,
                                prefix_chars="\0")
        parser.add_argument("arguments", nargs=argparse.REMAINDER)
        parser.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand group registered."""
    parser = argparse.ArgumentParser(prog="mlkube", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"mlkube {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("step", help="run one step program: mlkube step <step> [options]",
                   add_help=False)
    for name, commands in _GROUPS.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mlkube"):
                continue  # that adapter is not part of this build
            error = missing_extra(exc)
            if error is None:
                raise
            _unavailable(sub, commands, error)
            continue
        module.add_parser(sub)
    return parser


def _fail(command: str, error: MlkubeError, code: int) -> int:
    print(f"mlkube {command}: error: {error}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlkube`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "step":
        try:
            return _step(argv[1:])
        except MlkubeError as exc:
            return _fail("step", exc, 2)
        except ModuleNotFoundError as exc:
            hint = missing_extra(exc)
            if hint is None:
                raise
            return _fail("step", hint, 2)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except MlkubeError as exc:
        return _fail(args.command, exc, 1)
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        return _fail(args.command, hint, 1)


if __name__ == "__main__":
    sys.exit(main())
