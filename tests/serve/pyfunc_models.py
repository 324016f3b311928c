"""A pyfunc model logged from code (``mlflow.pyfunc.log_model(python_model=<this file>)``).

Its behaviour comes from the model config it is logged with:

- ``{"kind": "nan"}``: predicts NaN for every row (a model that must be refused);
- ``{"kind": "gated", "gate": PATH}``: loading waits until the file PATH exists (so a test can
  watch the server before the model is verified), then predicts two class probabilities;
- ``{"kind": "yes"}``: predicts the second of two classes for every row;
- ``{"kind": "wide"}``: predicts three finite columns, whatever its signature says;
- ``{"kind": "small"}``: right for batches of up to 2 rows (its input example's size); for 3
  to 8 rows it answers only 2 rows, and it raises for more (a model that fails on the batch
  sizes clients send).

Any kind also takes ``"delay": SECONDS`` (each prediction sleeps that long first: a slow model)
and ``"fail_rows": N`` (a prediction of exactly N rows raises: a model that passes its
verification, then fails live requests of that size).
"""

from __future__ import annotations

import os
import time
from typing import Any

import mlflow
import numpy as np


class ConfiguredModel(mlflow.pyfunc.PythonModel):
    """See the module docstring. (MLflow warns that predict has no type hints: they would
    change the input it is given, and the warning cannot be filtered from outside.)"""

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        self.kind = config.get("kind", "nan")
        self.delay = float(config.get("delay", 0.0))
        self.fail_rows = int(config.get("fail_rows", -1))
        gate = config.get("gate")
        deadline = time.monotonic() + 300
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        rows = np.asarray(model_input, dtype=np.float32)
        if self.delay:
            time.sleep(self.delay)
        if len(rows) == self.fail_rows:
            raise ValueError(f"this model fails on {len(rows)} rows")
        if self.kind == "small" and len(rows) > 8:
            raise ValueError(f"this model takes at most 8 rows, not {len(rows)}")
        if self.kind == "small":
            rows = rows[:2]
        if self.kind == "yes":  # the second class for every row
            return np.tile(np.asarray([[0.0, 1.0]], dtype=np.float32), (len(rows), 1))
        if self.kind == "nan":
            return np.full((len(rows), 2), np.nan, dtype=np.float32)
        yes = 1.0 / (1.0 + np.exp(-(rows[:, 0] - 15.0)))
        if self.kind == "wide":
            return np.stack([1.0 - yes, yes, yes], axis=1).astype(np.float32)
        return np.stack([1.0 - yes, yes], axis=1).astype(np.float32)


mlflow.models.set_model(ConfiguredModel())
