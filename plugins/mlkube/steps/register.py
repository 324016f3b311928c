"""register: register the model; the champion gate decides whether it takes ``champion``.

``python -m mlkube.steps.register --run-id RUN --dataset DIR [--model-name NAME] [--margin M]``

Both the challenger and the current champion are evaluated on the held-out test split before
anything is written; the challenger takes the ``champion`` alias only when it is better by more
than the margin, otherwise it gets ``challenger``. The same run registered twice is one
version. The alias is written by compare-and-set: if another run moved ``champion`` while this
one evaluated, the new champion is judged instead (up to ``GATE_ATTEMPTS`` times). MLflow has
no atomic alias swap, so a move between that last read and the write can still be lost:
register and deploy are meant to be serialised per model as well (issue 16, item 7).

With ``registry.min_live_requests`` > 0 the gate has a live half: a challenger better offline
than a champion that can defend gets ``challenger``, tagged ``mlkube.gate: awaiting live
evidence ...``, and takes ``champion`` only once deploy shadowed it beside the serving champion
for that many live requests with enough agreement (:mod:`mlkube.live_gates`). Deploy then tags it
``live: ...``; a rerun of register (a retry of the same run) keeps that verdict rather than
putting ``awaiting`` back, so a version rejected live is never shadowed again.
"""

from __future__ import annotations

import sys
from typing import Any

from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.steps._main import Context, run_step

SPEC = spec.REGISTER
CHAMPION = "champion"
CHALLENGER = "challenger"
LIVE_VERDICT = "live:"  # how deploy's shadow gate begins the mlkube.gate tag it leaves
GATE_ATTEMPTS = 3  # evaluations of a champion that another run keeps moving


