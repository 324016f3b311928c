"""tune: an Optuna study over the declared search space, trials in parallel workers.

``python -m mlkube.steps.tune --dataset DIR [--role all|worker|select] ...``

- ``worker`` joins the study (creating it, its parent MLflow run and ``n_trials`` waiting
  trials if it is the first) and runs waiting trials until every trial of the study has
  finished; any number of workers (pods, mapped tasks, processes, retried ones) share one
  storage, and each trial runs once. The storage: ``--storage`` / ``tune.storage``, else
  ``MLKUBE_TUNE_STORAGE`` (step pods get the platform's PostgreSQL there, and PGPASSWORD from
  its Secret), else SQLite in state_dir.
- ``select`` reports the best trial and logs the optimisation history and parameter
  importances to the parent run.
- ``all`` (the default) creates the study once, starts ``workers`` local worker processes,
  waits for them, then selects.

Each trial is an MLflow run nested under the study's parent run, and reports the validation
metric every epoch so that the pruner can stop unpromising trials early.

Workers die (OOM, a SIGKILL, a deleted pod); the study still ends with exactly ``n_trials``
finished (complete or pruned) trials. The study has ``n_trials`` slots (system attribute
``mlkube_slot``); a worker running a trial records Optuna's heartbeat every
``HEARTBEAT_INTERVAL_S`` (10 s). At start, between trials and while it waits for the trials
of others, every worker fails the trials that have had no heartbeat for ``GRACE_PERIOD_S``
(60 s; also a RUNNING trial that never had one, left by an earlier version) and refills: a
slot whose trials all failed gets a new waiting trial with the last failed one's parameters
(``failed_trial`` / ``retry_history`` as Optuna's RetryHeartbeatStaleTrialCallback writes
them), at most ``MAX_ATTEMPTS`` (3) attempts a slot, then the slot is given up and reported.
A worker leaves only when no trial is waiting or running, so a retried worker finishes the
trials of the one it replaces. ``MLKUBE_TUNE_HEARTBEAT=INTERVAL,GRACE`` (whole seconds)
overrides the two times, e.g. in tests. Two workers refilling the same slot at once queue it
twice; the second copy, when claimed, is failed unrun (system attribute ``mlkube_duplicate``).

The study's creator records the parent MLflow run on the study once it has queued the
trials; a worker that finds no parent run after the grace period (the creator died) starts
one and records it itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from mlkube import config as configmod
from mlkube import spec
from mlkube.errors import MlkubeError, database_unusable
from mlkube.steps._main import Context, run_step

SPEC = spec.TUNE
PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
SLOT_ATTR = "mlkube_slot"
DUPLICATE_ATTR = "mlkube_duplicate"
HEARTBEAT_ENV = "MLKUBE_TUNE_HEARTBEAT"
HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S = 10, 60
MAX_ATTEMPTS = 3


def heartbeat() -> tuple[int, int]:
    """The heartbeat interval and the grace period, in seconds (``MLKUBE_TUNE_HEARTBEAT``)."""
    value = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not value:
        return HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S
    try:
        interval, grace = (int(part) for part in value.split(","))
    except ValueError:
        interval = grace = 0
    if not 0 < interval < grace:
        raise MlkubeError(
            f"{HEARTBEAT_ENV} is {value!r}, not INTERVAL,GRACE in whole seconds with "
            f"0 < INTERVAL < GRACE: set it like '{HEARTBEAT_INTERVAL_S},{GRACE_PERIOD_S}' "
            "or unset it")
    return interval, grace


def study_name(ctx: Context, digest: str) -> str:
    """The study's name: given, or derived from the data and the tuning setup."""
    if ctx.args.study_name:
        return str(ctx.args.study_name)
    setup = {"tune": asdict(ctx.config.tune) | {"workers": None}, "model": asdict(ctx.config.model)}
    key = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:8]
    return f"mlkube-{digest[:12]}-{key}"


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options of the study storage.

    SQLite: a long lock timeout (parallel workers on one file). A server (PostgreSQL): a pool
    of one connection and one overflow per worker process, checked before use and recycled,
    so N workers hold at most 2N connections however many trials they run, and an unreachable
    host fails in seconds.
    """
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 1, "pool_pre_ping": True,
                               "pool_recycle": 300}
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": 10}
    return options


_STORAGES: dict[tuple[str, int, int], Any] = {}


def storage(ctx: Context) -> Any:
    """The study storage, one per URL in a process (one connection pool), with Optuna's
    heartbeat; retries the first creation of SQLite tables by parallel workers."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    url = (ctx.config.tune.storage or os.environ.get(spec.TUNE_STORAGE_ENV)
           or f"sqlite:///{ctx.state_dir / 'optuna.db'}")
    interval, grace = heartbeat()
    key = (url, interval, grace)
    if key in _STORAGES:
        return _STORAGES[key]
    ctx.state_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _STORAGES[key] = RDBStorage(url, engine_kwargs=engine_options(url),
                                            heartbeat_interval=interval, grace_period=grace)
            return _STORAGES[key]
        except sqlalchemy.exc.OperationalError as exc:
            if attempt == 4 or not url.startswith("sqlite"):
                raise database_unusable("Optuna storage", url, exc, "tune.storage") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


