"""What every step program shares: parse options from its spec, run, write the result.

A step exits 0 with its result written, or non-zero with one line on stderr that says what
was wrong and what to do. It never leaves a half-written result behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlkube import config as configmod
from mlkube.errors import MlkubeError, disk_full, disk_full_error, first_line, missing_extra
from mlkube.result import write_result, write_termination_message
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


def _quiet_environment() -> None:
    """Silence what every step would otherwise print first in an image without git."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # GitPython's multi-line warning
    import logging

    # MLflow's "Failed to import Git" (it records the code version only where git exists).
    for name in ("mlflow.utils.git_utils", "mlflow.tracking._tracking_service.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow logs a database error with its whole traceback and then raises it: the step
    # reports what it raises (run_step below), so the log would only print it twice.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _unexpected(exc: BaseException) -> str:
    """One line for an exception nobody expected: what, where, what to do."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return (f"unexpected {type(exc).__name__}{where}: {first_line(exc)}; the traceback is in "
            "the step's log; run the step again, and report it if it repeats")


def _fail(spec: StepSpec, message: str) -> None:
    """The last line on stderr, and the container's termination message."""
    line = f"mlkube {spec.name}: error: {message}"
    print(line, file=sys.stderr, flush=True)
    write_termination_message(line)


def run_step(spec: StepSpec, body: Callable[[Context], dict[str, Any]],
             argv: list[str] | None = None) -> int:
    """Run ``body`` as the program for ``spec``; returns the exit status."""
    signal.signal(signal.SIGTERM, _terminate)  # a pod's eviction: stop like Ctrl-C
    _quiet_environment()
    ctx: Context | None = None
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
        _fail(spec, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _fail(spec, INTERRUPTED)
        return 130
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            traceback.print_exc()
        _fail(spec, str(hint) if hint else _unexpected(exc))
        return 1
    except Exception as exc:  # a bug or an environment nobody planned for
        if _interrupted(exc):  # a SIGTERM inside a library's I/O, which it wrapped
            _fail(spec, INTERRUPTED)
            return 130
        if disk_full(exc) is not None:  # not a bug: one line, however deep the library wrapped it
            _fail(spec, str(disk_full_error(exc, _state_dir(ctx))))
            return 1
        traceback.print_exc()
        _fail(spec, _unexpected(exc))
        return 1


INTERRUPTED = "interrupted; run it again to resume"


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a stop (SIGTERM or Ctrl-C): a database
    driver interrupted mid-commit raises its own error over the KeyboardInterrupt."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _state_dir(ctx: Context | None) -> Path | None:
    """Where the step writes (its state directory), for a message; ``None`` if not known."""
    if ctx is not None:
        return ctx.state_dir
    try:
        return configmod.state_dir(configmod.load(None))
    except MlkubeError:
        return None
