"""CPU training: the train step against the bare PyTorch loop a user would write (issue 10).

    .venv/bin/python benchmarks/train_vs_loop.py [--rows 200000] [--features 64]
        [--hidden 256,256] [--batch-size 1024] [--epochs 5] [--threads N] [--no-step]

The anchor is a hand-written loop: the same MLP (Linear/ReLU layers of ``--hidden``, cross
entropy), ``torch.optim.AdamW(fused=True)``, the same
batch size and learning rate, the inputs standardised once and held as tensors in memory, a
``randperm`` shuffle each epoch, no evaluation, no logging, no checkpoint. Measured against it
in the same process, on the same synthetic rows (70% train, 15% validation: prepare-data's
default split), with torch's default thread count:

- ``trainer``: ``mlkube.model.Trainer.run_epoch`` alone (what every tuning trial runs);
- ``train step epoch``: the train step's own epoch in the middle of a run (what
  ``mlkube.steps.train._fit`` runs each epoch but the last): ``run_epoch``, then ``_epoch_end``:
  ``evaluate`` on the step's fixed sample of the validation split (``EPOCH_EVAL_ROWS``),
  ``mlflow.log_metrics`` to a real MLflow SQLite store in a temporary directory, and
  ``save_checkpoint``;

Each runs one warm-up epoch, then ``--epochs`` timed epochs, interleaved round robin (the
order rotates each round) so that load on a shared machine hits all alike; the figures are the
median and the fastest epoch, as training rows/s. Then ``evaluate`` (the whole split, as the
last epoch runs it, and the sample), ``log_metrics`` and ``save_checkpoint`` are timed alone
(median of several calls). Unless ``--no-step``, the same rows are also written
as Parquet, prepared with ``python -m mlkube.steps.prepare_data`` and trained with ``python -m
mlkube.steps.train`` (1 + ``--epochs`` epochs): its wall time, peak RSS, and steady-state
rows/s from the timestamps of its per-epoch metrics in MLflow (one period = one whole epoch of
the step). Prints a JSON report and a one-line table; writes
``benchmarks/results/train_vs_loop.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
EXPERIMENT = "train-vs-loop"


def synthetic(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linearly separable-ish binary task (as in train_gpu.py)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=(features,)).astype(np.float32)
    y = (x @ w + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    return x, y


def split(x: np.ndarray, y: np.ndarray) -> Any:
    """70% train, 15% validation (the test 15% is not used), as prepare-data splits by default."""
    from mlkube.model import Splits

    n_train, n_val = int(len(x) * 0.70), int(len(x) * 0.15)
    return Splits(x_train=x[:n_train], y_train=y[:n_train],
                  x_val=x[n_train:n_train + n_val], y_val=y[n_train:n_train + n_val],
                  task="classification", n_classes=2)


class BareLoop:
    """The anchor: what a user writes by hand for the same network, on ``x``'s device.

    ``nn.Sequential`` of Linear/ReLU layers, ``AdamW(fused=True)``, a ``randperm`` on the
    device each epoch, bf16 autocast on CUDA (as the Trainer), no host synchronisation inside
    an epoch; ``compiled``: the network under ``torch.compile``. The inputs are used as given
    (standardise them first).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, hidden: list[int], batch_size: int,
                 lr: float, *, outputs: int = 2, compiled: bool = False, seed: int = 0) -> None:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = x.shape[1]
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, outputs))
        self.model = nn.Sequential(*layers).to(x.device)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.model) if compiled else self.model)  # type: ignore[assignment]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, fused=True)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.autocast = x.device.type == "cuda"

    def run_epoch(self) -> None:
        self.model.train()
        order = torch.randperm(len(self.x), device=self.x.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            with torch.autocast(device_type=self.x.device.type, dtype=torch.bfloat16,
                                enabled=self.autocast):
                logits = self.forward(self.x[idx]).float()
            loss = nn.functional.cross_entropy(logits, self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy on ``x``/``y``."""
        self.model.eval()
        with torch.no_grad():
            return float((self.model(x).argmax(-1) == y).float().mean())


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], repeat: int, device: torch.device | None = None) -> float:
    """The median of ``repeat`` calls of ``fn``, in ms, the device's work included."""
    times = []
    for _ in range(repeat):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: kB


def in_process(splits: Any, params: Any, epochs: int, tmp: Path) -> dict[str, Any]:
    """(a) bare loop, (b) Trainer.run_epoch, (c) the train step's per-epoch loop, round robin."""
    import mlflow

    from mlkube import spec, tracking
    from mlkube.model import Trainer, build, metric_for
    from mlkube.steps._main import build_context
    from mlkube.steps.train import EPOCH_EVAL_ROWS, _epoch, _epoch_end, save_checkpoint

    state = tmp / "state"
    os.environ["MLKUBE_STATE_DIR"] = str(state)
    os.environ["MLFLOW_TRACKING_URI"] = tracking.embedded_tracking_uri(state)
    ctx = build_context(spec.TRAIN, ["--dataset", str(tmp / "unused")])
    experiment_id = tracking.configure(ctx.state_dir, EXPERIMENT)
    checkpoints = tmp / "checkpoints"
    checkpoints.mkdir()
    metric, _ = metric_for(splits.task)

    mean, std = splits.x_train.mean(axis=0), splits.x_train.std(axis=0)
    std[std == 0] = 1.0

    def standardised(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x - mean) / std)

    bare = BareLoop(standardised(splits.x_train), torch.from_numpy(splits.y_train),
                    params.hidden_sizes, params.batch_size, params.learning_rate,
                    outputs=splits.n_classes, seed=params.seed)
    trainer = Trainer(build(splits, params), splits, params, on=torch.device("cpu"))
    step_trainer = Trainer(build(splits, params), splits, params, on=torch.device("cpu"))
    last: dict[str, float] = {}
    log = io.StringIO()  # the step's "[train] epoch ..." lines

    # An epoch in the middle of a run (its metric on the step's sample of the validation
    # split); the last epoch's whole-split evaluation is timed alone below.
    running = replace(params, epochs=10**6)

    parts: dict[str, list[float]] = {"run_epoch": [], "epoch_end": []}  # of the step's epoch

    def step_epoch() -> None:
        with contextlib.redirect_stdout(log):
            started = time.perf_counter()
            loss = _epoch(step_trainer)
            ended = time.perf_counter()
            last["step"] = _epoch_end(ctx, step_trainer, checkpoints, running, metric, loss)
            parts["run_epoch"].append(ended - started)
            parts["epoch_end"].append(time.perf_counter() - ended)

    runs: dict[str, Callable[[], Any]] = {"bare_loop": bare.run_epoch,
                                          "trainer": trainer.run_epoch,
                                          "train_step_epoch": step_epoch}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    with mlflow.start_run(experiment_id=experiment_id, run_name="train-vs-loop"):
        for round_ in range(1 + epochs):  # round 0 is the warm-up
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                runs[name]()
                if round_:
                    seconds[name].append(time.perf_counter() - started)
        # The per-epoch extras of the step, alone.
        counter = iter(range(10_000, 20_000))
        evaluate_ms = median_ms(step_trainer.evaluate, 5)
        sample_ms = median_ms(lambda: step_trainer.evaluate(EPOCH_EVAL_ROWS), 5)
        log_ms = median_ms(lambda: mlflow.log_metrics(
            {"train_loss": 0.1, f"val_{metric}": 0.9}, step=next(counter)), 10)
        checkpoint_ms = median_ms(lambda: save_checkpoint(
            checkpoints, {**step_trainer.state(), "epoch": next(counter)}), 10)
    checkpoint_bytes = max(p.stat().st_size for p in checkpoints.glob("epoch-*.pt"))
    rows = len(splits.x_train)
    report: dict[str, Any] = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        report[name] = {"epoch_s": [round(v, 3) for v in values],
                        "median_epoch_s": round(median, 3), "rows_per_s": round(rows / median),
                        "rows_per_s_best_epoch": round(rows / min(values))}
    report["bare_loop"]["optimizer"] = "AdamW (fused)"
    report["bare_loop"][f"val_{metric}"] = round(bare.evaluate(
        standardised(splits.x_val), torch.from_numpy(splits.y_val)), 4)
    kind = "fused" if trainer.optimizer.defaults.get("fused") else "torch's default"
    report["trainer"]["optimizer"] = f"AdamW ({kind})"
    report["trainer"][f"val_{metric}"] = round(trainer.evaluate(), 4)
    report["train_step_epoch"][f"val_{metric}"] = round(last["step"], 4)
    report["per_epoch_ms"] = {
        "evaluate": evaluate_ms, f"evaluate_{EPOCH_EVAL_ROWS}_rows": sample_ms,
        "mlflow_log_metrics": log_ms, "save_checkpoint": checkpoint_ms,
        "checkpoint_bytes": checkpoint_bytes,
        # the step's epoch in two parts, in the interleaved rounds (the warm-up's left out)
        "step_run_epoch_median": round(statistics.median(parts["run_epoch"][1:]) * 1000, 1),
        "step_epoch_end_median": round(statistics.median(parts["epoch_end"][1:]) * 1000, 1),
        "train_step_epoch_minus_trainer": round(
            (report["train_step_epoch"]["median_epoch_s"] - report["trainer"]["median_epoch_s"])
            * 1000, 1)}
    report["peak_rss_mb"] = _peak_rss_mb()
    return report


def _child(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a step program; its wall seconds and its own peak RSS (MB).

    The peak is the child's ``VmHWM``, sampled every 20 ms: ``ru_maxrss`` from ``wait4`` would
    start from this (large) process's RSS, which a spawned child inherits as its high-water mark.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    status, peak_kb = Path(f"/proc/{proc.pid}/status"), 0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} exited {proc.returncode}")
    return round(wall, 2), round(peak_kb / 1024, 1)


def step_program(x: np.ndarray, y: np.ndarray, params: Any, epochs: int,
                 tmp: Path) -> dict[str, Any]:
    """(d) prepare-data on the same rows, then the whole train step program."""
    import pandas as pd
    from mlflow import MlflowClient

    from mlkube import data

    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame["target"] = y
    table = tmp / "rows.parquet"
    frame.to_parquet(table, index=False)
    state = tmp / "step-state"
    uri = f"sqlite:///{state / 'mlflow.db'}"
    env = {**os.environ, "MLKUBE_STATE_DIR": str(state), "MLFLOW_TRACKING_URI": uri}
    config = tmp / "config.json"
    config.write_text(json.dumps({
        "experiment": EXPERIMENT, "data": {"path": str(table)},
        "model": {"hidden_sizes": params.hidden_sizes, "batch_size": params.batch_size,
                  "learning_rate": params.learning_rate, "epochs": 1 + epochs}}))
    prepared = tmp / "prepare.json"
    prepare_s, prepare_rss = _child([sys.executable, "-m", "mlkube.steps.prepare_data",
                                     "--config", str(config), "--result-file", str(prepared)],
                                    env)
    dataset = json.loads(prepared.read_text())["dataset_uri"]
    trained = tmp / "train.json"
    train_s, train_rss = _child([sys.executable, "-m", "mlkube.steps.train", "--config",
                                 str(config), "--dataset", dataset, "--result-file", str(trained)],
                                env)
    result = json.loads(trained.read_text())
    history = sorted(MlflowClient(tracking_uri=uri).get_metric_history(
        result["run_id"], f"val_{result['metric']}"), key=lambda m: m.step)
    periods = [(b.timestamp - a.timestamp) / 1000 for a, b in zip(history, history[1:],
                                                                   strict=False)]
    rows = data.load_info(dataset).rows["train"]
    median = statistics.median(periods)
    return {"prepare_data_wall_s": prepare_s, "prepare_data_peak_rss_mb": prepare_rss,
            "train_wall_s": train_s, "train_peak_rss_mb": train_rss, "train_rows": rows,
            "epochs": result["epochs"], "epoch_s_from_metric_timestamps": periods,
            "median_epoch_s": round(median, 3), "rows_per_s": round(rows / median),
            "rows_per_s_best_epoch": round(rows / min(periods)),
            f"val_{result['metric']}": round(result["value"], 4)}


def main() -> None:
    from mlkube.config import ModelConfig, hidden_sizes

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after one warm-up")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-step", action="store_true",
                        help="skip (d), the train step program end to end")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = ModelConfig(hidden_sizes=hidden_sizes(args.hidden), batch_size=args.batch_size,
                         learning_rate=args.learning_rate, epochs=1 + args.epochs)
    x, y = synthetic(args.rows, args.features)
    splits = split(x, y)
    report: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "rows": args.rows,
        "train_rows": len(splits.x_train), "validation_rows": len(splits.x_val),
        "features": args.features, "hidden_sizes": params.hidden_sizes,
        "batch_size": params.batch_size, "learning_rate": params.learning_rate,
        "timed_epochs": args.epochs, "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as name:
        report |= in_process(splits, params, args.epochs, Path(name))
    if not args.no_step:
        with tempfile.TemporaryDirectory() as name:
            report["train_step_program"] = step_program(x, y, params, args.epochs, Path(name))
    report["load_average_at_end"] = os.getloadavg()[0]
    measured = [n for n in ("trainer", "train_step_epoch", "train_step_program") if n in report]
    for key, figure in (("ratio_to_bare_loop", "rows_per_s"),
                        ("ratio_to_bare_loop_best_epochs", "rows_per_s_best_epoch")):
        report[key] = {name: round(report[name][figure] / report["bare_loop"][figure], 3)
                       for name in measured}
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_vs_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    ratios = report["ratio_to_bare_loop"]
    cells = [f"{report['bare_loop']['rows_per_s']:,}",
             f"{report['trainer']['rows_per_s']:,} ({ratios['trainer']:.2f}×)",
             f"{report['train_step_epoch']['rows_per_s']:,} ({ratios['train_step_epoch']:.2f}×)"]
    if "train_step_program" in report:
        cells.append(f"{report['train_step_program']['rows_per_s']:,} "
                     f"({ratios['train_step_program']:.2f}×)")
    ms = report["per_epoch_ms"]
    step_rss = report.get("train_step_program", {}).get("train_peak_rss_mb", "-")
    print("| bare loop rows/s | trainer | train step epoch | train step program | "
          "log_metrics ms | checkpoint ms | peak RSS MB (in-process / train step) |")
    print(f"| {' | '.join(cells + ['-'] * (4 - len(cells)))} | {ms['mlflow_log_metrics']} "
          f"| {ms['save_checkpoint']} | {report['peak_rss_mb']} / {step_rss} |")
    from ratios import record  # benchmarks/ratios.py
    record("train_cpu", "CPU training: the train step's epoch (evaluate, log, checkpoint) / a "
           "bare loop", ratios["train_step_epoch"], "≥ 0.95× (the GPU target, held to on CPU)",
           ratios["train_step_epoch"] >= 0.95,
           f"Trainer alone {ratios['trainer']:.2f}×; whole step program "
           f"{ratios.get('train_step_program', float('nan')):.2f}×; "
           f"{report['bare_loop']['rows_per_s']:,} bare rows/s", "benchmarks/train_vs_loop.py")


if __name__ == "__main__":
    main()