# Random trials before TPE models the results (Optuna's default is 10, which left a study of
# 8 trials all random). benchmarks/tune_vs_grid.py: against the exhaustive grid, 18 trials with
# 5 startup trials, multivariate TPE and the constant liar were within 1% of the grid's best in
# 40 of 40 emulated runs on each data set, where 8 trials of Optuna's default TPE were in 25 of 40.
STARTUP_TRIALS = 5


def _sampler() -> Any:
    """TPE: a joint model of the parameters (``multivariate``), ``STARTUP_TRIALS`` random ones
    first; trials running in other workers count as bad results until they finish
    (``constant_liar``), so parallel workers do not sample the same region at once."""
    import optuna

    with warnings.catch_warnings():  # both options are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(n_startup_trials=STARTUP_TRIALS, multivariate=True,
                                          constant_liar=True)


def _pruner(name: str, epochs: int) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def _start_parent(ctx: Context, name: str, experiment_id: str) -> str:
    """A new parent MLflow run for the study; its id."""
    import mlflow

    from mlkube import tracking

    tags = tracking.lineage_tags(SPEC.name, ctx.pipeline_run_id) | {"mlkube.study": name}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune-{name}", tags=tags) as run:
        mlflow.log_params({"n_trials": ctx.config.tune.n_trials, "pruner": ctx.config.tune.pruner,
                           "search_space": json.dumps(asdict(ctx.config.tune)["search_space"])})
    return str(run.info.run_id)


def _await_parent(ctx: Context, study: Any, experiment_id: str) -> None:
    """Wait for the creator to record the parent run; after the grace period, record one.

    Workers that recover at the same moment each record theirs; after a pause every one of
    them takes the one recorded last and deletes its own if that is not it.
    """
    from mlkube import tracking

    _, grace = heartbeat()
    deadline = time.monotonic() + grace
    while PARENT_ATTR not in study.user_attrs:
        if time.monotonic() < deadline:
            time.sleep(0.5)
            continue
        ctx.log(f"study {study.study_name} has no parent MLflow run after {grace} s (its "
                "creator died): starting one")
        mine = _start_parent(ctx, study.study_name, experiment_id)
        if PARENT_ATTR not in study.user_attrs:
            study.set_user_attr(PARENT_ATTR, mine)
        time.sleep(2.0)
        if study.user_attrs[PARENT_ATTR] != mine:
            tracking.client().delete_run(mine)


def open_study(ctx: Context, name: str,
               direction: Literal["minimize", "maximize"]) -> tuple[Any, str]:
    """Create the study, its parent MLflow run and its trials, or join the one that exists.

    The creator starts the parent run, queues ``n_trials`` waiting trials (one a slot) and
    then records the parent run on the study, which tells the workers that join that it is
    ready. Returns the study and the MLflow experiment id.
    """
    import optuna

    from mlkube import tracking

    experiment_id = tracking.configure(ctx.state_dir, ctx.config.experiment)
    store = storage(ctx)
    pruner = _pruner(ctx.config.tune.pruner, ctx.config.tune.epochs)
    try:
        study = optuna.create_study(study_name=name, storage=store, direction=direction,
                                    sampler=_sampler(), pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=store, sampler=_sampler(),
                                  pruner=pruner)
        _await_parent(ctx, study, experiment_id)
        check_parent(study, ctx)
        return study, experiment_id
    parent = _start_parent(ctx, name, experiment_id)
    for slot in range(ctx.config.tune.n_trials):  # the queue workers claim trials from
        _queue(study, slot, None)
    study.set_user_attr(PARENT_ATTR, parent)
    return study, experiment_id


