"""GPU training: the train step's epoch against a bare hand-written loop (issue 10, item 1).

    PYTHONPATH=plugins python benchmarks/train_gpu_vs_loop.py          # the reference config
    PYTHONPATH=plugins python benchmarks/train_gpu_vs_loop.py --device cpu --rows 8192 \\
        --features 16 --hidden 64,64 --batch-size 512 --matmul 512    # a small run anywhere

Needs only torch, numpy and PyYAML (the GPU machine has no MLflow, Optuna or pyarrow). The
reference configuration is issue 10's: an MLP of 256 input features and 3 hidden layers of
4,096, batch 8,192, bf16 autocast, synthetic data resident on the device. Measured one after
the other in one process, on one device:

- ``peak``: a bf16 (CUDA) or float32 (CPU) ``--matmul``³ matrix product, TFLOP/s;
- ``bare_eager``: the loop a user writes (``train_vs_loop.BareLoop``): ``nn.Sequential`` of
  the same layers, autocast, ``AdamW(fused=True)``, a ``randperm`` on the device each epoch,
  no host synchronisation inside the epoch;
- ``bare_compiled``: the same model under ``torch.compile`` (unless ``--no-compile``);
- ``trainer``: ``mlkube.model.Trainer.run_epoch``, what the train step runs each epoch; and
  what the step adds each epoch: ``Trainer.evaluate`` on the validation split and
  ``steps.train.save_checkpoint`` (atomic, fsync'd), timed alone. ``step_epoch`` is the three
  added up. MLflow's ``log_metrics`` is not measured here (no MLflow on the GPU machine):
  benchmarks/train_vs_loop.py measures it on CPU (about 4 ms an epoch, on the host).

Each runs one warm-up epoch (compilation, allocator), then ``--epochs`` timed epochs, with the
device synchronised only at the ends of the timing. FLOP a sample = 6 × the multiply-adds of
the linear layers (forward and backward). Reported: samples/s, TFLOP/s, each figure over
``bare_compiled`` and over ``peak``, each measurement's device memory peak, the checkpoint's
cost and size. Writes ``train_gpu_vs_loop_<device>.json`` in ``--results`` (default
``benchmarks/results``); on CUDA it also records the ratios for ``benchmarks/ratios.py``.
Target (issue 10): ``step_epoch`` ≥ 0.95× ``bare_compiled``, i.e. ≥ 0.65 of ``peak``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from train_vs_loop import BareLoop, median_ms, sync, synthetic

RESULTS = Path(__file__).parent / "results"
NOT_ON_THE_GPU_MACHINE = ("mlflow", "optuna", "pyarrow", "pandas", "sklearn")


def memory_peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul_tflops(device: torch.device, n: int, repeat: int = 20) -> float:
    """The device's dense matrix-product rate: the peak the training figures are put against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync(device)
    return 2 * n**3 * repeat / (time.perf_counter() - started) / 1e12


def flop_per_sample(features: int, hidden: list[int], outputs: int) -> int:
    widths = [features, *hidden, outputs]
    return 6 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))


def timed_epochs(epoch: Callable[[], Any], device: torch.device, epochs: int) -> dict[str, Any]:
    """One warm-up epoch, then ``epochs`` timed ones; seconds an epoch and the memory peak."""
    reset_memory(device)
    epoch()
    sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        epoch()
    sync(device)
    return {"epoch_s": (time.perf_counter() - started) / epochs,
            "memory_peak_mb": memory_peak_mb(device)}


