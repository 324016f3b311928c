"""deploy: serve a fixed model version on mlkube's V2 runtime, on any target, with one set of guarantees.

``python -m mlkube.steps.deploy --dataset DIR [--model-name NAME] [--alias champion | --version N]
[--target auto|local|deployment|kserve] [--canary-percent P]``

The same sequence on every target (:mod:`mlkube.targets`):

1. resolve the alias to a fixed version; take the model's deploy lock (a Lease on a cluster, a
   flock locally: a second deploy of the model waits, then fails with exit 75 naming the
   holder);
2. the target loads and verifies that version aside (the runtime predicts the model's own input
   example, 1 row and a batch as large as the test split) before it takes traffic, then
   switches without dropping requests;
3. rows of the test split are smoke-tested through the published endpoint;
4. on any failure the previous version is put back and the step fails with one line naming
   both versions and the reason (a canary of the ``champion`` alias over a bound also gives
   ``champion`` back to the previous version: :mod:`mlkube.live_gates`);
5. only then MLflow records what serves: the ``serving`` alias moves to the version.

The ``serving`` alias is also the record of what served: a try killed after its apply leaves
its version on the serving objects and the alias where it was, so the retry applies it again
(what the kill left unapplied), smoke-tests and promotes it before recording it, or rolls back
to the alias's version, rendered again. The same version again changes nothing and returns the
same result. ``auto`` is the local target outside a cluster; in a pod, KServe where its API is
served, else Deployment + Service + HPA (:func:`mlkube.targets.choose`). Of the steps, only
this one talks to the cluster API, through the cluster targets
(:mod:`mlkube.targets.deployment`, :mod:`mlkube.targets.kserve`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from mlkube import spec
from mlkube.errors import MlkubeError, first_line
from mlkube.steps._main import Context, run_step

if TYPE_CHECKING:
    from mlkube.targets.base import ServingTarget

SPEC = spec.DEPLOY
SMOKE_ROWS = 5
# Every version is verified aside, before it takes traffic, on 1 row and on a batch as large as
# the test split (clients send up to that many rows), at most this many.
VERIFY_ROWS_MAX = 1024
SERVING_ALIAS = "serving"
TAG_REPLACED = "mlkube.replaced_version"


def resolve(name: str, alias: str | None, version: str | None) -> str:
    """The fixed version to serve: ``version`` if given (it must exist), else the alias's."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        if version:
            return str(tracking.client().get_model_version(name, version).version)
        return str(tracking.client().get_model_version_by_alias(name, alias or "champion").version)
    except MlflowException:
        what = f"version {version}" if version else f"version with alias {alias or 'champion'!r}"
        raise MlkubeError(f"model {name!r} has no {what}: run register first, or pass "
                          "--alias / --version") from None


def infer_url(target: ServingTarget) -> str:
    """The published V2 inference URL of the target's model."""
    from urllib.parse import quote

    return f"{target.base_url}/v2/models/{quote(target.model_name, safe='')}/infer"


def _flat(value: Any) -> list[Any]:
    return [v for item in value for v in _flat(item)] if isinstance(value, list) else [value]


def contract_problems(outputs: list[dict[str, Any]], declared: list[dict[str, Any]],
                      rows: int) -> list[str]:
    """Where an answer to ``rows`` rows breaks the model's own V2 metadata (``declared``, its
    outputs): each output's name, datatype and shape (``-1`` first: the row count), and the
    label output's values among the class labels."""
    problems = []
    answered = {o["name"]: o for o in outputs}
    labels = next(((t.get("parameters") or {}).get("labels") for t in declared
                   if (t.get("parameters") or {}).get("labels")), None)
    for tensor in declared:
        name, got = tensor["name"], answered.get(tensor["name"])
        if got is None:
            problems.append(f"no output {name!r}")
            continue
        if got.get("datatype") != tensor["datatype"]:
            problems.append(f"output {name!r} is {got.get('datatype')}, its metadata says "
                            f"{tensor['datatype']}")
        want = [rows if i == 0 and d == -1 else d for i, d in enumerate(tensor["shape"])]
        shape = list(got.get("shape") or [])
        if len(shape) != len(want) or any(w not in (-1, s) for w, s in zip(want, shape,
                                                                          strict=True)):
            problems.append(f"output {name!r} has shape {shape} for {rows} rows, its metadata "
                            f"says {tensor['shape']}")
        if labels is not None and tensor["datatype"] == "BYTES":
            odd = sorted({str(v) for v in got.get("data") or []} - set(map(str, labels)))
            if odd:
                problems.append(f"output {name!r} holds {odd[:3]}, not among the model's class "
                                f"labels {labels}")
    problems += [f"output {n!r}, which its metadata does not list" for n in answered
                 if n not in {t['name'] for t in declared}]
    return problems


