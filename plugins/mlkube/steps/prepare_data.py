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


def _log_dataset(ctx: Context, experiment_id: str, splits: dict[str, Any], info: Any,
                 dataset_uri: str) -> str:
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    from mlkube import tracking

    tags = {**tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id),
            tracking.TAG_DIGEST: info.digest}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"prepare-{info.digest[:8]}",
                          tags=tags) as run:
        for name, frame in splits.items():
            dataset = from_pandas(frame, source=info.source, targets=info.target,
                                              name=f"{name}-{info.digest[:8]}", digest=info.digest[:8])
            mlflow.log_input(dataset, context=name)
        mlflow.log_params({"source": info.source, "target": info.target, "task": info.task,
                           "n_features": len(info.features), "dataset_uri": dataset_uri})
        mlflow.log_metrics({f"rows_{k}": v for k, v in info.rows.items()}
                           | {"dropped_rows": info.dropped_rows})
        stats = splits["train"].describe().to_dict()
        mlflow.log_text(json.dumps(stats, indent=1, default=float), "dataset/statistics.json")
        return str(run.info.run_id)


def run(ctx: Context) -> dict[str, Any]:
    """Prepare the dataset; reuse the MLflow run when this exact data was prepared before."""
    from mlkube import data, tracking

    cfg = ctx.config.data
    source = cfg.path or str(data.demo_data(ctx.state_dir))
    splits, info = data.prepare(source, cfg)
    ctx.log(f"{source}: {sum(info.rows.values())} rows kept, {info.dropped_rows} dropped "
            f"(missing values); split {info.rows}")
    dataset_dir = data.write(ctx.artifact_root, splits, info)
    experiment_id = tracking.configure(ctx.state_dir, ctx.config.experiment)
    previous = tracking.find_run(experiment_id, {tracking.TAG_STEP: SPEC.name,
                                                 tracking.TAG_DIGEST: info.digest})
    run_id = previous.info.run_id if previous else _log_dataset(
        ctx, experiment_id, splits, info, str(dataset_dir))
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
