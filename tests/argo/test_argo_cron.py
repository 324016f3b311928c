"""The retraining CronWorkflow, and the render-time checks on what users pass."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mlkube import spec as spec_module
from mlkube.argo.lifecycle import RETRAIN_REASON, RETRAIN_WHEN
from mlkube.argo.options import RenderOptions
from mlkube.argo.render import render
from mlkube.cli import main
from mlkube.errors import MlkubeError
from mlkube.schedule import check_schedule


def _cron_tasks(cron: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (dag,) = [t for t in cron["spec"]["workflowSpec"]["templates"] if "dag" in t]
    return {t["name"]: t for t in dag["dag"]["tasks"]}


def test_cron_runs_the_lifecycle_on_schedule_one_at_a_time(docs: dict[str, list[dict]],
                                                           lifecycle: dict[str, Any]) -> None:
    (cron,) = docs["mlkube-retrain.yaml"]
    spec = cron["spec"]
    assert cron["metadata"]["name"] == "mlkube-retrain"
    assert spec["schedules"] == list(RenderOptions().schedules)
    assert "schedule" not in spec  # removed in Argo Workflows v4
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    workflow = spec["workflowSpec"]
    # the lifecycle's DAG and run policy, with the monitor beside prepare-data
    for key in ("entrypoint", "serviceAccountName", "activeDeadlineSeconds", "podGC",
                "ttlStrategy"):
        assert workflow[key] == lifecycle["spec"][key], key
    (param,) = workflow["arguments"]["parameters"]
    assert param["name"] == "config" and param["value"] == "{}"
    tasks = _cron_tasks(cron)
    assert list(tasks) == ["preflight", "prepare-data", "monitor", "tune-worker", "select-best",
                           "train", "register", "deploy"]
    assert all(t["templateRef"]["name"] == "mlkube-steps" for t in tasks.values())


def _evaluate(when: str, changed: str, drifted: str) -> bool:
    """What Argo (govaluate) evaluates once it has substituted the outputs."""
    text = (when.replace("{{tasks.prepare-data.outputs.parameters.changed}}", changed)
            .replace("{{tasks.monitor.outputs.parameters.drifted}}", drifted))
    assert "{{" not in text, text
    return bool(eval(text.replace("||", " or ").replace("true", "True")
                     .replace("false", "False")))


def test_cron_retrains_on_changed_data_or_drift(docs: dict[str, list[dict]]) -> None:
    (cron,) = docs["mlkube-retrain.yaml"]
    tasks = _cron_tasks(cron)
    monitor = tasks["monitor"]
    assert monitor["templateRef"]["template"] == "monitor"
    assert monitor["depends"] == "preflight.Succeeded"  # beside prepare-data
    args = {p["name"]: p["value"] for p in monitor["arguments"]["parameters"]}
    assert args["no-data"] == "not-drifted"  # a fresh deployment is not drifted
    assert tasks["tune-worker"]["depends"] == "prepare-data.Succeeded && monitor.Succeeded"
    for name in ("tune-worker", "select-best", "train"):
        when = tasks[name]["when"]
        assert when == RETRAIN_WHEN
        for changed, drifted, runs in (("true", "false", True), ("false", "true", True),
                                       ("true", "true", True), ("false", "false", False)):
            assert _evaluate(when, changed, drifted) is runs
    assert "when" not in tasks["register"]  # it waits on train.Succeeded
    assert tasks["deploy"]["depends"] == "register.Succeeded || register.Omitted"
    assert "when" not in tasks["deploy"] and "when" not in tasks["monitor"]
    for name in ("train", "register"):  # why, as the tag mlkube.retrain_reason
        reason = {p["name"]: p["value"] for p in tasks[name]["arguments"]["parameters"]}["reason"]
        assert reason == RETRAIN_REASON
        assert reason.startswith("{{=") and "tasks['prepare-data']" in reason
        assert "tasks.monitor.outputs.parameters.psi" in reason


def test_the_monitor_template_renders_the_step_description(steps: dict[str, Any]) -> None:
    template = steps["monitor"]
    assert template["container"]["command"] == spec_module.MONITOR.command()
    inputs = {p["name"]: p.get("default") for p in template["inputs"]["parameters"]}
    assert inputs == {"config": "{}", "stats-dir": spec_module.MONITORING_DIR, "no-data": "error"}
    outputs = [p["name"] for p in template["outputs"]["parameters"]]
    assert outputs == list(spec_module.MONITOR.result_keys)
    assert "synchronization" not in template  # it reads; it holds no model lock


def test_the_monitor_reads_where_the_serving_pods_write(steps: dict[str, Any]) -> None:
    """The monitor template's stats dir, by default, is the directory the serving pods the
    deploy step creates write their windows to: the same claim, the same place on it."""
    from mlkube.kube import serving

    container = steps["monitor"]["container"]
    args = container["args"]
    assert args[args.index("--stats-dir") + 1] == "{{inputs.parameters.stats-dir}}"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == spec_module.ARTIFACT_MOUNT]
    assert "subPath" not in mount
    (volume,) = [v for v in steps["monitor"]["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[spec_module.ARTIFACT_CLAIM_ENV] == claim == RenderOptions().artifact_pvc
    served = serving.ModelServing(name="m", model_name="m", version="1", model_uri="models:/m/1",
                                  artifact_pvc=claim)
    pod = serving.to_dict(serving.deployment(served))["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    written = command[command.index("--stats-dir") + 1]
    inputs = {p["name"]: p.get("default") for p in steps["monitor"]["inputs"]["parameters"]}
    assert written == inputs["stats-dir"] == spec_module.MONITORING_DIR
    (rw,) = [m for m in pod["containers"][0]["volumeMounts"] if not m["readOnly"]]
    assert rw["mountPath"] == written
    assert spec_module.ARTIFACT_MOUNT + "/" + rw["subPath"] == written  # the same place on it


@pytest.mark.parametrize("schedule", ["0 3 * * *", "*/15 * * * *", "0 0 1,15 * MON-FRI",
                                      "30 2 * JAN,JUL 0", "0 4 ? * SUN", "@daily", "@every 6h"])
def test_valid_schedules_pass(schedule: str) -> None:
    assert check_schedule(schedule) == schedule


@pytest.mark.parametrize(("schedule", "message"), [
    ("0 3 * *", "give five fields"),
    ("60 * * * *", "minute '60' is not valid"),
    ("0 24 * * *", "hour '24' is not valid"),
    ("0 0 0 * *", "day of month '0' is not valid"),
    ("0 0 * 13 *", "month '13' is not valid"),
    ("0 0 * * FUNDAY", "day of week 'FUNDAY' is not valid"),
    ("*/0 * * * *", "minute '*/0' is not valid"),
    ("5-1 * * * *", "minute '5-1' is not valid"),
    ("@sometimes", "give five fields"),
])
def test_invalid_schedules_are_named(schedule: str, message: str) -> None:
    with pytest.raises(MlkubeError, match=re.escape(message)):
        render(RenderOptions(schedules=(schedule,)))


@pytest.mark.parametrize(("options", "message"), [
    ({"parallelism": 0}, "parallelism is 0: give a whole number of at least 1"),
    ({"parallelism": -2}, "parallelism is -2"),
    ({"workers": 0}, "workers is 0"),
    ({"workers": -1}, "workers is -1"),
    ({"schedules": ()}, "schedules is empty"),
    ({"steps_name": "MLkube_Steps"}, "steps_name is 'MLkube_Steps', not a DNS-1123 label"),
    ({"cron_name": "retrain-"}, "cron_name is 'retrain-', not a DNS-1123 label"),
    ({"service_name": "a" * 64}, "service_name .* not a DNS-1123 label"),
    ({"namespace": "ML"}, "namespace is 'ML', not a DNS-1123 label"),
    ({"artifact_pvc": "my pvc"}, "artifact_pvc is 'my pvc'"),
    ({"gpu_image": "Not An Image"}, "gpu_image is 'Not An Image', not a valid image"),
    ({"retry_limit": -1}, "retry_limit is -1"),
])
def test_bad_render_options_are_one_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(MlkubeError, match=message) as caught:
        render(RenderOptions(**options))
    assert "\n" not in str(caught.value)


def test_the_cli_reports_a_bad_option_on_one_line(tmp_path: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["argo", "render", "--out", str(tmp_path), "--parallelism", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "mlkube argo: error: parallelism is 0: give a whole number of at least 1"
    assert not list(tmp_path.iterdir())  # nothing written
