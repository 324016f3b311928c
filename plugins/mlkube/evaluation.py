"""Score any registered model on a prepared split, through its own MLflow pyfunc.

The champion may be a model mlkube did not train (another flavor, another signature). It is
fed what its signature asks for (a tensor, or named columns) and its output is read for what it
is: class probabilities, class labels, or regression values. Whatever cannot be read that way
is an error line, never a silent wrong number; predictions that are not all finite are an
error of their own (:class:`NonFinite`), so the register step never promotes such a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mlkube.errors import MlkubeError, first_line

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from mlkube.data import DatasetInfo


class Unloadable(MlkubeError):
    """The model cannot be loaded at all (its artifacts gone, or not an MLflow model)."""


class NonFinite(MlkubeError):
    """The model's predictions on the split hold NaN or ±inf."""


def metric(predicted: np.ndarray, y: np.ndarray, task: str) -> float:
    """Accuracy of class indices (classification) or RMSE of values (regression)."""
    import numpy as np

    if task == "classification":
        return float(np.mean(predicted == y))
    return float(math.sqrt(np.mean((predicted.reshape(-1) - y) ** 2)))


def _inputs(model: Any, x: np.ndarray, frame: pd.DataFrame, who: str) -> Any:
    """What the model's signature asks for: the float tensor, or the named feature columns."""
    schema = model.metadata.get_input_schema()
    if schema is None:
        return frame
    if schema.is_tensor_spec():
        shape = schema.inputs[0].shape
        if len(shape) != 2 or shape[-1] not in (-1, x.shape[1]):
            raise MlkubeError(
                f"{who} takes tensors of shape {list(shape)}, but the dataset has "
                f"{x.shape[1]} features: it was trained on other data; register under another "
                "registry.model_name, or remove its 'champion' alias"
            )
        return x
    names = schema.input_names()
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise MlkubeError(
            f"{who} expects input columns {missing[:5]} that the dataset lacks: it was trained "
            "on other data; register under another registry.model_name, or remove its "
            "'champion' alias"
        )
    return frame[names]


def _finite(values: np.ndarray, who: str) -> np.ndarray:
    import numpy as np

    bad = ~np.isfinite(values)
    if bad.any():
        rows = int(bad.reshape(len(values), -1).any(axis=1).sum())
        raise NonFinite(f"{who} predicts non-finite values (NaN or inf) for {rows} of "
                        f"{len(values)} test rows")
    return values


def _as_array(output: Any) -> np.ndarray:
    """A pyfunc's output (array, DataFrame, Series, list) as an array; one column as a vector."""
    import numpy as np

    values = np.asarray(output.to_numpy() if hasattr(output, "to_numpy") else output)
    return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def class_indices(output: Any, info: DatasetInfo, who: str) -> np.ndarray:
    """Class indices (positions in ``info.classes``) from probabilities or labels."""
    import numpy as np

    values = _as_array(output)
    classes = list(info.classes or [])
    if values.ndim == 2:
        if values.shape[1] != len(classes) or not np.issubdtype(values.dtype, np.number):
            raise MlkubeError(
                f"{who} returns {values.shape[1]} columns per row, but the dataset has "
                f"{len(classes)} classes: it is not a classifier of this target"
            )
        return np.asarray(_finite(values.astype("float64"), who).argmax(axis=1))
    if values.ndim != 1:
        raise MlkubeError(f"{who} returns an array of shape {values.shape}; expected one label "
                          "or one row of class probabilities per input row")
    if np.issubdtype(values.dtype, np.number):
        _finite(values.astype("float64"), who)
    index = {c: i for i, c in enumerate(classes)}
    labels = [v.item() if hasattr(v, "item") else v for v in values]
    unknown = sorted({str(v) for v in labels if v not in index})
    if unknown:
        raise MlkubeError(f"{who} predicts labels {unknown[:5]} that are not classes of the "
                          f"dataset ({classes[:10]}): it is not a classifier of this target")
    return np.array([index[v] for v in labels])


def regression_values(output: Any, who: str) -> np.ndarray:
    """One finite value per row."""
    import numpy as np

    values = _as_array(output)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
        raise MlkubeError(f"{who} returns {values.dtype} values of shape {values.shape}; a "
                          "regression model returns one number per row")
    return _finite(values.astype("float64"), who)


def score(model_uri: str, dataset_uri: str, info: DatasetInfo, who: str,
          split: str = "test") -> float:
    """The task's metric of the model at ``model_uri`` on ``split``; ``who`` names it in errors.

    Raises:
        NonFinite: some prediction is NaN or infinite.
        MlkubeError: the model cannot be loaded, does not fit the dataset, or fails to predict.
    """
    import mlflow

    from mlkube import data

    x, y, frame = data.load_split(dataset_uri, split)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # any load failure means: not servable
        raise Unloadable(f"{who} ({model_uri}) cannot be loaded: {first_line(exc)}") from None
    inputs = _inputs(model, x, frame, who)
    try:
        output = model.predict(inputs)
    except Exception as exc:  # its own code failed on this data
        raise MlkubeError(f"{who} ({model_uri}) fails to predict the {split} split: "
                          f"{first_line(exc)}") from None
    if info.task == "classification":
        return metric(class_indices(output, info, who), y, info.task)
    return metric(regression_values(output, who), y, info.task)
