"""A small client of ``mlkube serve model`` (any V2 REST server), standard library only.

Used by the deploy step and the demo. Every failure is an ``MlkubeError`` of one line.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mlkube.errors import MlkubeError


def _url(base_url: str, *parts: str) -> str:
    return base_url.rstrip("/") + "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


def _call(url: str, body: Any = None, timeout: float = 30.0) -> Any:
    """GET (``body`` None) or POST JSON; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            detail = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            detail = text
        detail = " ".join(str(detail).split())[:300]
        raise MlkubeError(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MlkubeError(f"{url} did not answer: {reason}") from None


def reshaped(tensor: dict[str, Any]) -> list[Any]:
    """A V2 response tensor's flat data, nested by its shape."""
    return _reshape(tensor["data"], tensor["shape"])


def _reshape(data: list[Any], shape: list[int]) -> list[Any]:
    """A flat V2 data list as nested lists of ``shape``."""
    if len(shape) <= 1:
        return data
    step = len(data) // shape[0] if shape[0] else 0
    return [_reshape(data[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def infer(base_url: str, name: str, rows: list[list[float]], *, version: str | None = None,
          input_name: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Predict ``rows``; output name -> its data, nested by its shape.

    For a classifier: ``{"probabilities": [[p0, p1], ...], "label": ["no", ...]}``.
    ``input_name`` (default: the first input the model's metadata lists, one more request).
    """
    answer = infer_answer(base_url, name, rows, version=version, input_name=input_name,
                          timeout=timeout)
    return {o["name"]: _reshape(o["data"], o["shape"]) for o in answer["outputs"]}


def infer_answer(base_url: str, name: str, rows: list[list[float]], *,
                 version: str | None = None, input_name: str | None = None,
                 timeout: float = 30.0) -> dict[str, Any]:
    """The V2 inference response for ``rows``, as the server sent it (see :func:`infer`)."""
    rows = [[float(v) for v in row] for row in rows]
    width = len(rows[0]) if rows else 0
    if input_name is None:
        input_name = str(metadata(base_url, name, timeout=timeout)["inputs"][0]["name"])
    body = {"inputs": [{"name": input_name,
                        "shape": [len(rows), width], "datatype": "FP32",
                        "data": [v for row in rows for v in row]}]}
    path = ["v2", "models", name] + (["versions", version] if version else []) + ["infer"]
    answer: dict[str, Any] = _call(_url(base_url, *path), body, timeout)
    return answer


def metadata(base_url: str, name: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """The model's V2 metadata (name, versions, platform, inputs, outputs)."""
    found: dict[str, Any] = _call(_url(base_url, "v2", "models", name), timeout=timeout)
    return found


def live(base_url: str, *, timeout: float = 2.0) -> bool:
    """Whether the server process answers (``/v2/health/live``), a model loaded or not."""
    try:
        _call(_url(base_url, "v2", "health", "live"), timeout=timeout)
    except MlkubeError:
        return False
    return True


def ready(base_url: str, name: str, *, timeout: float = 2.0) -> bool:
    """Whether ``name`` is loaded, verified and answering."""
    try:
        _call(_url(base_url, "v2", "models", name, "ready"), timeout=timeout)
    except MlkubeError:
        return False
    return True


def load(base_url: str, name: str, version: str, model_uri: str,
         timeout: float = 300.0, verify_batch: int | None = None, role: str | None = None,
         share: float | None = None) -> dict[str, Any]:
    """Hot-swap ``name`` to ``model_uri`` as ``version``; returns once it serves.

    The server loads and verifies it aside: its input example, a batch of 1 row and a full
    batch of ``verify_batch`` rows (``None``: the server's ``--verify-batch``). On failure (an
    ``MlkubeError`` here, naming the batch size that failed) the version it served before goes
    on serving. The answer names the ``replaced_version`` and the ``verified_batches``.
    ``role`` (``canary`` or ``shadow``): load it into that slot beside the main model, taking
    ``share`` (0-1) of the requests.
    """
    parameters: dict[str, Any] = {"model_uri": model_uri, "version": str(version)}
    if verify_batch is not None:
        parameters["verify_batch"] = verify_batch
    if role is not None:
        parameters["role"] = role
    if share is not None:
        parameters["share"] = share
    body = {"parameters": parameters}
    found: dict[str, Any] = _call(_url(base_url, "v2", "repository", "models", name, "load"),
                                  body, timeout)
    return found


def index(base_url: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The repository index: each model's versions and their states."""
    found: list[dict[str, Any]] = _call(_url(base_url, "v2", "repository", "index"),
                                        timeout=timeout)
    return found


def unload(base_url: str, name: str, role: str | None = None,
           timeout: float = 30.0) -> dict[str, Any]:
    """Stop serving ``name`` (``role``: only its canary or shadow)."""
    body = {"parameters": {"role": role}} if role else {}
    found: dict[str, Any] = _call(_url(base_url, "v2", "repository", "models", name, "unload"),
                                  body, timeout)
    return found


def promote(base_url: str, name: str, role: str = "canary",
            timeout: float = 30.0) -> dict[str, Any]:
    """Make ``name``'s ``role`` slot its main model, in one step."""
    found: dict[str, Any] = _call(_url(base_url, "v2", "repository", "models", name,
                                       "promote"), {"parameters": {"role": role}}, timeout)
    return found


def live_numbers(base_url: str, name: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """``GET /v2/models/{name}/live``: the main model's, the canary's and the shadow's live
    numbers (requests, errors, p99_ms; the shadow's agreement or mean_abs_diff)."""
    found: dict[str, Any] = _call(_url(base_url, "v2", "models", name, "live"), timeout=timeout)
    return found
