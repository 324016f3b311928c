"""register: idempotent registration and the champion gate, on a real MLflow registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from mlkube.data import load_info
from mlkube_testing import error_lines, run


def _versions(name: str = "mlkube-demo") -> list[str]:
    try:
        return sorted(str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))
    except mlflow.exceptions.MlflowException:
        return []


def test_first_model_is_champion_and_registering_twice_adds_nothing(
        dataset: str, train: Callable[..., str], tmp_path: Path) -> None:
    run_id = train()
    code, result, _ = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path)
    assert code == 0 and result is not None
    assert (result["version"], result["promoted"], result["champion_version"]) == ("1", "true", "1")
    assert result["champion_value"] == "" and result["challenger_value"] > 0.8
    version = mlflow.MlflowClient().get_model_version_by_alias("mlkube-demo", "champion")
    assert str(version.version) == "1"
    assert version.tags["mlkube.dataset_digest"] == load_info(dataset).digest
    assert version.tags["mlkube.code_version"] and version.tags["test_accuracy"]
    assert result["champion_uri"].startswith("file://")

    again, second, _ = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path)
    assert again == 0 and second is not None
    assert second["version"] == "1" and second["promoted"] == "true"
    assert _versions() == ["1"]


def test_worse_challenger_does_not_take_champion(dataset: str, train: Callable[..., str],
                                                 tmp_path: Path) -> None:
    good = train(epochs=6, learning_rate=0.01)
    bad = train(epochs=1, learning_rate=1e-6, seed=3)
    run("register", "--dataset", dataset, "--run-id", good, tmp=tmp_path)
    code, result, _ = run("register", "--dataset", dataset, "--run-id", bad, tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["promoted"] == "false" and result["version"] == "2"
    assert result["champion_version"] == "1"
    assert result["challenger_value"] < result["champion_value"]
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("mlkube-demo", "champion").version == 1
    assert client.get_model_version_by_alias("mlkube-demo", "challenger").version == 2


def test_margin_keeps_an_equal_challenger_out(dataset: str, train: Callable[..., str],
                                              tmp_path: Path) -> None:
    first = train(epochs=4)
    second = train(epochs=4, seed=1)
    run("register", "--dataset", dataset, "--run-id", first, tmp=tmp_path)
    code, result, _ = run("register", "--dataset", dataset, "--run-id", second,
                          "--margin", "0.5", tmp=tmp_path)
    assert code == 0 and result is not None and result["promoted"] == "false"


@pytest.mark.parametrize(("args", "message"), [
    (["--model-name", "team/model"], "is rejected by MLflow"),
    (["--model-name", "a:b"], "is rejected by MLflow"),
    (["--run-id", "0123456789abcdef"], "not found"),
])
def test_bad_input_registers_nothing(dataset: str, train: Callable[..., str], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], args: list[str],
                                     message: str) -> None:
    run_id = train()
    code, result, err = run("register", "--dataset", dataset, "--run-id", run_id, *args,
                            tmp=tmp_path, capsys=capsys)
    assert code == 1 and result is None
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0]
    assert mlflow.MlflowClient().search_registered_models() == []
