"""``mlkube serve model`` as a process: V2 metadata and inference from a third-party client,
MLflow's /invocations, metrics, hot swap under load, refused versions, readiness."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_env import NAME, Registry, Server, start_server

from mlkube.errors import MlkubeError
from mlkube.serve import client


def _pyfunc(uri: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def test_a_v2_client_reads_metadata_and_infers(server: Server, registry: Registry) -> None:
    import tritonclient.http as triton

    v2 = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert v2.is_server_live() and v2.is_server_ready() and v2.is_model_ready(NAME)
    meta = v2.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["versions"] == [registry.versions["trained"]]
    (given,) = meta["inputs"]
    assert given["datatype"] == "FP32" and given["shape"] == [-1, 30]
    probabilities, label = meta["outputs"]
    assert probabilities == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2],
                             "parameters": {"labels": ["0", "1"]}}
    assert label == {"name": "label", "datatype": "BYTES", "shape": [-1]}
    assert meta["parameters"]["features"] == registry.features
    assert v2.get_model_metadata(NAME, model_version=registry.versions["trained"]) == meta

    rows = registry.rows[:7]
    expected = np.asarray(_pyfunc(registry.uri("trained")).predict(rows))
    for binary in (True, False):  # Triton's binary tensor extension, and plain JSON
        tensor = triton.InferInput(given["name"], [7, 30], "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary)
                   for n in ("probabilities", "label")]
        answer = v2.infer(NAME, [tensor], outputs=outputs, request_id="r-1")
        assert answer.get_response()["model_version"] == registry.versions["trained"]
        assert answer.get_response()["id"] == "r-1"
        found = answer.as_numpy("probabilities")
        assert found.shape == (7, 2) and np.allclose(found, expected, rtol=1e-5, atol=1e-6)
        labels = [x.decode() if isinstance(x, bytes) else str(x)
                  for x in answer.as_numpy("label")]
        assert labels == [str(i) for i in expected.argmax(axis=1)]
    default = v2.infer(NAME, [tensor])  # no outputs named: tritonclient asks for binary ones
    assert default.as_numpy("probabilities").shape == (7, 2)

    with pytest.raises(Exception, match="do not match"):
        v2.infer(NAME, [triton.InferInput("other", [1, 30], "FP32").set_data_from_numpy(
            rows[:1])])
    status, body = _post(f"{server.url}/v2/models/{NAME}/infer", {"inputs": [
        {"name": given["name"], "shape": [1, 29], "datatype": "FP32", "data": [0.0] * 29}]})
    assert status == 400 and "[-1, 30]" in body["error"]
    status, body = _post(f"{server.url}/v2/models/nothing/infer", {"inputs": []})
    assert status == 404 and body == {"error": "model nothing is not loaded"}


def test_the_stdlib_client(server: Server, registry: Registry) -> None:
    rows = registry.rows[:3].tolist()
    found = client.infer(server.url, NAME, rows)
    assert set(found) == {"probabilities", "label"} and len(found["probabilities"]) == 3
    assert all(len(p) == 2 for p in found["probabilities"]) and len(found["label"]) == 3
    assert client.ready(server.url, NAME) and client.live(server.url)
    assert not client.ready(server.url, "nothing")
    assert client.metadata(server.url, NAME)["versions"] == [registry.versions["trained"]]
    with pytest.raises(MlkubeError, match="answered 404: model nothing is not loaded"):
        client.metadata(server.url, "nothing")
    assert _post(f"{server.url}/v2/elsewhere", {}) == (
        404, {"error": "POST /v2/elsewhere: Not Found"})
    assert _post(f"{server.url}/v2/health/live", {})[0] == 405


def test_invocations_answer_what_pyfunc_predicts(server: Server, registry: Registry) -> None:
    rows = registry.rows[:5]
    expected = np.asarray(_pyfunc(registry.uri("trained")).predict(rows))
    status, body = _post(f"{server.url}/invocations", {"inputs": rows.tolist()})
    assert status == 200
    assert np.allclose(body["predictions"], expected, rtol=1e-5, atol=1e-6)
    columns = list(reversed(registry.features))  # named columns go to the model's order
    split = {"columns": columns, "data": rows[:, ::-1].tolist()}
    status, body = _post(f"{server.url}/invocations", {"dataframe_split": split})
    assert status == 200 and np.allclose(body["predictions"], expected, rtol=1e-5, atol=1e-6)
    records = [dict(zip(registry.features, row.tolist(), strict=True)) for row in rows]
    status, body = _post(f"{server.url}/invocations", {"dataframe_records": records})
    assert status == 200 and np.allclose(body["predictions"], expected, rtol=1e-5, atol=1e-6)
    status, body = _post(f"{server.url}/invocations", {"inputs": [[1.0, 2.0]]})
    assert status == 400 and list(body) == ["error"] and "\n" not in body["error"]
    assert server.status("/ping") == 200


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_latency_and_batch_sizes(server: Server,
                                                        registry: Registry) -> None:
    def scrape() -> str:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return str(response.read().decode())

    infer = "/v2/models/{name}/infer"
    before = scrape()
    for _ in range(4):
        client.infer(server.url, NAME, registry.rows[:3].tolist(), input_name="input")
    _post(f"{server.url}/v2/models/{NAME}/infer", {"inputs": [{"name": "input"}]})
    after = scrape()
    assert "# TYPE mlkube_serve_requests_total counter" in after
    assert _metric(after, "mlkube_serve_requests_total", endpoint=infer, status="200") - \
        _metric(before, "mlkube_serve_requests_total", endpoint=infer, status="200") == 4
    assert _metric(after, "mlkube_serve_requests_total", endpoint=infer, status="400") - \
        _metric(before, "mlkube_serve_requests_total", endpoint=infer, status="400") == 1
    assert _metric(after, "mlkube_serve_request_duration_seconds_count", endpoint=infer) - \
        _metric(before, "mlkube_serve_request_duration_seconds_count", endpoint=infer) == 5
    assert _metric(after, "mlkube_serve_request_duration_seconds_bucket", endpoint=infer,
                   le="+Inf") == _metric(after, "mlkube_serve_request_duration_seconds_count",
                                         endpoint=infer)
    assert _metric(after, "mlkube_serve_batch_rows_sum", model=NAME) - \
        _metric(before, "mlkube_serve_batch_rows_sum", model=NAME) == 12
    assert _metric(after, "mlkube_serve_batch_rows_bucket", model=NAME, le="2") == \
        _metric(before, "mlkube_serve_batch_rows_bucket", model=NAME, le="2")
    assert _metric(after, "mlkube_serve_model_info", model=NAME,
                   version=registry.versions["trained"]) == 1


@pytest.mark.parametrize("role, reason", [("deleted", "did not load"),
                                          ("nan", "non-finite values")])
def test_a_version_that_fails_to_load_is_refused(server: Server, registry: Registry, role: str,
                                                 reason: str) -> None:
    version = registry.versions[role]
    with pytest.raises(MlkubeError) as failed:
        client.load(server.url, NAME, version, registry.uri(role))
    assert f"version {version}" in str(failed.value) and reason in str(failed.value)
    assert "\n" not in str(failed.value)
    assert client.metadata(server.url, NAME)["versions"] == [registry.versions["trained"]]
    assert len(client.infer(server.url, NAME, registry.rows[:2].tolist())["label"]) == 2
    states = {(e["version"], e["state"]) for e in client.index(server.url)}
    assert states == {(registry.versions["trained"], "READY"), (version, "UNAVAILABLE")}
    assert f"refused {NAME} version {version}" in server.output()


def test_hot_swap_under_load_drops_no_request(registry: Registry, tmp_path: Path) -> None:
    server = start_server(registry.uri("trained"), NAME, registry.versions["trained"],
                          tmp_path / "server.log")
    old, new = registry.versions["trained"], registry.versions["retrained"]
    body = json.dumps({"inputs": [{"name": "input", "shape": [4, 30], "datatype": "FP32",
                                   "data": registry.rows[:4].ravel().tolist()}]}).encode()
    stop = threading.Event()
    seen: list[list[tuple[float, str]]] = []  # one list a connection
    failures: list[str] = []
    lock = threading.Lock()

    def load() -> None:  # keep-alive requests back to back, until told to stop
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        mine: list[tuple[float, str]] = []  # (when the request was sent, who answered)
        with lock:
            seen.append(mine)
        while not stop.is_set():
            try:
                sent = time.monotonic()
                conn.request("POST", f"/v2/models/{NAME}/infer", body,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                if response.status != 200:
                    with lock:
                        failures.append(f"{response.status} {answer}")
                else:
                    mine.append((sent, answer["model_version"]))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with lock:
                    failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.close()

    try:
        server.wait("/v2/health/ready", 200)
        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        answer = client.load(server.url, NAME, new, registry.uri("retrained"), timeout=120)
        done = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        stop.set()
        server.stop()
    assert answer["replaced_version"] == old and answer["version"] == new
    assert failures == []
    # A request in flight when the swap happens may be answered by either version; one sent
    # after the load answered is the new version's, and on each connection, once the new
    # version has answered, the old one never answers again.
    answers = [v for mine in seen for _, v in mine]
    assert old in answers and new in answers
    after = [v for mine in seen for t, v in mine if t > done]
    assert after and set(after) == {new}
    for mine in seen:
        versions = [v for _, v in mine]
        assert versions and versions[0] == old
        if new in versions:
            assert set(versions[versions.index(new):]) == {new}


def test_readiness_is_503_until_the_model_is_verified(registry: Registry, tmp_path: Path) -> None:
    registry.gate.unlink(missing_ok=True)
    name, version = "gated", registry.gated_uri.rsplit("/", 1)[1]
    server = start_server(registry.gated_uri, name, version, tmp_path / "server.log")
    try:
        server.wait("/v2/health/live", 200)
        assert server.status("/v2/health/ready") == 503
        assert server.status(f"/v2/models/{name}/ready") == 503
        assert server.status("/ping") == 503
        status, body = _post(f"{server.url}/v2/models/{name}/infer", {"inputs": []})
        assert status == 503 and body == {"error": f"model {name} version {version} is loading"}
        assert not client.ready(server.url, name)
        states = [(e["version"], e["state"]) for e in client.index(server.url)]
        assert states == [(version, "LOADING")]
        registry.gate.touch()
        server.wait("/v2/health/ready", 200)
        meta = client.metadata(server.url, name)
        assert meta["outputs"][0]["parameters"] == {"labels": ["no", "yes"]}
        assert meta["platform"] == "mlflow_python_function"
        rows = registry.rows[:4].copy()
        rows[:, 0] = [5.0, 30.0, 5.0, 30.0]
        assert client.infer(server.url, name, rows.tolist())["label"] == ["no", "yes", "no", "yes"]
    finally:
        server.stop()


def test_a_model_that_does_not_load_stops_the_server_with_one_line(registry: Registry,
                                                                   tmp_path: Path) -> None:
    version = registry.versions["deleted"]
    server = start_server(registry.uri("deleted"), NAME, version, tmp_path / "server.log")
    try:
        code = server.process.wait(timeout=180)
    finally:
        server.stop()
    output = server.output()
    errors = [line for line in output.splitlines() if line.startswith("mlkube serve: error:")]
    assert code == 1 and len(errors) == 1, output
    assert f"model {NAME} version {version}" in errors[0] and "did not load" in errors[0]
    assert "Traceback" not in output


def test_the_cli_parses_without_the_serving_libraries() -> None:
    probe = ("import sys, mlkube.cli as c; p = c.build_parser(); "
             "a = p.parse_args(['serve', 'model', '--model-uri', 'models:/m/3']); "
             "assert a.handler.__name__ == '_serve_model', a; "
             "heavy = {'mlflow', 'torch', 'numpy', 'starlette', 'uvicorn'} & set(sys.modules); "
             "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_the_client_reports_an_absent_server_in_one_line() -> None:
    with pytest.raises(MlkubeError, match=r"^http://127.0.0.1:9/v2/models/m did not answer"):
        client.metadata("http://127.0.0.1:9", "m")
    assert not client.live("http://127.0.0.1:9")
