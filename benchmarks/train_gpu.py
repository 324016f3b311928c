"""GPU training benchmark: the mlkube MLP trainer on CUDA (bf16 autocast) against the CPU.

Needs only torch, numpy and PyYAML (it runs on a GPU machine without MLflow or Optuna):

    PYTHONPATH=plugins python benchmarks/train_gpu.py [--rows 200000] [--epochs 3]

The anchor is the same trainer on this machine's CPU in the same run; the figure of merit is
the ratio of training throughput (rows/s), GPU over CPU. It also checks that a checkpoint taken
on the GPU resumes to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mlkube.config import ModelConfig
from mlkube.model import Splits, Trainer, build


def synthetic(rows: int, features: int, seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=(features,)).astype(np.float32)
    y = (x @ w + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    n_val = rows // 10
    return Splits(x_train=x[n_val:], y_train=y[n_val:], x_val=x[:n_val], y_val=y[:n_val],
                  task="classification", n_classes=2)


def throughput(splits: Splits, params: ModelConfig, device: str, epochs: int) -> dict[str, float]:
    trainer = Trainer(build(splits, params), splits, params, on=torch.device(device))
    trainer.run_epoch()  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        loss = trainer.run_epoch()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rows = len(splits.x_train) * epochs
    return {"seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "final_loss": round(loss, 4), "val_accuracy": round(trainer.evaluate(), 4)}


def resume_matches(splits: Splits, params: ModelConfig, device: str) -> bool:
    """Train 4 epochs straight, and 2 + checkpoint + 2 in a new trainer: same weights."""
    straight = Trainer(build(splits, params), splits, params)
    for _ in range(4):
        straight.run_epoch()
    first = Trainer(build(splits, params), splits, params)
    for _ in range(2):
        first.run_epoch()
    state = first.state()
    second = Trainer(build(splits, params), splits, params)
    second.load_state(state)
    for _ in range(2):
        second.run_epoch()
    a = torch.cat([p.flatten() for p in straight.model.parameters()])
    b = torch.cat([p.flatten() for p in second.model.parameters()])
    return bool(torch.allclose(a, b, atol=1e-5)) and second.device.type == device


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    splits = synthetic(args.rows, args.features)
    params = ModelConfig(hidden_sizes=[512, 512, 256], batch_size=args.batch_size,
                         learning_rate=1e-3, epochs=args.epochs)
    report: dict[str, object] = {"torch": torch.__version__, "rows": args.rows,
                                 "features": args.features, "batch_size": args.batch_size,
                                 "hidden_sizes": params.hidden_sizes,
                                 "cpu_threads": torch.get_num_threads()}
    report["cpu"] = throughput(splits, params, "cpu", args.epochs)
    if torch.cuda.is_available():
        report["gpu_name"] = torch.cuda.get_device_name(0)
        report["cuda_bf16"] = throughput(splits, params, "cuda", args.epochs)
        report["speedup_gpu_over_cpu"] = round(
            report["cuda_bf16"]["rows_per_s"] / report["cpu"]["rows_per_s"], 1)  # type: ignore[index]
        report["resume_on_gpu_matches_straight_run"] = resume_matches(
            synthetic(20_000, args.features, seed=1), params, "cuda")
    print(json.dumps(report, indent=2))
    if torch.cuda.is_available():
        from ratios import record  # benchmarks/ratios.py
        record(f"train_gpu_b{args.batch_size}", f"Trainer on {report['gpu_name']} (bf16) / the "
               f"same trainer on this machine's CPU, batch {args.batch_size}",
               report["speedup_gpu_over_cpu"], "none (the bare-loop anchor is issue 10's)", None,  # type: ignore[arg-type]
               f"resume matches: {report['resume_on_gpu_matches_straight_run']}",
               f"PYTHONPATH=plugins python benchmarks/train_gpu.py --batch-size {args.batch_size}")


if __name__ == "__main__":
    main()
