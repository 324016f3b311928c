"""Step pods: GPU scheduling, torchrun for several GPUs, secrets by reference, restricted."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient, V1ObjectMeta, V1Pod, V1PodSpec

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.kube.pod import QUEUE_LABEL, Placement, SecretEnv, step_pod


def _pod(step: spec.StepSpec, placement: Placement) -> dict:  # type: ignore[type-arg]
    values = {"dataset": "/mnt/mlkube/datasets/x", "run_id": "0" * 32}
    parts = step_pod(step, {k: v for k, v in values.items()
                            if any(o.dest == k for o in step.options)}, placement)
    pod = V1Pod(api_version="v1", kind="Pod", metadata=V1ObjectMeta(name="p"),
                spec=V1PodSpec(containers=[parts.container], volumes=parts.volumes,
                               tolerations=parts.tolerations, node_selector=parts.node_selector,
                               security_context=parts.security_context, restart_policy="Never"))
    data: dict = ApiClient().sanitize_for_serialization(pod)  # type: ignore[type-arg]
    kubernetes_validate.validate(data, "1.33", strict=True)
    return data


def test_two_gpus_run_torchrun_with_one_process_each() -> None:
    pod = _pod(spec.TRAIN, Placement(gpus=2, gpu_product="NVIDIA-H100-80GB-HBM3",
                                     artifact_pvc="mlkube-artifacts"))
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mlkube.torchrun", "--standalone",
                                    "--nproc-per-node=2", "-m", "mlkube.steps.train"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_one_gpu_and_cpu_steps_run_the_plain_program() -> None:
    assert _pod(spec.TRAIN, Placement())["spec"]["containers"][0]["command"] == [
        "python", "-m", "mlkube.steps.train"]
    cpu = _pod(spec.TUNE, Placement(gpus=0))
    assert "nvidia.com/gpu" not in cpu["spec"]["containers"][0]["resources"]["limits"]
    assert not cpu["spec"].get("tolerations")


def test_secrets_by_reference_and_restricted_profile() -> None:
    pod = _pod(spec.REGISTER, Placement(
        env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        secret_env=[SecretEnv(env="MLFLOW_TRACKING_TOKEN", secret="mlflow", key="token")]))
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_TOKEN"] == {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "mlflow", "key": "token"}}}
    security = pod["spec"]["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize(("placement", "message"), [
    (Placement(gpus=-1), "give a whole number of GPUs"),
    (Placement(memory="16 GB"), "not a Kubernetes quantity"),
    (Placement(image="Bad Image!"), "not a valid image reference"),
])
def test_bad_placement_names_the_field(placement: Placement, message: str) -> None:
    with pytest.raises(MlkubeError, match=message):
        step_pod(spec.TRAIN, {"dataset": "/d"}, placement, what="task train")


def test_queue_priority_class_and_grace_period_reach_the_pod() -> None:
    """Kueue's queue label, the PriorityClass and the grace period, on the whole Pod too."""
    placement = Placement(queue_name="team-a", priority_class_name="batch-high")
    parts = step_pod(spec.TRAIN, {"dataset": "/d"}, placement)
    pod: dict = ApiClient().sanitize_for_serialization(parts.pod("p", "ml"))  # type: ignore[type-arg]
    kubernetes_validate.validate(pod, "1.33", strict=True)
    assert pod["metadata"]["labels"] == {QUEUE_LABEL: "team-a"}
    assert pod["spec"]["priorityClassName"] == "batch-high"
    # train checkpoints on SIGTERM: it gets time to write one; the others Kubernetes' 30 s
    assert pod["spec"]["terminationGracePeriodSeconds"] == spec.TRAIN.termination_grace_period_seconds == 120
    register = step_pod(spec.REGISTER, {"dataset": "/d", "run_id": "r"}, Placement())
    assert register.labels == {} and register.priority_class_name is None
    assert register.termination_grace_period_seconds is None
    longer = step_pod(spec.TRAIN, {"dataset": "/d"}, Placement(termination_grace_period_seconds=600))
    assert longer.termination_grace_period_seconds == 600


@pytest.mark.parametrize(("placement", "message"), [
    (Placement(queue_name="Team_A"), r"^task train: queue_name is 'Team_A', not a DNS-1123 "
                                     r"subdomain: use at most 63 lowercase letters, .*'team-a'$"),
    (Placement(queue_name="q" * 64), r"^task train: queue_name is 'q{64}', not a DNS-1123"),
    (Placement(priority_class_name="High Priority"),
     r"^task train: priority_class_name is 'High Priority', not a DNS-1123 subdomain: use at "
     r"most 253 lowercase"),
    (Placement(termination_grace_period_seconds=-1),
     r"^task train: termination_grace_period_seconds is -1; give a whole number of seconds"),
])
def test_bad_queue_priority_class_or_grace_period_is_one_line(placement: Placement,
                                                             message: str) -> None:
    with pytest.raises(MlkubeError, match=message) as caught:
        step_pod(spec.TRAIN, {"dataset": "/d"}, placement, what="task train")
    assert "\n" not in str(caught.value)


