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


# --- bad input: non-finite values, oversized bodies, idle connections ---------------------


def _strict_json(raw: bytes) -> Any:
    """``raw`` as RFC 8259 JSON: NaN / Infinity tokens (which json.loads takes) are errors."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(raw, parse_constant=refuse)


def _send(server: Server, path: str, body: bytes,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST raw bytes; (status, the answer parsed as strict JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, _strict_json(response.read())
    finally:
        conn.close()


def _v2(rows: Any, datatype: str = "FP32") -> bytes:
    """A V2 JSON request; ``json.dumps`` writes NaN and Infinity as the tokens it reads."""
    rows = np.asarray(rows, dtype=np.float64)
    return json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape),
                                   "datatype": datatype, "data": rows.ravel().tolist()}]}).encode()


def test_non_finite_inputs_are_400_naming_the_input(server: Server, registry: Registry) -> None:
    infer = f"/v2/models/{NAME}/infer"
    feature = registry.features[3]
    for bad, says in ((float("nan"), "NaN (JSON null or NaN)"),
                      (float("inf"), "Infinity (or a number beyond float32's ±3.4e38)"),
                      (-1e39, "-Infinity (or a number beyond float32's ±3.4e38)")):
        rows = registry.rows[:3].astype(np.float64)
        rows[1, 3] = bad
        status, body = _send(server, infer, _v2(rows, "FP64"))
        assert status == 400 and list(body) == ["error"], body
        assert body["error"] == (f"input input holds {says} at row 1, column 3 ({feature}): the "
                                 "model takes finite numbers only; send a number for every "
                                 "value (fill in missing ones before the request)")
    data = [None, *registry.rows[0, 1:].tolist()]  # JSON null
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": data}]}
    status, answer = _send(server, infer, json.dumps(body).encode())
    assert status == 400 and answer["error"].startswith(
        f"input input holds NaN (JSON null or NaN) at row 0, column 0 ({registry.features[0]})")
    rows = registry.rows[:2].copy()
    rows[:, 0] = np.nan
    status, body = _send(server, infer, _v2(rows))
    assert status == 400 and "at row 0, column 0" in body["error"]
    assert "2 such values in all" in body["error"]

    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    v2 = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    tensor = triton.InferInput("input", [2, 30], "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)  # NaN as raw float32 bytes
    with pytest.raises(InferenceServerException, match=r"input input holds NaN"):
        v2.infer(NAME, [tensor])
    assert len(client.infer(server.url, NAME, registry.rows[:2].tolist())["label"]) == 2


def test_invocations_refuse_non_finite_inputs_in_every_format(server: Server,
                                                              registry: Registry) -> None:
    rows = registry.rows[:3].astype(np.float64)
    rows[2, 5] = float("nan")
    feature = registry.features[5]
    records = [dict(zip(registry.features, row.tolist(), strict=True)) for row in rows]
    records[2][feature] = None  # JSON null
    split = {"columns": list(reversed(registry.features)), "data": rows[:, ::-1].tolist()}
    for key, value in (("inputs", rows.tolist()), ("instances", rows.tolist()),
                       ("dataframe_split", split), ("dataframe_records", records)):
        status, body = _send(server, "/invocations", json.dumps({key: value}).encode())
        assert status == 400 and list(body) == ["error"], body
        assert body["error"].startswith(f"{key} holds NaN (JSON null or NaN) at row 2, column 5"
                                        f" ({feature}): the model takes finite numbers only")


def test_non_finite_predictions_are_an_error_never_invalid_json(server: Server,
                                                                registry: Registry) -> None:
    """Finite inputs far outside the training range overflow the MLP to NaN."""
    rows = np.full((2, 30), 3e38, dtype=np.float32)
    rows[0] = registry.rows[0]
    assert not np.isfinite(np.asarray(_pyfunc(registry.uri("trained")).predict(rows))[1]).all()
    version = registry.versions["trained"]
    says = (f"model {NAME} version {version} predicted NaN for row 1 of the request (2 "
            "non-finite values in all), which is no answer: check that the inputs lie in the "
            "range the model was trained on")
    assert _send(server, f"/v2/models/{NAME}/infer", _v2(rows)) == (500, {"error": says})
    assert _send(server, "/invocations", json.dumps({"inputs": rows.tolist()}).encode()) == (
        500, {"error": says})
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    tensor = triton.InferInput("input", [2, 30], "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=True)]
    with pytest.raises(InferenceServerException, match="predicted NaN for row 1"):
        triton.InferenceServerClient(url=f"127.0.0.1:{server.port}").infer(
            NAME, [tensor], outputs=wanted)


def test_the_default_body_limit_is_16_mib(server: Server) -> None:
    body = b'{"inputs": [' + b" " * (16 * 1024 * 1024) + b"]}"
    started = time.monotonic()
    status, answer = _send(server, f"/v2/models/{NAME}/infer", body)
    assert status == 413 and answer == {"error": (
        f"the request body is {len(body)} bytes, over this server's limit of 16777216 bytes "
        "(--max-body-bytes): send fewer rows per request")}
    assert time.monotonic() - started < 10
    assert server.status("/v2/health/ready") == 200


@pytest.fixture(scope="module")
def limited(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server with a 100,000-byte body limit and a 1 s idle timeout."""
    log = tmp_path_factory.mktemp("limited") / "server.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
        patch.setenv("MLKUBE_STATE_DIR", str(registry.state))
        started = start_server(registry.uri("trained"), NAME, registry.versions["trained"], log,
                               "--max-body-bytes", "100000", "--idle-timeout", "1")
    try:
        started.wait("/v2/health/ready", 200)
        yield started
    finally:
        started.stop()


