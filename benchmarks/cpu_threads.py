"""Threads of a CPU trainer: one intra-op thread against torch's default, by network size.

    .venv/bin/python benchmarks/cpu_threads.py [--rounds 3] [--steps 40]

For each (hidden width, batch size) below, the same MLP (30 features -> width -> width -> 2,
cross entropy, fused AdamW, as the Trainer runs it) takes ``--steps`` optimizer steps with
``torch.set_num_threads(1)`` and with torch's default thread count, interleaved over
``--rounds`` rounds; the figure is the fastest round's milliseconds a step. The widest layer's
multiply-adds a batch (rows x width x width) is what :func:`mlkube.model.cpu_threads` compares
with ``ONE_THREAD_BELOW``. The load average before and after is printed: with another process
on the cores, every fork and join of a parallel kernel waits for a descheduled thread.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

SIZES = ((64, 64), (128, 128), (128, 512), (256, 256), (256, 1024))


def step_ms(width: int, batch: int, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, 2))
    optimizer = torch.optim.AdamW(net.parameters(), fused=True)
    x, y = torch.randn(batch * steps, 30), torch.randint(0, 2, (batch * steps,))
    started = time.perf_counter()
    for i in range(steps):
        rows = slice(i * batch, (i + 1) * batch)
        loss = nn.functional.cross_entropy(net(x[rows]), y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    default = torch.get_num_threads()
    print(f"torch {torch.__version__}, default threads {default}, load average before "
          f"{os.getloadavg()[0]:.2f}")
    best: dict[tuple[int, int, int], float] = {}
    for _ in range(args.rounds):
        for width, batch in SIZES:
            for threads in (1, default):
                key = (width, batch, threads)
                best[key] = min(best.get(key, float("inf")),
                                step_ms(width, batch, threads, args.steps))
    print("| width | batch | widest layer a batch | 1 thread | "
          f"{default} threads | 1 thread / {default} |")
    print("|---|---|---|---|---|---|")
    for width, batch in SIZES:
        one, many = best[(width, batch, 1)], best[(width, batch, default)]
        print(f"| {width} | {batch} | {batch * width * width / 1e6:.2f}M | {one:.3f} ms | "
              f"{many:.3f} ms | {one / many:.2f}× |")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