def test_tune_pods_use_the_platform_postgresql_unless_told_otherwise() -> None:
    tune = _pod(spec.TUNE, Placement())["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in tune}
    assert by_name[spec.TUNE_STORAGE_ENV]["value"] == f"{spec.CLUSTER_DATABASE}/optuna"
    assert by_name["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": spec.DB_SECRET, "key": spec.DB_SECRET_KEY, "optional": True}
    train = _pod(spec.TRAIN, Placement())["spec"]["containers"][0].get("env") or []
    assert {e["name"] for e in train}.isdisjoint({spec.TUNE_STORAGE_ENV, "PGPASSWORD"})
    own = _pod(spec.TUNE, Placement(env={spec.TUNE_STORAGE_ENV: "postgresql://db/x"},
                                    secret_env=[SecretEnv(env="PGPASSWORD", secret="s", key="k")]))
    env = own["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == spec.TUNE_STORAGE_ENV][0]["value"] == "postgresql://db/x"
    assert [e["valueFrom"]["secretKeyRef"]["name"] for e in env if e["name"] == "PGPASSWORD"] == ["s"]


@pytest.mark.parametrize(("placement", "threads"), [
    (Placement(), "4"),  # train asks for 4 CPUs
    (Placement(cpu="500m"), "1"),  # rounded up
    (Placement(cpu="1500m", cpu_limit="3"), "3"),  # the limit, where there is one
    (Placement(env={"OMP_NUM_THREADS": "7"}), "7"),  # the user's choice stays
])
def test_torch_threads_follow_the_cpus_the_step_may_use(placement: Placement,
                                                        threads: str) -> None:
    env = _pod(spec.TRAIN, placement)["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "OMP_NUM_THREADS"] == [threads]


def _gpus_env(container: dict) -> tuple[str | None, str]:  # type: ignore[type-arg]
    """(MLKUBE_GPUS, nvidia.com/gpu limit or "0") of a rendered container."""
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    limits = (container.get("resources") or {}).get("limits") or {}
    return env.get(spec.GPUS_ENV), limits.get("nvidia.com/gpu", "0")


@pytest.mark.parametrize(("step", "placement", "gpus"), [
    (spec.TRAIN, Placement(), "1"),  # the step's own
    (spec.TRAIN, Placement(gpus=4), "4"),
    (spec.TRAIN, Placement(gpus=0), "0"),
    (spec.TUNE, Placement(), "0"),
    (spec.REGISTER, Placement(), "0"),
    # the resources decide, not an env entry of the same name
    (spec.TRAIN, Placement(gpus=2, env={spec.GPUS_ENV: "8"}), "2"),
])
def test_the_pod_tells_the_step_how_many_gpus_it_was_given(step: spec.StepSpec,
                                                           placement: Placement,
                                                           gpus: str) -> None:
    container = _pod(step, placement)["spec"]["containers"][0]
    assert _gpus_env(container) == (gpus, gpus)
    assert [e["name"] for e in container["env"]].count(spec.GPUS_ENV) == 1


def test_argo_step_templates_carry_their_gpus() -> None:
    import yaml

    from mlkube.argo.options import RenderOptions
    from mlkube.argo.render import render
    from mlkube.argo.schema import default_validator

    steps = yaml.safe_load(render(RenderOptions())["mlkube-steps.yaml"])
    assert default_validator().errors(steps) == []
    templates = {t["name"]: t for t in steps["spec"]["templates"] if "container" in t}
    assert _gpus_env(templates["train"]["container"]) == ("1", "1")
    for name in ("prepare-data", "tune-worker", "select-best", "register", "deploy"):
        assert _gpus_env(templates[name]["container"]) == ("0", "0"), name
    # the pods preflight judges are the same pods
    (artifact,) = templates["preflight"]["inputs"]["artifacts"]
    pods = {p["metadata"]["name"]: p for p in yaml.safe_load_all(artifact["raw"]["data"])}
    assert _gpus_env(pods["mlkube-steps-train"]["spec"]["containers"][0]) == ("1", "1")


def test_airflow_pods_carry_their_gpus() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "airflow"))
    import airflow_env

    airflow_env.configure()  # a throwaway AIRFLOW_HOME, as tests/airflow has
    from mlkube.airflow import PrepareDataOperator, TrainOperator

    for op, gpus in ((TrainOperator(task_id="train", dataset="/d"), "1"),
                     (TrainOperator(task_id="train", dataset="/d", gpus=4), "4"),
                     (TrainOperator(task_id="train", dataset="/d", gpus=0), "0"),
                     (PrepareDataOperator(task_id="prepare"), "0")):
        pod: dict = ApiClient().sanitize_for_serialization(  # type: ignore[type-arg]
            op.build_pod_request_obj(dry_run=True))
        kubernetes_validate.validate(pod, "1.33", strict=True)
        (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
        assert _gpus_env(base) == (gpus, gpus), op.task_id


def _args(container: dict) -> dict[str, str]:  # type: ignore[type-arg]
    args = container["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_the_monitor_pod_reads_the_live_windows_on_the_artifact_claim() -> None:
    """With the artifact volume, monitor's stats dir defaults to where the serving pods write
    (spec.MONITORING_DIR, on the same claim); a value given wins; without it, the step's own
    default (<state_dir>/monitoring)."""
    pod = _pod(spec.MONITOR, Placement(artifact_pvc="mlkube-artifacts"))
    (container,) = pod["spec"]["containers"]
    assert _args(container)["--stats-dir"] == spec.MONITORING_DIR == "/mnt/mlkube/monitoring"
    assert {"name": "mlkube-artifacts", "mountPath": spec.ARTIFACT_MOUNT} in container[
        "volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[spec.ARTIFACT_CLAIM_ENV] == "mlkube-artifacts"
    given = step_pod(spec.MONITOR, {"stats_dir": "/data/stats"},
                     Placement(artifact_pvc="mlkube-artifacts"))
    assert given.container.args[given.container.args.index("--stats-dir") + 1] == "/data/stats"
    bare = _pod(spec.MONITOR, Placement())["spec"]["containers"][0]
    assert "--stats-dir" not in bare["args"]
    assert spec.ARTIFACT_CLAIM_ENV not in {e["name"] for e in bare.get("env") or ()}
    # no other step has a pod default: their arguments are as before
    for step in spec.STEPS.values():
        if step is not spec.MONITOR:
            assert all(o.pod_default is None for o in step.options), step.name