def check_parent(study: Any, ctx: Context) -> str:
    """The study's parent MLflow run, refused when the tracking store in use does not know it.

    A study kept in shared storage outlives a change of MLflow store; its trials would then
    nest under a run that does not exist.
    """
    import mlflow

    from mlkube import tracking

    parent = str(study.user_attrs[PARENT_ATTR])
    if not tracking.run_exists(parent):
        raise MlkubeError(
            f"study {study.study_name} in {ctx.config.tune.storage or 'the state directory'} "
            f"belongs to MLflow run {parent}, which the tracking store {mlflow.get_tracking_uri()} "
            "does not know (the study was made with another MLflow store): give tune.storage a "
            "fresh database, pass another --study-name, or delete the study"
        )
    return parent


def suggest(trial: Any, ctx: Context) -> dict[str, Any]:
    """One point of the declared search space."""
    params: dict[str, Any] = {}
    for name, space in ctx.config.tune.search_space.items():
        if space.type == "categorical":
            params[name] = trial.suggest_categorical(name, space.choices)
        elif space.type == "int":
            params[name] = trial.suggest_int(name, int(cast(float, space.low)),
                                             int(cast(float, space.high)), log=space.log)
        else:
            params[name] = trial.suggest_float(name, cast(float, space.low),
                                               cast(float, space.high), log=space.log)
    return params


def objective(ctx: Context, splits: Any, parent_run_id: str, experiment_id: str) -> Any:
    """The trial function: train with the suggested parameters, report every epoch."""
    import mlflow
    import optuna

    from mlkube import model as modelmod
    from mlkube import tracking

    metric, _ = modelmod.metric_for(splits.task)

    def run_trial(trial: optuna.Trial) -> float:
        suggested = suggest(trial, ctx)
        params = configmod.model_params(ctx.config.model, suggested | {"epochs": ctx.config.tune.epochs})
        tags = {"mlflow.parentRunId": parent_run_id, "mlkube.trial": str(trial.number),
                **tracking.lineage_tags("tune-trial", ctx.pipeline_run_id)}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{trial.number}",
                              tags=tags) as run:
            trial.set_user_attr(RUN_ATTR, run.info.run_id)
            mlflow.log_params(suggested)
            trainer = modelmod.Trainer(modelmod.build(splits, params), splits, params)
            history: dict[int, float] = {}
            try:
                while trainer.epoch < params.epochs:
                    trainer.run_epoch()
                    history[trainer.epoch] = trainer.evaluate()
                    trial.report(history[trainer.epoch], trainer.epoch)
                    if trial.should_prune():
                        mlflow.set_tag("mlkube.pruned_at_epoch", str(trainer.epoch))
                        raise optuna.TrialPruned()
            finally:  # one write per trial, not one per epoch
                tracking.log_history(run.info.run_id, f"val_{metric}", history)
            return history[trainer.epoch]

    return run_trial


def _slot(trial: Any) -> int:
    """The study slot a trial fills (a study made before slots: its number, or its retry's)."""
    attrs = trial.system_attrs
    return int(attrs.get(SLOT_ATTR, attrs.get("failed_trial", trial.number)))


def _queue(study: Any, slot: int, failed: Any | None) -> None:
    """Add a waiting trial to ``slot``: a fresh one, or a retry of ``failed``, its parameters kept."""
    import optuna
    from optuna.trial import TrialState

    attrs: dict[str, Any] = {SLOT_ATTR: slot}
    params: dict[str, Any] = {}
    distributions: dict[str, Any] = {}
    if failed is not None:  # as Optuna's RetryHeartbeatStaleTrialCallback records a retry
        history = [*failed.system_attrs.get("retry_history", []), failed.number]
        attrs |= {"failed_trial": history[0], "retry_history": history}
        params, distributions = failed.params, failed.distributions
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=params,
                                              distributions=distributions, system_attrs=attrs))