def _champion(name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        return tracking.client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _check_inputs(name: str, run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:  # the model name was checked with the config (config._validate_model_name)
        run = tracking.client().get_run(run_id)
    except MlflowException:
        raise MlkubeError(f"MLflow run {run_id!r} not found: pass train's run_id") from None
    logged = tracking.client().search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    ready = sorted((m for m in logged if str(m.status).endswith("READY")),
                   key=lambda m: m.creation_timestamp)
    if not ready:
        raise MlkubeError(f"MLflow run {run_id} logged no finished model: pass train's run_id")
    return str(ready[-1].model_uri)


def _existing_version(name: str, run_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        found = tracking.client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _version_of(model_version: Any | None) -> str | None:
    return None if model_version is None else str(model_version.version)


def _defend(ctx: Context, name: str, info: Any) -> tuple[Any | None, float | None]:
    """The current champion and its value on the test split (``None``: it cannot defend)."""
    from mlkube import evaluation

    champion = _champion(name)
    if champion is None:
        return None, None
    try:
        return champion, evaluation.score(f"models:/{name}/{champion.version}",
                                          ctx.args.dataset, info,
                                          f"champion {name} v{champion.version}")
    except evaluation.NonFinite as exc:  # a champion that cannot answer cannot defend
        ctx.log(f"{exc}: it loses the alias to any challenger with finite predictions")
    except evaluation.Unloadable as exc:  # e.g. its artifacts are gone: nothing to defend
        ctx.log(f"{exc}: it loses the alias; the challenger is judged on its own")
    return champion, None


def run(ctx: Context) -> dict[str, Any]:
    """Evaluate, gate, register, and move the aliases."""
    import mlflow

    from mlkube import data, evaluation, tracking
    from mlkube import model as modelmod

    tracking.configure(ctx.state_dir, ctx.config.experiment)
    name, run_id = ctx.config.registry.model_name, ctx.args.run_id
    model_uri = _check_inputs(name, run_id)
    info = data.load_info(ctx.args.dataset)
    metric, direction = modelmod.metric_for(info.task)
    try:
        challenger_value = evaluation.score(model_uri, ctx.args.dataset, info,
                                            f"the challenger (run {run_id})")
    except evaluation.NonFinite as exc:
        raise MlkubeError(f"{exc}: not registered; check the data for extreme values or lower "
                          "model.learning_rate, then train again") from None
    champion, champion_value = _defend(ctx, name, info)
    ctx.log(f"test {metric}: challenger {challenger_value:.4f}, champion "
            + (f"v{champion.version} " if champion else "none")
            + (f"{champion_value:.4f}" if champion_value is not None else ""))

    client = tracking.client()
    existing = _existing_version(name, run_id)
    verdict = ""  # the live gate's verdict on this version, from an earlier deploy
    if existing is not None:
        version = existing.version
        ctx.log(f"run {run_id} is already version {version}; not registering it again")
        gate = client.get_model_version(name, str(version)).tags.get("mlkube.gate", "")
        verdict = str(gate) if str(gate).startswith(LIVE_VERDICT) else ""
    else:
        tags = {**tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id),
                tracking.TAG_DIGEST: info.digest, f"test_{metric}": f"{challenger_value:.6f}",
                **tracking.reason_tags(ctx.args.reason)}
        version = mlflow.register_model(model_uri, name, tags=tags).version

    for attempt in range(1, GATE_ATTEMPTS + 1):  # compare-and-set: the champion judged is
        now = _champion(name)                      # still the champion when the alias moves
        if _version_of(now) == _version_of(champion):
            break
        if attempt == GATE_ATTEMPTS:
            raise MlkubeError(
                f"the {CHAMPION!r} alias of {name} moved {GATE_ATTEMPTS} times while this run "
                f"judged version {version} against it: another run registers this model at "
                "the same time; run the step again (it is idempotent)")
        before = _version_of(champion)
        ctx.log(f"the champion moved from {'v' + before if before else 'none'} to "
                f"v{_version_of(now)} while this run judged it: judging again")
        champion, champion_value = _defend(ctx, name, info)
    is_champion = champion is not None and str(champion.version) == str(version)
    promote = (champion is None or champion_value is None or is_champion
               or modelmod.is_better(challenger_value, champion_value, direction,
                                     ctx.config.registry.margin))
    live_gate = (promote and not is_champion and champion is not None
                 and champion_value is not None and ctx.config.registry.min_live_requests > 0)
    if live_gate and verdict:  # a rerun after deploy judged it live: the verdict stands
        promote = False
        ctx.log(f"version {version} was already judged on live traffic ({verdict}): kept; "
                "not shadowed again")
    elif live_gate:  # better offline; the live half of the gate is deploy's (mlkube.live_gates)
        from mlkube import live_gates

        assert champion is not None and champion_value is not None
        promote = False
        client.set_registered_model_alias(name, CHALLENGER, str(version))
        client.set_model_version_tag(name, str(version), live_gates.TAG_GATE, live_gates.awaiting(
            f"{metric} {challenger_value:.4f} vs {champion_value:.4f}", ctx.config.registry))
        ctx.log(f"version {version} is better than champion v{champion.version} offline: tagged "
                f"{CHALLENGER}; it takes {CHAMPION} after "
                f"{ctx.config.registry.min_live_requests} live requests shadowed beside it "
                "(deploy)")
    elif is_champion:  # a rerun: the alias is where it was
        ctx.log(f"version {version} is already the champion; nothing changed")
    elif promote:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        ctx.log(f"version {version} took the champion alias "
                + (f"from v{champion.version}" if champion else "(there was none)"))
    else:
        assert champion is not None
        client.set_registered_model_alias(name, CHALLENGER, str(version))
        if not verdict:  # (a live verdict outranks this offline one)
            client.set_model_version_tag(name, str(version), "mlkube.gate",
                                         f"not better than v{champion.version} by > "
                                         f"{ctx.config.registry.margin}")
        ctx.log(f"version {version} is not better than champion v{champion.version} by more than "
                f"{ctx.config.registry.margin}: tagged {CHALLENGER}; champion unchanged")
    champion_version = str(version) if promote or champion is None else str(champion.version)
    return {"model_name": name, "version": str(version), "promoted": "true" if promote else "false",
            "champion_version": champion_version,
            "champion_uri": client.get_model_version_download_uri(name, champion_version),
            "metric": metric, "challenger_value": challenger_value,
            "champion_value": champion_value if champion_value is not None else ""}


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