def _read_all(sock: Any) -> bytes:
    """Everything the server sends until it closes the connection (fails after 15 s)."""
    sock.settimeout(15)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, _strict_json(body)


def test_a_body_over_the_limit_is_413_before_it_is_parsed(limited: Server,
                                                          registry: Registry) -> None:
    import socket

    infer = f"/v2/models/{NAME}/infer"
    fits = _v2(registry.rows[:2])
    exact = fits[:-1] + b" " * (100_000 - len(fits)) + b"}"  # the limit itself is allowed
    status, answer = _send(limited, infer, exact)
    assert status == 200 and len(answer["outputs"][1]["data"]) == 2
    status, answer = _send(limited, infer, exact + b" ")
    assert status == 413 and answer == {"error": (
        "the request body is 100001 bytes, over this server's limit of 100000 bytes "
        "(--max-body-bytes): send fewer rows per request")}
    # 120 MB from a client that sends it all before reading (urllib): the 413, not a reset
    request = urllib.request.Request(f"{limited.url}{infer}", data=b" " * 120_000_000)
    started = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413 and refused.value.headers["Connection"] == "close"
    assert "120000000 bytes, over" in _strict_json(refused.value.read())["error"]
    assert time.monotonic() - started < 10
    # a client that waits for "100 Continue" is answered before it sends the body
    with socket.create_connection(("127.0.0.1", limited.port), timeout=15) as sock:
        sock.sendall(f"POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        status, headers, answer = _answer(_read_all(sock))
    assert status == 413 and headers["connection"] == "close"
    assert answer["error"].startswith("the request body is 10000000000 bytes, over")
    # a chunked body is counted as it arrives
    with socket.create_connection(("127.0.0.1", limited.port), timeout=15) as sock:
        sock.sendall(f"POST {infer} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/json\r\n\r\n".encode())
        piece = b" " * 30_000
        for _ in range(5):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        status, headers, answer = _answer(_read_all(sock))
    assert status == 413 and headers["connection"] == "close"
    # refused once it passed the limit; where the server was busy and all 150,000 bytes had
    # arrived in one read by then, the line gives their count instead
    limit = "this server's limit of 100000 bytes (--max-body-bytes): send fewer rows per request"
    assert answer["error"] in (f"the request body passed {limit}",
                               f"the request body is 150000 bytes, over {limit}")
    assert limited.status("/v2/health/ready") == 200


def test_idle_connections_are_closed(limited: Server) -> None:
    import socket

    def closed_after(sock: socket.socket) -> float:
        started = time.monotonic()
        assert _read_all(sock) == b""  # the server closed it, sending nothing
        return time.monotonic() - started

    with socket.create_connection(("127.0.0.1", limited.port)) as sock:  # never sends
        assert 0.5 < closed_after(sock) < 10
    conn = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=15)  # keep-alive
    conn.request("GET", "/v2/health/live")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Connection") != "close"
    response.read()
    assert conn.sock is not None and 0.5 < closed_after(conn.sock) < 10
    conn.close()
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:  # headers trickle in
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(100):
                time.sleep(0.2)
                sock.sendall(b"X-Slow: 1\r\n")
        assert time.monotonic() - started < 10
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:  # a stalled body
        sock.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 100\r\n\r\n{\"inputs\"".encode())
        status, headers, answer = _answer(_read_all(sock))
    assert status == 408 and headers["connection"] == "close"
    assert answer == {"error": "the request body stalled: no bytes for 1 s (--idle-timeout); "
                               "send the whole body without pausing"}
    assert limited.status("/v2/health/ready") == 200