def smoke_test(target: ServingTarget, rows: list[list[float]], version: str | None = None) -> None:
    """One finite answer per row, through the published endpoint, within the model's own
    contract (its V2 metadata: output names, datatypes, shapes, class labels); ``version``: by
    that version's URL where the canary answers (:meth:`~mlkube.targets.base.ServingTarget.
    slot_url`: the published endpoint, or KServe's tag route to the canary revision)."""
    from mlkube.serve import client

    base = target.base_url if version is None else target.slot_url("canary")
    declared = client.metadata(base, target.model_name)
    answer = client.infer_answer(base, target.model_name, rows, version=version,
                                 input_name=str(declared["inputs"][0]["name"]))
    broken = contract_problems(answer["outputs"], declared["outputs"], len(rows))
    if broken:
        raise MlkubeError(f"{infer_url(target)} answered outside the model's own contract: "
                          + "; ".join(broken))
    outputs = {o["name"]: client.reshaped(o) for o in answer["outputs"]}
    numeric = {name: data for name, data in outputs.items()
               if all(isinstance(v, int | float) for v in _flat(data))}
    if not numeric:
        raise MlkubeError(f"{infer_url(target)} answered no numeric output: {outputs!r:.200}")
    for name, data in numeric.items():
        values = _flat(data)
        if len(data) != len(rows) or not all(math.isfinite(float(v)) for v in values):
            raise MlkubeError(f"{infer_url(target)} answered {name} for {len(data)} of "
                              f"{len(rows)} rows, or non-finite values: {values!r:.200}")


LOCAL_STORES = ("sqlite:", "file:")


def _serving_env() -> list[Any]:
    """What the serving containers need to load models: the tracking URI and Secret refs.

    The serving pods load the model through MLflow, so the tracking URI must name a server
    they reach: a store on this pod's disk (SQLite, a ``file:`` or plain path) is refused.
    """
    from kubernetes.client import V1EnvVar

    from mlkube.kube.pod import SecretEnv

    uri = os.environ["MLFLOW_TRACKING_URI"]
    if uri.startswith(LOCAL_STORES) or "://" not in uri:
        raise MlkubeError(
            f"MLFLOW_TRACKING_URI is {uri}, a store on this pod's disk, which the serving pods "
            "of a cluster target cannot read: set it to the tracking server (the platform's is "
            f"{spec.CLUSTER_MLFLOW_URI}), or deploy with --target local")
    env = [V1EnvVar(name="MLFLOW_TRACKING_URI", value=uri)]
    refs = json.loads(os.environ.get(spec.SECRET_ENV_VAR) or "[]")
    return env + [SecretEnv(**ref).to_k8s() for ref in refs]


def choose_target(ctx: Context, name: str, verify_batch: int | None = None) -> ServingTarget:
    """The target, chosen once (:func:`mlkube.targets.choose`): ``--target``, or ``auto``
    (local outside a cluster); a cluster target's serving pods get :func:`_serving_env`."""
    from mlkube import targets

    return targets.choose(ctx.args.target or "auto", model_name=name, state_dir=ctx.state_dir,
                          config=ctx.config.serving, serving_env=_serving_env,
                          namespace=ctx.args.namespace, service_name=ctx.args.service_name,
                          server_image=ctx.args.server_image,
                          verify_batch=verify_batch, log=ctx.log)


