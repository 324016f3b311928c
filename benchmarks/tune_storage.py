"""Optuna storage for many tune workers: PostgreSQL directly vs through Optuna's gRPC proxy.

    .venv/bin/python benchmarks/tune_storage.py [--workers 4 16 32] [--trials-per-worker 10]

Starts a real PostgreSQL server on loopback (tests/postgres_server.py: initdb on a temp dir),
then for each worker count and each mode runs a study the way the tune step does: created once
with ``workers x trials-per-worker`` waiting trials, then N worker processes claim trials
(``mlkube.steps._tune_slots.claim``), suggest three parameters, report 5 intermediate values
(each followed by ``should_prune``, as the step does every epoch) and tell the result. The
"training" is a sleep (``--trial-seconds``), so what is measured is the storage: the time each
trial spends in Optuna calls, trials per second, the most connections PostgreSQL saw, and
errors. "direct": every worker has its own RDBStorage (a pool of 1 + 1 connections, the
step's engine options). "grpc": one ``optuna.storages.run_grpc_proxy_server`` process holds
the RDBStorage, and the workers use ``GrpcStorageProxy``. Workers import and connect first,
then start together.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

PARAMS = ("learning_rate", "weight_decay", "dropout")


def _storage(mode: str, url: str, port: int):  # type: ignore[no-untyped-def]
    from optuna.storages import GrpcStorageProxy, RDBStorage

    from mlkube.steps.tune import engine_options

    if mode == "grpc":
        return GrpcStorageProxy(host="127.0.0.1", port=port)
    return RDBStorage(url, engine_kwargs=engine_options(url))


def worker(mode: str, url: str, port: int, name: str, trial_seconds: float,
           start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    import optuna

    from mlkube.steps._tune_slots import claim

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=_storage(mode, url, port))
    start.wait()
    overhead, errors, done = [], 0, 0
    while True:
        began = time.perf_counter()
        try:
            trial = claim(study)
            if trial is None:
                break
            for param in PARAMS:
                trial.suggest_float(param, 1e-5, 1e-1, log=True)
            for step in range(5):
                time.sleep(trial_seconds / 5)
                trial.report(float(step), step)
                trial.should_prune()
            study.tell(trial, 1.0)
            done += 1
        except Exception as exc:  # counted: what a worker pod would crash on
            errors += 1
            print(f"{mode} worker error: {exc!r}"[:300], file=sys.stderr)
            if errors > 5:
                break
        overhead.append(time.perf_counter() - began - trial_seconds)
    out.put({"done": done, "errors": errors, "overhead": overhead})


def _grpc_server(url: str, port: int) -> None:
    from optuna.storages import RDBStorage, run_grpc_proxy_server

    from mlkube.steps.tune import engine_options

    run_grpc_proxy_server(RDBStorage(url, engine_kwargs=engine_options(url)), host="127.0.0.1",
                          port=port)


def measure(server, mode: str, workers: int, per_worker: int, trial_seconds: float) -> dict:  # type: ignore[no-untyped-def,type-arg]
    import optuna

    from mlkube_testing import free_port

    url = server.url(server.database(f"bench_{mode}"))
    study = optuna.create_study(study_name="bench", storage=url, direction="maximize")
    for _ in range(workers * per_worker):
        study.enqueue_trial({})
    port = free_port()
    context = multiprocessing.get_context("spawn")
    proxy = None
    if mode == "grpc":
        proxy = context.Process(target=_grpc_server, args=(url, port), daemon=True)
        proxy.start()
        time.sleep(3)
    start, out = context.Event(), context.Queue()
    procs = [context.Process(target=worker, args=(mode, url, port, "bench", trial_seconds, start,
                                                  out)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    database = url.rsplit("/", 1)[1]
    time.sleep(2 + workers * 0.4)  # let every worker import and connect
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], server.connections(database))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.perf_counter()
    start.set()
    reports = [out.get() for _ in procs]
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join()
    stop.set()
    watcher.join()
    if proxy is not None:
        proxy.terminate()
    overhead = [o for r in reports for o in r["overhead"]]
    trials = optuna.load_study(study_name="bench", storage=url).trials
    numbers = sorted(t.number for t in trials)
    return {"mode": mode, "workers": workers, "trials": sum(r["done"] for r in reports),
            "expected": workers * per_worker, "unique_trials": len(set(numbers)),
            "errors": sum(r["errors"] for r in reports), "wall_s": round(wall, 2),
            "trials_per_s": round(sum(r["done"] for r in reports) / wall, 1),
            "overhead_ms_median": round(1000 * statistics.median(overhead), 1),
            "overhead_ms_p95": round(1000 * sorted(overhead)[int(0.95 * (len(overhead) - 1))], 1),
            "peak_connections": peak[0]}


def main() -> None:
    """Print one row per worker count and mode."""
    from postgres_server import Postgres

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--trials-per-worker", type=int, default=10)
    parser.add_argument("--trial-seconds", type=float, default=0.25)
    args = parser.parse_args()
    server = Postgres().start()
    rows = []
    print("| workers | storage | trials (expected) | errors | wall | trials/s | Optuna time a"
          " trial, median / p95 | peak PostgreSQL connections |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for workers in args.workers:
            for mode in ("direct", "grpc"):
                row = measure(server, mode, workers, args.trials_per_worker, args.trial_seconds)
                rows.append(row)
                print(f"| {workers} | {mode} | {row['trials']} ({row['expected']}) | "
                      f"{row['errors']} | {row['wall_s']} s | {row['trials_per_s']} | "
                      f"{row['overhead_ms_median']} / {row['overhead_ms_p95']} ms | "
                      f"{row['peak_connections']} |", flush=True)
    finally:
        server.stop()
    target = Path(__file__).parent / "results" / "tune_storage.json"
    target.write_text(json.dumps(rows, indent=1) + "\n")
    by = {(r["workers"], r["mode"]): r for r in rows}
    most = max(args.workers)
    direct, grpc = by[(most, "direct")], by[(most, "grpc")]
    from ratios import record  # benchmarks/ratios.py
    record("tune_storage", f"Optuna on PostgreSQL, {most} workers: trials/s direct / through "
           "the gRPC proxy", direct["trials_per_s"] / grpc["trials_per_s"],
           "no lost or duplicate trial, no error",
           all(r["errors"] == 0 and r["trials"] == r["expected"] == r["unique_trials"]
               for r in rows),
           f"peak connections {direct['peak_connections']} direct, "
           f"{grpc['peak_connections']} proxied", "benchmarks/tune_storage.py")


if __name__ == "__main__":
    main()
