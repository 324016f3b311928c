"""The step result document: a small JSON written atomically, read by the next step.

A result carries references (URIs, run ids), never payloads, so that it fits in a
container's termination message (4 KiB) and in Argo output parameters.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mlkube.errors import MlkubeError

TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LOG_LIMIT = 4096
# When set, each result key is also written to a file of its own name in this directory
# (Argo reads output parameters from files).
OUTPUTS_DIR_ENV = "MLKUBE_OUTPUTS_DIR"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(result: dict[str, Any]) -> str:
    """Serialise a result compactly and deterministically."""
    return json.dumps(result, sort_keys=True, separators=(",", ":"))


def write_result(result: dict[str, Any], result_file: Path | None,
                 termination_log: Path | None = None) -> None:
    """Write the result to ``result_file`` and, in a container, to the termination message."""
    text = dumps(result)
    if len(text.encode()) > TERMINATION_LOG_LIMIT:
        raise MlkubeError(
            f"step result is {len(text.encode())} bytes, over the {TERMINATION_LOG_LIMIT}-byte "
            "termination message limit: results must carry references, not payloads"
        )
    if result_file is not None:
        atomic_write_text(result_file, text + "\n")
    outputs_dir = os.environ.get(OUTPUTS_DIR_ENV)
    if outputs_dir:
        for key, value in result.items():
            plain = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            atomic_write_text(Path(outputs_dir) / key, plain)
    write_termination_message(text, termination_log)


def write_termination_message(text: str, termination_log: Path | None = None) -> None:
    """In a container, leave ``text`` (at most 4 KiB) as the container's termination message."""
    termination_log = termination_log or TERMINATION_LOG
    if termination_log.exists() and os.access(termination_log, os.W_OK):
        termination_log.write_bytes(text.encode()[:TERMINATION_LOG_LIMIT])


def read_result(path: Path) -> dict[str, Any]:
    """Read a result document written by :func:`write_result`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MlkubeError(f"result file {path} not found: did the step finish?") from None
    except json.JSONDecodeError as exc:
        raise MlkubeError(f"result file {path} is not JSON ({exc}): rerun the step") from None
    if not isinstance(data, dict):
        raise MlkubeError(f"result file {path} holds {type(data).__name__}, not an object")
    return data
