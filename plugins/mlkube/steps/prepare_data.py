"""prepare-data: validate, clean and split the data; write Parquet; log the dataset to MLflow.

``python -m mlkube.steps.prepare_data [--input data.csv] [--target y] ...``
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mlkube import spec
from mlkube.steps._main import Context, run_step

SPEC = spec.PREPARE_DATA


def champion_digest(model_name: str) -> str:
    """The dataset digest the current champion was trained on ('' when there is none)."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        version = tracking.client().get_model_version_by_alias(model_name, "champion")
    except MlflowException:  # no such model or no champion yet
        return ""
    return str(version.tags.get(tracking.TAG_DIGEST, ""))


def _dataset_input(info: Any, name: str) -> Any:
    """The MLflow dataset of one split: its schema (float64 features, the encoded target) and the
    profile ``from_pandas`` would give, without reading the split back."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    rows = info.rows[name]

    class Split(MetaDataset):
        @property
        def profile(self) -> dict[str, int]:
            return {"num_rows": rows, "num_elements": rows * (len(info.features) + 1)}

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | {"profile": json.dumps(self.profile)}

    target = DataType.long if info.task == "classification" else DataType.double
    schema = Schema([*(ColSpec(DataType.double, column) for column in info.features),
                     ColSpec(target, info.target)])
    return Split(resolve_dataset_source(info.source), name=f"{name}-{info.digest[:8]}",
                 digest=info.digest[:8], schema=schema)


def _log_dataset(ctx: Context, experiment_id: str, info: Any, statistics: dict[str, Any],
                 dataset_uri: str) -> str:
    import mlflow

    from mlkube import tracking

    tags = {**tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id),
            tracking.TAG_DIGEST: info.digest}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"prepare-{info.digest[:8]}",
                          tags=tags) as run:
        for name in info.rows:
            mlflow.log_input(_dataset_input(info, name), context=name)
        mlflow.log_params({"source": info.source, "target": info.target, "task": info.task,
                           "n_features": len(info.features), "dataset_uri": dataset_uri})
        mlflow.log_metrics({f"rows_{k}": v for k, v in info.rows.items()}
                           | {"dropped_rows": info.dropped_rows})
        mlflow.log_text(json.dumps(statistics, indent=1),
                        "dataset/statistics.json")
        _log_profile(dataset_uri)
        return str(run.info.run_id)


def _log_profile(dataset_uri: str) -> None:
    """Log the dataset's ``profile.json`` (the train split's histograms) to the active run as
    ``dataset/profile.json``."""
    import mlflow

    from mlkube import data

    path = data.local_path(dataset_uri) / data.PROFILE_FILE
    if path.is_file():
        mlflow.log_text(path.read_text(), "dataset/profile.json")


def run(ctx: Context) -> dict[str, Any]:
    """Prepare the dataset; reuse the MLflow run when this exact data was prepared before."""
    from mlkube import data, tracking

    cfg = ctx.config.data
    source = cfg.path or str(data.demo_data(ctx.state_dir))
    dataset_dir, info, statistics = data.prepare(source, cfg, ctx.artifact_root)
    ctx.log(f"{source}: {sum(info.rows.values())} rows kept, {info.dropped_rows} dropped "
            f"(missing or non-finite values); split {info.rows}")
    experiment_id = tracking.configure(ctx.state_dir, ctx.config.experiment)
    previous = tracking.find_run(experiment_id, {tracking.TAG_STEP: SPEC.name,
                                                 tracking.TAG_DIGEST: info.digest})
    run_id = previous.info.run_id if previous else _log_dataset(
        ctx, experiment_id, info, statistics, str(dataset_dir))
    champion = champion_digest(ctx.config.registry.model_name)
    changed = champion != info.digest
    ctx.log(f"dataset {info.digest[:12]} at {dataset_dir}; "
            + ("new data" if changed else "same data as the champion: retraining can be skipped"))
    return {"dataset_uri": str(dataset_dir), "dataset_digest": info.digest,
            "rows": sum(info.rows.values()), "dropped_rows": info.dropped_rows,
            "mlflow_run_id": run_id, "champion_digest": champion,
            "changed": "true" if changed else "false"}


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
