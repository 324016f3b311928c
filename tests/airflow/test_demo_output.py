"""The demo's terminal output, piece by piece (the whole run is tests/dags/test_demo.py)."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mlkube.airflow import demo


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("no real terminal")


def _lines(stream: io.StringIO) -> demo.TaskLines:
    return demo.TaskLines(demo.Console(stream, stream, live=True))


def test_progress_is_one_overwritten_line_on_a_terminal() -> None:
    tty = _Tty()
    lines = _lines(tty)
    ti = SimpleNamespace(task_id="train", map_index=-1,
                         xcom_pull=lambda **_: {"metric": "accuracy", "value": 0.96512,
                                                "epochs": 3, "device": "cpu"})
    lines.running(ti)
    lines.progress("train", "[train] epoch 1/3 loss 0.5 val_accuracy 0.9")
    lines.progress("train", "2026/01/01 some library warning")  # not the step's own line
    lines.progress("train", "[train] epoch 2/3 loss 0.2 val_accuracy 0.95")
    lines.success(ti)
    out = tty.getvalue()
    assert out.count("\r\033[K") == 3  # two status updates, then cleared for the end line
    assert "library warning" not in out
    assert out.endswith("\r\033[K  train            done     0.0 s  accuracy 0.9651 "
                        "(3 epochs on cpu)\n")


def test_no_status_line_without_a_terminal() -> None:
    pipe = io.StringIO()
    lines = _lines(pipe)
    ti = SimpleNamespace(task_id="tune_workers", map_index=1, xcom_pull=lambda **_: None)
    lines.running(ti)
    lines.progress("tune", "[tune] trial 0 complete val=0.9")
    lines.failed(ti, RuntimeError("study broke\nsecond line"))
    assert pipe.getvalue() == ("  tune_workers[1]  start\n"
                               "  tune_workers[1]  failed   0.0 s  study broke\n")


@pytest.mark.parametrize(("task_id", "result", "line"), [
    ("prepare_data", {"rows": 569, "dropped_rows": 2}, "569 rows (2 dropped)"),
    ("tune_select", {"best_value": 0.95294, "trials": 8}, "best value 0.9529 (8 complete trials)"),
    ("register", {"version": "2", "metric": "accuracy", "challenger_value": 0.9, "promoted": "false",
                  "champion_version": "1", "champion_value": 0.97},
     "v2 accuracy 0.9000, not promoted (champion v1 0.9700)"),
    ("deploy", {"version": "2", "endpoint": "http://h:1/v2/models/m/infer", "replaced_version": "1"},
     "v2 at http://h:1/v2/models/m/infer (replaces v1)"),
])
def test_key_results(task_id: str, result: dict[str, Any], line: str) -> None:
    assert demo._key_result(task_id, result) == line


def test_ask_endpoint_sends_what_its_curl_line_says() -> None:
    seen: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"], json.loads(body)))
            answer = b'{"predictions": [[0.25, 0.75]]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v2/models/m/infer"
        curl, answer = demo.ask_endpoint(endpoint, [1.5, 2.0])
    finally:
        server.shutdown()
    assert json.loads(answer) == {"predictions": [[0.25, 0.75]]}
    v2 = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.0]}]}
    assert seen == [("/v2/models/m/infer", "application/json", v2)]
    argv = shlex.split(curl)
    assert argv[:4] == ["curl", "-s", "-H", "Content-Type: application/json"]
    assert argv[4] == endpoint and json.loads(argv[6]) == v2


def test_output_goes_to_the_log_file_and_the_terminal_stream_stays(tmp_path: Path) -> None:
    code = f"""
import os, subprocess, sys
from pathlib import Path
from mlkube.airflow import demo
with demo._output_to(Path({str(tmp_path / 'x.log')!r})) as (out, err):
    print("from python"); print("to stderr", file=sys.stderr)
    os.write(1, b"from the fd\\n")
    subprocess.run([sys.executable, "-c", "print('from a child')"])
    out.write("for the user\\n"); err.write("an error line\\n")
print("after")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "for the user\nafter\n"
    assert done.stderr == "an error line\n"
    assert sorted((tmp_path / "x.log").read_text().splitlines()) == sorted(
        ["from python", "to stderr", "from the fd", "from a child"])
