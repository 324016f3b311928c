"""The tune step's trials, safe from dying workers: study slots, heartbeats, retries.

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
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from mlkube.errors import MlkubeError
from mlkube.steps._main import Context

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


def _slot(trial: Any) -> int:
    """The study slot a trial fills (a study made before slots: its number, or its retry's)."""
    attrs = trial.system_attrs
    return int(attrs.get(SLOT_ATTR, attrs.get("failed_trial", trial.number)))


def queue(study: Any, slot: int, failed: Any | None) -> None:
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


def refill(ctx: Context, study: Any, store: Any) -> list[int]:
    """Fail the trials of dead workers, then queue a trial in every slot left without one.

    A slot needs one when all its trials failed (or a creator that died never queued it):
    a retry with the last failed trial's parameters, up to ``MAX_ATTEMPTS`` attempts.
    ``store``: the study's RDB storage (:func:`mlkube.steps.tune.storage`). Returns the slots
    given up.
    """
    import optuna
    from optuna.trial import TrialState

    _, grace = heartbeat()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no heartbeat for the grace period: FAIL
    _fail_unbeaten(store, study, grace)
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
        queue(study, slot, last)
        if last is not None:
            if RUN_ATTR in last.user_attrs:
                _end_mlflow_run(str(last.user_attrs[RUN_ATTR]))
            ctx.log(f"trial {last.number} failed; queued again with its parameters "
                    f"(attempt {len(failed) + 1} of {MAX_ATTEMPTS})")
    return given_up


def pending(study: Any) -> tuple[int, int]:
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
def beating(store: Any, trial_id: int, interval: int) -> Iterator[None]:
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


def tell(study: Any, trial: Any, state: Any, value: float | None = None) -> Any | None:
    """Finish the trial; None when another worker failed it first (its heartbeat was late)."""
    import optuna

    try:
        done = study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return done if done.state == state else None