def main() -> None:
    from mlkube.config import ModelConfig, hidden_sizes
    from mlkube.model import Splits, Trainer, build
    from mlkube.steps.train import save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=1_048_576, help="training rows")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", default="4096,4096,4096")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after a warm-up")
    parser.add_argument("--matmul", type=int, default=8192, help="size of the peak's product")
    parser.add_argument("--no-compile", action="store_true", help="skip bare_compiled")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    device = torch.device(args.device)
    hidden = hidden_sizes(args.hidden)
    rows = args.rows // args.batch_size * args.batch_size  # full batches: same steps for all
    if rows == 0:
        raise SystemExit(f"--rows {args.rows} is less than one batch of {args.batch_size}")
    val_rows = max(args.batch_size, rows // 10)
    x, y = synthetic(rows + val_rows, args.features)
    splits = Splits(x_train=x[:rows], y_train=y[:rows], x_val=x[rows:], y_val=y[rows:],
                    task="classification", n_classes=2)
    x_dev, y_dev = torch.from_numpy(x[:rows]).to(device), torch.from_numpy(y[:rows]).to(device)
    sample_flop = flop_per_sample(args.features, hidden, 2)
    peak = matmul_tflops(device, args.matmul)  # unrounded: a small CPU run rounds to 0.0
    report: dict[str, Any] = {
        "torch": torch.__version__, "python": sys.version.split()[0], "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "rows": rows, "validation_rows": val_rows, "features": args.features, "hidden": hidden,
        "batch_size": args.batch_size, "epochs": args.epochs, "flop_per_sample": sample_flop,
        "peak_tflops": float(f"{peak:.3g}"),
        "peak_matmul": f"{args.matmul}^3 {'bf16' if device.type == 'cuda' else 'float32'}"}

    def figures(seconds: float) -> dict[str, Any]:
        rate = rows / seconds
        return {"epoch_s": round(seconds, 4), "samples_per_s": round(rate),
                "tflops": float(f"{rate * sample_flop / 1e12:.3g}")}

    runs: list[tuple[str, bool]] = [("bare_eager", False)]
    if not args.no_compile:
        runs.append(("bare_compiled", True))
    for name, compiled in runs:
        bare = BareLoop(x_dev, y_dev, hidden, args.batch_size, 1e-3, compiled=compiled)
        measured = timed_epochs(bare.run_epoch, device, args.epochs)
        report[name] = figures(measured["epoch_s"]) | {"memory_peak_mb": measured["memory_peak_mb"]}
        del bare
    params = ModelConfig(hidden_sizes=hidden, batch_size=args.batch_size, learning_rate=1e-3,
                         epochs=1 + args.epochs)
    trainer = Trainer(build(splits, params), splits, params, on=device)
    measured = timed_epochs(trainer.run_epoch, device, args.epochs)
    report["trainer"] = figures(measured["epoch_s"]) | {"memory_peak_mb": measured["memory_peak_mb"]}
    evaluate_ms = median_ms(trainer.evaluate, 3, device)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_ms = median_ms(lambda: save_checkpoint(Path(tmp), trainer.state()), 3, device)
        checkpoint_bytes = max(p.stat().st_size for p in Path(tmp).glob("*.pt"))
    report["step_extras_ms"] = {"evaluate": evaluate_ms, "save_checkpoint": checkpoint_ms,
                                "checkpoint_bytes": checkpoint_bytes}
    step_s = measured["epoch_s"] + (evaluate_ms + checkpoint_ms) / 1000
    report["step_epoch"] = figures(step_s)
    report["val_accuracy"] = round(trainer.evaluate(), 4)
    anchor = "bare_compiled" if "bare_compiled" in report else "bare_eager"
    names = [n for n in ("bare_eager", "bare_compiled", "trainer", "step_epoch") if n in report]
    report[f"ratio_to_{anchor}"] = {
        n: round(report[n]["samples_per_s"] / report[anchor]["samples_per_s"], 3) for n in names}
    report["ratio_to_peak"] = {
        n: round(report[n]["samples_per_s"] * sample_flop / 1e12 / peak, 3) for n in names}
    report["imported"] = sorted(m for m in NOT_ON_THE_GPU_MACHINE if m in sys.modules)
    print(json.dumps(report, indent=2))
    args.results.mkdir(exist_ok=True)
    (args.results / f"train_gpu_vs_loop_{device.type}.json").write_text(
        json.dumps(report, indent=2) + "\n")
    if device.type == "cuda":
        from ratios import record  # benchmarks/ratios.py

        ratio, of_peak = report[f"ratio_to_{anchor}"]["step_epoch"], report["ratio_to_peak"]
        record("train_gpu_vs_loop", f"GPU training on {report['device_name']}: the train "
               f"step's epoch / a bare {anchor.removeprefix('bare_')} loop", ratio,
               "≥ 0.95× the bare compiled loop, ≥ 0.65 of the matmul peak",
               anchor == "bare_compiled" and ratio >= 0.95 and of_peak["step_epoch"] >= 0.65,
               f"{of_peak['step_epoch']:.2f} of peak ({report['peak_tflops']} TFLOP/s); "
               f"checkpoint {checkpoint_ms} ms; memory {report['trainer']['memory_peak_mb']} MB",
               "PYTHONPATH=plugins python benchmarks/train_gpu_vs_loop.py")


if __name__ == "__main__":
    main()
