"""``mlkube run``, ``mlkube demo drift`` and ``mlkube serve status|stop|model``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlkube import config as configmod
from mlkube.serve import server as model_server  # argparse and socket only: cheap to import


def _state_dir(config_path: str | None) -> Path:
    return configmod.state_dir(configmod.load(config_path))


def _run(args: argparse.Namespace) -> int:
    from mlkube.local import runner

    runner.print_summary(runner.lifecycle(args.config))
    return 0


def _demo_drift(args: argparse.Namespace) -> int:
    from mlkube.local import drift_demo

    drift_demo.drift_demo(args.config, args.shift)
    return 0


def _status(args: argparse.Namespace) -> int:
    from mlkube.targets import local

    found = local.servers(_state_dir(args.config))
    if not found:
        print("nothing is deployed locally")
    up = [local.running(s) for s in found]
    for server, running in zip(found, up, strict=True):
        version = local.served_version(server) if running else None
        print(f"{server.model_name} v{version or '?'} {'up' if running else 'DOWN'} "
              f"{server.base_url} pid {server.pid} log {server.log}")
    return 0 if all(up) else 1


def _stop(args: argparse.Namespace) -> int:
    from mlkube.targets import local

    state_dir = _state_dir(args.config)
    for server in local.servers(state_dir):
        if args.model in (None, server.model_name):
            local.stop(server)
            local.forget(state_dir, server.model_name)
            print(f"stopped {server.model_name} ({server.base_url})")
    return 0


def _serve_model(args: argparse.Namespace) -> int:
    return model_server.run(args)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``run``, ``demo`` and ``serve``."""
    run = sub.add_parser("run", help="run the whole lifecycle locally (embedded default)")
    run.add_argument("--config", help="lifecycle config (YAML); none = the demo defaults")
    run.set_defaults(handler=_run)
    demo = sub.add_parser("demo", help="demonstrations on the local mode")
    demos = demo.add_subparsers(dest="verb", required=True)
    drift = demos.add_parser("drift", help="after the lifecycle: shifted traffic, the monitor, "
                                           "retraining on drift, shadow, canary, promotion")
    drift.add_argument("--config", help="lifecycle config (YAML); none = the demo defaults")
    from mlkube.local import drift_demo  # light: its heavy imports are inside its functions

    drift.add_argument("--shift", choices=drift_demo.SHIFTS, default=drift_demo.IN_SUPPORT,
                       help="in-support (default): the held-out rows in the first feature's top "
                            "two training deciles, inside the training range (the challenger "
                            "is shadowed, canaried and promoted); out-of-range: two features "
                            "moved 3 training standard deviations (the shadow gate keeps the "
                            "champion when the two models part there)")
    drift.set_defaults(handler=_demo_drift)
    serve = sub.add_parser("serve", help="the local model servers")
    verbs = serve.add_subparsers(dest="verb", required=True)
    status = verbs.add_parser("status", help="list local deployments and whether they answer")
    status.set_defaults(handler=_status)
    stop = verbs.add_parser("stop", help="stop local model servers")
    stop.add_argument("--model", help="only this registered model")
    stop.set_defaults(handler=_stop)
    for parser in (status, stop):
        parser.add_argument("--config", help="lifecycle config (YAML), for its state_dir")
    model = verbs.add_parser("model", help="serve one MLflow model version over the Open "
                                           "Inference Protocol (V2), in the foreground")
    model_server.add_arguments(model)
    model.set_defaults(handler=_serve_model)
