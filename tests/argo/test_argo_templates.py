"""Each step template is its step: inputs from its options, outputs from its result keys,
the container from kube.pod.step_pod; training gets the GPU pieces; deploy runs its step under
the deploy ServiceAccount."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mlkube import spec
from mlkube.argo import io
from mlkube.argo.options import RenderOptions
from mlkube.argo.templates import (
    STEP_TEMPLATES,
    placement,
    step_ref,
    template_values,
)
from mlkube.errors import MlkubeError
from mlkube.kube.pod import step_pod
from mlkube.kube.serving import to_dict

BY_NAME = {t.name: t for t in STEP_TEMPLATES}


def test_the_steps_template_holds_one_template_per_step(steps: dict[str, Any]) -> None:
    assert list(steps) == ["preflight", "prepare-data", "tune-worker", "select-best", "train",
                           "register", "deploy", "monitor"]


@pytest.mark.parametrize("name", list(BY_NAME))
def test_inputs_match_the_step_options(steps: dict[str, Any], name: str) -> None:
    step = BY_NAME[name].step
    params = {p["name"]: p for p in steps[name]["inputs"]["parameters"]}
    # the config document (--config, from a file) plus each option a caller sets itself
    expected = {"config"} | {o.flag.removeprefix("--") for o in step.options
                             if o.config_key is None and o.dest not in io.TEMPLATE_SET
                             and (o.required or o.dest in io.OPTIONAL_DEFAULTS
                                  or o.pod_default is not None)}
    assert set(params) == expected
    # every other option is accounted for: a config key, set by the template, or derived
    for option in step.options:
        if option.flag.removeprefix("--") not in params:
            assert option.config_key or option.dest in io.TEMPLATE_SET | io.DERIVED, option
    required = {o.flag.removeprefix("--") for o in step.options if o.required}
    assert {n for n, p in params.items() if "default" not in p} == required
    assert params["config"]["default"] == "{}"
    (artifact,) = steps[name]["inputs"]["artifacts"]
    assert artifact == {"name": "config", "path": io.CONFIG_PATH,
                        "raw": {"data": "{{inputs.parameters.config}}"}}


@pytest.mark.parametrize("name", list(BY_NAME))
def test_outputs_match_the_result_keys(steps: dict[str, Any], name: str) -> None:
    outputs = steps[name]["outputs"]["parameters"]
    assert [p["name"] for p in outputs] == list(BY_NAME[name].step.result_keys)
    assert all(p["valueFrom"] == {"path": f"{io.OUTPUTS_DIR}/{p['name']}"} for p in outputs)
    env = {e["name"]: e.get("value") for e in steps[name]["container"]["env"]}
    assert env["MLKUBE_OUTPUTS_DIR"] == io.OUTPUTS_DIR


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_container_is_the_one_step_pod_builds(steps: dict[str, Any], name: str) -> None:
    template = BY_NAME[name]
    options = RenderOptions()
    pod = step_pod(template.step, template_values(template, options), placement(template, options))
    assert steps[name]["container"] == to_dict(pod.container)
    assert steps[name]["securityContext"] == to_dict(pod.security_context)
    args = steps[name]["container"]["args"]
    assert steps[name]["container"]["command"] == template.step.command()
    assert args[args.index("--config") + 1] == io.CONFIG_PATH
    for key, value in template.fixed.items():
        flag = template.step.option(key).flag
        assert args[args.index(flag) + 1] == value


def test_the_tune_templates_fix_the_role(steps: dict[str, Any]) -> None:
    def role(name: str) -> str:
        args = steps[name]["container"]["args"]
        return str(args[args.index("--role") + 1])

    assert (role("tune-worker"), role("select-best")) == ("worker", "select")


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_template_retries_with_backoff_and_has_a_deadline(steps: dict[str, Any],
                                                                name: str) -> None:
    retry = steps[name]["retryStrategy"]
    assert retry["limit"] == "3" and retry["backoff"]["duration"] == "30s"
    assert "exitCode) != 1" in retry["expression"]  # a step's own error is not retried
    assert int(steps[name]["activeDeadlineSeconds"]) > 0


@pytest.mark.parametrize("name", list(BY_NAME))
def test_pods_meet_the_restricted_profile_and_share_the_artifact_volume(steps: dict[str, Any],
                                                                        name: str) -> None:
    template = steps[name]
    pod, container = template["securityContext"], template["container"]["securityContext"]
    assert pod["runAsNonRoot"] and pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    (claim,) = [v for v in template["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == RenderOptions().artifact_pvc
    assert {"name": claim["name"], "mountPath": spec.ARTIFACT_MOUNT} in \
        template["container"]["volumeMounts"]


def test_train_gets_a_gpu_its_toleration_and_shared_memory(steps: dict[str, Any]) -> None:
    train = steps["train"]
    resources = train["container"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}]
    (shm,) = [v for v in train["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in train["container"]["volumeMounts"]
    assert "nodeSelector" not in train  # no product asked for: any GPU node
    assert int(train["activeDeadlineSeconds"]) == RenderOptions().train_deadline_seconds
    for name in ("prepare-data", "tune-worker", "register"):
        assert "nvidia.com/gpu" not in steps[name]["container"]["resources"]["limits"]
        assert "tolerations" not in steps[name]


def test_deploy_runs_the_deploy_step_under_its_own_service_account(steps: dict[str, Any]) -> None:
    """One deploy program everywhere: no resource template that only applies and waits."""
    deploy = steps["deploy"]
    assert "resource" not in deploy
    assert deploy["serviceAccountName"] == RenderOptions().deploy_service_account
    assert all("serviceAccountName" not in t for n, t in steps.items() if n != "deploy")
    container = deploy["container"]
    assert container["command"][-1] == spec.DEPLOY.module
    args = container["args"]
    assert args[args.index("--target") + 1] == "{{inputs.parameters.target}}"
    assert args[args.index("--service-name") + 1] == RenderOptions().service_name
    inputs = {p["name"]: p.get("default") for p in deploy["inputs"]["parameters"]}
    assert inputs == {"config": "{}", "dataset": None, "version": "", "target": "auto",
                      "canary-percent": "0"}
    assert [p["name"] for p in deploy["outputs"]["parameters"]] == list(spec.DEPLOY.result_keys)


def test_a_template_ref_to_a_missing_template_is_an_error() -> None:
    assert step_ref(RenderOptions(), "train").template == "train"
    with pytest.raises(MlkubeError, match=r"templateRef mlkube-steps/trian: no such template; "
                                          r"mlkube-steps has preflight, prepare-data, .*deploy"):
        step_ref(RenderOptions(), "trian")


def test_an_unplaced_option_fails_the_render() -> None:
    step = spec.StepSpec(name="x", module="m", summary="s", result_keys=("a",),
                         options=(spec.Option(flag="--shiny", help="new and optional"),))
    with pytest.raises(MlkubeError, match=r"option --shiny has no Argo input rule"):
        io.input_options(step)


def test_a_cpu_limit_reaches_every_step_container(validator: Any) -> None:
    """For namespaces whose ResourceQuota tracks limits.cpu (else admission rejects the pods)."""
    from mlkube.argo.render import render

    (wt,) = [yaml.safe_load(render(RenderOptions(cpu_limit="4"))["mlkube-steps.yaml"])]
    assert validator.errors(wt) == []
    for template in wt["spec"]["templates"]:
        assert template["container"]["resources"]["limits"]["cpu"] == "4", template["name"]
    with pytest.raises(MlkubeError, match=r"cpu_limit 100m is below the cpu request"):
        render(RenderOptions(cpu_limit="100m"))


def test_preflight_judges_every_step_pod_as_rendered(steps: dict[str, Any]) -> None:
    """The pods it checks are the step templates' own: same resources, placement, volumes."""
    import kubernetes_validate

    from mlkube.argo.templates import PREFLIGHT_PODS, preflight_pods

    template = steps["preflight"]
    assert template["container"]["command"][-3:] == ["preflight", "--pod", PREFLIGHT_PODS]
    (artifact,) = template["inputs"]["artifacts"]
    pods = list(yaml.safe_load_all(artifact["raw"]["data"]))
    assert pods == preflight_pods(RenderOptions())
    assert [p["metadata"]["name"] for p in pods] == [f"mlkube-steps-{t.name}" for t in STEP_TEMPLATES]
    for pod, name in zip(pods, BY_NAME, strict=True):
        kubernetes_validate.validate(pod, "1.33.0", strict=True)
        (container,) = pod["spec"]["containers"]
        assert container["resources"] == steps[name]["container"]["resources"]
        assert pod["spec"].get("nodeSelector") == steps[name].get("nodeSelector")
        assert "{{" not in yaml.safe_dump(pod)  # nothing for Argo to resolve inside the artifact
    by_name = {p["metadata"]["name"]: p for p in pods}
    assert by_name["mlkube-steps-deploy"]["spec"]["serviceAccountName"] == \
        RenderOptions().deploy_service_account
    assert "serviceAccountName" not in by_name["mlkube-steps-monitor"]["spec"]


