"""deploy's gates on live traffic, on the local target (issue 17, items 4 and 5): a canary
phase promoted or rolled back on its live error rate and p99, and a shadowed challenger that
takes ``champion`` only with enough live agreement.

Real parts: models trained and registered by the steps, pyfunc models that fail or disagree,
the real server process, clients asking the published URL while the step runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from mlkube.serve import client
from mlkube_testing import Load, error_lines, run, write_config

NAME = "mlkube-demo"
PYFUNC = Path(__file__).parents[1] / "serve" / "pyfunc_models.py"


def _rows(dataset: str, n: int = 3) -> list[list[float]]:
    frame = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
    return frame.head(n).to_numpy(dtype=float).tolist()


def _register(dataset: str, run_id: str, tmp_path: Path, *config: str) -> dict[str, Any]:
    code, result, _ = run("register", *config, "--dataset", dataset, "--run-id", run_id,
                          tmp=tmp_path)
    assert code == 0 and result is not None
    return result


def _alias(alias: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, alias).version)


def _base(result: dict[str, str]) -> str:
    return result["endpoint"].split("/v2/")[0]


def _pyfunc(dataset: str, config: dict[str, Any]) -> str:
    """A pyfunc version of NAME answering the trained models' contract; its version."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    x = np.asarray(_rows(dataset, 5), dtype=np.float32)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, x.shape[1]))]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 2))]))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC),
                                       model_config=config, signature=signature,
                                       input_example=x, metadata={"classes": [0, 1]},
                                       pip_requirements=["mlflow", "numpy"])
    return str(mlflow.register_model(info.model_uri, NAME).version)


def _canary_config(tmp_path: Path, **serving: Any) -> str:
    return str(write_config(tmp_path / "canary.yaml", serving={
        "canary_share": 0.5, "canary_requests": 30, "canary_seconds": 60,
        "canary_max_error_rate": 0.0, "canary_max_p99_ms": 2000, **serving}))


def _first(dataset: str, train: Callable[..., str], tmp_path: Path,
           config: str) -> dict[str, Any]:
    """Version 1 serves (a first deploy: no canary phase, nothing to compare with)."""
    _register(dataset, train(epochs=2), tmp_path)
    code, first, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and first is not None and first["version"] == "1"
    return first


def test_a_good_canary_takes_its_share_then_is_promoted_and_the_alias_follows(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path) -> None:
    config = _canary_config(tmp_path)
    first = _first(dataset, train, tmp_path, config)
    assert _register(dataset, train(epochs=6, learning_rate=0.01), tmp_path)[
        "champion_version"] == "2"
    with Load(_base(first), NAME, _rows(dataset), clients=3, pause=0.005) as load:
        code, second, err = run("deploy", "--config", config, "--dataset", dataset,
                                tmp=tmp_path)
        time.sleep(0.3)
    assert code == 0 and second is not None, err
    assert (second["version"], second["replaced_version"]) == ("2", "1")
    assert load.failed == [], load.failed[:3]
    assert load.versions["1"] > 0 and load.versions["2"] >= 15  # the canary answered its share
    assert client.metadata(_base(first), NAME)["versions"] == ["2"]
    assert client.live_numbers(_base(first), NAME)["canary"] is None
    assert _alias("serving") == "2"


