"""deploy: serve ``models:/<name>@champion`` (a fixed version) on a real model server.

``python -m mlkube.steps.deploy --dataset DIR [--model-name NAME] [--alias champion]``

Locally the server is MLflow's scoring server on 127.0.0.1. The new server must answer
``/ping`` and a prediction on rows of the test split before it replaces the running one; if it
fails, the old server keeps serving, its record is untouched and the step fails with the reason.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.steps._main import Context, run_step

SPEC = spec.DEPLOY
SMOKE_ROWS = 5


def resolve(name: str, alias: str) -> str:
    """The version ``alias`` points at now."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        return str(tracking.client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        raise MlkubeError(f"model {name!r} has no version with alias {alias!r}: run register "
                          "first, or pass --alias") from None


def smoke_test(endpoint: str, rows: list[list[float]]) -> None:
    """A prediction per row, each of finite numbers, or an error."""
    from mlkube.local import serving

    predictions = serving.predict(endpoint, rows)
    flat = [v for p in predictions for v in (p if isinstance(p, list) else [p])]
    if len(predictions) != len(rows) or not all(math.isfinite(float(v)) for v in flat):
        raise MlkubeError(f"{endpoint} answered {len(predictions)} predictions for {len(rows)} "
                          f"rows or non-finite values: {predictions!r:.200}")


def run(ctx: Context) -> dict[str, Any]:
    """Roll out the alias's version; keep the old server when the new one fails."""
    from mlkube import data, tracking
    from mlkube.local import serving

    tracking.configure(ctx.state_dir, ctx.config.experiment)
    name = ctx.config.registry.model_name
    version = resolve(name, ctx.args.alias or "champion")
    old = serving.current(ctx.state_dir, name)
    if old is not None and old.version == version and serving.alive(old):
        ctx.log(f"version {version} already serves at {old.endpoint}")
        return {"model_name": name, "version": version, "endpoint": old.endpoint,
                "replaced_version": ""}
    x_test, _, _ = data.load_split(ctx.args.dataset, "test")
    rows = x_test[:SMOKE_ROWS].astype(float).tolist()
    base = ctx.config.serving.port
    port = base + 1 if old is not None and old.port == base else base
    new = serving.start(ctx.state_dir, name, version, ctx.config.serving.host, port)
    ctx.log(f"starting version {version} on {new.url} (pid {new.pid}, log {new.log})")
    try:
        serving.wait_ready(new, ctx.config.serving.ready_timeout)
        smoke_test(new.endpoint, rows)
    except MlkubeError as exc:
        serving.stop(new)
        keeps = f"version {old.version} keeps serving at {old.endpoint}" if old else "nothing served"
        raise MlkubeError(f"version {version} failed its rollout ({exc}); {keeps}") from None
    serving.record(ctx.state_dir, new)
    if old is not None:
        serving.stop(old)
    ctx.log(f"version {version} serves at {new.endpoint}"
            + (f", replacing version {old.version}" if old else ""))
    return {"model_name": name, "version": version, "endpoint": new.endpoint,
            "replaced_version": old.version if old else ""}


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
