"""The description of each step: the one source every adapter renders.

A :class:`StepSpec` names a step's program, its options, the keys of its result document,
its default image and resources. The step programs parse their command line from it, the
Airflow operators and the Argo templates build their containers from it, and the local runner
calls it. It imports nothing heavy, so a DAG file can use it at parse time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mlkube import __version__
from mlkube.errors import MlkubeError

OptionKind = Literal["str", "int", "float", "json"]

IMAGE_REPOSITORY = "ghcr.io/mlkube"
CPU_IMAGE = f"{IMAGE_REPOSITORY}/mlkube:{__version__}"
GPU_IMAGE = f"{IMAGE_REPOSITORY}/mlkube-gpu:{__version__}"
SERVER_IMAGE = f"{IMAGE_REPOSITORY}/mlkube-server:{__version__}"

# The Secret references a step pod got, as JSON [{"env", "secret", "key"}]: the deploy step
# hands the same references to the serving containers it creates (kube.pod sets it).
SECRET_ENV_VAR = "MLKUBE_SECRET_ENV"
# The cluster's PostgreSQL (mlkube platform render): Optuna's study storage in step pods, and
# MLflow's backend store. Pods get the password as PGPASSWORD from the Secret the user creates.
CLUSTER_DATABASE = "postgresql://mlkube@mlkube-postgres:5432"
# The cluster's MLflow tracking server (mlkube platform render): its Service, and the tracking
# URI every step pod gets where the user names none (an Airflow connection, --mlflow-tracking-uri).
MLFLOW_SERVICE, MLFLOW_PORT = "mlflow", 5000
CLUSTER_MLFLOW_URI = f"http://{MLFLOW_SERVICE}:{MLFLOW_PORT}"
DB_SECRET, DB_SECRET_KEY = "mlkube-db", "password"
# The tune step's storage where neither --storage nor tune.storage names one (pods set it).
TUNE_STORAGE_ENV = "MLKUBE_TUNE_STORAGE"
# The GPUs (nvidia.com/gpu) a step was given, a whole number: kube.pod sets it on every step
# pod from the resolved resources, the local backend from its `gpus`; the train step fails at
# once when torch sees fewer (unset: none asked for, train wherever torch can).
GPUS_ENV = "MLKUBE_GPUS"
# The shared ReadWriteMany claim every step mounts (datasets, checkpoints, MLflow's artifacts):
# mlkube platform render creates it, and the Argo render mounts it unless told another name.
ARTIFACT_CLAIM = "mlkube-artifacts"
# Where a container finds the shared artifact volume, and where it writes its result.
ARTIFACT_MOUNT = "/mnt/mlkube"
# The claim a step pod mounts there (kube.pod sets it): the deploy step mounts the same claim in
# the serving pods it creates, so that they write their live windows where the monitor reads.
ARTIFACT_CLAIM_ENV = "MLKUBE_ARTIFACT_CLAIM"
# Where live-statistics windows live on a cluster: this sub-directory of the artifact claim.
# The serving runtime writes them there (kube.serving mounts only it read-write, the rest of the
# claim read-only, and passes --stats-dir MONITORING_DIR); the monitor step reads them there
# (its --stats-dir in a pod that mounts the claim). Locally both use <state_dir>/monitoring.
MONITORING_SUBPATH = "monitoring"
MONITORING_DIR = f"{ARTIFACT_MOUNT}/{MONITORING_SUBPATH}"
RESULT_PATH = "/tmp/mlkube/result.json"
# torchrun, ending in one line and a single process's exit status (mlkube/torchrun.py)
TORCHRUN = "mlkube.torchrun"
# train --result-only exits with this when the run has not finished (so it must be trained)
NOT_FINISHED_EXIT = 3
# The lock register and deploy of one model hold, one step at a time across runs, DAGs and
# workflows: an Argo mutex on the two step templates, an Airflow pool of one slot
# (:func:`model_lock` names it).
# Inside deploy the same name is a Lease (cluster) or a flock (local); a second deploy waits
# this long for it (long enough to take over a killed holder's Lease), then fails, exit 75.
MODEL_LOCK_WAIT = 45
MODEL_LOCK_PREFIX = "mlkube-"
MODEL_LOCK_MAX = 63


def model_lock(model_name: str) -> str:
    """The lock of registered model ``model_name``: ``mlkube-<model name>``.

    One name per model, valid wherever it is used (lowercase letters, digits and '-', at most
    63 characters: an Argo mutex, an Airflow pool, a label value). A name that must change to
    fit (``Churn_Model`` → ``mlkube-churn-model-<8 hex digits>``) ends with a digest of the
    model name, so two models never share a lock.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    room = MODEL_LOCK_MAX - len(MODEL_LOCK_PREFIX)
    if slug == model_name and len(slug) <= room:
        return MODEL_LOCK_PREFIX + slug
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    head = slug[:room - len(digest) - 1].rstrip("-")
    return MODEL_LOCK_PREFIX + (f"{head}-{digest}" if head else digest)


