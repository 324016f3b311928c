"""The Open Inference Protocol (V2) on the wire: requests in, responses out.

Parsing a request's inputs (JSON or Triton's binary tensor extension, and MLflow's scoring
formats) into one float32 array of feature rows, and encoding a model's outputs as a V2
response. :mod:`mlkube.serve.app` holds the models and routes; this module holds the format.

Every response body is strict JSON (RFC 8259: no ``NaN`` or ``Infinity`` tokens). An input
holding NaN or ±Infinity (as JSON's ``NaN``/``Infinity``/``null``, which Python's json reader
takes, as binary tensor data, or as a number beyond float32's range) is answered 400 naming
the input and the first such value. A model that predicts NaN or ±Infinity for finite inputs
is answered 500 naming the row (the same status as a model that fails at predict time), in
every output encoding: such a prediction is no answer, whether JSON could carry it or not.

Request bodies are parsed, and infer responses (outputs already checked finite) encoded, by
pydantic-core's JSON (Rust; mlflow's pydantic brings it), which takes 64 rows of 30 floats in
about 40% of the standard library's time and encodes their answer in about 15%; the standard
library's ``json`` is the fallback (a body pydantic-core refuses is parsed again by it, so
errors read as before, and anything only it takes, such as UTF-16, still parses).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mlkube.errors import first_line
from mlkube.serve import loaded as loadedmod

try:
    from pydantic_core import from_json as _fast_loads
    from pydantic_core import to_json as _fast_dumps
except ImportError:  # pragma: no cover - mlflow requires pydantic, which requires pydantic-core
    _fast_loads = _fast_dumps = None  # type: ignore[assignment]

JSON = "application/json"
BINARY_HEADER = "inference-header-content-length"
_NUMERIC = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64"}


class RequestError(Exception):
    """A request the server answers with an error status and ``{"error": message}``;
    ``close``: and then closes the connection (a body left unread cannot be skipped)."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.close = close


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``obj`` as a compact JSON response; strict JSON (a NaN raises ``ValueError``)."""
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _loads(body: bytes) -> Any:
    """The JSON of a request body: pydantic-core's parse, else the standard library's."""
    if _fast_loads is not None:
        try:
            return _fast_loads(body)
        except (ValueError, RecursionError):
            pass  # json.loads says why (or takes what only it takes)
    return json.loads(body)


def _finite_json(obj: Any) -> bytes:
    """``obj`` as compact JSON, for objects whose floats are known to be finite (pydantic-core
    would write NaN as a bare ``NaN`` token rather than refuse it)."""
    if _fast_dumps is not None:
        return bytes(_fast_dumps(obj))
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def error_response(status: int, message: str, *, close: bool = False) -> Response:
    """The error body every endpoint answers with: ``{"error": "<one line>"}``."""
    return json_response({"error": message}, status, {"Connection": "close"} if close else None)


async def json_body(request: Request) -> tuple[Any, memoryview | None]:
    """The request's JSON, and the binary part that follows it (Triton's tensor extension)."""
    body = await request.body()
    binary = None
    header = request.headers.get(BINARY_HEADER)
    if header is not None:
        try:
            length = int(header)
        except ValueError:
            raise RequestError(400, f"{BINARY_HEADER} is not a number: {header!r}") from None
        binary = memoryview(body)[length:]
        body = body[:length]
    try:
        return _loads(body) if body else {}, binary
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not JSON: {first_line(exc)}") from None


# --- request parsing ---------------------------------------------------------------------


def _position(index: tuple[int, ...], columns: list[str] | None) -> str:
    if len(index) == 2:
        name = f" ({columns[index[1]]})" if columns and index[1] < len(columns) else ""
        return f"row {index[0]}, column {index[1]}{name}"
    if len(index) == 1:
        return f"position {index[0]}"
    return f"index {list(index)}"


def _non_finite(array: Any) -> tuple[str, tuple[int, ...], int] | None:
    """(what, where, how many) of the NaN / ±Infinity values in a float array, else None."""
    import numpy as np

    if array.dtype.kind not in "fc" or np.isfinite(array).all():  # the cheap common case
        return None
    bad = np.argwhere(~np.isfinite(array))
    index = tuple(int(i) for i in bad[0])
    value = array[index]
    what = "NaN" if np.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return what, index, len(bad)


def require_finite(array: Any, where: str, columns: list[str] | None = None,
                   on_refused: Callable[[Any], None] | None = None) -> None:
    """400 naming ``where`` and the first value if ``array`` holds NaN or ±Infinity (after
    ``on_refused(array)``: the live statistics count the missing values)."""
    found = _non_finite(array)
    if found is None:
        return
    if on_refused is not None:
        on_refused(array)
    what, index, count = found
    spelled = "NaN (JSON null or NaN)" if what == "NaN" else \
        f"{what} (or a number beyond float32's ±3.4e38)"
    more = f", {count} such values in all" if count > 1 else ""
    raise RequestError(400, f"{where} holds {spelled} at {_position(index, columns)}{more}: "
                            "the model takes finite numbers only; send a number for every "
                            "value (fill in missing ones before the request)")


def require_finite_outputs(model: loadedmod.LoadedModel, out: Any) -> None:
    """500 naming the row if the model predicted NaN or ±Infinity (see the module doc)."""
    found = _non_finite(out)
    if found is None:
        return
    what, index, count = found
    raise RequestError(500, f"model {model.name} version {model.version} predicted {what} for "
                            f"row {index[0] if index else 0} of the request ({count} non-finite "
                            "values in all), which is no answer: check that the inputs lie in "
                            "the range the model was trained on")


def _numbers(data: Any, datatype: str, shape: list[int], where: str) -> Any:
    import numpy as np

    try:
        array = np.asarray(data, dtype=np.float32)
        return array.reshape(shape)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, f"{where}: data does not fit shape {shape} as {datatype} "
                                f"({first_line(exc)})") from None


def _tensor(spec: Any, binary: memoryview | None, offset: int, where: str) -> tuple[Any, int]:
    """One request input as a float32 array, and the offset of the next binary input."""
    import numpy as np

    if not isinstance(spec, dict):
        raise RequestError(400, f"{where} must be an object with name, shape, datatype, data")
    datatype = spec.get("datatype")
    shape = spec.get("shape")
    if datatype not in _NUMERIC:
        raise RequestError(400, f"{where}: datatype {datatype!r} is not a numeric V2 datatype "
                                "(FP32, FP64, INT64, ...)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(400, f"{where}: shape must be a list of sizes, got {shape!r}")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise RequestError(400, f"{where} has no data")
        return _numbers(spec["data"], datatype, shape, where), offset
    if binary is None or offset + int(size) > len(binary):
        raise RequestError(400, f"{where}: binary_data_size {size} runs past the request body")
    dtype = np.dtype(loadedmod.NUMPY_DTYPES[datatype]).newbyteorder("<")
    try:
        raw = np.frombuffer(binary[offset:offset + int(size)], dtype=dtype)
    except ValueError as exc:
        raise RequestError(400, f"{where}: {first_line(exc)}") from None
    return _numbers(raw, datatype, shape, where), offset + int(size)


def rows_from_inputs(model: loadedmod.LoadedModel, inputs: Any, binary: memoryview | None,
                     on_refused: Callable[[Any], None] | None = None) -> Any:
    """The request's inputs as one 2-D float32 array of feature rows (``on_refused``: given
    an input of feature rows refused for non-finite values, see ``require_finite``)."""
    import numpy as np

    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "the request has no inputs: send {\"inputs\": [{\"name\": ..., "
                                "\"shape\": [rows, features], \"datatype\": \"FP32\", "
                                "\"data\": [...]}]}")
    expected = [t.name for t in model.inputs]
    offset = 0
    tensors: dict[str, Any] = {}
    for i, spec in enumerate(inputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        where = f"input {name or i}"
        tensor, offset = _tensor(spec, binary, offset, where)
        named = tensor.ndim == 2 and tensor.shape[1] == model.n_features
        require_finite(tensor, where, model.features if named else None,
                       on_refused if named else None)
        tensors[str(name)] = tensor
    if model.columns is not None and len(tensors) == len(expected) and set(tensors) == set(
            expected):
        columns = [tensors[c].reshape(-1) for c in expected]
        if len({len(c) for c in columns}) != 1:
            raise RequestError(400, "the column inputs have different lengths")
        rows = np.stack(columns, axis=1)
    elif len(tensors) == 1 and (model.columns is not None or next(iter(tensors)) in expected):
        rows = next(iter(tensors.values()))
    else:
        raise RequestError(400, f"inputs {sorted(tensors)} do not match the model's "
                                f"{expected} (GET /v2/models/{model.name} lists them)")
    if rows.ndim != 2 or rows.shape[1] != model.n_features:
        raise RequestError(400, f"input shape {list(rows.shape)} does not match "
                                f"[-1, {model.n_features}]: send rows of {model.n_features} "
                                "features" + (f" ({', '.join(model.features[:3])}, ...)"
                                              if model.features else ""))
    return rows


def rows_from_mlflow(model: loadedmod.LoadedModel, body: Any,
                     on_refused: Callable[[Any], None] | None = None) -> Any:
    """MLflow's scoring formats (inputs / instances / dataframe_split / dataframe_records)."""
    import numpy as np

    order = model.columns or model.features
    if not isinstance(body, dict):
        raise RequestError(400, "send a JSON object: {\"inputs\": [[...], ...]}, "
                                "{\"dataframe_split\": ...} or {\"dataframe_records\": ...}")
    where = next((k for k in ("inputs", "instances", "dataframe_split", "dataframe_records")
                  if k in body), "")
    try:
        if "inputs" in body or "instances" in body:
            rows = np.asarray(body.get("inputs", body.get("instances")), dtype=np.float32)
            if rows.ndim == 1:
                rows = rows.reshape(1, -1)
        elif "dataframe_split" in body:
            split = body["dataframe_split"]
            rows = np.asarray(split["data"], dtype=np.float32)
            columns = split.get("columns")
            if columns and order and list(columns) != list(order):
                index = {str(c): i for i, c in enumerate(columns)}
                missing = [c for c in order if c not in index]
                if missing:
                    raise RequestError(400, f"dataframe_split lacks the columns {missing[:5]}")
                rows = rows[:, [index[c] for c in order]]
        elif "dataframe_records" in body:
            records = body["dataframe_records"]
            names = order or list(records[0])
            rows = np.asarray([[r[c] for c in names] for r in records], dtype=np.float32)
        else:
            raise RequestError(400, "expected one of inputs, instances, dataframe_split, "
                                    f"dataframe_records; got {sorted(body)[:5]}")
    except RequestError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RequestError(400, f"malformed request: {first_line(exc)}") from None
    if rows.ndim != 2 or rows.shape[1] != model.n_features:
        raise RequestError(400, f"input shape {list(rows.shape)} does not match "
                                f"[-1, {model.n_features}]")
    require_finite(rows, where, order, on_refused)
    return rows


