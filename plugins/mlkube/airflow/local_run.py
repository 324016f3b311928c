"""The local backend: run a step program as a subprocess of the Airflow worker.

Same program, same options, same result contract as in a pod: the step writes its JSON result
to ``--result-file``, which becomes the task's return value. The step's output streams to the
task log line by line; a non-zero exit fails the task with the step's one-line error.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mlkube.errors import MlkubeError
from mlkube.result import read_result
from mlkube.spec import GPUS_ENV, StepSpec

# Also called with (step name, line) for every output line of a step, when set (the demo's live
# status line). None, the default: the lines go to the log only.
progress: Callable[[str, str], None] | None = None


class Log(Protocol):
    """What the runner logs to (a ``logging.Logger`` or Airflow's task logger)."""

    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Log one line."""


def _error_line(spec: StepSpec, tail: Sequence[str], code: int) -> str:
    """The step's own one-line error if it printed one, else its last line of output."""
    prefix = f"mlkube {spec.name}: "
    for line in reversed(tail):
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    last = next((line for line in reversed(tail) if line.strip()), "no output")
    return f"step {spec.name} exited with code {code}; its last output: {last}"


class LocalStep:
    """One run of a step program as a local process."""

    def __init__(self, spec: StepSpec, values: Mapping[str, Any], *,
                 env: Mapping[str, str], command: Sequence[str] | None = None,
                 gpus: int | None = None) -> None:
        """Describe the run.

        Args:
            spec: the step to run.
            values: option values keyed by Python name (``None`` = omit).
            env: environment added to the worker's own.
            command: replaces ``python -m <module>`` (the step's arguments still follow).
            gpus: the GPUs the step is given (``MLKUBE_GPUS``, as in a pod: train fails in one
                line when torch sees fewer); ``None``: none asked for, the worker's own
                environment decides.
        """
        self.spec = spec
        self.values = dict(values)
        self.env = dict(env)
        if gpus is not None:
            from mlkube.kube import validation

            validation.gpus(gpus, f"step {spec.name}: gpus")
            self.env[GPUS_ENV] = str(gpus)
        self.command = list(command) if command else spec.command(sys.executable)
        self.process: subprocess.Popen[str] | None = None

    def argv(self, result_file: Path) -> list[str]:
        """The command line, writing its result to ``result_file``."""
        return [*self.command, *self.spec.arguments({**self.values, "result_file": str(result_file)})]

    def run(self, log: Log) -> dict[str, Any]:
        """Run to completion, streaming output to ``log``; return the step's result.

        Raises:
            MlkubeError: the step failed; the message is the step's own error line.
        """
        with tempfile.TemporaryDirectory(prefix=f"mlkube-{self.spec.name}-") as tmp:
            result_file = Path(tmp) / "result.json"
            argv = self.argv(result_file)
            log.info("local backend: %s", shlex.join(argv))
            self.process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env}, bufsize=1,
            )
            tail: deque[str] = deque(maxlen=50)
            assert self.process.stdout is not None
            for raw in self.process.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                log.info("%s", line)
                if progress is not None:
                    progress(self.spec.name, line)
            code = self.process.wait()
            if code != 0:
                raise MlkubeError(_error_line(self.spec, tail, code))
            return read_result(result_file)

    def terminate(self, timeout: float = 30.0) -> None:
        """Stop the process (the task was killed): SIGTERM, then SIGKILL after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
