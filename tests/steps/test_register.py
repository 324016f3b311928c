"""register: idempotent registration and the champion gate, on a real MLflow registry."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlkube.data import demo_data, load_info, load_split
from mlkube_testing import error_lines, run


def _versions(name: str = "mlkube-demo") -> list[str]:
    try:
        return sorted(str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))
    except mlflow.exceptions.MlflowException:
        return []


def test_first_model_is_champion_and_registering_twice_adds_nothing(
        dataset: str, train: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_id = train()
    capsys.readouterr()
    code, result, _ = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path)
    assert "[register] version 1 took the champion alias (there was none)" in \
        capsys.readouterr().out.splitlines()
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
    # the rerun says that nothing changed, not that the alias was taken again
    said = capsys.readouterr().out.splitlines()
    assert "[register] version 1 is already the champion; nothing changed" in said, said
    assert not any("took" in line for line in said), said


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
    (["--model-name", "team/model"], "MLflow model names"),
    (["--model-name", "a:b"], "MLflow model names"),
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


def _experiment_id() -> str:
    experiment = mlflow.get_experiment_by_name("mlkube")  # prepare-data created it
    assert experiment is not None
    return str(experiment.experiment_id)


def _sklearn_champion(dataset: str, prefix: str = "") -> Any:
    """A scikit-learn pipeline on the train split's named columns (``prefix`` renames them),
    predicting the dataset's original class labels; registered and made champion."""
    with warnings.catch_warnings():  # MLflow saves with skops, which on its first import
        # looks its types up in every module loaded: in this test process Airflow's too, whose
        # deprecation shims then warn 1,160 times (a step process has no Airflow loaded)
        warnings.simplefilter("ignore", FutureWarning)
        import skops.io  # noqa: F401
    x, y, frame = load_split(dataset, "train")
    labels = np.asarray(load_info(dataset).classes)[y]
    frame = frame.add_prefix(prefix)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(frame, labels)
    with mlflow.start_run(experiment_id=_experiment_id()):
        logged = mlflow.sklearn.log_model(model, name="model",
                                          signature=infer_signature(frame, labels),
                                          pip_requirements=["scikit-learn"])
    version = mlflow.register_model(logged.model_uri, "mlkube-demo").version
    mlflow.MlflowClient().set_registered_model_alias("mlkube-demo", "champion", str(version))
    return model


