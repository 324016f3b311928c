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
from mlkube.errors import MlkubeError, missing_extra, needs_extras

# Subcommand groups that live beside their adapter: module with add_parser(subparsers), and the
# commands it registers (listed here so a group whose dependencies are missing can say so).
_GROUPS = {"mlkube.local.cli": ("run", "demo", "serve"), "mlkube.argo.cli": ("argo",),
           "mlkube.kube.cli": ("preflight",), "mlkube.kube.platform": ("platform",)}

# The extras (pyproject.toml) each command needs beyond the core, checked before it runs so that
# one line names them all; README.md's table "Which extra each command needs" is this one.
# `step deploy` also needs serve for the local target or kube for a cluster one (_extras).
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "run": ("ml", "serve"), "demo drift": ("ml", "serve"),
    "step prepare-data": ("ml",), "step tune": ("ml",), "step train": ("ml",),
    "step register": ("ml",), "step deploy": ("ml",), "step monitor": ("ml",),
    "serve model": ("serve",), "serve status": (), "serve stop": (),
    "argo render": ("argo",), "argo lint": ("argo",), "argo submit": ("argo",),
    "platform render": ("kube",),
    "preflight": ("kube",),
}

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


def _deploy_target(argv: list[str]) -> str:
    """Where ``mlkube step deploy argv`` serves: ``local``, or ``cluster`` (targets.choose)."""
    from mlkube.targets import serves_locally

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--target", default="auto")
    kind = parser.parse_known_args(argv)[0].target
    return "local" if serves_locally(kind) else "cluster"


def _extras(argv: list[str]) -> tuple[str, tuple[str, ...]] | None:
    """The command ``argv`` names (``argo lint``) and the extras it needs; ``None`` if unknown."""
    words = [w for w in argv[:2] if not w.startswith("-")]
    command = " ".join(words)
    if command not in COMMAND_EXTRAS:  # a group alone (``mlkube platform``): all it may need
        command = words[0] if words else ""
        if command == "step":  # an unknown step (or none): the step command says so
            return None
        found = {e: None for c, needs in COMMAND_EXTRAS.items() if c.split()[0] == command
                 for e in needs}
        return (command, tuple(found)) if found else None
    extras = COMMAND_EXTRAS[command]
    if command == "step deploy":
        extras += ("serve",) if _deploy_target(argv[2:]) == "local" else ("kube",)
    return command, extras


def missing_extras(argv: list[str]) -> MlkubeError | None:
    """One line naming every extra the command ``argv`` needs, if any package of them is
    missing; ``None`` when all are installed (or the command needs none)."""
    found = _extras(argv)
    return needs_extras(f"mlkube {found[0]}", found[1]) if found else None


def _unavailable(sub: Any, commands: tuple[str, ...], error: MlkubeError) -> None:
    """Register ``commands`` as ones that only report ``error`` (their extra is missing)."""
    def handler(args: argparse.Namespace) -> NoReturn:
        raise error

    for command in commands:
        # Takes any arguments (none is an option: prefix_chars matches nothing) and fails.
        says = missing_extras([command]) or error  # every extra the group needs, if known
        parser = sub.add_parser(command, help=f"unavailable: {says}", add_help=False,
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
        missing = None if {"-h", "--help"} & set(argv) else missing_extras(argv)
        if missing is not None:
            return _fail("step", missing, 2)
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
    missing = missing_extras(argv)
    if missing is not None:
        return _fail(args.command, missing, 1)
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
