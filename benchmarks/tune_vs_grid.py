"""Tuning efficiency: the tune step (TPE + pruning, default settings) against an exhaustive grid.

    .venv/bin/python benchmarks/tune_vs_grid.py [--points 4] [--tasks demo diabetes]

The anchor is the approach of one Job per grid point: every point of a grid over the same
search space (``tune.search_space`` of the default config: ``--points`` values per numeric
dimension, log-spaced where the dimension is, every categorical choice), each trained for
``tune.epochs`` with the same trainer and scored on the same validation split. The tune step
runs as users run it (``python -m mlkube.steps.tune``, default config). Reported per task: the
grid's best validation metric and its trial-epochs, the tuner's best and the trial-epochs it
spent, the gap between the two bests and the share of the grid's trial-epochs; and a plot of
both curves (best value so far against trial-epochs) in benchmarks/results/. Target: within
1% of the grid's best with at most 40% of its trial-epochs, in at least 9 of 10 runs.

    .venv/bin/python benchmarks/tune_vs_grid.py --repeats 10

runs the tune step 10 times on each task against one grid (TPE is not seeded: every run draws
its own trials) and reports the distribution: how many runs met the target, the gap's and the
trial-epochs share's min/median/max. The grid's result is deterministic (the trainer is seeded
by ``model.seed``), so it is kept in ``benchmarks/results/tune_vs_grid_grid.json``, keyed by the
dataset's digest, the model and tune sections and ``--points``; ``--fresh-grid`` trains it again.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
GRID_CACHE = RESULTS / "tune_vs_grid_grid.json"
TARGET_GAP, TARGET_SHARE, TARGET_RUNS = 0.01, 0.40, 0.9  # within 1%, ≤ 0.40×, 9 runs of 10


def grid_points(space: dict[str, Any], points: int) -> list[dict[str, Any]]:
    """Every combination: ``points`` values per numeric dimension, all categorical choices."""
    import numpy as np

    axes: dict[str, list[Any]] = {}
    for name, dim in space.items():
        if dim.type == "categorical":
            axes[name] = list(dim.choices)
        elif dim.log:
            values = np.geomspace(dim.low, dim.high, points)
            axes[name] = [int(round(v)) for v in values] if dim.type == "int" else values.tolist()
        else:
            values = np.linspace(dim.low, dim.high, points)
            axes[name] = [int(round(v)) for v in values] if dim.type == "int" else values.tolist()
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _grid_key(digest: str, config: Any, points: int) -> str:
    """What the grid's result depends on: the data, the model and tune sections, the points."""
    setup = {"data": digest, "model": asdict(config.model), "points": points,
             "tune": {k: v for k, v in asdict(config.tune).items()
                      if k in ("epochs", "search_space")}}
    return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:16]


def _cached_grid(dataset: str, config: Any, points: int, task: str, fresh: bool
                 ) -> tuple[list[tuple[int, float]], str]:
    """The grid's curve and direction, from the cache when it holds this setup's."""
    from mlkube import data

    key = _grid_key(data.load_info(dataset).digest, config, points)
    cache: dict[str, Any] = json.loads(GRID_CACHE.read_text()) if GRID_CACHE.exists() else {}
    if not fresh and key in cache:
        entry = cache[key]
        print(f"{task}: the grid from {GRID_CACHE.name} ({key})", flush=True)
        return [(int(spent), float(best)) for spent, best in entry["curve"]], entry["direction"]
    curve, direction = _grid(dataset, config, points)
    cache[key] = {"task": task, "points": points, "direction": direction, "curve": curve}
    RESULTS.mkdir(exist_ok=True)
    GRID_CACHE.write_text(json.dumps(cache, indent=1) + "\n")
    return curve, direction


def _grid(dataset: str, config: Any, points: int) -> tuple[list[tuple[int, float]], str]:
    """Train every grid point; the curve of best-so-far against trial-epochs, and the direction."""
    from mlkube import config as configmod
    from mlkube import data
    from mlkube import model as modelmod

    info = data.load_info(dataset)
    splits = modelmod.load_splits(dataset, info)
    _, direction = modelmod.metric_for(info.task)
    curve: list[tuple[int, float]] = []
    spent, best = 0, None
    for point in grid_points(config.tune.search_space, points):
        params = configmod.model_params(config.model, point | {"epochs": config.tune.epochs})
        trainer = modelmod.Trainer(modelmod.build(splits, params), splits, params)
        while trainer.epoch < params.epochs:
            trainer.run_epoch()
        value = trainer.evaluate()
        spent += params.epochs
        if math.isfinite(value) and (best is None or modelmod.is_better(value, best, direction)):
            best = value
        curve.append((spent, best if best is not None else float("nan")))
    return curve, direction


