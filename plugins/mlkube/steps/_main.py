"""What every step program shares: parse options from its spec, run, write the result.

A step exits 0 with its result written, or non-zero with one line on stderr that says what
was wrong and what to do. It never leaves a half-written result behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlkube import config as configmod
from mlkube.errors import MlkubeError
from mlkube.result import write_result
from mlkube.spec import StepSpec


@dataclass(kw_only=True)
class Context:
    """What a step body gets: its validated config, its options, and where to write."""

    spec: StepSpec
    config: configmod.Config
    args: argparse.Namespace
    state_dir: Path
    artifact_root: Path
    pipeline_run_id: str | None
    argv: list[str]

    def log(self, message: str) -> None:
        """One progress line, prefixed with the step name."""
        print(f"[{self.spec.name}] {message}", flush=True)


def _parser(spec: StepSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"mlkube step {spec.name}", description=spec.summary)
    converters: dict[str, Callable[[str], Any]] = {"int": int, "float": float}
    for option in spec.options:
        parser.add_argument(
            option.flag, dest=option.dest, help=option.help, required=option.required,
            type=converters.get(option.kind, str), choices=option.choices, default=None,
        )
    return parser


def build_context(spec: StepSpec, argv: list[str] | None) -> Context:
    """Parse ``argv`` and fold the options that set config keys into the config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(spec).parse_args(argv)
    config = configmod.load(args.config)
    for option in spec.options:
        value = getattr(args, option.dest)
        if option.config_key is None or value is None:
            continue
        if option.kind == "json":
            value = configmod.parse_json_option(value, option.flag)
        try:
            config = configmod.override(config, option.config_key, value)
        except MlkubeError as exc:
            raise MlkubeError(f"{option.flag}: {exc}") from None
    state_dir = configmod.state_dir(config)
    artifact_root = Path(args.artifact_root or state_dir / "artifacts").resolve()
    return Context(spec=spec, config=config, args=args, state_dir=state_dir,
                   artifact_root=artifact_root, argv=argv,
                   pipeline_run_id=args.pipeline_run_id or os.environ.get("MLKUBE_PIPELINE_RUN_ID"))


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_step(spec: StepSpec, body: Callable[[Context], dict[str, Any]],
             argv: list[str] | None = None) -> int:
    """Run ``body`` as the program for ``spec``; returns the exit status."""
    signal.signal(signal.SIGTERM, _terminate)  # a pod's eviction: stop like Ctrl-C
    try:
        ctx = build_context(spec, argv)
        result = body(ctx)
        missing = set(spec.result_keys) ^ set(result)
        if missing:  # a bug in the step, not the user's input: keep the traceback
            raise RuntimeError(f"step {spec.name} result keys differ from its spec: {missing}")
        if os.environ.get("RANK", "0") != "0":  # a torchrun follower: rank 0 reports
            return 0
        result_file = Path(ctx.args.result_file) if ctx.args.result_file else None
        write_result(result, result_file)
        ctx.log(f"done: {result}")
        return 0
    except MlkubeError as exc:
        print(f"mlkube {spec.name}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"mlkube {spec.name}: interrupted; run it again to resume", file=sys.stderr)
        return 130