class _NaN(mlflow.pyfunc.PythonModel):
    """Two 'class probabilities' per row, all NaN."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # unannotated: MLflow reads predict's type hints as a schema (the signature is given)
        return np.full((len(model_input), 2), np.nan)


def _nan_model(dataset: str) -> tuple[str, str]:
    """A pyfunc that predicts NaN, logged in a new run of the test experiment: (run id, URI)."""
    x, _, _ = load_split(dataset, "train")
    with mlflow.start_run(experiment_id=_experiment_id()) as active:
        logged = mlflow.pyfunc.log_model(name="model", python_model=_NaN(),
                                         signature=infer_signature(x[:5], np.zeros((5, 2))),
                                         pip_requirements=["mlflow"])
    return active.info.run_id, logged.model_uri


def test_sklearn_champion_scored_on_its_own_columns_and_labels(
        dataset: str, train: Callable[..., str], tmp_path: Path) -> None:
    champion = _sklearn_champion(dataset)
    _, y_test, frame_test = load_split(dataset, "test")
    expected = accuracy_score(np.asarray(load_info(dataset).classes)[y_test],
                              champion.predict(frame_test))
    code, result, _ = run("register", "--dataset", dataset, "--run-id", train(), tmp=tmp_path)
    assert code == 0 and result is not None
    assert result["champion_value"] == pytest.approx(expected, abs=1e-9)
    assert result["champion_value"] > 0.9  # read as labels, not as an argmax of them (0.0)
    better = result["challenger_value"] > result["champion_value"]
    assert result["promoted"] == ("true" if better else "false")
    assert result["champion_version"] == ("2" if better else "1")
    champion_now = mlflow.MlflowClient().get_model_version_by_alias("mlkube-demo", "champion")
    assert str(champion_now.version) == result["champion_version"]


def test_champion_trained_on_other_columns_fails_and_changes_nothing(
        dataset: str, train: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _sklearn_champion(dataset, prefix="other_")
    run_id = train()
    capsys.readouterr()
    code, result, err = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path,
                            capsys=capsys)
    assert code == 1 and result is None
    lines = error_lines(err)
    assert len(lines) == 1 and "lacks" in lines[0] and "other_mean_radius" in lines[0]
    assert _versions() == ["1"]
    champion = mlflow.MlflowClient().get_model_version_by_alias("mlkube-demo", "champion")
    assert str(champion.version) == "1"


def test_challenger_with_non_finite_predictions_is_not_registered(
        dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id, _ = _nan_model(dataset)
    code, result, err = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path,
                            capsys=capsys)
    assert code == 1 and result is None
    lines = error_lines(err)
    assert len(lines) == 1 and "non-finite" in lines[0]
    assert mlflow.MlflowClient().search_registered_models() == [] and _versions() == []


def test_champion_with_non_finite_predictions_loses_to_a_finite_challenger(
        dataset: str, train: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, model_uri = _nan_model(dataset)
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, "mlkube-demo").version
    client.set_registered_model_alias("mlkube-demo", "champion", str(version))
    challenger = train()
    capsys.readouterr()
    code, result, _ = run("register", "--dataset", dataset, "--run-id", challenger, tmp=tmp_path)
    out = capsys.readouterr().out  # the step's progress lines
    assert code == 0 and result is not None
    assert result["promoted"] == "true" and result["version"] == "2"
    assert result["champion_version"] == "2" and result["champion_value"] == ""
    assert "non-finite" in out and "loses the alias" in out
    assert "[register] version 2 took the champion alias from v1" in out.splitlines()
    assert str(client.get_model_version_by_alias("mlkube-demo", "champion").version) == "2"


def test_a_champion_whose_artifacts_are_gone_loses_the_gate_in_one_line(
        dataset: str, train: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It made every later register fail; now the challenger is judged on its own merits."""
    import shutil

    code, first, _ = run("register", "--dataset", dataset, "--run-id", train(), tmp=tmp_path)
    assert code == 0 and first is not None and first["champion_version"] == "1"
    client = mlflow.MlflowClient()
    gone = Path(client.get_model_version_download_uri("mlkube-demo", "1").removeprefix("file://"))
    shutil.rmtree(gone)
    challenger = train(epochs=2)
    capsys.readouterr()
    code, result, _ = run("register", "--dataset", dataset, "--run-id", challenger, tmp=tmp_path)
    out = capsys.readouterr().out
    assert code == 0 and result is not None
    assert (result["promoted"], result["champion_version"], result["champion_value"]) == (
        "true", "2", "")
    said = [line for line in out.splitlines() if "cannot be loaded" in line]
    assert len(said) == 1 and said[0].endswith("it loses the alias; the challenger is judged "
                                               "on its own")
    assert str(client.get_model_version_by_alias("mlkube-demo", "champion").version) == "2"