def test_train_and_deploy_get_a_grace_period_long_enough_to_checkpoint_or_roll_back(
        steps: dict[str, Any]) -> None:
    """Argo templates have no terminationGracePeriodSeconds: the step's is in podSpecPatch.
    Deploy's covers a rollback (up to serving.ready_timeout, 120 s), not Kubernetes' 30 s."""
    import json

    from mlkube.config import ServingConfig

    grace = spec.TRAIN.termination_grace_period_seconds
    assert json.loads(steps["train"]["podSpecPatch"]) == {"terminationGracePeriodSeconds": grace}
    deploy_grace = json.loads(steps["deploy"]["podSpecPatch"])["terminationGracePeriodSeconds"]
    assert deploy_grace == spec.DEPLOY.termination_grace_period_seconds
    assert deploy_grace > ServingConfig().ready_timeout
    for name in ("preflight", "prepare-data", "tune-worker", "select-best", "register"):
        assert "podSpecPatch" not in steps[name], name  # Kubernetes' default 30 s
    pods = list(yaml.safe_load_all(steps["preflight"]["inputs"]["artifacts"][0]["raw"]["data"]))
    (judged,) = [p for p in pods if p["metadata"]["name"].endswith("-train")]
    assert judged["spec"]["terminationGracePeriodSeconds"] == grace


