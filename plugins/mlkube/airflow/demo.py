"""Run dags/ml_lifecycle.py through real Airflow on this machine, to a live endpoint.

    python -m mlkube.airflow.demo [--config lifecycle.yaml] [--dags-folder dags] [--verbose]

Airflow gets a home of its own under the state directory (``<state>/airflow``, SQLite), the
operators the ``local`` backend, and the DAG runs under ``dag.test()``: every task of the real
DAG file, in order, with the step programs as local processes. The terminal gets one line as
each task starts and one as it ends (its duration and key result, or its one-line error), the
step's latest progress line while it runs (on a terminal only), and a summary that ends with a
prediction from the live endpoint. Everything Airflow prints goes to ``<state>/airflow/demo.log``
(``--verbose``: to the terminal, as it comes). The model server it leaves running is stopped with
``mlkube serve stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from mlkube.errors import first_line

DAG_ID = "ml_lifecycle"
LOG_NAME = "demo.log"


def _environment(args: argparse.Namespace) -> Path:
    """Configure Airflow and mlkube through the environment, before Airflow is imported."""
    state = Path(os.environ.get("MLKUBE_STATE_DIR") or args.state_dir).resolve()
    home = state / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "MLKUBE_STATE_DIR": str(state),
        "MLKUBE_BACKEND": "local",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(args.dags_folder).resolve()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    })
    if args.config:
        os.environ["MLKUBE_CONFIG"] = str(Path(args.config).resolve())
    return state


# -- the terminal ---------------------------------------------------------------------------


class Console:
    """What the user sees: whole lines, plus one overwritten status line on a terminal."""

    def __init__(self, stream: IO[str], errors: IO[str], *, live: bool) -> None:
        self.stream = stream
        self.errors = errors
        self.live = live and stream.isatty()
        self._status = False

    def line(self, text: str = "") -> None:
        """Print one line (clearing the status line first)."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def error(self, text: str) -> None:
        """Print one line on the error stream."""
        self.clear()
        self.stream.flush()
        self.errors.write(text + "\n")
        self.errors.flush()

    def status(self, text: str) -> None:
        """Show ``text`` in place of the previous status line (terminal only)."""
        if not self.live:
            return
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80
        except OSError:
            width = 80
        self.stream.write("\r\033[K" + text[:max(width - 1, 20)])
        self.stream.flush()
        self._status = True

    def clear(self) -> None:
        """Remove the status line."""
        if self._status:
            self.stream.write("\r\033[K")
            self._status = False


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[tuple[IO[str], IO[str]]]:
    """Send file descriptors 1 and 2 (Python, C and child processes alike) to ``path``.

    Yields streams on the original stdout and stderr, for what the user should see.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    terminal = [os.fdopen(os.dup(fd), "w", buffering=1, errors="replace") for fd in saved]
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal[0], terminal[1]
    finally:
        for stream in (sys.stdout, sys.stderr, *terminal):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        for stream in terminal:
            stream.close()


# -- per-task lines -------------------------------------------------------------------------


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _key_result(task_id: str, r: dict[str, Any]) -> str:
    """The one thing worth showing from a task's result."""
    if task_id == "prepare_data":
        return f"{r.get('rows')} rows ({r.get('dropped_rows')} dropped)"
    if task_id.startswith("tune"):
        return f"best value {_num(r.get('best_value'))} ({r.get('trials')} complete trials)"
    if task_id == "train":
        return f"{r.get('metric')} {_num(r.get('value'))} ({r.get('epochs')} epochs on {r.get('device')})"
    if task_id == "register":
        if r.get("promoted") == "true":  # holds the alias now (a rerun: it already did)
            verdict = "the champion"
        else:
            verdict = (f"not promoted (champion v{r.get('champion_version')} "
                       f"{_num(r.get('champion_value'))})")
        return f"v{r.get('version')} {r.get('metric')} {_num(r.get('challenger_value'))}, {verdict}"
    if task_id == "deploy":
        replaced = f" (replaces v{r['replaced_version']})" if r.get("replaced_version") else ""
        return f"v{r.get('version')} at {r.get('endpoint')}{replaced}"
    return ""


def _label(ti: Any) -> str:
    index = getattr(ti, "map_index", -1)
    return f"{ti.task_id}[{index}]" if index is not None and index >= 0 else str(ti.task_id)