class NotRecorded(MlkubeError):
    """The version serves, but MLflow did not take the record: a transient failure, which
    Argo's retry rule retries (any exit status but 1); the rerun only records."""

    exit_code = 75  # EX_TEMPFAIL


RECORD_ATTEMPTS = 5
RECORD_FIRST_DELAY = 1.0  # seconds, doubled after each failed attempt (1+2+4+8 s in all)


def _record_serving(name: str, version: str, replaced: str | None) -> str:
    """Move the ``serving`` alias to ``version``; return the version it replaced.

    Both writes are idempotent, so a failed attempt is tried again (``RECORD_ATTEMPTS``);
    when MLflow stays unreachable the step fails with :class:`NotRecorded`.
    """
    import time

    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    delay = RECORD_FIRST_DELAY
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            client = tracking.client()
            if replaced is not None and replaced != version:
                client.set_model_version_tag(name, version, TAG_REPLACED, replaced)
            client.set_registered_model_alias(name, SERVING_ALIAS, version)
            return str(client.get_model_version(name, version).tags.get(TAG_REPLACED, ""))
        except (MlflowException, OSError) as exc:  # the tracking server down or refusing
            if attempt == RECORD_ATTEMPTS:
                raise NotRecorded(
                    f"version {version} serves, but MLflow did not take the {SERVING_ALIAS!r} "
                    f"alias in {RECORD_ATTEMPTS} tries ({first_line(exc)}): run the step again "
                    "once MLflow answers (it only records what serves)") from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def recorded_serving(name: str) -> str | None:
    """The version MLflow's ``serving`` alias names: what the last finished deploy put in
    front of the endpoint (``None``: none yet). A deploy killed before its end leaves it as it
    was, so its retry rolls back to it."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        return str(tracking.client().get_model_version_by_alias(name, SERVING_ALIAS).version)
    except MlflowException:  # no such alias (or model) yet
        return None


def canary_share(ctx: Context) -> float:
    """The canary's share of live requests, one description: ``serving.canary_share``, which
    ``--canary-percent P`` sets to P/100 (100: the new version takes all the traffic at once,
    no canary phase); both given and different: refused in one line. Written back to the
    context's config."""
    import dataclasses

    percent, share = ctx.args.canary_percent, ctx.config.serving.canary_share
    if percent is None or percent == 0:
        return float(share)
    if not 0 <= percent <= 100:
        raise MlkubeError(f"--canary-percent is {percent}; give 0-100 (the share of live "
                          "requests the new version answers in its canary phase; 0 = the "
                          "config's serving.canary_share, 100 = no canary phase)")
    wanted = percent / 100 if percent < 100 else 0.0
    if share and round(share * 100) != percent:
        raise MlkubeError(f"--canary-percent {percent} and serving.canary_share {share:g} "
                          "disagree: they are the same share of live requests; give one, or "
                          "the same")
    ctx.config = dataclasses.replace(
        ctx.config, serving=dataclasses.replace(ctx.config.serving, canary_share=wanted))
    return wanted


def run(ctx: Context) -> dict[str, Any]:
    """Roll the version out, holding the model's deploy lock; put the previous one back when
    anything fails."""
    from mlkube import data, tracking

    canary_share(ctx)
    tracking.configure(ctx.state_dir, ctx.config.experiment)
    name = ctx.config.registry.model_name
    x_test, _ = data.load_arrays(ctx.args.dataset, "test")
    target = choose_target(ctx, name, verify_batch=max(1, min(len(x_test), VERIFY_ROWS_MAX)))
    version = resolve(name, ctx.args.alias, ctx.args.version)
    rows = x_test[:SMOKE_ROWS].astype(float).tolist()
    with target.exclusive():
        if ctx.config.registry.min_live_requests and target.live_slots \
                and "shadow" in target.slot_roles and _deploys_champion(ctx):
            from mlkube import live_gates  # the shadow gate may move the champion alias first

            if live_gates.judge_shadow(target, name, ctx.config.registry, ctx.config.serving,
                                       ctx.log):
                version = resolve(name, ctx.args.alias, None)
        return _deploy(ctx, target, name, version, rows)


