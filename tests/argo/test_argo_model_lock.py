"""register and deploy of one model hold one mutex (issue 16, item 7): a lifecycle run and the
retraining cron's runs of the model take turns on the champion gate and on the rollout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlkube.argo.options import RenderOptions
from mlkube.argo.render import render
from mlkube.argo.schema import Validator
from mlkube.cli import main
from mlkube.errors import MlkubeError
from mlkube.spec import MODEL_LOCK_MAX, model_lock

LOCKED = {"register", "deploy"}


def _docs(options: RenderOptions) -> dict[str, list[dict[str, Any]]]:
    return {name: list(yaml.safe_load_all(text)) for name, text in render(options).items()}


def _mutexes(docs: dict[str, list[dict[str, Any]]], task: str) -> list[dict[str, Any]]:
    """The mutexes the step template a lifecycle task calls holds (via its templateRef)."""
    (lifecycle,) = docs["mlkube-lifecycle.yaml"]
    (dag,) = [t for t in lifecycle["spec"]["templates"] if "dag" in t]
    ref = next(t for t in dag["dag"]["tasks"] if t["name"] == task)["templateRef"]
    (steps,) = docs["mlkube-steps.yaml"]
    assert steps["metadata"]["name"] == ref["name"]
    template = next(t for t in steps["spec"]["templates"] if t["name"] == ref["template"])
    mutexes: list[dict[str, Any]] = template.get("synchronization", {}).get("mutexes", [])
    return mutexes


def _cron_runs_the_lifecycle(docs: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether the retraining cron's locked tasks call the same step templates as the
    lifecycle's (the cron runs the lifecycle's DAG, with the monitor)."""
    (cron,) = docs["mlkube-retrain.yaml"]
    (lifecycle,) = docs["mlkube-lifecycle.yaml"]

    def refs(spec: dict[str, Any]) -> dict[str, Any]:
        (dag,) = [t for t in spec["templates"] if "dag" in t]
        return {t["name"]: t["templateRef"] for t in dag["dag"]["tasks"] if t["name"] in LOCKED}

    return refs(cron["spec"]["workflowSpec"]) == refs(lifecycle["spec"]) != {}


def test_register_and_deploy_hold_the_models_mutex(docs: dict[str, list[dict[str, Any]]],
                                                   steps: dict[str, Any]) -> None:
    for task in LOCKED:  # the lifecycle's tasks, and so the cron's runs of the lifecycle
        assert _mutexes(docs, task) == [{"name": "mlkube-mlkube-demo"}], task
    assert _cron_runs_the_lifecycle(docs)
    # the v3.6+ list form (v4 has no singular mutex), and no other step waits on it
    for name, template in steps.items():
        assert "mutex" not in template.get("synchronization", {}), name
        assert ("synchronization" in template) == (name in LOCKED), name


def test_one_model_one_mutex_two_models_two(validator: Validator) -> None:
    churn = _docs(RenderOptions(model_name="churn"))
    again = _docs(RenderOptions(model_name="churn", service_name="churn", workers=4))
    fraud = _docs(RenderOptions(model_name="Fraud_Detector"))
    names = {}
    for label, docs in (("churn", churn), ("again", again), ("fraud", fraud)):
        (register,) = _mutexes(docs, "register")
        (deploy,) = _mutexes(docs, "deploy")
        assert register == deploy  # one mutex a model, shared by its two steps
        assert _cron_runs_the_lifecycle(docs)
        names[label] = register["name"]
        for objects in docs.values():
            for obj in objects:
                assert validator.errors(obj) == [], (label, obj["kind"])
    assert names["churn"] == names["again"] == "mlkube-churn"
    assert names["fraud"] not in (names["churn"], "mlkube-mlkube-demo")
    assert re.fullmatch(r"mlkube-fraud-detector-[0-9a-f]{8}", names["fraud"])


@pytest.mark.parametrize("model", ["mlkube-demo", "churn", "Churn", "churn_v2", "a--b", "-x",
                                   "Ünïcode model", "___", "m" * 200, "team.model@2"])
def test_the_lock_name_is_valid_for_argo_and_airflow(model: str) -> None:
    name = model_lock(model)
    assert len(name) <= MODEL_LOCK_MAX
    assert re.fullmatch(r"mlkube-[a-z0-9]([a-z0-9-]*[a-z0-9])?", name), name
    assert "--" not in name
    assert model_lock(model) == name  # stable


def test_distinct_models_never_share_a_lock() -> None:
    models = ["churn", "Churn", "churn_", "churn-", "-churn", "churn.v2", "churn-v2", "churn_v2",
              "m" * 100, "m" * 101, "mlkube-demo", "demo"]
    assert len({model_lock(m) for m in models}) == len(models)
    assert model_lock("churn") == "mlkube-churn"  # a name that fits stays readable


def test_render_takes_the_model_name(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["argo", "render", "--out", str(tmp_path), "--model-name", "churn"]) == 0
    steps = yaml.safe_load((tmp_path / "mlkube-steps.yaml").read_text())
    held = {t["name"]: t["synchronization"]["mutexes"] for t in steps["spec"]["templates"]
            if "synchronization" in t}
    assert held == {"register": [{"name": "mlkube-churn"}], "deploy": [{"name": "mlkube-churn"}]}
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["argo", "render", "--out", str(bad), "--model-name", "team/model"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mlkube argo: error: model_name: config key 'registry.model_name' is "
                           "'team/model'")
    assert not bad.exists()


def test_a_bad_model_name_fails_validation() -> None:
    with pytest.raises(MlkubeError, match="model_name"):
        RenderOptions(model_name="").validated()
    with pytest.raises(MlkubeError, match="model_name is 3"):
        RenderOptions(model_name=3).validated()  # type: ignore[arg-type]
