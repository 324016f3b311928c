"""Helpers the tests share: a small config, free ports, running a step in this process."""

from __future__ import annotations

import importlib
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlkube import spec

# Small but real: every step does its full work on the bundled data in seconds.
SMALL_CONFIG: dict[str, Any] = {
    "experiment": "mlkube-test",
    "model": {"epochs": 4, "hidden_sizes": [16]},
    "tune": {"n_trials": 3, "workers": 2, "epochs": 3},
    "serving": {"port": 0},  # replaced per test by a free port
}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, **sections: Any) -> Path:
    """The small config with ``sections`` merged in (one level deep)."""
    data = json.loads(json.dumps(SMALL_CONFIG))
    data["serving"]["port"] = free_port()
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a directory tree (a prepared state reused by several tests)."""
    shutil.copytree(src, dst)
    return dst
def run(step: str, *args: str, tmp: Path, capsys: pytest.CaptureFixture[str] | None = None,
        ) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``step`` with ``args``; return (exit status, result or None, stderr)."""
    module = importlib.import_module(spec.get(step).module)
    result_file = tmp / f"{step}-result.json"
    result_file.unlink(missing_ok=True)
    code = module.main([*args, "--result-file", str(result_file)])
    err = capsys.readouterr().err if capsys is not None else ""
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return code, result, err


def error_lines(stderr: str) -> list[str]:
    """The lines the step wrote on stderr that are its own (not library warnings)."""
    return [line for line in stderr.splitlines() if line.startswith("mlkube ")]


class Load:
    """Clients asking a model's published V2 URL in a loop, for at most 300 s: how many
    answers, which versions gave them, and every failure (its message)."""

    def __init__(self, base_url: str, name: str, rows: list[list[float]], clients: int = 8,
                 pause: float = 0.0) -> None:
        import threading
        from collections import Counter

        self.base_url, self.name, self.rows, self.pause = base_url, name, rows, pause
        self.ok = 0
        self.versions: Counter[str] = Counter()
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, daemon=True) for _ in range(clients)]

    def _ask(self) -> None:
        import time

        from mlkube.serve import client

        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                answer = client.infer_answer(self.base_url, self.name, self.rows,
                                             input_name="input")
                rows = {o["name"]: o["shape"][0] for o in answer["outputs"]}
                assert set(rows.values()) == {len(self.rows)}, f"rows answered: {rows}"
                self.versions[answer["model_version"]] += 1
                self.ok += 1
            except Exception as exc:  # every failure counts, whatever its kind
                self.failed.append(str(exc) or repr(exc))
            if self.pause:
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
