"""The pods each operator would submit, built without a cluster and validated strictly."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import ApiClient, V1EnvVar, V1Pod, V1Volume
from kubernetes.client import V1ConfigMapVolumeSource as ConfigMapSource

from mlkube import spec
from mlkube.airflow import (
    DeployModelOperator,
    MonitorOperator,
    PrepareDataOperator,
    RegisterModelOperator,
    SecretEnv,
    StepOperator,
    TrainOperator,
    TuneOperator,
)

K8S_VERSION = "1.33.0"


def as_dict(pod: V1Pod) -> dict[str, Any]:
    data: dict[str, Any] = ApiClient().sanitize_for_serialization(pod)
    return data


def submitted(op: StepOperator) -> dict[str, Any]:
    """The pod as KubernetesPodOperator would create it, checked against the OpenAPI schema."""
    pod = as_dict(op.build_pod_request_obj(dry_run=True))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    return pod


def base(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


ALL_OPERATORS = [
    PrepareDataOperator(task_id="prepare", input_uri="s3://bucket/data.csv", target="y",
                        features=["a", "b"], split={"validation": 0.2, "test": 0.2, "seed": 1}),
    TuneOperator(task_id="tune", dataset="/mnt/mlkube/ds", n_trials=8, workers=2),
    TuneOperator(task_id="tune_worker", dataset="/mnt/mlkube/ds", role="worker", worker_index=3),
    TrainOperator(task_id="train", dataset="/mnt/mlkube/ds", hyperparameters={"learning_rate": 0.01},
                  gpus=2, gpu_product="NVIDIA-A100-SXM4-80GB", shm_size="8Gi"),
    RegisterModelOperator(task_id="register", dataset="/mnt/mlkube/ds", run_id="abc123", margin=0.01),
    DeployModelOperator(task_id="deploy", dataset="/mnt/mlkube/ds", model_name="churn",
                        version="7", target="kserve", canary_percent=10),
    MonitorOperator(task_id="monitor", stats_dir="/mnt/mlkube/monitoring", since="24h",
                    psi_threshold=0.3, no_data="not-drifted"),
]


def test_the_monitor_pod_renders_the_step_description() -> None:
    op = MonitorOperator(task_id="monitor", windows=3, min_rows=50, no_data="not-drifted")
    container = base(submitted(op))
    assert container["command"] == spec.MONITOR.command()
    args = container["args"]
    for flag, value in (("--windows", "3"), ("--min-rows", "50"), ("--no-data", "not-drifted")):
        assert args[args.index(flag) + 1] == value


def test_the_monitor_pod_reads_where_the_serving_pods_write() -> None:
    """On the artifact volume, --stats-dir defaults to spec.MONITORING_DIR (the serving pods'
    windows); the local backend keeps the step's own default (<state_dir>/monitoring)."""
    op = MonitorOperator(task_id="monitor", artifact_pvc="mlkube-artifacts",
                         no_data="not-drifted")
    args = base(submitted(op))["args"]
    assert args[args.index("--stats-dir") + 1] == spec.MONITORING_DIR
    assert "stats_dir" not in op.step_values(op.mlflow_settings())  # what the local backend runs


@pytest.mark.parametrize("op", ALL_OPERATORS, ids=lambda op: op.task_id)
def test_every_pod_is_valid_restricted_and_sidecar_free(op: StepOperator) -> None:
    pod = submitted(op)
    spec = pod["spec"]
    assert [c["name"] for c in spec["containers"]] == ["base"]  # no XCom sidecar
    container = base(pod)
    gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 1))
    assert container["command"] == op.step.command(processes=gpus)  # torchrun for 2+ GPUs
    assert container["command"][-1] == op.step.module
    assert container["args"][:2] == ["--result-file", "/tmp/mlkube/result.json"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"  # errors surface
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["mlkube.io/step"] == op.step.name
    assert op.do_xcom_push is True  # the result is still returned


def test_arguments_come_from_the_step_description() -> None:
    op = PrepareDataOperator(task_id="prepare", input_uri="/data/x.csv", features=["a", "b"],
                             learning_task="regression", pipeline_run_id="run-1")
    args = base(submitted(op))["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {"--result-file": "/tmp/mlkube/result.json", "--pipeline-run-id": "run-1",
                     "--input": "/data/x.csv", "--features": '["a", "b"]', "--task": "regression"}


def test_train_pod_gets_gpus_toleration_node_selector_and_shm() -> None:
    op = TrainOperator(task_id="train", dataset="/d", gpus=4, gpu_product="NVIDIA-H100-80GB-HBM3",
                       shm_size="16Gi", memory="64Gi", cpu="16")
    pod = submitted(op)
    container = base(pod)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == "64Gi"
    assert container["image"].startswith("ghcr.io/mlkube/mlkube-gpu:")
    spec = pod["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_cpu_only_train_has_no_gpu_scheduling() -> None:
    pod = submitted(TrainOperator(task_id="train", dataset="/d", gpus=0))
    assert "nvidia.com/gpu" not in base(pod)["resources"]["limits"]
    assert base(pod)["image"] == spec.CPU_IMAGE  # not the CUDA image, for a pod with no GPU
    assert base(submitted(TrainOperator(task_id="train", dataset="/d")))["image"] == spec.GPU_IMAGE
    assert not pod["spec"].get("tolerations")
    assert not pod["spec"].get("nodeSelector")


def test_mlflow_connection_reaches_the_pod_with_credentials_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_TEAM", json.dumps({
        "conn_type": "mlflow", "host": "http://mlflow.mlops:5000", "login": "alice",
        "password": "s3cret-password",
        "extra": {"experiment": "churn", "credentials_secret": "mlflow-credentials"},
    }))
    op = TrainOperator(task_id="train", dataset="/d", mlflow_conn_id="mlflow_team")
    pod = submitted(op)
    env = env_of(base(pod))
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops:5000"
    assert env["MLFLOW_EXPERIMENT_NAME"] == "churn"
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert env[key] == {"secretKeyRef": {"name": "mlflow-credentials", "key": key}}
    assert "s3cret-password" not in json.dumps(pod)
    assert "alice" not in json.dumps(pod)
    args = base(pod)["args"]
    assert args[args.index("--experiment") + 1] == "churn"