class TaskLines:
    """An Airflow listener: a line as each task instance starts and as it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started: dict[str, float] = {}
        self.width = 16

    def _line(self, label: str, what: str) -> None:
        self.console.line(f"  {label:<{self.width}} {what}")

    def _elapsed(self, label: str) -> str:
        return f"{time.monotonic() - self.started.pop(label, time.monotonic()):5.1f} s"

    def progress(self, step: str, line: str) -> None:
        """A step's output line (local_run's hook): its own progress lines go on the status line."""
        if line.startswith(f"[{step}] ") and not line.startswith(f"[{step}] done: "):
            with contextlib.suppress(OSError, ValueError):
                self.console.status(f"  {'':<{self.width}} {line}")

    def running(self, task_instance: Any) -> None:
        label = _label(task_instance)
        self.started[label] = time.monotonic()
        self._line(label, "start")

    def success(self, task_instance: Any) -> None:
        label = _label(task_instance)
        result: Any = None
        with contextlib.suppress(Exception):  # the line matters more than its detail
            result = task_instance.xcom_pull(task_ids=task_instance.task_id,
                                             map_indexes=task_instance.map_index)
        detail = _key_result(task_instance.task_id, result) if isinstance(result, dict) else ""
        self._line(label, f"done   {self._elapsed(label)}  {detail}".rstrip())

    def failed(self, task_instance: Any, error: Any) -> None:
        label = _label(task_instance)
        self._line(label, f"failed {self._elapsed(label)}  {first_line(error)}")


def _listener(lines: TaskLines) -> Any:
    """``lines`` as a pluggy plugin of the Task SDK's listener manager (what dag.test calls)."""
    from airflow.listeners import hookimpl

    class Listener:
        @hookimpl
        def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
            lines.running(task_instance)

        @hookimpl
        def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
            lines.success(task_instance)

        @hookimpl
        def on_task_instance_failed(self, previous_state: Any, task_instance: Any,
                                    error: Any) -> None:
            lines.failed(task_instance, error)

    return Listener()


@contextlib.contextmanager
def _task_lines(console: Console, *, live: bool) -> Iterator[TaskLines]:
    """Report task starts and ends (and, if ``live``, step progress) while the DAG runs."""
    from airflow.sdk.listener import get_listener_manager

    from mlkube.airflow import local_run

    lines = TaskLines(console)
    manager = get_listener_manager()
    plugin = _listener(lines)
    manager.add_listener(plugin)
    previous: Callable[[str, str], None] | None = local_run.progress
    if live:
        local_run.progress = lines.progress
    try:
        yield lines
    finally:
        local_run.progress = previous
        manager.pm.unregister(plugin)
        console.clear()


# -- after the run --------------------------------------------------------------------------