# --- responses -----------------------------------------------------------------------------


def _outputs(model: loadedmod.LoadedModel, out: Any) -> dict[str, tuple[str, Any, list[str]]]:
    """Output name -> (datatype, numpy array or list of strings, shape)."""
    first = model.outputs[0]
    if model.classifier:
        labels = model.labels or []
        picks = out.argmax(axis=1).tolist()
        return {"probabilities": (first.datatype, out, list(out.shape)),
                "label": ("BYTES", [labels[i] for i in picks], [len(picks)])}
    return {first.name: (first.datatype, out, list(out.shape))}


def _encode_bytes(values: list[str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def infer_response(model: loadedmod.LoadedModel, out: Any, request: dict[str, Any]) -> Response:
    produced = _outputs(model, out)
    wanted = request.get("outputs")
    all_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    selected: list[tuple[str, bool]] = []
    if wanted:
        for spec in wanted:
            name = spec.get("name") if isinstance(spec, dict) else None
            if name not in produced:
                raise RequestError(400, f"unknown output {name!r}; the model's outputs are "
                                        f"{sorted(produced)}")
            params = spec.get("parameters") or {}
            selected.append((name, bool(params.get("binary_data", all_binary))))
    else:
        selected = [(name, all_binary) for name in produced]
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    params = {t.name: t.parameters for t in model.outputs if t.parameters}
    for name, binary in selected:
        datatype, data, shape = produced[name]
        tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
        extra = dict(params.get(name) or {})
        if binary:
            if datatype == "BYTES":
                raw = _encode_bytes(data)
            else:
                raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
            chunks.append(raw)
            extra["binary_data_size"] = len(raw)
        else:
            tensor["data"] = data if isinstance(data, list) else data.ravel().tolist()
        if extra:
            tensor["parameters"] = extra
        tensors.append(tensor)
    body = {"model_name": model.name, "model_version": model.version,
            "id": str(request.get("id") or uuid.uuid4()), "outputs": tensors}
    if not chunks:  # the outputs were checked finite (require_finite_outputs)
        return Response(_finite_json(body), media_type=JSON)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})
