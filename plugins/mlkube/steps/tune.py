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
finished (complete or pruned) trials: the study's slots, heartbeats and retries are
:mod:`mlkube.steps._tune_slots`.

The study's creator records the parent MLflow run on the study once it has queued the
trials; a worker that finds no parent run after the grace period (the creator died) starts
one and records it itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any, Literal, cast

from mlkube import config as configmod
from mlkube import spec
from mlkube.errors import MlkubeError, database_unusable
from mlkube.steps import _tune_slots as slots
from mlkube.steps._main import Context, run_step

SPEC = spec.TUNE
PARENT_ATTR = "mlflow_parent_run_id"



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
    interval, grace = slots.heartbeat()
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

    _, grace = slots.heartbeat()
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
        slots.queue(study, slot, None)
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
            trial.set_user_attr(slots.RUN_ATTR, run.info.run_id)
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
    interval, grace = slots.heartbeat()
    store = study._storage
    study_id = store.get_study_id_from_name(study.study_name)
    waiting_logged = False
    while True:
        given_up = slots.refill(ctx, study, storage(ctx))
        trial = slots.claim(study)
        if trial is None:
            running, waiting = slots.pending(study)
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
            with slots.beating(store, trial_id, interval):
                value = run_trial(trial)
        except optuna.TrialPruned:
            done = slots.tell(study, trial, TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:  # a report after it was failed
            done = None
        except BaseException:
            slots.tell(study, trial, TrialState.FAIL)
            raise
        else:
            done = slots.tell(study, trial, TrialState.COMPLETE, value)
        if done is None:
            ctx.log(f"trial {trial.number} was failed by another worker (no heartbeat from "
                    f"here for {grace} s) and queued again; its result here is dropped")
            continue
        shown = "" if done.value is None else f" val={done.value:.4f}"
        ctx.log(f"trial {done.number} {done.state.name.lower()}{shown} {done.params}")
    if given_up:
        ctx.log(f"study {study.study_name}: slot(s) {given_up} given up after "
                f"{slots.MAX_ATTEMPTS} failed attempts each; the study ends with fewer trials: see the failed "
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
            "best_run_id": best.user_attrs.get(slots.RUN_ATTR, ""), "trials": len(finished),
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
    slots.refill(ctx, study, storage(ctx))
    if slots.pending(study) == (0, 0):
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