@pytest.mark.parametrize(("model", "serving", "bound"), [
    ({"kind": "gated", "fail_rows": 3}, {}, "requests failed) over the bound 0.0% "
     "(serving.canary_max_error_rate)"),
    ({"kind": "gated", "delay": 0.1}, {"canary_max_p99_ms": 50, "canary_requests": 10},
     "ms over the bound 50 ms (serving.canary_max_p99_ms) over "),
])
def test_a_canary_over_a_bound_is_rolled_back_in_one_line_naming_it(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], model: dict[str, Any], serving: dict[str, Any],
        bound: str) -> None:
    config = _canary_config(tmp_path, **serving)
    first = _first(dataset, train, tmp_path, config)
    bad = _pyfunc(dataset, model)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", bad)
    capsys.readouterr()
    with Load(_base(first), NAME, _rows(dataset), clients=3, pause=0.005) as load:
        code, result, err = run("deploy", "--config", config, "--dataset", dataset,
                                tmp=tmp_path, capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1, err
    assert f"version {bad} failed its rollout (canary v{bad}: " in lines[0]
    assert bound in lines[0] and f"rolled back: version 1 serves at {first['endpoint']}" \
        in lines[0], lines[0]
    assert all("answered 500" in f for f in load.failed), load.failed[:3]  # its share only
    assert load.versions["1"] > 0
    assert client.metadata(_base(first), NAME)["versions"] == ["1"]
    assert client.live_numbers(_base(first), NAME)["canary"] is None
    assert _alias("serving") == "1"
    with Load(_base(first), NAME, _rows(dataset), clients=3, pause=0.005) as after:
        time.sleep(1.0)
    assert after.failed == [] and set(after.versions) == {"1"}


def test_a_canary_a_killed_deploy_left_is_unloaded_when_the_serving_version_is_deployed(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path) -> None:
    from mlkube.targets.local import LocalTarget

    config = _canary_config(tmp_path)
    first = _first(dataset, train, tmp_path, config)
    _register(dataset, train(epochs=6, learning_rate=0.01), tmp_path)
    # what a deploy killed in its canary window leaves: v2 answering half the requests
    target = LocalTarget(state_dir=state, model_name=NAME, host="127.0.0.1",
                         port=int(_base(first).rsplit(":", 1)[1]), ready_timeout=60)
    target.load_slot("canary", "2", f"models:/{NAME}/2", 0.5)
    assert client.live_numbers(_base(first), NAME)["canary"]["version"] == "2"
    # the operator puts the champion back on version 1, which serves and is recorded
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    code, again, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and again is not None and again["version"] == "1", err
    assert client.live_numbers(_base(first), NAME)["canary"] is None
    with Load(_base(first), NAME, _rows(dataset), clients=2, pause=0.005) as after:
        time.sleep(0.5)
    assert after.failed == [] and set(after.versions) == {"1"}


def test_a_canary_no_traffic_judged_is_rolled_back(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _canary_config(tmp_path, canary_seconds=1)
    first = _first(dataset, train, tmp_path, config)
    _register(dataset, train(epochs=6, learning_rate=0.01), tmp_path)
    capsys.readouterr()
    code, _, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                       capsys=capsys)
    (line,) = error_lines(err)
    assert code == 1 and "canary v2: only 1 live request in 1 s, the window asks 30" in line  # the smoke test
    assert client.metadata(_base(first), NAME)["versions"] == ["1"] and _alias("serving") == "1"


def test_a_challenger_takes_champion_only_after_enough_live_agreement_in_the_shadow(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "gate.yaml",
                              registry={"min_live_requests": 20, "min_agreement": 0.5},
                              serving={"shadow_seconds": 60}))
    options = ("--config", config, "--dataset", dataset)
    first = _first(dataset, train, tmp_path, config)
    gated = _register(dataset, train(epochs=6, learning_rate=0.01), tmp_path, "--config",
                      config)
    assert (gated["version"], gated["promoted"], gated["champion_version"]) == ("2", "false",
                                                                                "1")
    assert _alias("challenger") == "2" and _alias("champion") == "1"
    with Load(_base(first), NAME, _rows(dataset), clients=3, pause=0.005) as load:
        code, second, err = run("deploy", *options, tmp=tmp_path)
    assert code == 0 and second is not None, err
    assert load.failed == [] and set(load.versions) <= {"1", "2"}
    assert (second["version"], second["replaced_version"]) == ("2", "1")
    assert _alias("champion") == "2" and _alias("serving") == "2"
    tag = mlflow.MlflowClient().get_model_version(NAME, "2").tags["mlkube.gate"]
    assert tag.startswith("live: agreement ") and ">= 0.5 over " in tag, tag

    # a challenger that always answers "1" disagrees with the champion: it stays challenger
    from mlkube import live_gates
    from mlkube.config import RegistryConfig

    yes = _pyfunc(dataset, {"kind": "yes"})
    registry = mlflow.MlflowClient()
    registry.set_registered_model_alias(NAME, "challenger", yes)
    registry.set_model_version_tag(NAME, yes, "mlkube.gate", live_gates.awaiting(
        "accuracy 0.99 vs 0.9", RegistryConfig(min_live_requests=20)))
    strict = str(write_config(tmp_path / "strict.yaml",
                              registry={"min_live_requests": 20, "min_agreement": 0.99},
                              serving={"shadow_seconds": 60, "port": int(_base(first)
                                                                         .rsplit(":", 1)[1])}))
    with Load(_base(first), NAME, _rows(dataset, 20), clients=3, pause=0.005) as load:
        code, third, err = run("deploy", "--config", strict, "--dataset", dataset,
                               tmp=tmp_path)
    assert code == 0 and third is not None, err
    assert third["version"] == "2" and load.failed == [] and set(load.versions) == {"2"}
    assert _alias("champion") == "2" and _alias("challenger") == yes
    tag = registry.get_model_version(NAME, yes).tags["mlkube.gate"]
    assert tag.startswith("live: agreement ") and "under 0.99" in tag and "not promoted" in tag
    assert client.live_numbers(_base(first), NAME)["shadow"] is None