@dataclass(frozen=True, kw_only=True)
class Option:
    """A command-line option of a step program."""

    flag: str
    help: str
    kind: OptionKind = "str"
    required: bool = False
    config_key: str | None = None  # the Config field this option sets, e.g. "data.target"
    choices: tuple[str, ...] | None = None
    # Its value in a pod that mounts the artifact claim at ARTIFACT_MOUNT where none is given
    # (kube.pod; the Argo template input's default); None: the step's own default everywhere.
    pod_default: str | None = None

    @property
    def dest(self) -> str:
        """The Python name of the option (``--n-trials`` → ``n_trials``)."""
        return self.flag.removeprefix("--").replace("-", "_")

    def render(self, value: Any) -> str:
        """The option's value as a command-line string."""
        if self.kind == "json":
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return str(value)


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What a step asks of a Kubernetes node."""

    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """One step of the lifecycle."""

    name: str
    module: str
    summary: str
    options: tuple[Option, ...]
    result_keys: tuple[str, ...]
    image: str = CPU_IMAGE
    resources: Resources = field(default_factory=Resources)
    distributed: bool = False  # runs under torchrun, one process per GPU, when given several
    database: bool = False  # its pods use the cluster's PostgreSQL (Optuna's study storage)
    # How long the kubelet waits between SIGTERM and SIGKILL when the pod is stopped (deleted,
    # preempted, past its deadline); None = Kubernetes' default, 30 s.
    termination_grace_period_seconds: int | None = None

    def option(self, dest: str) -> Option:
        """The option whose Python name is ``dest``."""
        for option in self.options:
            if option.dest == dest:
                return option
        known = ", ".join(o.dest for o in self.options)
        raise MlkubeError(f"step {self.name} has no option {dest!r}; known: {known}")

    def command(self, python: str = "python", processes: int = 1, nodes: int = 1) -> list[str]:
        """The program that runs this step; torchrun (:data:`TORCHRUN`) for ``processes`` > 1
        on a distributed step.

        With ``nodes`` > 1, one such command runs in each pod of an Indexed Job: torchrun's
        static rendezvous at ``$(MASTER_ADDR):$(MASTER_PORT)`` (the pod of index 0), the node
        rank from the pod's ``$(JOB_COMPLETION_INDEX)``; Kubernetes expands them from the
        container's environment (:mod:`mlkube.kube.multinode` sets it).
        """
        if nodes > 1 and self.distributed:
            return [python, "-m", TORCHRUN, f"--nnodes={nodes}",
                    f"--nproc-per-node={processes}", "--node-rank=$(JOB_COMPLETION_INDEX)",
                    "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
                    "-m", self.module]
        if processes > 1 and self.distributed:
            return [python, "-m", TORCHRUN, "--standalone",
                    f"--nproc-per-node={processes}", "-m", self.module]
        return [python, "-m", self.module]

    def arguments(self, values: Mapping[str, Any]) -> list[str]:
        """Render option values (keyed by Python name; ``None`` = omit) as arguments."""
        args: list[str] = []
        for dest, value in values.items():
            if value is None:
                continue
            option = self.option(dest)
            args += [option.flag, option.render(value)]
        missing = [o.flag for o in self.options if o.required and values.get(o.dest) is None]
        if missing:
            raise MlkubeError(f"step {self.name} needs {', '.join(missing)}")
        return args


COMMON_OPTIONS = (
    Option(flag="--config", help="lifecycle config (YAML); defaults apply where it is silent"),
    Option(flag="--artifact-root",
           help="directory (a local path or mounted volume) for datasets and checkpoints; "
                "default: <state_dir>/artifacts"),
    Option(flag="--result-file", help="where to write the JSON result document"),
    Option(flag="--experiment", help="MLflow experiment name", config_key="experiment"),
    Option(flag="--pipeline-run-id", help="id of the orchestrator run, recorded as lineage"),
)

DATASET = Option(flag="--dataset", help="prepared dataset URI (prepare-data's dataset_uri)",
                 required=True)
# Why a retraining run trains ("data changed", "drift: psi x=0.31"): the tag
# mlkube.retrain_reason on train's run and register's model version; empty = none.
REASON = Option(flag="--reason", help="why this run retrains, recorded as the tag "
                                      "mlkube.retrain_reason")

PREPARE_DATA = StepSpec(
    name="prepare-data",
    module="mlkube.steps.prepare_data",
    summary="validate, clean and split the data; write Parquet; log the dataset to MLflow",
    options=COMMON_OPTIONS + (
        Option(flag="--input", help="CSV or Parquet path/URI; default: the bundled demo data",
               config_key="data.path"),
        Option(flag="--target", help="target column", config_key="data.target"),
        Option(flag="--features", help="feature columns (JSON list)", kind="json",
               config_key="data.features"),
        Option(flag="--types", help="declared column types (JSON object)", kind="json",
               config_key="data.types"),
        Option(flag="--task", help="learning task", config_key="data.task",
               choices=("classification", "regression")),
        Option(flag="--split", help="split fractions and seed (JSON object)", kind="json",
               config_key="data.split"),
        Option(flag="--model-name", help="registered model whose champion's dataset digest "
                                         "decides `changed`", config_key="registry.model_name"),
    ),
    # changed: "true" unless the digest equals the one the current champion was trained on.
    result_keys=("dataset_uri", "dataset_digest", "rows", "dropped_rows", "mlflow_run_id",
                 "champion_digest", "changed"),
)

TUNE = StepSpec(
    name="tune",
    database=True,
    module="mlkube.steps.tune",
    summary="Optuna study over the search space; trials are nested MLflow runs",
    options=COMMON_OPTIONS + (
        DATASET,
        Option(flag="--role", help="all: create, run workers, select; worker: run trials; "
                                   "select: report the best trial",
               choices=("all", "worker", "select")),
        Option(flag="--study-name", help="Optuna study name; default: derived from the dataset"),
        Option(flag="--storage", help="Optuna storage URL shared by the workers",
               config_key="tune.storage"),
        Option(flag="--n-trials", help="trials in the whole study", kind="int",
               config_key="tune.n_trials"),
        Option(flag="--workers", help="parallel worker processes (role all)", kind="int",
               config_key="tune.workers"),
        Option(flag="--epochs", help="epochs per trial", kind="int", config_key="tune.epochs"),
        Option(flag="--pruner", help="pruner", config_key="tune.pruner",
               choices=("median", "hyperband", "none")),
        Option(flag="--search-space", help="search space (JSON object)", kind="json",
               config_key="tune.search_space"),
    ),
    result_keys=("study_name", "best_params", "best_value", "best_run_id", "trials", "mlflow_run_id"),
    resources=Resources(cpu="2", memory="4Gi"),
)

TRAIN = StepSpec(
    name="train",
    module="mlkube.steps.train",
    summary="train the MLP (CUDA with bf16 autocast when present); checkpoint; log the model",
    options=COMMON_OPTIONS + (
        DATASET,
        Option(flag="--params", help="hyperparameters over the config's model section (JSON)",
               kind="json"),
        Option(flag="--epochs", help="epochs", kind="int", config_key="model.epochs"),
        Option(flag="--run-key", help="run identity for resuming; default: derived from inputs"),
        Option(flag="--result-only", help="true: return the finished run's result, train "
               "nothing (after a multi-node job trained it)", choices=("true", "false")),
        REASON,
    ),
    result_keys=("run_id", "model_uri", "metric", "value", "epochs", "device"),
    image=GPU_IMAGE,
    resources=Resources(cpu="4", memory="16Gi", gpus=1),
    distributed=True,
    # On SIGTERM the trainer writes a checkpoint before it exits; the rerun resumes from it.
    termination_grace_period_seconds=120,
)

REGISTER = StepSpec(
    name="register",
    module="mlkube.steps.register",
    summary="register the model; move the champion alias only when it is better by the margin",
    options=COMMON_OPTIONS + (
        DATASET,
        Option(flag="--run-id", help="MLflow run that logged the model (train's run_id)",
               required=True),
        Option(flag="--model-name", help="registered model name", config_key="registry.model_name"),
        Option(flag="--margin", help="how much better the challenger must be", kind="float",
               config_key="registry.margin"),
        REASON,
    ),
    # champion_uri: the champion version's artifact source (what a cluster server loads).
    result_keys=("model_name", "version", "promoted", "champion_version", "champion_uri",
                 "metric", "challenger_value", "champion_value"),
)

DEPLOY = StepSpec(
    name="deploy",
    module="mlkube.steps.deploy",
    summary="serve a fixed model version on the V2 runtime: verify, roll out, smoke-test, roll "
            "back on failure, record what serves",
    options=COMMON_OPTIONS + (
        DATASET,
        Option(flag="--model-name", help="registered model name", config_key="registry.model_name"),
        Option(flag="--alias", help="alias to serve, resolved to a fixed version (default champion)"),
        Option(flag="--version", help="the version to serve (instead of --alias)"),
        Option(flag="--target", help="where to serve: auto = local outside a cluster; in a pod "
                                     "KServe if installed, else Deployment + Service + HPA",
               choices=("auto", "local", "deployment", "kserve")),
        Option(flag="--canary-percent", help="serving.canary_share in percent: share of live "
                                             "requests the new version answers in its canary "
                                             "phase (0 = the config's, 100 = no canary phase)",
               kind="int"),
        Option(flag="--namespace", help="cluster targets: namespace (default: the pod's own)"),
        Option(flag="--service-name", help="cluster targets: name of the serving objects "
                                           "(default: from the model name)"),
        Option(flag="--server-image", help="cluster targets: the serving runtime image"),
        Option(flag="--port", help="loopback port of the local server", kind="int",
               config_key="serving.port"),
    ),
    result_keys=("model_name", "version", "endpoint", "replaced_version"),
    resources=Resources(cpu="500m", memory="1Gi"),
    # A SIGTERM mid-rollout rolls back first: waiting for the previous version to be ready
    # again takes up to serving.ready_timeout (120 s), then the pod exits.
    termination_grace_period_seconds=180,
)

MONITOR = StepSpec(
    name="monitor",
    module="mlkube.steps.monitor",
    summary="compare the served version's live windows with its training profile: population "
            "stability index per feature and for the predictions; log a drift report",
    options=COMMON_OPTIONS + (
        Option(flag="--model-name", help="registered model name", config_key="registry.model_name"),
        Option(flag="--stats-dir", help="where the runtime writes its live windows; default: "
                                        "<state_dir>/monitoring, in a pod with the artifact "
                                        f"volume {MONITORING_DIR}",
               pod_default=MONITORING_DIR),
        Option(flag="--windows", help="judge the newest N windows (default: newest first until "
                                      "monitor.sample_rows rows)", kind="int"),
        Option(flag="--since", help="judge the windows that end at or after this time: ISO 8601 "
                                    "(UTC unless it says) or an age such as 24h, 30m, 7d"),
        Option(flag="--psi-threshold", help="a feature drifted when its PSI is above this",
               kind="float", config_key="monitor.psi_threshold"),
        Option(flag="--prediction-psi-threshold", help="the predictions drifted when their PSI "
                                                       "is above this", kind="float",
               config_key="monitor.prediction_psi_threshold"),
        Option(flag="--min-rows", help="fewer live rows are not judged (drifted: false)",
               kind="int", config_key="monitor.min_rows"),
        Option(flag="--no-data", help="a stats directory that does not exist, or a model with "
                                      "no serving or champion version yet: an error (default), "
                                      "or nothing served yet, a 0-row result (drifted: false)",
               choices=("error", "not-drifted")),
    ),
    # drifted: a JSON boolean; psi: feature -> PSI (the highest first where all would not fit);
    # prediction_psi: null where the windows or the profile hold no predictions/target;
    # champion_version: the version judged (the `serving` alias, else `champion`);
    # report_uri: the MLflow artifact URI of drift/report.html ("" when too few rows).
    result_keys=("model_name", "champion_version", "drifted", "psi", "prediction_psi",
                 "requests", "rows", "windows", "run_id", "report_uri"),
    resources=Resources(cpu="500m", memory="1Gi"),
)

# The lifecycle's steps in order, then monitor (which runs beside it, on live traffic).
STEPS: dict[str, StepSpec] = {
    s.name: s for s in (PREPARE_DATA, TUNE, TRAIN, REGISTER, DEPLOY, MONITOR)
}


def get(name: str) -> StepSpec:
    """The step called ``name``, with an error that lists the steps."""
    try:
        return STEPS[name]
    except KeyError:
        raise MlkubeError(f"unknown step {name!r}; steps: {', '.join(STEPS)}") from None