def _deploy(ctx: Context, target: ServingTarget, name: str, version: str,
            rows: list[list[float]]) -> dict[str, Any]:
    live = target.live_version()
    recorded = recorded_serving(name)
    # What a failure puts back: what serves now, else what the record says served (a killed
    # try's retry finds its own version on the objects, or nothing ready at all).
    previous = live if live not in (None, version) else recorded
    if previous == version:
        previous = None
    if live == version:  # an earlier try, killed or failed before the record, put it there
        ctx.log(f"version {version} already serves at {infer_url(target)} ({target.name}); "
                "smoke-testing it before it is recorded")
        if recorded == version:  # recorded already: nothing to put back, nothing to undo
            smoke_test(target, rows)
            target.promote()
            return _recorded(ctx, target, name, version, None)
    else:
        ctx.log(f"rolling out {name} version {version} on the {target.name} target"
                + (f", replacing version {previous}" if previous else "")
                + (" (the serving record's version: the objects hold no other ready one)"
                   if previous is not None and previous != live else ""))
    try:
        # Also where the version serves already: a try killed between its applies left the
        # rest unapplied (a first deploy's Service and HPA); applied again, the rest changes
        # nothing (the local server keeps a version it serves).
        serving = ctx.config.serving
        if serving.canary_share > 0 and target.live_slots and live not in (None, version):
            from mlkube import live_gates  # the canary phase: promoted only within its bounds

            live_gates.canary(target, version, f"models:/{name}/{version}", serving,
                              lambda: smoke_test(target, rows, version), ctx.log)
        else:
            if serving.canary_share > 0 and live not in (None, version):
                ctx.log(f"serving.canary_share: the {target.name} target has no live canary "
                        "phase; rolling out at once")
            target.roll_out(version, f"models:/{name}/{version}")
            smoke_test(target, rows)
            target.promote()
    except BaseException as exc:  # any failure, a bug or a stop included: put the old one back
        reason = first_line(exc) or type(exc).__name__
        try:
            target.roll_back(previous)
        except MlkubeError as again:
            raise MlkubeError(f"version {version} failed its rollout ({reason}), and rolling "
                              f"back to version {previous} failed too ({again})") from None
        if not isinstance(exc, MlkubeError | KeyboardInterrupt):
            ctx.log(f"rolled back after an unexpected {type(exc).__name__}")
            raise  # a bug: its traceback, after the rollback
        _worse_canary(ctx, name, version, previous, exc)
        after = (f"rolled back: version {previous} serves at {infer_url(target)}" if previous
                 else "nothing was serving before, and nothing serves now")
        raise MlkubeError(f"version {version} failed its rollout ({reason}); {after}") from None
    return _recorded(ctx, target, name, version, previous or "")


def _worse_canary(ctx: Context, name: str, version: str, previous: str | None,
                  exc: BaseException) -> None:
    """A deploy of the ``champion`` alias whose canary broke a bound, rolled back to
    ``previous``: ``champion`` goes back to it (:func:`mlkube.live_gates.canary_rolled_back`)."""
    from mlkube import live_gates

    if isinstance(exc, live_gates.CanaryFailed) and exc.worse and previous \
            and _deploys_champion(ctx):
        live_gates.canary_rolled_back(name, version, previous, exc, ctx.log)


def _deploys_champion(ctx: Context) -> bool:
    """Whether this deploy serves the ``champion`` alias (no ``--version``, no other alias):
    the one whose live gates may move it."""
    return not ctx.args.version and (ctx.args.alias or "champion") == "champion"


def _recorded(ctx: Context, target: ServingTarget, name: str, version: str,
              previous: str | None) -> dict[str, Any]:
    replaced = _record_serving(name, version, previous)
    endpoint = infer_url(target)  # after the rollout: a cluster target knows its address now
    ctx.log(f"version {version} serves at {endpoint}"
            + (f", replacing version {previous}" if previous else ""))
    return {"model_name": name, "version": version, "endpoint": endpoint,
            "replaced_version": replaced}


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
