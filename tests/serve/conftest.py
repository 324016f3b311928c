"""Fixtures for the serving runtime: real models in a real registry, real server processes.

One module-scoped state per test module: the demo data prepared and two MLPs trained by the
real steps (registered as versions 1 and 2 of ``serve-test``), plus pyfunc models logged from
``pyfunc_models.py``: one predicting NaN (version 3), one whose artifacts are deleted (version
4), one that fails on batches of more than 2 rows (``small``, version 5, its input example 2
rows), and ``gated``, whose load waits for a file (to watch a server before its model is ready).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_env import NAME, Registry, Server, log_pyfunc, start_server, train

from mlkube_testing import run


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A state with trained, registered and deliberately broken model versions."""
    tmp = tmp_path_factory.mktemp("serve")
    state = tmp / "state"
    state.mkdir()
    uri = f"sqlite:///{state / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        patch.setenv("MLKUBE_STATE_DIR", str(state))
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        import mlflow
        import pandas as pd

        from mlkube import tracking

        mlflow.set_tracking_uri(uri)
        code, prepared, _ = run("prepare-data", tmp=tmp)
        assert code == 0 and prepared is not None
        dataset = str(prepared["dataset_uri"])
        test = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
        registry = Registry(state=state, tracking_uri=uri,
                            rows=test.to_numpy(dtype="float32"), features=list(test.columns))
        trained = train(dataset, tmp, 3, "16")
        retrained = train(dataset, tmp, 2, "8")
        experiment = tracking.configure(state, "mlkube-test")
        example = registry.rows[:5]
        nan = log_pyfunc(experiment, example, {"kind": "nan"}, {"features": registry.features})
        deleted = log_pyfunc(experiment, example, {"kind": "nan"}, {})
        small = log_pyfunc(experiment, registry.rows[:2], {"kind": "small"},
                           {"features": registry.features, "classes": ["no", "yes"]})
        registry.gate = tmp / "gate"
        registry.gate.touch()  # open while logging (log_model loads the model once)
        gated = log_pyfunc(experiment, example, {"kind": "gated", "gate": str(registry.gate)},
                            {"features": registry.features, "classes": ["no", "yes"]})
        registry.gate.unlink()
        for role, model_uri in (("trained", trained), ("retrained", retrained), ("nan", nan),
                                ("deleted", deleted), ("small", small)):
            registry.versions[role] = str(mlflow.register_model(model_uri, NAME).version)
        registry.gated_uri = f"models:/gated/{mlflow.register_model(gated, 'gated').version}"
        model_id = deleted.removeprefix("models:/")
        location = mlflow.get_logged_model(model_id).artifact_location
        shutil.rmtree(location.removeprefix("file://"))
        yield registry


@pytest.fixture(scope="module")
def server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server for version 1 (``trained``), ready."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
        patch.setenv("MLKUBE_STATE_DIR", str(registry.state))
        started = start_server(registry.uri("trained"), NAME, registry.versions["trained"], log)
    try:
        started.wait("/v2/health/ready", 200)
        yield started
    finally:
        started.stop()