def _dataset(task: str, tmp: Path, env: dict[str, str]) -> tuple[str, Path]:
    """prepare-data on the task's data; returns the dataset URI and the config file."""
    config = tmp / f"{task}.yaml"
    if task == "demo":
        config.write_text("{}\n")
    else:  # scikit-learn ships the diabetes data: nothing is downloaded
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(as_frame=True).frame
        path = tmp / "diabetes.csv"
        frame.to_csv(path, index=False)
        config.write_text(json.dumps({"data": {"path": str(path), "task": "regression"}}))
    out = tmp / f"{task}-prepare.json"
    subprocess.run([sys.executable, "-m", "mlkube.steps.prepare_data", "--config", str(config),
                    "--result-file", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
    return str(json.loads(out.read_text())["dataset_uri"]), config


def _tune(dataset: str, config: Path, tmp: Path, env: dict[str, str],
          direction: str, n_trials: int | None = None, study: str | None = None
          ) -> list[tuple[int, float]]:
    import optuna

    from mlkube.steps.tune import efficiency_curve

    out = tmp / "tune.json"
    extra = [*(["--n-trials", str(n_trials)] if n_trials else []),
             *(["--study-name", study] if study else [])]
    subprocess.run([sys.executable, "-m", "mlkube.steps.tune", "--config", str(config),
                    "--dataset", dataset, "--result-file", str(out), *extra], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    name = json.loads(out.read_text())["study_name"]
    loaded = optuna.load_study(study_name=name,
                               storage=f"sqlite:///{Path(env['MLKUBE_STATE_DIR']) / 'optuna.db'}")
    return efficiency_curve(loaded.trials, direction)


def _plot(task: str, grid: list[tuple[int, float]], tune: list[tuple[int, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.step(*zip(*grid, strict=True), where="post", label="grid (one job per point)")
    axes.step(*zip(*tune, strict=True), where="post", label="tune step (TPE)")
    axes.set_xlabel("trial-epochs spent")
    axes.set_ylabel("best validation " + ("accuracy" if task == "demo" else "RMSE"))
    axes.legend()
    axes.set_title(f"{task}: best value against trial-epochs")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tune_vs_grid_{task}.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _distribution(runs: list[tuple[float, float]]) -> dict[str, Any]:
    """Over the runs of one task and budget: how many met the target, the gaps, the shares."""
    met = [gap <= TARGET_GAP and share <= TARGET_SHARE for gap, share in runs]
    gaps, shares = sorted(g for g, _ in runs), sorted(s for _, s in runs)
    return {"runs": len(runs), "met": sum(met),
            "target_met": sum(met) >= TARGET_RUNS * len(runs),
            "gap": (gaps[0], statistics.median(gaps), gaps[-1]),
            "share": (shares[0], statistics.median(shares), shares[-1])}


def main() -> None:
    """One row per run; with several runs, one distribution row per task and budget."""
    from mlkube import config as configmod

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--tasks", nargs="+", default=["demo", "diabetes"])
    parser.add_argument("--n-trials", type=int, nargs="+", default=[None],
                        help="tune budgets to compare (default: the config's n_trials)")
    parser.add_argument("--repeats", "--repeat", type=int, default=1, dest="repeats",
                        help="tune runs per budget against one grid (TPE is not seeded: runs "
                             "differ); 10 for the target's 9 of 10")
    parser.add_argument("--fresh-grid", action="store_true",
                        help=f"train the grid again instead of reading {GRID_CACHE.name}")
    args = parser.parse_args()
    rows = []
    outcomes: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (gap, share) each run
    for task in args.tasks:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            env = {**os.environ, "MLKUBE_STATE_DIR": str(tmp / "state"),
                   "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'state' / 'mlflow.db'}"}
            os.environ.update(env)
            dataset, config_file = _dataset(task, tmp, env)
            config = configmod.load(config_file)
            grid, direction = _cached_grid(dataset, config, args.points, task, args.fresh_grid)
            for n_trials in args.n_trials:
                for run in range(args.repeats):
                    tune = _tune(dataset, config_file, tmp, env, direction, n_trials,
                                 f"bench-{n_trials}-{run}")
                    grid_best, tune_best = grid[-1][1], tune[-1][1]
                    # how much worse than the grid's best (0 when the tuner found better)
                    worse = (grid_best - tune_best if direction == "maximize"
                             else tune_best - grid_best)
                    gap = max(0.0, worse) / abs(grid_best)
                    rows.append(
                        f"| {task} | {n_trials or config.tune.n_trials} | {run + 1} | "
                        f"{grid_best:.4f} | {grid[-1][0]} | {tune_best:.4f} | {tune[-1][0]} | "
                        f"{gap:.2%} | {tune[-1][0] / grid[-1][0]:.0%} |")
                    print(rows[-1], flush=True)
                    outcomes.setdefault((task, n_trials or config.tune.n_trials), []).append(
                        (gap, tune[-1][0] / grid[-1][0]))
                print(f"plot of the last run: {_plot(task, grid, tune)}")
    print("| task | n_trials | run | grid best | grid trial-epochs | tune best | tune trial-epochs "
          "| worse than grid | share of grid's epochs |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| task | n_trials | runs within 1% at ≤ 0.40× | worse than grid: min / median / max "
          "| share of grid's trial-epochs: min / median / max | target (9 of 10) met |")
    print("|---|---|---|---|---|---|")
    from ratios import record  # benchmarks/ratios.py

    command = "benchmarks/tune_vs_grid.py" + (f" --repeats {args.repeats}"
                                              if args.repeats > 1 else "")
    for (task, n_trials), runs in outcomes.items():
        dist = _distribution(runs)
        gaps = " / ".join(f"{g:.2%}" for g in dist["gap"])
        shares = " / ".join(f"{s:.3f}" for s in dist["share"])
        print(f"| {task} | {n_trials} | {dist['met']} of {dist['runs']} | {gaps} | {shares} | "
              f"{'yes' if dist['target_met'] else 'no'} |")
        record(f"tune_vs_grid_{task}_{n_trials}", f"tune ({n_trials} trials) on {task}: "
               "trial-epochs / the exhaustive grid's (median of the runs)", dist["share"][1],
               "within 1% of the grid's best with ≤ 0.40× its trial-epochs, in ≥ 9 of 10 runs",
               dist["target_met"],
               f"{dist['met']} of {dist['runs']} runs met; worse than grid min/median/max "
               f"{gaps}; trial-epochs {shares}×", command)


if __name__ == "__main__":
    main()