@pytest.mark.parametrize("op", ALL_OPERATORS, ids=lambda op: op.task_id)
def test_without_a_connection_every_pod_logs_to_the_platforms_mlflow(op: StepOperator) -> None:
    """Not the embedded SQLite store on the shared claim (which serving pods do not mount, and
    which parallel tune pods would write over a network volume): the platform's Service."""
    assert env_of(base(submitted(op)))["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_password_without_a_secret_is_refused_for_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_INLINE", json.dumps({
        "conn_type": "mlflow", "host": "mlflow.mlops", "port": 5000, "password": "pw"}))
    op = RegisterModelOperator(task_id="register", dataset="/d", run_id="r",
                               mlflow_conn_id="mlflow_inline")
    with pytest.raises(Exception, match="'register'.*Secret by reference"):
        op.build_pod_request_obj(dry_run=True)


def test_user_secrets_and_kpo_options_are_kept() -> None:
    op = RegisterModelOperator(
        task_id="register", dataset="/d", run_id="r", namespace="ml", artifact_pvc="mlkube-artifacts",
        secret_env=[SecretEnv(env="AWS_SECRET_ACCESS_KEY", secret="s3", key="secret")],
        env_vars={"LOG_LEVEL": "debug", "MLFLOW_TRACKING_URI": "http://override"},
        mlflow_tracking_uri="http://mlflow:5000",
        volumes=[V1Volume(name="cfg", config_map=ConfigMapSource(name="mlkube-config"))],
        secrets=[Secret("env", "HF_TOKEN", "huggingface", "token")],
        labels={"team": "ml"}, on_finish_action="keep_pod", deferrable=True,
    )
    pod = submitted(op)
    container = base(pod)
    env = env_of(container)
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secret"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "huggingface", "key": "token"}}
    assert env["LOG_LEVEL"] == "debug"
    assert env["MLFLOW_TRACKING_URI"] == "http://override"  # the user's env_vars win
    assert [e["name"] for e in container["env"]].count("MLFLOW_TRACKING_URI") == 1
    assert env["MLKUBE_STATE_DIR"] == "/mnt/mlkube/state"
    assert pod["metadata"]["namespace"] == "ml"
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"mlkube-artifacts", "cfg"}
    args = container["args"]
    assert args[args.index("--artifact-root") + 1] == "/mnt/mlkube"


def test_building_twice_gives_the_same_pod() -> None:
    op = TrainOperator(task_id="train", dataset="/d", env_vars=[V1EnvVar(name="A", value="1")],
                       mlflow_tracking_uri="http://mlflow:5000", artifact_pvc="pvc")
    first, second = (base(submitted(op)) for _ in range(2))
    assert first == second


def test_tune_worker_knows_its_index() -> None:
    pod = submitted(TuneOperator(task_id="w", dataset="/d", role="worker", worker_index=2))
    assert env_of(base(pod))["MLKUBE_TUNE_WORKER"] == "2"
    args = base(pod)["args"]
    assert args[args.index("--role") + 1] == "worker"


def test_own_image_and_command_keep_the_contract() -> None:
    op = TrainOperator(task_id="train", dataset="/d", image="registry.example.com/team/trainer:2.1",
                       command=["torchrun", "--nproc-per-node=2", "-m", "team.train"], gpus=2)
    container = base(submitted(op))
    assert container["image"] == "registry.example.com/team/trainer:2.1"
    assert container["command"] == ["torchrun", "--nproc-per-node=2", "-m", "team.train"]
    assert "--dataset" in container["args"] and "--result-file" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


