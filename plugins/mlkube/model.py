"""The model: a PyTorch MLP for tabular data, and the loop that trains it.

Used by the train step (with checkpoints) and by every tuning trial (without). CUDA with
bf16 autocast when a GPU is present, CPU otherwise. The network normalises its own inputs
(and, for regression, de-normalises its output), so a served model takes raw feature rows.

A trainer asked to stop (:meth:`Trainer.request_stop`, which the train step calls on SIGTERM)
finishes the batch it is on and raises :class:`Stopped`; its :meth:`Trainer.state` then holds
the position within the epoch, and a trainer loaded from it continues with the next batch,
to the same weights and epoch loss as one never stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mlkube.config import ModelConfig


def metric_for(task: str) -> tuple[str, str]:
    """The metric a task is judged by, and its direction."""
    return ("accuracy", "maximize") if task == "classification" else ("rmse", "minimize")


def is_better(a: float, b: float, direction: str, margin: float = 0.0) -> bool:
    """Whether ``a`` beats ``b`` by more than ``margin``."""
    return a - b > margin if direction == "maximize" else b - a > margin


class MLP(nn.Module):
    """Input normalisation, ReLU hidden layers, a linear head.

    ``forward`` returns class probabilities (classification) or the prediction in the
    target's units (regression); ``logits`` is the raw head used by the loss.
    """

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, *, n_features: int, hidden: list[int], n_outputs: int, task: str,
                 x_mean: np.ndarray, x_std: np.ndarray, y_mean: float = 0.0, y_std: float = 1.0):
        super().__init__()
        self.task = task
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(y_std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head's raw output on normalised inputs."""
        return self.net((x - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities or predictions in the target's units."""
        out = self.logits(x).float()
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        return (out * self.y_std + self.y_mean).squeeze(-1)


@dataclass(kw_only=True)
class Splits:
    """Arrays of the train and validation splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: str
    n_classes: int


@dataclass(frozen=True, kw_only=True)
class Distributed:
    """This process's place in a torchrun job (one process per GPU); world 1 = not distributed."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0 logs, checkpoints and writes the result; the others only train."""
        return self.rank == 0


def load_splits(dataset_uri: str, info: Any) -> Splits:
    """The train and validation splits of a prepared dataset (``info``: its DatasetInfo)."""
    from mlkube import data

    x_train, y_train = data.load_arrays(dataset_uri, "train")
    x_val, y_val = data.load_arrays(dataset_uri, "validation")
    return Splits(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
                  task=info.task, n_classes=len(info.classes or []))


def init_distributed() -> Distributed:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, else Gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    dist = Distributed(rank=int(os.environ["RANK"]), world=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist


def device(local_rank: int = 0) -> torch.device:
    """CUDA (this process's GPU) when present, else CPU."""
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


# A CPU trainer whose batch multiplies fewer than this many values in its widest layer runs on
# one thread: its kernels take microseconds, and handing each to a second thread (a fork and a
# join per operation) costs more than it saves; with another process on the other core it
# costs far more, since every join waits for a thread the kernel has descheduled. Measured on
# the 2-core machine (benchmarks/README.md, "Threads of a CPU trainer"): the demo's network
# (64 rows x 64 x 32, 0.26M) ran a 15-epoch tuning trial in 0.1 s of CPU on one thread and in
# 3.0-4.6 s on two, beside other work.
ONE_THREAD_BELOW = 4_000_000
_TORCH_THREADS = torch.get_num_threads()  # torch's own choice (OMP_NUM_THREADS, else the cores)


def cpu_threads(model: nn.Module, batch_size: int) -> int:
    """The intra-op threads a CPU trainer of ``model`` uses: one for a small network (see
    :data:`ONE_THREAD_BELOW`), else ``OMP_NUM_THREADS`` as it is now (a parent may set it for
    its share of the cores after torch was imported), else torch's own choice."""
    widest = max((p.numel() for p in model.parameters() if p.dim() == 2), default=0)
    if batch_size * widest < ONE_THREAD_BELOW:
        return 1
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(given) if given.isdigit() and int(given) > 0 else _TORCH_THREADS


def build(splits: Splits, params: ModelConfig) -> MLP:
    """A freshly initialised network sized for ``splits``."""
    torch.manual_seed(params.seed)
    std = splits.x_train.std(axis=0)
    std[std == 0] = 1.0
    y_mean, y_std = 0.0, 1.0
    if splits.task == "regression":
        y_mean = float(splits.y_train.mean())
        y_std = float(splits.y_train.std()) or 1.0
    return MLP(n_features=splits.x_train.shape[1], hidden=params.hidden_sizes,
               n_outputs=splits.n_classes if splits.task == "classification" else 1,
               task=splits.task, x_mean=splits.x_train.mean(axis=0), x_std=std,
               y_mean=y_mean, y_std=y_std)


class Stopped(Exception):
    """:meth:`Trainer.run_epoch` stopped after a batch, as asked; ``state()`` holds where."""

    def __init__(self, epoch: int, batch: int):
        super().__init__(f"stopped at epoch {epoch} batch {batch}")
        self.epoch = epoch  # the epoch in progress, counted from 1
        self.batch = batch  # its batches done


class Trainer:
    """Runs epochs over in-memory tensors; its state is what a checkpoint holds.

    Under torchrun (``dist.world > 1``) every process holds the data, takes its own shard of
    each epoch's seeded order, and DistributedDataParallel averages the gradients.

    The only randomness is each epoch's order, drawn from a generator seeded by (seed, epoch)
    (the network has no dropout), so a state needs no RNG state to continue exactly: the
    order is drawn again and the epoch goes on from the batch the state names.
    """

    # Under torchrun, the processes agree on a stop (one all_reduce of a flag, which waits for
    # the device) every this many batches: a stop comes at most this many batches late.
    STOP_CHECK_EVERY = 16

    def __init__(self, model: MLP, splits: Splits, params: ModelConfig,
                 on: torch.device | None = None, dist: Distributed | None = None):
        self.dist = dist or Distributed()
        self.device = on or device(self.dist.local_rank)
        self.model = model.to(self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(model, params.batch_size))
        # Training runs the layers on inputs standardised once, below, rather than each batch
        # in MLP.logits: the same float operations on the same values, so the same logits bit
        # for bit, without an epoch's worth of subtractions and divisions (about 1.5% of a CPU
        # epoch of the 64-256-256-2 network in benchmarks/train_vs_loop.py).
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model.net
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model.net, device_ids=ids)
        self.params = params
        self.splits = splits
        # Fused AdamW (one kernel for all parameters' updates) on CPU and CUDA: on the 2-core
        # machine the trainer ran 3-7% faster with it than with the per-parameter default
        # (benchmarks/train_vs_loop.py), with the same determinism (the resume guarantee).
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate,
                                           weight_decay=params.weight_decay,
                                           fused=self.device.type in ("cpu", "cuda"))
        self.x = torch.tensor(splits.x_train, device=self.device)
        self.x.sub_(self.model.x_mean).div_(self.model.x_std)  # in place: no second copy
        self.y = torch.tensor(splits.y_train, device=self.device)
        self.epoch = 0  # epochs completed
        self.batch = 0  # batches done of the epoch in progress (non-zero only when stopped)
        self._loss_sum: torch.Tensor | None = None  # that epoch's loss sum over those batches
        self._loss_sums: torch.Tensor | None = None  # every process's (what a state holds)
        self._stop_requested = False
        self._val: torch.Tensor | None = None  # the validation inputs on the device
        self._val_sample: np.ndarray | None = None  # evaluate(rows)'s rows of them

    def request_stop(self) -> None:
        """Stop after the current batch (a plain flag: safe to call from a signal handler)."""
        self._stop_requested = True

    def stop_agreed(self) -> bool:
        """Whether to stop: this process was asked to, or (under torchrun) any process was.

        With ``dist.world > 1`` this is a collective: every process calls it at the same point.
        """
        if self.dist.world == 1:
            return self._stop_requested
        flag = torch.tensor(float(self._stop_requested), device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _stop_now(self) -> bool:
        """After a batch: stop here? Free in one process (a Python flag, no device sync)."""
        if self.dist.world == 1:
            return self._stop_requested
        return self.batch % self.STOP_CHECK_EVERY == 0 and self.stop_agreed()

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            logits = self.forward(x).float()
        if self.model.task == "classification":
            return nn.functional.cross_entropy(logits, y)
        target = (y - self.model.y_mean) / self.model.y_std
        return nn.functional.mse_loss(logits.squeeze(-1), target)

    def run_epoch(self) -> float:
        """One pass over the training data in a seeded order; returns the mean loss.

        A trainer loaded from a stopped state goes on from the batch after the stop. Asked to
        stop, it finishes the current batch and raises :class:`Stopped` (never after the
        epoch's last batch: that epoch ends as usual and the caller checks between epochs).
        """
        self.model.train()
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(
            self.params.seed * 100_003 + self.epoch)).to(self.device)
        if self.dist.world > 1:  # equal shards, so every process runs as many steps
            usable = len(order) // self.dist.world * self.dist.world
            order = order[self.dist.rank:usable:self.dist.world]
        size = self.params.batch_size
        total = torch.zeros((), device=self.device)
        if self.batch and self._loss_sum is not None:  # going on from a stop
            total = self._loss_sum
        for start in range(self.batch * size, len(order), size):
            idx = order[start:start + size]
            loss = self._loss(self.x[idx], self.y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(idx)
            self.batch += 1
            if start + size < len(order) and self._stop_now():
                self._loss_sum, self._loss_sums = total, total.detach().clone().reshape(1)
                if self.dist.world > 1:  # every process's sum, for the state rank 0 saves
                    sums = [torch.zeros_like(total) for _ in range(self.dist.world)]
                    torch.distributed.all_gather(sums, total)
                    self._loss_sums = torch.stack(sums)
                raise Stopped(self.epoch + 1, self.batch)
        self.epoch += 1
        self.batch = 0
        self._loss_sum = self._loss_sums = None
        count = torch.tensor(float(len(order)), device=self.device)
        if self.dist.world > 1:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        return float(total / count)

    def evaluate(self, rows: int | None = None) -> float:
        """The task's metric on the validation split, or on a fixed sample of at most ``rows``
        of it (the same rows every call, drawn once with the trainer's seed; the whole split
        when it is no larger). The split is moved to the device once, not every call."""
        if self._val is None:
            self._val = torch.as_tensor(self.splits.x_val, device=self.device)
        x, y = self._val, self.splits.y_val
        if rows is not None and rows < len(y):
            if self._val_sample is None or len(self._val_sample) != rows:
                picked = np.random.default_rng(self.params.seed).choice(len(y), rows,
                                                                         replace=False)
                self._val_sample = np.sort(picked)
            x, y = x[torch.as_tensor(self._val_sample, device=self.device)], y[self._val_sample]
        return evaluate(self.model, x, y, self.splits.task)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this left off.

        Stopped mid-epoch, also the position: ``batch`` (done of epoch ``epoch + 1``), the
        epoch's loss sum so far (one per process, each added up as if never stopped), and the
        world size and batch size the position is counted in.
        """
        state: dict[str, Any] = {"epoch": self.epoch, "batch": self.batch,
                                 "model": self.model.state_dict(),
                                 "optimizer": self.optimizer.state_dict()}
        if self.batch:
            state |= {"loss_sum": self._loss_sums, "world": self.dist.world,
                      "batch_size": self.params.batch_size}
        return state

    def cannot_continue(self, state: Mapping[str, Any]) -> str | None:
        """Why this trainer cannot go on from a mid-epoch ``state``, or ``None`` if it can."""
        if not state.get("batch"):
            return None
        if state["world"] != self.dist.world:
            return f"it was stopped mid-epoch by {state['world']} processes, not {self.dist.world}"
        if state["batch_size"] != self.params.batch_size:
            return (f"it was stopped mid-epoch with batch size {state['batch_size']}, "
                    f"not {self.params.batch_size}")
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` (see :meth:`cannot_continue` for a mid-epoch one)."""
        reason = self.cannot_continue(state)
        if reason is not None:
            raise ValueError(f"cannot continue from this state: {reason}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.batch = int(state.get("batch", 0))
        self._loss_sum = self._loss_sums = None
        if self.batch:  # each process goes on from its own sum
            self._loss_sums = torch.as_tensor(state["loss_sum"]).to(self.device).reshape(-1)
            self._loss_sum = self._loss_sums[self.dist.rank].clone()


def score(predictions: np.ndarray, y: np.ndarray, task: str) -> float:
    """Accuracy of probabilities (classification) or RMSE of predictions (regression)."""
    from mlkube.evaluation import metric

    predictions = np.asarray(predictions)
    return metric(predictions.argmax(axis=-1) if task == "classification" else predictions, y,
                  task)


# Rows a forward pass in ``evaluate``: blocks whose activations stay in cache. On the 2-core
# machine, 30,000 validation rows of a 64-256-256-2 MLP took 33 ms in blocks of 4,096 and 55 ms
# in one pass (benchmarks/train_vs_loop.py measures the epoch this is part of).
EVAL_ROWS = 4096


def evaluate(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray, task: str) -> float:
    """The task's metric of ``model`` on ``x``/``y`` (forward passes of ``EVAL_ROWS`` rows)."""
    model.eval()
    param = next(model.parameters())
    with torch.no_grad():
        inputs = torch.as_tensor(x, device=param.device)
        out = torch.cat([model(block) for block in inputs.split(EVAL_ROWS)])
    return score(out.float().cpu().numpy(), y, task)
