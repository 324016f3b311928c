"""On a CUDA GPU (skipped without one): training uses it, with bf16 autocast, and resumes.

    .venv/bin/python -m pytest -m gpu tests/gpu
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlkube.config import ModelConfig
from mlkube.model import Splits, Stopped, Trainer, build

pytestmark = pytest.mark.gpu


def _splits() -> Splits:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 16)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    return Splits(x_train=x[400:], y_train=y[400:], x_val=x[:400], y_val=y[:400],
                  task="classification", n_classes=2)


def test_trains_on_cuda_and_resumes_to_the_same_weights() -> None:
    params = ModelConfig(hidden_sizes=[64], epochs=4, batch_size=128)
    splits = _splits()
    straight = Trainer(build(splits, params), splits, params)
    assert straight.device.type == "cuda"
    assert next(straight.model.parameters()).is_cuda
    for _ in range(4):
        straight.run_epoch()
    assert straight.evaluate() > 0.9
    first = Trainer(build(splits, params), splits, params)
    first.run_epoch()
    first.run_epoch()
    resumed = Trainer(build(splits, params), splits, params)
    resumed.load_state(first.state())
    resumed.run_epoch()
    resumed.run_epoch()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_stopped_mid_epoch_on_cuda_resumes_to_the_same_weights() -> None:
    params = ModelConfig(hidden_sizes=[64], epochs=2, batch_size=128)  # 29 batches an epoch
    splits = _splits()
    straight = Trainer(build(splits, params), splits, params)
    losses = [straight.run_epoch() for _ in range(2)]
    first = Trainer(build(splits, params), splits, params)
    first.run_epoch()
    step, taken = first.optimizer.step, 0

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal taken
        out = step(*args, **kwargs)
        taken += 1
        if taken == 10:
            first.request_stop()  # as SIGTERM would, in the train step
        return out

    first.optimizer.step = counted  # type: ignore[method-assign]
    with pytest.raises(Stopped):
        first.run_epoch()
    assert (first.epoch, first.batch) == (1, 10)
    resumed = Trainer(build(splits, params), splits, params)
    resumed.load_state(first.state())
    assert resumed.run_epoch() == pytest.approx(losses[1], abs=1e-5)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