def test_the_limits_are_server_options(tmp_path: Path) -> None:
    import argparse

    from mlkube.serve import server as model_server

    argv = model_server.arguments(model_uri="models:/m/3", name="m", version="3",
                                  host="127.0.0.1", port=8080, max_body_bytes=1024,
                                  idle_timeout=2.5)
    assert argv[-4:] == ["--max-body-bytes", "1024", "--idle-timeout", "2.5"]
    parser = argparse.ArgumentParser()
    model_server.add_arguments(parser)
    args = parser.parse_args(argv)
    assert (args.max_body_bytes, args.idle_timeout) == (1024, 2.5)
    defaults = parser.parse_args(model_server.arguments(
        model_uri="models:/m/3", name="m", version="3", host="127.0.0.1", port=8080))
    assert (defaults.max_body_bytes, defaults.idle_timeout) == (16 * 1024 * 1024, 75.0)
    for option, value, says in (("--max-body-bytes", "0", "a positive number of bytes"),
                                ("--idle-timeout", "-1", "a positive number of seconds")):
        done = subprocess.run([sys.executable, "-m", "mlkube.serve.server", "--model-uri",
                               "models:/m/3", option, value], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1 and done.stderr.splitlines() == [
            f"mlkube serve: error: {option} is {value}; give {says} (default "
            f"{'16777216' if option == '--max-body-bytes' else '75'})"]


# --- verification on the batch sizes clients send (issue 16, item 11) --------------------


def test_a_model_failing_on_full_batches_is_refused_on_hot_swap(server: Server,
                                                                registry: Registry) -> None:
    version, uri = registry.versions["small"], registry.uri("small")
    trained = registry.versions["trained"]
    for batch, says in ((4, "a batch of 4 rows failed: it returned 2 prediction rows for 4 "
                            "input rows"),
                        (None, "a batch of 64 rows failed: this model takes at most 8 rows, "
                               "not 64")):  # None: the server's default
        with pytest.raises(MlkubeError) as failed:
            client.load(server.url, NAME, version, uri, verify_batch=batch)
        error = str(failed.value)
        assert "answered 400" in error and "\n" not in error
        assert f"model {NAME} version {version} ({uri}) failed verification: {says}" in error
        assert client.metadata(server.url, NAME)["versions"] == [trained]
        assert len(client.infer(server.url, NAME, registry.rows[:16].tolist())["label"]) == 16
        assert (version, "UNAVAILABLE") in {(e["version"], e["state"])
                                            for e in client.index(server.url)}
        assert f"{says}; version {trained} keeps serving" in server.output()
    status, body = _post(f"{server.url}/v2/repository/models/{NAME}/load", {"parameters": {
        "model_uri": uri, "version": version, "verify_batch": 0}})
    assert (status, body) == (400, {"error": "parameters.verify_batch is 0; give a positive "
                                             "number of rows (or leave it out for the "
                                             "server's 64)"})


def test_a_model_failing_on_full_batches_never_becomes_ready(registry: Registry,
                                                            tmp_path: Path) -> None:
    version = registry.versions["small"]
    server = start_server(registry.uri("small"), NAME, version, tmp_path / "server.log",
                          "--verify-batch", "16")
    seen = set()
    try:
        deadline = time.monotonic() + 180
        while server.process.poll() is None and time.monotonic() < deadline:
            seen.add(server.status("/v2/health/ready"))
            time.sleep(0.02)
        code = server.process.wait(timeout=10)
    finally:
        server.stop()
    output = server.output()
    errors = [line for line in output.splitlines() if line.startswith("mlkube serve: error:")]
    assert code == 1 and len(errors) == 1, output
    assert errors[0] == (f"mlkube serve: error: model {NAME} version {version} "
                         f"({registry.uri('small')}) failed verification: a batch of 16 rows "
                         "failed: this model takes at most 8 rows, not 16")
    assert 200 not in seen and "Traceback" not in output


def test_the_local_target_verifies_every_load_on_its_batch(registry: Registry,
                                                           tmp_path: Path) -> None:
    from mlkube.targets import local
    from mlkube_testing import free_port

    target = local.LocalTarget(state_dir=tmp_path, model_name=NAME, host="127.0.0.1",
                               port=free_port(), ready_timeout=120, log=lambda _: None,
                               verify_batch=16)
    trained, retrained = registry.versions["trained"], registry.versions["retrained"]
    verified = "verified on its input example (5 rows) and batches of 1 and 16 rows"
    try:
        target.roll_out(trained, registry.uri("trained"))  # starts the server
        started = local.current(tmp_path, NAME)
        assert started is not None and target.live_version() == trained
        log = Path(started.log)
        assert f"version {trained} ({registry.uri('trained')}) ready: {verified}" in \
            log.read_text()
        with pytest.raises(MlkubeError, match=r"failed verification: a batch of 16 rows "
                                              r"failed: this model takes at most 8 rows"):
            target.roll_out(registry.versions["small"], registry.uri("small"))  # a hot swap
        assert target.live_version() == trained
        assert len(client.infer(target.base_url, NAME, registry.rows[:16].tolist())[
            "label"]) == 16
        answer = client.load(target.base_url, NAME, retrained, registry.uri("retrained"),
                             verify_batch=32)
        assert answer["replaced_version"] == trained and answer["verify_batch"] == 32
        assert answer["verified_batches"] == [1, 5, 32] and answer["fast_path"] is True
        target.roll_back(trained)
        assert target.live_version() == trained
        assert log.read_text().count(f"version {trained} ({registry.uri('trained')}) ready: "
                                     f"{verified}") == 2
    finally:
        found = local.current(tmp_path, NAME)
        if found is not None:
            local.stop(found)


def test_the_direct_torch_call_is_dropped_where_a_batch_disagrees(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlkube.serve import loaded

    uri, version = registry.uri("trained"), registry.versions["trained"]
    model = loaded.load(uri, name=NAME, version=version, verify_batch=16)
    assert model.fast_path and model.verified_batches == [1, 5, 16]
    assert model.verified_rows == 16 and model.example_rows == 5
    real = loaded.LoadedModel._predict_torch

    def wrong_above_5(self: loaded.LoadedModel, rows: Any) -> Any:
        out = real(self, rows)
        return out + 1.0 if len(rows) > 5 else out  # right on the example, wrong at 16

    def fails_above_5(self: loaded.LoadedModel, rows: Any) -> Any:
        if len(rows) > 5:
            raise RuntimeError("out of memory")
        return real(self, rows)

    for broken in (wrong_above_5, fails_above_5):
        monkeypatch.setattr(loaded.LoadedModel, "_predict_torch", broken)
        model = loaded.load(uri, name=NAME, version=version, verify_batch=16)
        assert not model.fast_path and model.verified_batches == [1, 5, 16]
        expected = np.asarray(_pyfunc(uri).predict(registry.rows[:16]))
        assert np.allclose(model.predict(registry.rows[:16]), expected, rtol=1e-5, atol=1e-6)
    small = loaded.load(registry.uri("small"), name=NAME, version="5", verify_batch=1)
    assert small.verified_batches == [1, 2] and small.verified_rows == 2
    assert small.verified() == "its input example (2 rows) and a batch of 1 row"
    with pytest.raises(MlkubeError, match=r"^verify_batch is 0; give a positive number of "
                                          r"rows \(default 64\)$"):
        loaded.load(uri, name=NAME, version=version, verify_batch=0)


def test_the_verify_batch_is_a_server_option(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mlkube.serve import server as model_server

    argv = model_server.arguments(model_uri="models:/m/3", name="m", version="3",
                                  host="127.0.0.1", port=8080, verify_batch=500)
    assert argv[-2:] == ["--verify-batch", "500"]
    parser = argparse.ArgumentParser()
    model_server.add_arguments(parser)
    assert parser.parse_args(argv).verify_batch == 500
    assert parser.parse_args(["--model-uri", "models:/m/3"]).verify_batch == 64
    assert "--verify-batch" not in model_server.arguments(
        model_uri="models:/m/3", name="m", version="3", host="127.0.0.1", port=8080)
    for value in ("0", "-3"):
        assert model_server.main(["--model-uri", "models:/m/3", "--verify-batch", value]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"mlkube serve: error: --verify-batch is {value}; give a positive number of rows "
            "(default 64)"]