def test_a_queue_and_a_priority_class_reach_every_pod(validator: Any) -> None:
    """Kueue's pod integration gates each labelled pod itself: no suspend, nothing else."""
    import kubernetes_validate

    from mlkube.argo.render import render
    from mlkube.kube.pod import QUEUE_LABEL

    options = RenderOptions(queue_name="team-a", priority_class_name="batch-high")
    (wt,) = [yaml.safe_load(render(options)["mlkube-steps.yaml"])]
    assert validator.errors(wt) == []
    for template in wt["spec"]["templates"]:  # the preflight pod waits in the queue too
        assert template["metadata"]["labels"] == {QUEUE_LABEL: "team-a"}, template["name"]
        assert template["priorityClassName"] == "batch-high", template["name"]
        assert "suspend" not in template
    pods = list(yaml.safe_load_all(wt["spec"]["templates"][0]["inputs"]["artifacts"][0]["raw"]["data"]))
    for pod in pods:  # judged as they will run: quota scopes on PriorityClass match them
        kubernetes_validate.validate(pod, "1.33.0", strict=True)
        assert pod["metadata"]["labels"] == {QUEUE_LABEL: "team-a"}
        assert pod["spec"]["priorityClassName"] == "batch-high"
    default = yaml.safe_load(render(RenderOptions())["mlkube-steps.yaml"])
    assert all("metadata" not in t and "priorityClassName" not in t
               for t in default["spec"]["templates"])


@pytest.mark.parametrize(("options", "message"), [
    ({"queue_name": "Team_A"}, r"^queue_name is 'Team_A', not a DNS-1123 subdomain: use at "
                               r"most 63 lowercase letters, digits, '-' and '\.', .*'team-a'$"),
    ({"priority_class_name": "batch high"}, r"^priority_class_name is 'batch high', not a "
                                            r"DNS-1123 subdomain: use at most 253 "),
])
def test_a_bad_queue_or_priority_class_name_fails_the_render(options: dict[str, Any],
                                                             message: str) -> None:
    from mlkube.argo.render import render

    with pytest.raises(MlkubeError, match=message) as caught:
        render(RenderOptions(**options))
    assert "\n" not in str(caught.value)