def _fail_unbeaten(store: Any, study: Any, grace: int) -> None:
    """Fail the RUNNING trials that never had a heartbeat and started over ``grace`` s ago.

    A worker records a trial's first heartbeat before it claims the trial, so these were
    claimed by an earlier mlkube whose worker died; Optuna's ``fail_stale_trials`` looks at
    trials with a heartbeat only and would leave them running for ever.
    """
    import optuna
    import sqlalchemy.orm
    from optuna.storages._rdb import models  # no public API tells which trials have no heartbeat
    from optuna.trial import TrialState

    study_id = store.get_study_id_from_name(study.study_name)
    trials: Any = models.TrialModel  # Optuna's column wrapper is opaque to mypy
    beats: Any = models.TrialHeartbeatModel
    with sqlalchemy.orm.Session(store.engine) as session:
        ids = [row[0] for row in session.query(trials.trial_id).outerjoin(beats)
               .filter(trials.study_id == study_id, trials.state == TrialState.RUNNING,
                       beats.trial_id.is_(None)).all()]
    cutoff = datetime.now() - timedelta(seconds=grace)  # local time, as FrozenTrial has it
    for trial_id in ids:
        started = store.get_trial(trial_id).datetime_start
        if started is None or started > cutoff:
            continue
        try:
            store.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first


def _end_mlflow_run(run_id: str) -> None:
    """Mark the MLflow run of a trial whose worker died KILLED (it would stay RUNNING)."""
    from mlflow.exceptions import MlflowException

    from mlkube import tracking

    try:
        if tracking.client().get_run(run_id).info.status == "RUNNING":
            tracking.client().set_terminated(run_id, "KILLED")
    except MlflowException:
        pass  # not in this tracking store: nothing to mark


def refill(ctx: Context, study: Any) -> list[int]:
    """Fail the trials of dead workers, then queue a trial in every slot left without one.

    A slot needs one when all its trials failed (or a creator that died never queued it):
    a retry with the last failed trial's parameters, up to ``MAX_ATTEMPTS`` attempts.
    Returns the slots given up.
    """
    import optuna
    from optuna.trial import TrialState

    _, grace = heartbeat()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no heartbeat for the grace period: FAIL
    _fail_unbeaten(storage(ctx), study, grace)
    slots: dict[int, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        slots.setdefault(_slot(trial), []).append(trial)
    given_up = []
    for slot in range(ctx.config.tune.n_trials):
        tries = slots.get(slot, [])
        if any(t.state != TrialState.FAIL for t in tries):
            continue
        failed = [t for t in tries if not t.system_attrs.get(DUPLICATE_ATTR)]
        if len(failed) >= MAX_ATTEMPTS:
            given_up.append(slot)
            continue
        last = failed[-1] if failed else None
        _queue(study, slot, last)
        if last is not None:
            if RUN_ATTR in last.user_attrs:
                _end_mlflow_run(str(last.user_attrs[RUN_ATTR]))
            ctx.log(f"trial {last.number} failed; queued again with its parameters "
                    f"(attempt {len(failed) + 1} of {MAX_ATTEMPTS})")
    return given_up


def _pending(study: Any) -> tuple[int, int]:
    """How many trials of the study are running and how many are waiting."""
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(
        deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))]
    return states.count(TrialState.RUNNING), states.count(TrialState.WAITING)


def _superseded(store: Any, study_id: int, trial: Any) -> bool:
    """Whether a trial of the same slot with a lower number has not failed (a second copy)."""
    from optuna.trial import TrialState

    slot = _slot(trial)
    return any(_slot(t) == slot and t.number < trial.number and t.state != TrialState.FAIL
               for t in store.get_all_trials(study_id, deepcopy=False))


def claim(study: Any) -> Any | None:
    """Take one waiting trial of the study for this worker, or None when none is left.

    Taking one is the storage's atomic WAITING -> RUNNING change (a row lock on PostgreSQL),
    so however many workers there are, each trial runs once. The trial's first heartbeat is
    recorded before, so a worker dying just after the claim still leaves a stale trial. A
    second copy of a slot (two workers refilled it at once) is failed unrun, marked
    ``mlkube_duplicate``. (``Study.optimize`` would create a new trial when the queue is empty.)
    """
    import optuna
    from optuna.trial import TrialState

    store = study._storage
    study_id = store.get_study_id_from_name(study.study_name)
    candidates = store.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
    random.shuffle(candidates)  # workers rarely reach for the same trial at once
    for waiting in candidates:
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, waiting.number)
        if hasattr(store, "record_heartbeat"):  # not Optuna's gRPC proxy
            store.record_heartbeat(trial_id)
        try:
            if not store.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if _superseded(store, study_id, waiting):
            store.set_trial_system_attr(trial_id, DUPLICATE_ATTR, True)
            store.set_trial_state_values(trial_id, state=TrialState.FAIL)
            continue
        return optuna.Trial(study, trial_id)
    return None


