"""The step operators: typed parameters in, the step's result out.

DeployModelOperator, which also deploys to clusters without a step pod, lives in
:mod:`mlkube.airflow.deploy`.

Each maps its keyword-only parameters to its step's options (:mod:`mlkube.spec`); everything
else — image, resources, GPUs, MLflow, backends, the result — is :class:`StepOperator`'s.
Parameters left ``None`` take the lifecycle config's value (or the step's default). Every
parameter listed in ``step_fields`` is templated and accepts an upstream ``task.output[...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mlkube import spec
from mlkube.airflow.base import StepOperator
from mlkube.airflow.deploy import DeployModelOperator

__all__ = ["DeployModelOperator", "MonitorOperator", "PrepareDataOperator",
           "RegisterModelOperator", "TrainOperator", "TuneOperator"]


class PrepareDataOperator(StepOperator):
    """Validate, clean and split the data; write Parquet; log the dataset to MLflow.

    Result: ``dataset_uri``, ``dataset_digest``, ``rows``, ``dropped_rows``, ``mlflow_run_id``,
    ``champion_digest``, ``changed`` (whether the data differs from the champion's).

    Args:
        input_uri: CSV or Parquet path/URI; default: the bundled demo data.
        target: the target column.
        features: feature columns; default: every other column.
        types: declared column types, e.g. ``{"age": "int"}``.
        learning_task: ``classification`` or ``regression``.
        split: split fractions and seed, e.g. ``{"validation": 0.15, "test": 0.15, "seed": 42}``.
        model_name: registered model whose champion's dataset digest decides ``changed``.
        **kwargs: see :class:`StepOperator`.
    """

    step = spec.PREPARE_DATA
    step_fields: ClassVar[dict[str, str]] = {
        "input_uri": "input", "target": "target", "features": "features", "types": "types",
        "learning_task": "task", "split": "split", "model_name": "model_name",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields)

    def __init__(self, *, input_uri: str | None = None, target: str | None = None,
                 features: list[str] | None = None, types: dict[str, str] | None = None,
                 learning_task: str | None = None, split: dict[str, Any] | None = None,
                 model_name: str | None = None, **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        self.input_uri = input_uri
        self.target = target
        self.features = features
        self.types = types
        self.learning_task = learning_task
        self.split = split
        self.model_name = model_name
        super().__init__(**kwargs)


class TuneOperator(StepOperator):
    """An Optuna study over the search space; each trial is a nested MLflow run.

    ``role="all"`` runs the whole study in one task. For fan-out, map workers over
    ``worker_index`` with ``role="worker"`` and finish with one ``role="select"`` task
    (:func:`mlkube.airflow.lifecycle.tune_fan_out` does both). Result: ``study_name``,
    ``best_params``, ``best_value``, ``best_run_id``, ``trials``, ``mlflow_run_id``.

    Args:
        dataset: the prepared dataset URI (prepare's ``dataset_uri``).
        role: ``all``, ``worker`` or ``select``.
        worker_index: which worker this is (given to the step as ``MLKUBE_TUNE_WORKER``).
        study_name: the study; default: derived from the dataset, so workers share it.
        storage: Optuna storage URL the workers share; default: the platform's PostgreSQL
            in pods (``MLKUBE_TUNE_STORAGE``), SQLite in the state directory on the local
            backend.
        n_trials: trials in the whole study.
        workers: parallel worker processes inside one ``role="all"`` task.
        epochs: epochs per trial.
        pruner: ``median``, ``hyperband`` or ``none``.
        search_space: the search space (the config's ``tune.search_space`` format).
        **kwargs: see :class:`StepOperator`.
    """

    step = spec.TUNE
    step_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset", "role": "role", "study_name": "study_name", "storage": "storage",
        "n_trials": "n_trials", "workers": "workers", "epochs": "epochs", "pruner": "pruner",
        "search_space": "search_space",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields)

    def __init__(self, *, dataset: str | None = None, role: str = "all",
                 worker_index: int | None = None, study_name: str | None = None,
                 storage: str | None = None, n_trials: int | None = None,
                 workers: int | None = None, epochs: int | None = None,
                 pruner: str | None = None, search_space: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        self.dataset = dataset
        self.role = role
        self.worker_index = worker_index
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.workers = workers
        self.epochs = epochs
        self.pruner = pruner
        self.search_space = search_space
        super().__init__(**kwargs)

    def extra_env(self) -> dict[str, str]:
        """Tell a worker its index."""
        return {} if self.worker_index is None else {"MLKUBE_TUNE_WORKER": str(self.worker_index)}


class TrainOperator(StepOperator):
    """Train the model, on a GPU by default (``gpus=1``); log it to MLflow.

    Result: ``run_id``, ``model_uri``, ``metric``, ``value``, ``epochs``, ``device``.

    Args:
        dataset: the prepared dataset URI (prepare's ``dataset_uri``).
        hyperparameters: over the config's model section, e.g. tune's ``best_params``.
        epochs: training epochs.
        run_key: run identity for resuming after a lost pod; default: derived from inputs.
        reason: why this run retrains (e.g. the retraining DAG's gate), recorded as the tag
            ``mlkube.retrain_reason`` on the MLflow run.
        nodes: nodes to train on at once. More than 1 (kubernetes backend): a small pod of
            the task's (``--result-only``) first returns the result of a run that already
            finished (sync mode); else, after preflight, an Indexed Job of that many pods, each
            with ``gpus`` GPUs and a node of its own, runs the train program under torchrun
            (:mod:`mlkube.kube.multinode`); the task waits for it, then reads the leader's
            result in that small pod. The Job's pods are the task's: same namespace, service
            account, image, queue and priority.
        **kwargs: see :class:`StepOperator` (``gpus``, ``gpu_product``, ``shm_size``,
            ``image`` and ``command`` for your own trainer).
    """

    step = spec.TRAIN
    step_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset", "hyperparameters": "params", "epochs": "epochs", "run_key": "run_key",
        "reason": "reason",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields)
    ui_color = "#c9e7c2"

    def __init__(self, *, dataset: str | None = None,
                 hyperparameters: dict[str, Any] | None = None, epochs: int | None = None,
                 run_key: str | None = None, reason: str | None = None, nodes: int = 1,
                 **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        from mlkube.kube.multinode import check_nodes

        self.dataset = dataset
        self.hyperparameters = hyperparameters
        self.epochs = epochs
        self.run_key = run_key
        self.reason = reason
        self.nodes = nodes
        super().__init__(**kwargs)
        check_nodes(nodes, f"{self._what}: nodes")

    def step_values(self, settings: Any) -> dict[str, Any]:
        """On several nodes, this task's own pod only reads the result the Job left."""
        values = super().step_values(settings)
        return values | {"result_only": "true"} if self.nodes > 1 else values

    def _placement_fields(self) -> dict[str, Any]:
        fields = super()._placement_fields()
        return fields | {"gpus": 0} if self.nodes > 1 else fields

    def job_objects(self, run_id: str) -> list[Any]:
        """The headless Service and Indexed Job that train on ``nodes`` pods."""
        from mlkube.kube import multinode

        settings = self.mlflow_settings()
        pieces = self._pod_pieces(settings, StepOperator.step_values(self, settings),
                                  StepOperator._placement_fields(self))
        return multinode.indexed_job(
            pieces, name=multinode.job_name(self.dag_id, self.task_id, run_id),
            namespace=self.namespace, nodes=self.nodes,
            service_account=self.service_account_name)

    def execute(self, context: Any) -> dict[str, Any]:
        """Train on ``nodes`` pods first when there are several; then the step's own pod."""
        if self.nodes > 1:
            from mlkube.airflow import backend as backends
            from mlkube.errors import MlkubeError
            from mlkube.kube import multinode

            if backends.resolve(self.backend) == "local":
                raise MlkubeError(f"{self._what}: nodes={self.nodes} needs the kubernetes backend "
                                  "(pods on several nodes); on this machine use nodes=1")
            if not self.deferrable:  # a run that finished before needs no Job: ask first
                finished = self._finished_before(context)
                if finished is not None:
                    return finished
            namespace = self.namespace or self.hook.get_namespace() or "default"
            objects = self.job_objects(context["run_id"])
            if self.preflight:  # before anything is created: can every node's pod ever run?
                self._preflight(self.node_pod(objects, namespace))
            multinode.run_job(self.hook.core_v1_client.api_client, objects, namespace,
                              log=self.log.info, poll_seconds=self.poll_interval,
                              timeout_seconds=self.execution_timeout.total_seconds()
                              if self.execution_timeout else None,
                              schedule_timeout_seconds=self.schedule_timeout_seconds)
        return super().execute(context)

    def _finished_before(self, context: Any) -> dict[str, Any] | None:
        """The result of a run that already finished (this task's small result-only pod);
        ``None`` when that pod says the run has not finished, ready for the Job and a new pod."""
        from mlkube import spec
        from mlkube.airflow.termination import exit_code
        from mlkube.errors import MlkubeError

        try:
            return super().execute(context)
        except MlkubeError:
            pod = self.remote_pod
            if pod is None or exit_code(pod, self.base_container_name) != spec.NOT_FINISHED_EXIT:
                raise
        self.log.info("the run has not finished: training it on %d nodes", self.nodes)
        self.pod = self.pod_request_obj = self.remote_pod = None
        return None

    def node_pod(self, objects: list[Any], namespace: str) -> Any:
        """One of the Job's pods, as preflight judges it: it stands for ``nodes`` of them."""
        from kubernetes.client import V1ObjectMeta, V1Pod

        from mlkube.kube.multinode import NODES_ANNOTATION

        job = next(o for o in objects if o.kind == "Job")
        template = job.spec.template
        return V1Pod(api_version="v1", kind="Pod", spec=template.spec, metadata=V1ObjectMeta(
            name=f"{job.metadata.name}-0", namespace=namespace,
            labels=template.metadata.labels if template.metadata else None,
            annotations={NODES_ANNOTATION: str(self.nodes)}))


class RegisterModelOperator(StepOperator):
    """Register the model; move the ``champion`` alias only when it wins by the margin.

    Result: ``model_name``, ``version``, ``promoted``, ``champion_version``, ``champion_uri``,
    ``metric``, ``challenger_value``, ``champion_value``.

    Args:
        dataset: the prepared dataset URI (its test split judges the challenger).
        run_id: the MLflow run that logged the model (train's ``run_id``).
        model_name: the registered model.
        margin: how much better the challenger must be.
        reason: why this run retrains, recorded as the tag ``mlkube.retrain_reason`` on the
            model version.
        **kwargs: see :class:`StepOperator`.
    """

    step = spec.REGISTER
    step_fields: ClassVar[dict[str, str]] = {
        "dataset": "dataset", "run_id": "run_id", "model_name": "model_name", "margin": "margin",
        "reason": "reason",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields)

    def __init__(self, *, dataset: str | None = None, run_id: str | None = None,
                 model_name: str | None = None, margin: float | None = None,
                 reason: str | None = None, **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        self.dataset = dataset
        self.run_id = run_id
        self.model_name = model_name
        self.margin = margin
        self.reason = reason
        super().__init__(**kwargs)


class MonitorOperator(StepOperator):
    """Judge the served version's live windows against its training profile (PSI); log the
    drift report to MLflow.

    Result: ``model_name``, ``champion_version`` (the version judged), ``drifted`` (a
    boolean), ``psi`` (feature → PSI, highest first), ``prediction_psi``, ``requests``,
    ``rows``, ``windows``, ``run_id``, ``report_uri``.

    Args:
        model_name: the registered model.
        stats_dir: where the serving runtime writes its live windows; default:
            ``<state_dir>/monitoring``.
        windows: judge the newest N windows.
        since: judge the windows that end at or after this time (ISO 8601, or an age: ``24h``).
        psi_threshold: a feature drifted when its PSI is above this.
        prediction_psi_threshold: the predictions drifted when their PSI is above this.
        min_rows: fewer live rows are not judged (``drifted`` false).
        no_data: ``error`` (the step's default) or ``not-drifted``: a missing stats directory
            or a model not served yet is then a 0-row result (the retraining DAG passes it).
        **kwargs: see :class:`StepOperator`.
    """

    step = spec.MONITOR
    step_fields: ClassVar[dict[str, str]] = {
        "model_name": "model_name", "stats_dir": "stats_dir", "windows": "windows",
        "since": "since", "psi_threshold": "psi_threshold",
        "prediction_psi_threshold": "prediction_psi_threshold", "min_rows": "min_rows",
        "no_data": "no_data",
    }
    template_fields: Sequence[str] = (*StepOperator.template_fields, *step_fields)
    ui_color = "#f6e3b4"

    def __init__(self, *, model_name: str | None = None, stats_dir: str | None = None,
                 windows: int | None = None, since: str | None = None,
                 psi_threshold: float | None = None,
                 prediction_psi_threshold: float | None = None, min_rows: int | None = None,
                 no_data: str | None = None, **kwargs: Any) -> None:
        """Store the parameters; see the class doc."""
        self.model_name = model_name
        self.stats_dir = stats_dir
        self.windows = windows
        self.since = since
        self.psi_threshold = psi_threshold
        self.prediction_psi_threshold = prediction_psi_threshold
        self.min_rows = min_rows
        self.no_data = no_data
        super().__init__(**kwargs)
