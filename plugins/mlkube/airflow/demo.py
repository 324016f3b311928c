"""Run dags/ml_lifecycle.py through real Airflow on this machine, to a live endpoint.

    python -m mlkube.airflow.demo [--config lifecycle.yaml] [--dags-folder dags]

Airflow gets a home of its own under the state directory (``<state>/airflow``, SQLite), the
operators the ``local`` backend, and the DAG runs under ``dag.test()``: every task of the real
DAG file, in order, with the step programs as local processes. The model server it leaves
running is stopped with ``mlkube serve stop``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DAG_ID = "ml_lifecycle"


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


def _result(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(
            run_id=run.run_id, key="return_value", dag_ids=run.dag_id, task_ids=task_id)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def main(argv: list[str] | None = None) -> int:
    """Parse the DAG folder, run the lifecycle DAG once, print where the model is served."""
    parser = argparse.ArgumentParser(prog="python -m mlkube.airflow.demo", description=__doc__)
    parser.add_argument("--config", help="lifecycle config (YAML); none = the demo defaults")
    parser.add_argument("--dags-folder", default="dags", help="folder holding ml_lifecycle.py")
    parser.add_argument("--state-dir", default=".mlkube",
                        help="state directory (MLKUBE_STATE_DIR wins when set)")
    args = parser.parse_args(argv)
    state = _environment(args)

    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors or DAG_ID not in bag.dags:
        print(f"mlkube demo: error: cannot load {DAG_ID} from {args.dags_folder}: "
              f"{bag.import_errors or 'no such DAG'}", file=sys.stderr)
        return 1
    run = bag.dags[DAG_ID].test()
    deployed = _result(run, "deploy")
    if str(run.state) != "success" or not deployed:
        print(f"mlkube demo: DAG run {run.run_id} ended {run.state}; the failing task's log is "
              "above", file=sys.stderr)
        return 1
    registered = _result(run, "register") or {}
    print(f"\nmlkube demo: {DAG_ID} succeeded through Airflow (state: {state})\n"
          f"  champion   {deployed['model_name']} v{deployed['version']}; this run's model "
          f"v{registered.get('version')} {registered.get('metric')} "
          f"{registered.get('challenger_value')}, promoted: {registered.get('promoted')}\n"
          f"  endpoint   {deployed['endpoint']}  (mlkube serve status; mlkube serve stop)\n"
          f"  MLflow UI  mlflow ui --backend-store-uri "
          f"{os.environ.get('MLFLOW_TRACKING_URI', f'sqlite:///{state}/mlflow.db')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