@pytest.mark.parametrize("op", ALL_OPERATORS, ids=lambda op: op.task_id)
def test_every_operator_takes_a_queue_and_a_priority_class(op: StepOperator) -> None:
    """Kueue's label and the PriorityClass on each step's pod (Kueue gates the pod itself)."""
    kwargs = {"task_id": f"{op.task_id}_queued", "queue_name": "team-a",
              "priority_class_name": "batch-high",
              **{attr: getattr(op, attr) for attr in op.step_fields}}
    pod = submitted(type(op)(**kwargs))
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod["metadata"]["labels"]["mlkube.io/step"] == op.step.name
    assert pod["spec"]["priorityClassName"] == "batch-high"
    assert "schedulingGates" not in pod["spec"]  # Kueue's webhook adds its gate
    assert pod["spec"].get("terminationGracePeriodSeconds") == \
        op.step.termination_grace_period_seconds
    plain = submitted(op)
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    assert "priorityClassName" not in plain["spec"]


def test_train_gets_time_to_checkpoint_and_an_explicit_grace_period_wins() -> None:
    train = TrainOperator(task_id="train", dataset="/d")
    assert submitted(train)["spec"]["terminationGracePeriodSeconds"] == 120
    assert train.termination_grace_period == 120  # also the grace of on_kill's pod delete
    longer = TrainOperator(task_id="train", dataset="/d", termination_grace_period=900)
    assert submitted(longer)["spec"]["terminationGracePeriodSeconds"] == 900
    register = RegisterModelOperator(task_id="register", dataset="/d", run_id="r")
    assert "terminationGracePeriodSeconds" not in submitted(register)["spec"]  # Kubernetes' 30 s


def test_a_queued_pod_may_wait_for_admission() -> None:
    """KubernetesPodOperator's 120 s to get scheduled would fail a pod waiting in its queue."""
    from mlkube.airflow.base import QUEUED_SCHEDULE_TIMEOUT_SECONDS

    assert TrainOperator(task_id="t", dataset="/d").schedule_timeout_seconds == 120
    queued = TrainOperator(task_id="t", dataset="/d", queue_name="team-a")
    assert queued.schedule_timeout_seconds == QUEUED_SCHEDULE_TIMEOUT_SECONDS
    mine = TrainOperator(task_id="t", dataset="/d", queue_name="team-a", schedule_timeout_seconds=600)
    assert mine.schedule_timeout_seconds == 600
    labelled = TrainOperator(task_id="t", dataset="/d", queue_name="team-a",
                             labels={"kueue.x-k8s.io/queue-name": "other", "team": "ml"})
    labels = submitted(labelled)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a" and labels["team"] == "ml"


def test_the_local_backend_gives_the_process_the_same_grace_period() -> None:
    class Process:
        timeout: float | None = None

        def terminate(self, timeout: float = 30.0) -> None:
            self.timeout = timeout

    for op, grace in ((TrainOperator(task_id="t", dataset="/d"), 120.0),
                      (TrainOperator(task_id="t", dataset="/d", termination_grace_period=5), 5.0),
                      (RegisterModelOperator(task_id="r", dataset="/d", run_id="x"), 30.0)):
        op._local = process = Process()  # type: ignore[assignment]
        op.on_kill()
        assert process.timeout == grace, op.task_id


def test_train_on_nodes_runs_an_indexed_job_then_reads_the_result_in_a_cpu_pod() -> None:
    from mlkube.kube.serving import to_dict

    op = TrainOperator(task_id="train_nodes", dataset="/mnt/mlkube/ds", gpus=4, nodes=3,
                       namespace="ml", service_account_name="mlkube-workflow",
                       queue_name="gpu-queue")
    pod = submitted(op)  # the task's own pod: the result of the run the Job trained
    container = base(pod)
    assert container["args"][-2:] == ["--result-only", "true"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    service, job = (to_dict(o) for o in op.job_objects("manual__2026-12-02"))
    for obj in (service, job):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert job["spec"]["completions"] == 3 and job["spec"]["suspend"] is True
    trainer = job["spec"]["template"]["spec"]
    assert trainer["serviceAccountName"] == "mlkube-workflow"
    assert trainer["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "--result-only" not in trainer["containers"][0]["args"]
    assert job["metadata"]["name"] == op.job_objects("manual__2026-12-02")[1].metadata.name


def test_train_nodes_must_be_a_whole_number_and_needs_pods() -> None:
    from mlkube.errors import MlkubeError

    with pytest.raises(MlkubeError, match=r"^task 'bad': nodes is 0; give a whole number"):
        TrainOperator(task_id="bad", dataset="/d", nodes=0)
    op = TrainOperator(task_id="local", dataset="/d", nodes=2, backend="local")
    with pytest.raises(MlkubeError, match="nodes=2 needs the kubernetes backend"):
        op.execute({"run_id": "r"})