def test_a_champion_moved_by_another_run_while_judging_is_judged_again(
        dataset: str, train: Callable[..., str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate read the champion, evaluated for a while, then wrote: a run that moved the
    alias meanwhile lost its update. Now the write is a compare-and-set: judge again."""
    from mlkube import evaluation

    _, nan_uri = _nan_model(dataset)  # v1: cannot defend (non-finite predictions)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("mlkube-demo", "champion",
                                      mlflow.register_model(nan_uri, "mlkube-demo").version)
    weak, strong = train(epochs=2, learning_rate=1e-4), train(epochs=6, learning_rate=0.01)
    real_score = evaluation.score
    moved: list[str] = []

    def score_while_another_run_registers(model_uri: str, *args: Any, **kwargs: Any) -> float:
        try:
            return real_score(model_uri, *args, **kwargs)  # v1's raises: non-finite
        finally:
            if model_uri == "models:/mlkube-demo/1" and not moved:  # meanwhile, elsewhere:
                version = mlflow.register_model(f"runs:/{strong}/model", "mlkube-demo").version
                client.set_registered_model_alias("mlkube-demo", "champion", str(version))
                moved.append(str(version))

    monkeypatch.setattr(evaluation, "score", score_while_another_run_registers)
    capsys.readouterr()
    code, result, _ = run("register", "--dataset", dataset, "--run-id", weak, tmp=tmp_path)
    out = capsys.readouterr().out
    assert code == 0 and result is not None and moved == ["2"]
    assert "the champion moved from v1 to v2 while this run judged it: judging again" in out
    # judged against v2 (the strong one), not v1: the weak challenger does not take the alias
    assert (result["promoted"], result["champion_version"]) == ("false", "2")
    assert str(client.get_model_version_by_alias("mlkube-demo", "champion").version) == "2"


def test_inf_cells_dropped_then_trained_and_registered(state: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(demo_data(state))
    frame.loc[3, "mean_radius"] = np.inf
    frame.loc[10, "worst_area"] = -np.inf
    source = tmp_path / "with-inf.csv"
    frame.to_csv(source, index=False)
    assert source.read_text().count("inf") == 2  # written as the cells 'inf' and '-inf'
    code, prepared, _ = run("prepare-data", "--input", str(source), tmp=tmp_path)
    assert code == 0 and prepared is not None
    assert prepared["dropped_rows"] == 2 and prepared["rows"] == 567
    code, trained, _ = run("train", "--dataset", prepared["dataset_uri"], "--epochs", "3",
                           "--params", '{"hidden_sizes": "16"}', tmp=tmp_path)
    assert code == 0 and trained is not None and trained["value"] > 0.8
    losses = [m.value for m in
              mlflow.MlflowClient().get_metric_history(trained["run_id"], "train_loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    code, registered, _ = run("register", "--dataset", prepared["dataset_uri"], "--run-id",
                              trained["run_id"], tmp=tmp_path)
    assert code == 0 and registered is not None
    assert (registered["version"], registered["promoted"]) == ("1", "true")


def test_two_registers_at_once_lose_no_update(dataset: str, train: Callable[..., str],
                                             tmp_path: Path) -> None:
    """Two register processes of one model at once (a lifecycle run and a retraining run
    whose orchestrator lock was bypassed): whichever writes last, the stronger model ends as the
    champion, and both versions are registered."""
    import json
    import subprocess
    import sys

    weak, strong = train(epochs=1, learning_rate=1e-6, seed=3), train(epochs=6, learning_rate=0.01)
    processes = []
    for name, run_id in (("weak", weak), ("strong", strong)):
        out = tmp_path / f"{name}.json"
        processes.append((out, subprocess.Popen(
            [sys.executable, "-m", "mlkube.steps.register", "--dataset", dataset, "--run-id",
             run_id, "--result-file", str(out)], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)))
    logs = [process.communicate(timeout=300)[0] for _, process in processes]
    assert [process.returncode for _, process in processes] == [0, 0], logs
    results = {r["version"]: r for r in (json.loads(out.read_text()) for out, _ in processes)}
    assert sorted(results) == ["1", "2"]
    strong_version = next(v for v, r in results.items()
                          if r["challenger_value"] == max(x["challenger_value"]
                                                          for x in results.values()))
    champion = mlflow.MlflowClient().get_model_version_by_alias("mlkube-demo", "champion")
    assert str(champion.version) == strong_version


def test_a_rerun_keeps_the_live_gates_verdict(dataset: str, train: Callable[..., str],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An Airflow/Argo retry of register after deploy judged the challenger on live traffic
    must not put ``awaiting live evidence`` back (the rejected challenger would be shadowed
    again): the ``live: ...`` verdict stands."""
    from mlkube import live_gates
    from mlkube_testing import write_config

    config = str(write_config(tmp_path / "gate.yaml",
                              registry={"min_live_requests": 20, "min_agreement": 0.5}))
    options = ("--config", config, "--dataset", dataset)
    run("register", *options, "--run-id", train(), tmp=tmp_path)
    challenger = train(epochs=6, learning_rate=0.01)
    code, result, _ = run("register", *options, "--run-id", challenger, tmp=tmp_path)
    assert code == 0 and result is not None
    assert (result["version"], result["promoted"], result["champion_version"]) == ("2", "false",
                                                                                  "1")
    client = mlflow.MlflowClient()
    assert client.get_model_version("mlkube-demo", "2").tags["mlkube.gate"].startswith(
        live_gates.AWAITING)
    # a rerun before deploy judged it: still awaiting (idempotent)
    code, again, _ = run("register", *options, "--run-id", challenger, tmp=tmp_path)
    assert code == 0 and again is not None and again["promoted"] == "false"
    assert client.get_model_version("mlkube-demo", "2").tags["mlkube.gate"].startswith(
        live_gates.AWAITING)

    # deploy's shadow gate rejected it (the tag as live_gates.judge_shadow writes it)
    verdict = "live: agreement 0.100 under 0.5 over 20 live requests beside v1; not promoted"
    client.set_model_version_tag("mlkube-demo", "2", live_gates.TAG_GATE, verdict)
    capsys.readouterr()
    code, rerun, _ = run("register", *options, "--run-id", challenger, tmp=tmp_path)
    assert code == 0 and rerun is not None
    assert (rerun["version"], rerun["promoted"], rerun["champion_version"]) == ("2", "false",
                                                                                "1")
    assert client.get_model_version("mlkube-demo", "2").tags["mlkube.gate"] == verdict
    assert client.get_model_version_by_alias("mlkube-demo", "champion").version == 1
    assert _versions() == ["1", "2"]
    said = capsys.readouterr().out.splitlines()
    assert f"[register] version 2 was already judged on live traffic ({verdict}): kept; not " \
           "shadowed again" in said, said
    assert not any("awaiting" in line or "takes champion after" in line for line in said), said