@contextlib.contextmanager
def _beating(store: Any, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                store.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - the database away a moment: a beat missed
                pass  # the grace period covers several

    thread = threading.Thread(target=beat, name=f"tune-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _tell(study: Any, trial: Any, state: Any, value: float | None = None) -> Any | None:
    """Finish the trial; None when another worker failed it first (its heartbeat was late)."""
    import optuna

    try:
        done = study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return done if done.state == state else None


def work(ctx: Context, study: Any, experiment_id: str, info: Any) -> None:
    """Run the study's trials, one at a time, until none is waiting or running.

    While the trials left run in other workers, this one waits and watches their heartbeats:
    a trial whose worker died is failed and queued again, and run here.
    """
    import optuna
    from optuna.trial import TrialState

    from mlkube import model as modelmod

    splits = modelmod.load_splits(ctx.args.dataset, info)
    run_trial = objective(ctx, splits, study.user_attrs[PARENT_ATTR], experiment_id)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interval, grace = heartbeat()
    store = study._storage
    study_id = store.get_study_id_from_name(study.study_name)
    waiting_logged = False
    while True:
        given_up = refill(ctx, study)
        trial = claim(study)
        if trial is None:
            running, waiting = _pending(study)
            if not running and not waiting:
                break
            if not waiting:
                if not waiting_logged:
                    ctx.log(f"waiting for {running} trial(s) running in other workers (one "
                            f"without a heartbeat for {grace} s is queued again)")
                    waiting_logged = True
                time.sleep(min(interval, 1))  # notices the end within a second
            continue
        waiting_logged = False
        trial_id = store.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            with _beating(store, trial_id, interval):
                value = run_trial(trial)
        except optuna.TrialPruned:
            done = _tell(study, trial, TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:  # a report after it was failed
            done = None
        except BaseException:
            _tell(study, trial, TrialState.FAIL)
            raise
        else:
            done = _tell(study, trial, TrialState.COMPLETE, value)
        if done is None:
            ctx.log(f"trial {trial.number} was failed by another worker (no heartbeat from "
                    f"here for {grace} s) and queued again; its result here is dropped")
            continue
        shown = "" if done.value is None else f" val={done.value:.4f}"
        ctx.log(f"trial {done.number} {done.state.name.lower()}{shown} {done.params}")
    if given_up:
        ctx.log(f"study {study.study_name}: slot(s) {given_up} given up after {MAX_ATTEMPTS} "
                "failed attempts each; the study ends with fewer trials: see the failed "
                "trials' worker logs")


def _log_plots(study: Any, parent_run_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as plots

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_figure(plots.plot_optimization_history(study).figure,
                          "tune/optimization_history.png")
        try:
            with warnings.catch_warnings():  # "importances will be equal" on a handful of trials
                warnings.simplefilter("ignore", UserWarning)
                figure = plots.plot_param_importances(study).figure
            mlflow.log_figure(figure, "tune/param_importances.png")
        except (ValueError, RuntimeError) as exc:  # too few finished trials to rank parameters
            mlflow.set_tag("mlkube.param_importances", f"not computed: {exc}")
        plt.close("all")


CURVE_METRIC = "best_value_by_trial_epochs"
CURVE_TAG = "mlkube.curve_trial_epochs"


def efficiency_curve(trials: list[Any], direction: str) -> list[tuple[int, float]]:
    """Best value so far against trial-epochs spent, trials taken in the order they finished.

    A pruned trial's epochs count as spent; only complete trials can be the best.
    """
    from optuna.trial import TrialState

    done = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
    curve: list[tuple[int, float]] = []
    spent, best = 0, None
    for trial in done:
        spent += len(trial.intermediate_values)
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            value = float(trial.value)
            better = best is None or (value > best if direction == "maximize" else value < best)
            best = value if better else best
        if best is not None:
            curve.append((spent, best))
    return curve


def _log_curve(study: Any, parent_run_id: str, logged_upto: int) -> None:
    """Add the points of the study's efficiency curve not yet on the parent run."""
    from mlkube import tracking

    direction = "maximize" if study.direction.name == "MAXIMIZE" else "minimize"
    new = {spent: best for spent, best in efficiency_curve(study.trials, direction)
           if spent > logged_upto}
    if new:
        tracking.log_history(parent_run_id, CURVE_METRIC, new)
        tracking.client().set_tag(parent_run_id, CURVE_TAG, str(max(new)))


def select(ctx: Context, name: str, plots: bool = True) -> dict[str, Any]:
    """Report the best trial; log plots and the best values to the parent run."""
    import mlflow
    import optuna

    from mlkube import tracking

    tracking.configure(ctx.state_dir, ctx.config.experiment)
    try:
        study = optuna.load_study(study_name=name, storage=storage(ctx))
    except KeyError:
        raise MlkubeError(f"study {name} does not exist in the storage: run the tune workers "
                          "first, with the same --study-name and --storage") from None
    try:
        best = study.best_trial
    except ValueError:
        raise MlkubeError(f"study {name} has no finished trial: every trial was pruned or failed; "
                          "widen the search space or raise tune.epochs") from None
    parent = check_parent(study, ctx)
    tags = mlflow.get_run(parent).data.tags
    logged = tags.get("mlkube.best_trial")
    if plots:  # the curve grows with every trial; each point is logged once
        _log_curve(study, parent, int(tags.get(CURVE_TAG, "0")))
    if plots and logged != str(best.number):  # not again for the same best trial
        _log_plots(study, parent)
        with mlflow.start_run(run_id=parent):
            mlflow.log_metric("best_value", float(cast(float, best.value)))
            mlflow.set_tags({"mlkube.best_params": json.dumps(best.params, sort_keys=True),
                             "mlkube.best_trial": str(best.number)})
    states = [t.state.name.lower() for t in study.trials]
    ctx.log(f"study {name}: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
            + " trial(s)")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"study_name": name, "best_params": best.params, "best_value": best.value,
            "best_run_id": best.user_attrs.get(RUN_ATTR, ""), "trials": len(finished),
            "mlflow_run_id": parent}


def _worker_argv(ctx: Context) -> list[str]:
    """This step's arguments, for a worker of the same study."""
    argv, skip = [], False
    for arg in ctx.argv:
        if skip:
            skip = False
        elif arg in ("--role", "--result-file", "--study-name"):
            skip = True
        else:
            argv.append(arg)
    return [*argv, "--role", "worker", "--study-name", ctx.args.study_name]


def _run_workers(ctx: Context, count: int, study: Any, experiment_id: str, info: Any) -> None:
    """Run ``count`` workers: this process and ``count - 1`` more; wait for all of them."""
    logs = ctx.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Each worker's share of the cores for torch's threads (this process's trainers read it
    # too: model.cpu_threads), unless the user chose; two workers with all the cores each
    # spend their time waiting on each other's threads.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    workers = []
    for index in range(1, count):
        log = (logs / f"tune-worker-{index}.log").open("w")
        workers.append((subprocess.Popen([*SPEC.command(sys.executable), *_worker_argv(ctx)],
                                         stderr=log, text=True), log))
    try:
        work(ctx, study, experiment_id, info)
    except BaseException:
        for process, _ in workers:
            process.terminate()
        raise
    failures = []
    for process, log in workers:
        if process.wait() != 0:
            lines = [x for x in open(log.name).read().splitlines() if x.strip()]
            failures.append(lines[-1] if lines else f"exit status {process.returncode}")
        log.close()
    if not failures:
        return
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if len(finished) < ctx.config.tune.n_trials:
        raise MlkubeError(f"a tune worker failed ({logs}): {failures[0]}")
    ctx.log(f"a tune worker failed ({logs}): {failures[0]}; the others ran its trials again")


def run(ctx: Context) -> dict[str, Any]:
    """Dispatch on ``--role``."""
    from mlkube import data
    from mlkube import model as modelmod

    info = data.load_info(ctx.args.dataset)
    name = study_name(ctx, info.digest)
    role = ctx.args.role or "all"
    if role == "select":
        return select(ctx, name)
    _, direction = modelmod.metric_for(info.task)
    # role all: created once, here, before the workers start
    study, experiment_id = open_study(ctx, name, cast(Literal["minimize", "maximize"], direction))
    if role == "worker":
        work(ctx, study, experiment_id, info)
        return select(ctx, name, plots=False)
    ctx.args.study_name = name
    refill(ctx, study)
    if _pending(study) == (0, 0):
        ctx.log(f"study {name} has no trial left to run")
    else:
        ctx.log(f"study {name}: {ctx.config.tune.n_trials} trials on "
                f"{ctx.config.tune.workers} workers")
        _run_workers(ctx, ctx.config.tune.workers, study, experiment_id, info)
    return select(ctx, name)


def main(argv: list[str] | None = None) -> int:
    """Run the step."""
    return run_step(SPEC, run, argv)


if __name__ == "__main__":
    sys.exit(main())
