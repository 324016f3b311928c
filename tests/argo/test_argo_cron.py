"""The retraining CronWorkflow, and the render-time checks on what users pass."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mlkube.argo.lifecycle import SKIP_UNCHANGED
from mlkube.argo.options import RenderOptions
from mlkube.argo.render import render
from mlkube.cli import main
from mlkube.errors import MlkubeError
from mlkube.schedule import check_schedule


def test_cron_runs_the_lifecycle_on_schedule_one_at_a_time(docs: dict[str, list[dict]]) -> None:
    (cron,) = docs["mlkube-retrain.yaml"]
    spec = cron["spec"]
    assert cron["metadata"]["name"] == "mlkube-retrain"
    assert spec["schedules"] == list(RenderOptions().schedules)
    assert "schedule" not in spec  # removed in Argo Workflows v4
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    assert spec["workflowSpec"]["workflowTemplateRef"] == {"name": "mlkube-lifecycle"}


def test_cron_asks_the_lifecycle_to_skip_unchanged_data(docs: dict[str, list[dict]],
                                                        tasks: dict[str, Any]) -> None:
    (cron,) = docs["mlkube-retrain.yaml"]
    (param,) = cron["spec"]["workflowSpec"]["arguments"]["parameters"]
    assert param == {"name": SKIP_UNCHANGED, "value": "true"}
    when = tasks["train"]["when"]
    # what Argo evaluates once it has substituted the parameters
    for changed, runs in (("true", True), ("false", False)):
        text = (when.replace(f"{{{{workflow.parameters.{SKIP_UNCHANGED}}}}}", "true")
                .replace("{{tasks.prepare-data.outputs.parameters.changed}}", changed))
        assert eval(text.replace("||", " or ").replace("true", "True")
                    .replace("false", "False")) is runs


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