def _result(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(
            run_id=run.run_id, key="return_value", dag_ids=run.dag_id, task_ids=task_id)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def _not_run(run: Any, task_ids: list[str]) -> list[tuple[str, str]]:
    """Task instances that never ran (upstream failed, skipped), in DAG order, with their state."""
    from airflow.utils.state import TaskInstanceState

    ran = {TaskInstanceState.SUCCESS, TaskInstanceState.FAILED, TaskInstanceState.UP_FOR_RETRY}
    order = {task_id: i for i, task_id in enumerate(task_ids)}
    left = sorted((ti for ti in run.get_task_instances() if ti.state not in ran),
                  key=lambda ti: (order.get(ti.task_id, len(order)), ti.map_index))
    return [(_label(ti), str(ti.state)) for ti in left]


def ask_endpoint(endpoint: str, row: list[float], timeout: float = 30.0) -> tuple[str, str]:
    """Ask the model server for a prediction on one feature row.

    The one place that speaks the serving protocol: the Open Inference Protocol (V2), a POST
    of one FP32 tensor to the deploy step's ``endpoint`` (``.../v2/models/<name>/infer``).
    Returns the same request as a curl command line, and the body of the server's answer.

    Raises:
        OSError: the server did not answer, or answered an HTTP error (``HTTPError``).
    """
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32",
                                   "data": row}]})
    curl = shlex.join(["curl", "-s", "-H", "Content-Type: application/json", endpoint, "-d", body])
    request = urllib.request.Request(endpoint, data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return curl, response.read().decode(errors="replace")


def _prediction(out: Console, endpoint: str, dataset_uri: str | None) -> bool:
    """Send row 0 of the test split to the endpoint; print the request and the answer."""
    from mlkube import data

    if not dataset_uri:
        out.error("mlkube demo: error: prepare_data returned no dataset_uri to take a row from")
        return False
    _, y, frame = data.load_split(dataset_uri, "test")
    row = [float(v) for v in frame.iloc[0].tolist()]
    try:
        curl, answer = ask_endpoint(endpoint, row)
    except OSError as exc:
        detail = exc.read().decode(errors="replace")[:300] if isinstance(
            exc, urllib.error.HTTPError) else ""
        out.error(f"mlkube demo: error: {endpoint} did not give a prediction: {exc} {detail}")
        return False
    with contextlib.suppress(ValueError):
        answer = json.dumps(json.loads(answer))
    out.line(f"\n  a prediction for row 0 of the test split (its target: {y[0]}):")
    out.line(f"  $ {curl}")
    out.line(f"  {answer}")
    return True


def _summary(out: Console, run: Any, state: Path, seconds: float) -> bool:
    deployed = _result(run, "deploy") or {}
    registered = _result(run, "register") or {}
    prepared = _result(run, "prepare_data") or {}
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{state}/mlflow.db")
    out.line(f"\nmlkube demo: {DAG_ID} succeeded through Airflow in {seconds:.0f} s "
             f"(state: {state})\n"
             f"  champion   {deployed['model_name']} v{deployed['version']}; this run's model "
             f"v{registered.get('version')} {registered.get('metric')} "
             f"{_num(registered.get('challenger_value'))}, promoted: {registered.get('promoted')}\n"
             f"  endpoint   {deployed['endpoint']}  (mlkube serve status; mlkube serve stop)\n"
             f"  MLflow UI  mlflow ui --backend-store-uri {uri}")
    return _prediction(out, deployed["endpoint"], prepared.get("dataset_uri"))


# -- main -----------------------------------------------------------------------------------


def _run_dag(out: Console, args: argparse.Namespace, *, live: bool) -> Any:
    """Create Airflow's database, parse the DAG folder, run the DAG; ``None`` if it won't load."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    from mlkube.airflow import pools

    db.initdb()
    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors or DAG_ID not in bag.dags:
        out.error(f"mlkube demo: error: cannot load {DAG_ID} from {args.dags_folder}: "
                  f"{bag.import_errors or 'no such DAG'}")
        return None
    dag = bag.dags[DAG_ID]
    pools.create_pools([dag])  # register and deploy take the model's pool: it must exist
    with _task_lines(out, live=live):
        run = dag.test()
    for label, ti_state in _not_run(run, list(dag.task_ids)):
        out.line(f"  {label:<16} not run ({ti_state})")
    return run


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlkube.airflow.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="lifecycle config (YAML); none = the demo defaults")
    parser.add_argument("--dags-folder", default="dags", help="folder holding ml_lifecycle.py")
    parser.add_argument("--state-dir", default=".mlkube",
                        help="state directory (MLKUBE_STATE_DIR wins when set)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print Airflow's whole log to the terminal instead of a file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse the DAG folder, run the lifecycle DAG once, show a prediction from the endpoint."""
    args = _parse(argv)
    state = _environment(args)
    log = state / "airflow" / LOG_NAME
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.verbose:
            out = Console(sys.stdout, sys.stderr, live=False)
        else:
            print(f"mlkube demo: running {DAG_ID} through Airflow (dag.test, local backend); "
                  f"Airflow's log: {log}", flush=True)
            out = Console(*stack.enter_context(_output_to(log)), live=True)
        try:
            run = _run_dag(out, args, live=not args.verbose)
        except KeyboardInterrupt:
            out.error("mlkube demo: interrupted" + ("" if args.verbose else f"; Airflow's log: {log}"))
            return 130
        if run is None:
            return 1
        if str(run.state) != "success" or not _result(run, "deploy"):
            where = "above" if args.verbose else f"in {log}"
            out.error(f"mlkube demo: DAG run {run.run_id} ended {run.state}; the failing task's "
                      f"log is {where}")
            return 1
        return 0 if _summary(out, run, state, time.monotonic() - started) else 1


if __name__ == "__main__":
    sys.exit(main())
