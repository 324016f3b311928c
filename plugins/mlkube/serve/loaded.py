"""Load an MLflow model for serving, and verify it on its own input example and on the batch
sizes clients send, first.

``load(model_uri, name=, version=)`` returns a ``LoadedModel``: its V2 tensor metadata (from the
MLflow signature), ``features`` and ``classes`` (from the model's metadata), and
``predict(rows)`` on a 2-D float32 array; ``profile``, the training profile the train step puts
in the metadata (the histogram edges the live statistics count on, see ``serve.stats``). Any flavor loads through ``mlflow.pyfunc``. A PyTorch
flavor model (mlkube's pt2 MLP) is also called directly, as a torch module under
``torch.inference_mode``, which skips pyfunc's per-call schema enforcement; the direct call is
used only if it gives pyfunc's answer on the input example and on every batch verified.

A model is handed out only after it predicted its input example, then a batch of 1 row and
one of ``verify_batch`` rows (the example's rows repeated), each through the path that will
serve it: one finite output row per input row, each row shaped like the example's answer. A
direct torch call that fails or disagrees with pyfunc at a batch size is dropped (pyfunc
serves); a model whose pyfunc prediction fails is refused: ``load`` raises ``MlkubeError``
with one line, naming the batch size that failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mlkube.errors import MlkubeError, first_line

# numpy dtype names and MLflow column types -> V2 datatypes.
_V2_DTYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
    "float32": "FP32", "float64": "FP64", "object": "BYTES", "str": "BYTES",
}
_COLUMN_DTYPES = {
    "boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
    "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
}
# V2 datatypes -> numpy dtype names (what the tensor data is converted to).
NUMPY_DTYPES = {v: k for k, v in _V2_DTYPES.items() if k not in ("object", "str")}

# Relative tolerance when checking the direct torch call against pyfunc on the input example.
_FAST_PATH_RTOL = 1e-5

# The full batch a model is verified on before it takes traffic (rows; a batch of 1 row is
# always verified too): a model that fails above some batch size is refused at load, before
# the swap, instead of answering live requests 500. The runtime's default for
# ``mlkube serve model --verify-batch``, the load request's ``parameters.verify_batch`` and
# ``load(verify_batch=)``; callers that know the batch size their clients send (the deploy
# step: the test split's rows) pass it instead.
VERIFY_BATCH = 64


def v2_datatype(numpy_or_column_type: Any) -> str:
    """The V2 datatype of a numpy dtype or an MLflow column type."""
    text = str(numpy_or_column_type)
    if text in _COLUMN_DTYPES:
        return _COLUMN_DTYPES[text]
    import numpy as np

    try:
        dtype = np.dtype(numpy_or_column_type)
    except TypeError:
        return "BYTES"
    if dtype.kind in "USO":
        return "BYTES"
    return _V2_DTYPES.get(dtype.name, "BYTES")


@dataclass(frozen=True)
class Tensor:
    """A V2 tensor's metadata: name, datatype, shape (-1: any size), optional parameters."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        """The V2 tensor metadata object."""
        found: dict[str, Any] = {"name": self.name, "datatype": self.datatype,
                                 "shape": list(self.shape)}
        if self.parameters:
            found["parameters"] = self.parameters
        return found


