"""deploy: a real MLflow scoring server on loopback; rollout, idempotence and rollback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mlkube.local import serving
from mlkube_testing import error_lines, run, write_config


@pytest.fixture
def config(tmp_path: Path) -> str:
    return str(write_config(tmp_path / "c.yaml"))


def _rows(dataset: str) -> list[list[float]]:
    frame = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
    return frame.head(3).to_numpy(dtype=float).tolist()


def _champion(dataset: str, run_id: str, tmp_path: Path) -> str:
    code, result, _ = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path)
    assert code == 0 and result is not None
    return str(result["champion_version"])


def test_serves_champion_then_rolls_to_the_next(dataset: str, train: Callable[..., str], state: Path,
                                                tmp_path: Path, config: str) -> None:
    _champion(dataset, train(epochs=2, learning_rate=1e-4), tmp_path)
    code, first, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and first is not None and first["version"] == "1"
    predictions = serving.predict(first["endpoint"], _rows(dataset))
    assert len(predictions) == 3 and all(abs(sum(p) - 1) < 1e-4 for p in predictions)

    again, same, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert again == 0 and same is not None
    assert same["endpoint"] == first["endpoint"] and same["replaced_version"] == ""

    assert _champion(dataset, train(epochs=8, learning_rate=0.01), tmp_path) == "2"
    code, second, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and second is not None
    assert (second["version"], second["replaced_version"]) == ("2", "1")
    assert second["endpoint"] != first["endpoint"]  # blue/green: the other port
    assert len(serving.predict(second["endpoint"], _rows(dataset))) == 3
    deployed = serving.deployments(state)
    assert [(d.version, serving.alive(d)) for d in deployed] == [("2", True)]
    assert serving.port_free("127.0.0.1", int(first["endpoint"].split(":")[2].split("/")[0]))


def test_failing_model_keeps_the_old_server(dataset: str, train: Callable[..., str], state: Path,
                                            tmp_path: Path, config: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _champion(dataset, train(epochs=2), tmp_path)
    code, good, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and good is not None
    broken = train(epochs=3, seed=5)
    version = mlflow.register_model(f"runs:/{broken}/model", "mlkube-demo").version
    client = mlflow.MlflowClient()
    artifacts = Path(client.get_model_version_download_uri("mlkube-demo", str(version))
                     .removeprefix("file://"))
    for file in (artifacts / "data").rglob("*"):
        if file.is_file():
            file.write_bytes(b"not a model")
    client.set_registered_model_alias("mlkube-demo", "champion", str(version))
    capsys.readouterr()

    code, result, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                            capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1
    assert f"version {version} failed its rollout" in lines[0]
    assert f"version 1 keeps serving at {good['endpoint']}" in lines[0]
    (current,) = serving.deployments(state)
    assert current.version == "1" and serving.alive(current)
    assert len(serving.predict(good["endpoint"], _rows(dataset))) == 3


def test_no_champion_yet(dataset: str, state: Path, tmp_path: Path, config: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                            capsys=capsys)
    assert code == 1 and result is None
    assert "has no version with alias 'champion'" in error_lines(err)[0]
    assert not (state / "serving").exists() or serving.deployments(state) == []
