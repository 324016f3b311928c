"""``mlkube run`` and ``mlkube serve status|stop``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlkube import config as configmod


def _state_dir(config_path: str | None) -> Path:
    return configmod.state_dir(configmod.load(config_path))


def _run(args: argparse.Namespace) -> int:
    from mlkube.local import runner

    runner.print_summary(runner.lifecycle(args.config))
    return 0


def _status(args: argparse.Namespace) -> int:
    from mlkube.local import serving

    found = serving.deployments(_state_dir(args.config))
    if not found:
        print("nothing is deployed locally")
    for d in found:
        state = "up" if serving.alive(d) else "DOWN"
        print(f"{d.model_name} v{d.version} {state} {d.endpoint} pid {d.pid} log {d.log}")
    return 0 if all(serving.alive(d) for d in found) else 1


def _stop(args: argparse.Namespace) -> int:
    from mlkube.local import serving

    state_dir = _state_dir(args.config)
    for d in serving.deployments(state_dir):
        if args.model in (None, d.model_name):
            serving.stop(d)
            serving.forget(state_dir, d.model_name)
            print(f"stopped {d.model_name} v{d.version} ({d.endpoint})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``run`` and ``serve``."""
    run = sub.add_parser("run", help="run the whole lifecycle locally (embedded default)")
    run.add_argument("--config", help="lifecycle config (YAML); none = the demo defaults")
    run.set_defaults(handler=_run)
    serve = sub.add_parser("serve", help="the local model servers")
    verbs = serve.add_subparsers(dest="verb", required=True)
    status = verbs.add_parser("status", help="list local deployments and whether they answer")
    status.set_defaults(handler=_status)
    stop = verbs.add_parser("stop", help="stop local model servers")
    stop.add_argument("--model", help="only this registered model")
    stop.set_defaults(handler=_stop)
    for parser in (status, stop):
        parser.add_argument("--config", help="lifecycle config (YAML), for its state_dir")