@dataclass(eq=False, kw_only=True)
class LoadedModel:
    """A loaded, verified model version. ``predict`` is safe to call from one thread at a time
    per caller; the object never changes once loaded (a new version is a new object)."""

    name: str
    version: str
    model_uri: str
    flavor: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    features: list[str] | None
    classes: list[Any] | None
    n_features: int
    fast_path: bool
    verified_rows: int  # the largest batch verified
    load_seconds: float
    verified_batches: list[int] = field(default_factory=list)  # every batch size verified
    example_rows: int = 0  # the input example's rows (one of verified_batches)
    columns: list[str] | None = None  # the signature's columns, for a column-based model
    profile: dict[str, Any] | None = None  # the training profile (metadata "profile"), if any
    _pyfunc: Any = field(default=None, repr=False)
    _module: Any = field(default=None, repr=False)
    _device: Any = field(default=None, repr=False)
    _column_types: list[str] | None = field(default=None, repr=False)
    _tensor_dtype: str | None = field(default=None, repr=False)
    _output_dtype: str | None = field(default=None, repr=False)

    def verified(self) -> str:
        """What it was verified on, in words (the runtime's log line)."""
        found = f"its input example ({_rows(self.example_rows)})"
        others = [str(n) for n in self.verified_batches if n != self.example_rows]
        if len(others) == 1:
            found += f" and a batch of {_rows(int(others[0]))}"
        elif others:
            found += f" and batches of {', '.join(others[:-1])} and {others[-1]} rows"
        return found

    @property
    def labels(self) -> list[str] | None:
        """The class labels as strings, in the order of the probability columns."""
        return [str(c) for c in self.classes] if self.classes else None

    @property
    def classifier(self) -> bool:
        """Whether outputs are class probabilities plus a label."""
        return bool(self.outputs) and self.outputs[0].name == "probabilities" and \
            self.outputs[0].parameters is not None

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata object."""
        return {
            "name": self.name, "versions": [self.version], "platform": f"mlflow_{self.flavor}",
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
            "parameters": {"model_uri": self.model_uri, "features": self.features,
                           "classes": self.classes, "fast_path": self.fast_path},
        }

    def predict(self, rows: Any) -> Any:
        """Predictions for ``rows`` (a 2-D float32 numpy array), as a numpy array."""
        if self._module is not None:
            return self._predict_torch(rows)
        return self._predict_pyfunc(rows)

    def _predict_torch(self, rows: Any) -> Any:
        import torch

        if not rows.flags.writeable:  # torch wants writable memory (frombuffer is read-only)
            rows = rows.copy()
        with torch.inference_mode():
            tensor = torch.from_numpy(rows)
            if self._device is not None:
                tensor = tensor.to(self._device)
            out = self._module(tensor)
            if not isinstance(out, torch.Tensor):
                raise MlkubeError(f"the model returned {type(out).__name__}, not one tensor")
            return out.cpu().numpy() if self._device is not None else out.numpy()

    def _predict_pyfunc(self, rows: Any) -> Any:
        import numpy as np

        data: Any = rows
        if self.columns is not None:
            import pandas as pd

            types = self._column_types or []
            data = pd.DataFrame({c: rows[:, i].astype(types[i]) if types else rows[:, i]
                                 for i, c in enumerate(self.columns)})
        elif self._tensor_dtype is not None:
            data = rows.astype(self._tensor_dtype, copy=False)
        elif self.features is not None:
            import pandas as pd

            data = pd.DataFrame(rows, columns=self.features)
        out = self._pyfunc.predict(data)
        if hasattr(out, "to_numpy"):  # a DataFrame or Series
            out = out.to_numpy()
        out = np.asarray(out)
        if self._output_dtype is not None and out.dtype.name != self._output_dtype:
            out = out.astype(self._output_dtype)
        return out


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _rows_of(example: Any, columns: list[str] | None) -> Any:
    """The input example as a 2-D float32 array (columns in the signature's order)."""
    import numpy as np

    if hasattr(example, "columns"):  # a DataFrame
        if columns is not None:
            missing = [c for c in columns if c not in example.columns]
            if missing:
                raise MlkubeError(f"its input example lacks the signature's columns {missing}")
            example = example[columns]
        example = example.to_numpy()
    if isinstance(example, dict):
        raise MlkubeError("its input example is a dict of several inputs; mlkube serves models "
                          "that take one table or one 2-D tensor")
    try:
        rows = np.asarray(example, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MlkubeError(f"its input example is not numeric ({first_line(exc)})") from None
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2:
        raise MlkubeError(f"its input example has shape {list(rows.shape)}; mlkube serves "
                          "models that take rows of features (a 2-D input)")
    return np.ascontiguousarray(rows)


def _inputs(model: LoadedModel, signature: Any, n_features: int) -> None:
    """Fill the model's V2 inputs (and columns) from its signature."""
    schema = signature.inputs if signature is not None else None
    if schema is None:
        model.inputs = [Tensor("input", "FP32", [-1, n_features])]
        return
    if schema.is_tensor_spec():
        specs = schema.inputs
        if len(specs) != 1 or len(specs[0].shape) != 2:
            shapes = [list(s.shape) for s in specs]
            raise MlkubeError(f"its signature takes tensors of shapes {shapes}; mlkube serves "
                              "models that take one 2-D tensor (rows x features) or a table")
        spec = specs[0]
        model._tensor_dtype = spec.type.name
        model.inputs = [Tensor(spec.name or "input", v2_datatype(spec.type),
                               [int(d) for d in spec.shape])]
        return
    columns = [str(c) for c in schema.input_names()]
    types = schema.input_types()
    model.columns = columns
    model._column_types = [t.to_numpy().name if hasattr(t, "to_numpy") else "float32"
                           for t in types]
    model.inputs = [Tensor(c, v2_datatype(t), [-1]) for c, t in zip(columns, types, strict=True)]


def _outputs(model: LoadedModel, signature: Any, out: Any) -> None:
    """Fill the model's V2 outputs: probabilities + label for a classifier, else predictions."""
    spec = None
    schema = signature.outputs if signature is not None else None
    if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1:
        spec = schema.inputs[0]
    dtype = spec.type.name if spec is not None else out.dtype.name
    shape = [int(d) for d in spec.shape] if spec is not None else [-1, *out.shape[1:]]
    model._output_dtype = dtype
    if model.classes and out.ndim == 2 and out.shape[1] == len(model.classes):
        labels = [str(c) for c in model.classes]
        model.outputs = [Tensor("probabilities", v2_datatype(dtype), [-1, len(labels)],
                                {"labels": labels}),
                         Tensor("label", "BYTES", [-1])]
        return
    name = spec.name if spec is not None and spec.name else "predictions"
    model.outputs = [Tensor(name, v2_datatype(dtype), shape)]


def _check_output(out: Any, rows: Any, what: str, of: str = "its input example") -> Any:
    """``out`` as an array with one finite row per input row (of ``of``), else an error."""
    import numpy as np

    try:
        out = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        raise MlkubeError(f"{what} returned non-numeric predictions") from None
    if out.ndim == 0 or out.shape[0] != rows.shape[0]:
        raise MlkubeError(f"{what} returned {out.shape[0] if out.ndim else 'a scalar'} "
                          f"prediction rows for {rows.shape[0]} input rows")
    bad = int((~np.isfinite(out)).reshape(out.shape[0], -1).any(axis=1).sum())
    if bad:
        raise MlkubeError(f"{what} returned non-finite values (NaN or inf) for {bad} of "
                          f"{rows.shape[0]} rows of {of}")
    return out


def _torch_module(pyfunc_model: Any) -> tuple[Any, Any] | None:
    """The PyTorch module behind a pytorch-flavor pyfunc model and its device, or ``None``."""
    try:
        raw = pyfunc_model.get_raw_model()
    except Exception:  # not every flavor exposes one
        return None
    import torch

    if not isinstance(raw, torch.nn.Module):
        return None
    tensors = [*raw.parameters(), *raw.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    call: Any = raw
    if isinstance(raw, torch.fx.GraphModule) and hasattr(raw, "_guards_fn"):
        # A torch.export program (pt2): its forward runs the shape guards itself; the module
        # hooks around it only re-check the input's pytree structure (one tensor, always) and
        # cost more than the MLP (~0.1 ms a call).
        call = raw.forward
    return call, (None if device.type == "cpu" else device)


def _fast_agrees(model: LoadedModel, rows: Any, expected: Any) -> bool:
    """Whether the direct torch call gives pyfunc's answer ``expected`` for ``rows``."""
    import numpy as np

    try:
        out = np.asarray(model._predict_torch(rows), dtype=np.float64)
        return out.shape == expected.shape and bool(
            np.allclose(out, expected, rtol=_FAST_PATH_RTOL, atol=1e-6))
    except Exception:
        return False


def _try_fast_path(model: LoadedModel, rows: Any, expected: Any) -> None:
    """Use the torch module directly if it gives pyfunc's answer on the input example."""
    found = _torch_module(model._pyfunc)
    if found is None:
        return
    model._module, model._device = found
    if not _fast_agrees(model, rows, expected):
        model._module = model._device = None


def _batch(rows: Any, n: int) -> Any:
    """``n`` rows: the input example's rows repeated in order (cut to ``n``)."""
    import numpy as np

    return np.ascontiguousarray(np.resize(rows, (n, rows.shape[1])))


def _verify_batches(model: LoadedModel, rows: Any, answer: Any, sizes: list[int]) -> None:
    """Predict a batch of each size through pyfunc, and through the direct torch call while it
    is used; pyfunc failing is an error naming the size, the torch call failing or disagreeing
    drops it (pyfunc serves)."""
    for n in sizes:
        batch = _batch(rows, n)
        try:
            try:
                out = model._predict_pyfunc(batch)
            except MlkubeError:
                raise
            except Exception as exc:  # the model's own code
                raise MlkubeError(first_line(exc)) from None
            checked = _check_output(out, batch, "it", "the batch")
            if checked.shape[1:] != answer.shape[1:]:
                raise MlkubeError(f"it returned prediction rows of shape "
                                  f"{list(checked.shape[1:])}; for its input example they are "
                                  f"{list(answer.shape[1:])}")
        except MlkubeError as exc:
            raise MlkubeError(f"a batch of {_rows(n)} failed: {exc}") from None
        if model._module is not None and not _fast_agrees(model, batch, checked):
            model._module = model._device = None


def _check_verify_batch(verify_batch: Any) -> None:
    if isinstance(verify_batch, bool) or not isinstance(verify_batch, int) or verify_batch < 1:
        raise MlkubeError(f"verify_batch is {verify_batch!r}; give a positive number of rows "
                          f"(default {VERIFY_BATCH})")


def load(model_uri: str, *, name: str, version: str, fast_path: bool = True,
         verify_batch: int = VERIFY_BATCH) -> LoadedModel:
    """Load ``model_uri`` and verify it on its input example, then on a batch of 1 row and one
    of ``verify_batch`` rows; raise ``MlkubeError`` if unusable.

    ``fast_path=False`` always predicts through pyfunc (the direct torch call is otherwise used
    for PyTorch flavor models whose answer matches pyfunc's on the input example and on both
    batches).
    """
    _check_verify_batch(verify_batch)
    started = time.perf_counter()
    what = f"model {name} version {version} ({model_uri})"
    try:
        import mlflow

        local = mlflow.artifacts.download_artifacts(model_uri)
        # suppress_warnings: skips comparing the model's requirements with every installed
        # package (1.4 s in the Airflow environment); the verification below is the real check.
        pyfunc_model = mlflow.pyfunc.load_model(local, suppress_warnings=True)
    except MlkubeError:
        raise
    except Exception as exc:  # MLflow, the flavor's loader or the model's own code
        raise MlkubeError(f"{what} did not load: {first_line(exc)}") from None
    meta = pyfunc_model.metadata
    extra = dict(meta.metadata or {})
    features = [str(f) for f in extra["features"]] if extra.get("features") else None
    classes = list(extra["classes"]) if extra.get("classes") else None
    profile = extra["profile"] if isinstance(extra.get("profile"), dict) else None
    flavor = "pytorch" if "pytorch" in meta.flavors else next(
        (f for f in meta.flavors if f != "python_function"), "python_function")
    model = LoadedModel(name=name, version=str(version), model_uri=model_uri, flavor=flavor,
                        inputs=[], outputs=[], features=features, classes=classes,
                        n_features=0, fast_path=False, verified_rows=0, load_seconds=0.0,
                        profile=profile, _pyfunc=pyfunc_model)
    try:
        example = meta.load_input_example(local)
    except Exception as exc:
        raise MlkubeError(f"{what}: its input example does not load: {first_line(exc)}") from None
    if example is None:
        raise MlkubeError(f"{what} has no input example to verify it with; log the model "
                          "with input_example=")
    try:
        _inputs(model, meta.signature, 0)
        rows = _rows_of(example, model.columns)
        model.n_features = int(rows.shape[1])
        if model.inputs and len(model.inputs[0].shape) == 2 and model.columns is None:
            declared = model.inputs[0].shape[1]
            if declared not in (-1, model.n_features):
                raise MlkubeError(f"its input example has {model.n_features} columns, its "
                                  f"signature {declared}")
        if meta.signature is None or meta.signature.inputs is None:
            _inputs(model, None, model.n_features)
        try:
            out = model._predict_pyfunc(rows)
        except MlkubeError:
            raise
        except Exception as exc:
            raise MlkubeError(f"predicting its input example failed: {first_line(exc)}") from None
        checked = _check_output(out, rows, "it")
        _outputs(model, meta.signature, out)
        if fast_path and flavor == "pytorch" and model.columns is None:
            _try_fast_path(model, rows, checked)
        example_rows = int(rows.shape[0])
        sizes = sorted({1, verify_batch} - {example_rows})
        _verify_batches(model, rows, checked, sizes)
        model.fast_path = model._module is not None
    except MlkubeError as exc:
        raise MlkubeError(f"{what} failed verification: {exc}") from None
    model.example_rows = example_rows
    model.verified_batches = sorted({example_rows, *sizes})
    model.verified_rows = model.verified_batches[-1]
    model.load_seconds = round(time.perf_counter() - started, 3)
    return model
