"""The lifecycle DAG: order, fan-out bound, wiring by templateRef, skip condition, run policy."""

from __future__ import annotations

import re
from typing import Any

from mlkube.argo.lifecycle import SKIP_UNCHANGED, TRAINING_WHEN
from mlkube.argo.options import RenderOptions

ORDER = ["preflight", "prepare-data", "tune-worker", "select-best", "train", "register", "deploy"]


def test_tasks_run_in_lifecycle_order(tasks: dict[str, Any]) -> None:
    assert list(tasks) == ORDER
    assert "depends" not in tasks["preflight"]  # first: a pod that can never run stops it all
    for before, after in zip(ORDER[:-2], ORDER[1:-1], strict=True):
        # .Succeeded, not bare names: a skipped task must not let its dependants run
        assert tasks[after]["depends"] == f"{before}.Succeeded"
    # but deploy (the champion) runs when training was skipped: register is then Omitted;
    # a failed register still stops it
    assert tasks["deploy"]["depends"] == "register.Succeeded || register.Omitted"


def test_every_task_calls_an_existing_step_template(tasks: dict[str, Any],
                                                    steps: dict[str, Any]) -> None:
    for name, task in tasks.items():
        assert task["templateRef"] == {"name": "mlkube-steps", "template": name}
        assert "template" not in task


def test_arguments_match_the_inputs_of_the_called_template(tasks: dict[str, Any],
                                                           steps: dict[str, Any]) -> None:
    for name, task in tasks.items():
        declared = {p["name"]: p for p in steps[name]["inputs"].get("parameters", [])}
        given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
        assert given <= set(declared), name
        assert {n for n, p in declared.items() if "default" not in p} <= given, name


def test_results_are_read_from_declared_outputs_of_earlier_tasks(tasks: dict[str, Any],
                                                                 steps: dict[str, Any]) -> None:
    refs = 0
    for position, (name, task) in enumerate(tasks.items()):
        text = str(task.get("arguments")) + str(task.get("when", ""))
        for source, output in re.findall(r"tasks\.([\w-]+)\.outputs\.parameters\.(\w+)", text):
            assert ORDER.index(source) < position, (name, source)
            assert output in [p["name"] for p in steps[source]["outputs"]["parameters"]]
            refs += 1
    assert refs >= 7
    # deploy serves the champion alias (the step's default), not register's output, so that it
    # runs when training was skipped too (register omitted): what serves converges to it
    deploy = {p["name"] for p in tasks["deploy"]["arguments"]["parameters"]}
    assert "version" not in deploy and "alias" not in deploy
    assert tasks["deploy"]["depends"] == "register.Succeeded || register.Omitted"


def test_tune_fans_out_over_the_workers_within_the_parallelism_bound(lifecycle: dict[str, Any],
                                                                    tasks: dict[str, Any]) -> None:
    options = RenderOptions()
    assert tasks["tune-worker"]["withItems"] == list(range(options.workers))
    (dag,) = [t for t in lifecycle["spec"]["templates"] if "dag" in t]
    assert dag["parallelism"] == options.parallelism
    assert all("withItems" not in t for n, t in tasks.items() if n != "tune-worker")


def test_training_is_skipped_when_asked_and_the_data_is_unchanged(tasks: dict[str, Any]) -> None:
    for name in ("tune-worker", "select-best", "train"):
        assert tasks[name]["when"] == TRAINING_WHEN
    assert "{{tasks.prepare-data.outputs.parameters.changed}} == true" in TRAINING_WHEN
    assert f"{{{{workflow.parameters.{SKIP_UNCHANGED}}}}} == false" in TRAINING_WHEN
    assert "when" not in tasks["prepare-data"]


def test_run_policy_deadline_pod_gc_and_account(lifecycle: dict[str, Any]) -> None:
    spec = lifecycle["spec"]
    options = RenderOptions()
    assert spec["activeDeadlineSeconds"] == options.workflow_deadline_seconds
    assert spec["podGC"]["strategy"] == "OnPodSuccess"
    assert spec["serviceAccountName"] == options.workflow_service_account
    params = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert params[SKIP_UNCHANGED]["value"] == "false" and params["config"]["value"] == "{}"


def test_the_run_references_the_lifecycle(docs: dict[str, list[dict]]) -> None:
    (run,) = docs["mlkube-lifecycle-run.yaml"]
    assert run["kind"] == "Workflow"
    assert run["metadata"]["generateName"] == "mlkube-lifecycle-"
    assert run["spec"] == {"workflowTemplateRef": {"name": "mlkube-lifecycle"}}
