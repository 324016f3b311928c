"""The runtime's slots beside the main model: a shadow mirrored off the request path, a canary
taking a share of the requests, promoted or unloaded (issue 17, items 4 and 5).

Real parts: models trained and registered by the steps, pyfunc models that are slow or fail
live requests, a real ``mlkube serve model`` process, real HTTP.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from serve_env import NAME, Registry, Server, log_pyfunc, start_server

from mlkube.errors import MlkubeError
from mlkube.serve import client

CLASSES = [0, 1]  # the demo's, so the pyfunc models answer the trained models' contract


@pytest.fixture(scope="module")
def slots(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server for version ``trained``, and a slow and a failing model registered."""
    import mlflow

    from mlkube import tracking

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
        patch.setenv("MLKUBE_STATE_DIR", str(registry.state))
        mlflow.set_tracking_uri(registry.tracking_uri)
        experiment = tracking.configure(registry.state, "mlkube-test")
        meta = {"features": registry.features, "classes": CLASSES}
        example = registry.rows[:5]
        for role, config in (("slow", {"kind": "gated", "delay": 0.3}),
                             ("failing", {"kind": "gated", "fail_rows": 3})):
            uri = log_pyfunc(experiment, example, config, meta)
            registry.versions[role] = str(mlflow.register_model(uri, NAME).version)
        log = tmp_path_factory.mktemp("slots") / "server.log"
        server = start_server(registry.uri("trained"), NAME, registry.versions["trained"], log)
    try:
        server.wait("/v2/health/ready", 200)
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh(slots: Server, registry: Registry) -> Server:
    """The server with ``trained`` as its main model and no slot beside it."""
    client.load(slots.url, NAME, registry.versions["trained"], registry.uri("trained"))
    for role in ("canary", "shadow"):
        try:
            client.unload(slots.url, NAME, role)
        except MlkubeError:
            pass
    return slots


def _ask(server: Server, rows: list[list[float]], n: int) -> list[dict[str, Any]]:
    """``n`` answers (or ``{"error": ...}``) to requests of ``rows``, one after the other."""
    answers = []
    for _ in range(n):
        try:
            answers.append(client.infer_answer(server.url, NAME, rows, input_name="input"))
        except MlkubeError as exc:
            answers.append({"error": str(exc)})
    return answers


def _until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_shadow_gets_mirrors_off_the_request_path_and_its_agreement_is_recorded(
        fresh: Server, registry: Registry) -> None:
    main, other = registry.versions["trained"], registry.versions["retrained"]
    loaded = client.load(fresh.url, NAME, other, registry.uri("retrained"), role="shadow",
                         share=1.0)
    assert (loaded["role"], loaded["version"], loaded["share"]) == ("shadow", other, 1.0)
    rows = registry.rows[:3].tolist()
    answers = _ask(fresh, rows, 30)
    assert {a.get("model_version") for a in answers} == {main}  # only the main model answers
    live = _until(lambda: (n := client.live_numbers(fresh.url, NAME))["shadow"]["requests"] >= 30
                  and n)
    shadow = live["shadow"]
    assert (shadow["version"], shadow["requests"], shadow["errors"]) == (other, 30, 0), live
    assert shadow["compared_rows"] == 90 and 0.0 <= shadow["agreement"] <= 1.0
    assert shadow["mean_abs_diff"] is None and shadow["p99_ms"] > 0
    assert live["main"]["requests"] >= 30 and live["canary"] is None
    # the same model as its own shadow agrees on every row
    client.load(fresh.url, NAME, main, registry.uri("trained"), role="shadow", share=0.5)
    _ask(fresh, rows, 20)
    same = _until(lambda: (n := client.live_numbers(fresh.url, NAME))["shadow"]["requests"] >= 10
                  and n)["shadow"]
    assert same["requests"] == 10 and same["agreement"] == 1.0  # exactly half mirrored


def test_a_slow_shadow_never_slows_the_clients(fresh: Server, registry: Registry) -> None:
    main = registry.versions["trained"]
    rows = registry.rows[:3].tolist()

    def p50() -> float:
        took = []
        for _ in range(15):
            started = time.perf_counter()
            answer = client.infer_answer(fresh.url, NAME, rows, input_name="input")
            took.append(time.perf_counter() - started)
            assert answer["model_version"] == main
        return statistics.median(took)

    without = p50()
    client.load(fresh.url, NAME, registry.versions["slow"], registry.uri("slow"), role="shadow",
                share=1.0)
    with_slow = p50()  # the shadow takes 0.3 s a prediction: on the path, each request would
    assert with_slow < 0.15, (without, with_slow)  # ... take that long at least
    live = _until(lambda: (n := client.live_numbers(fresh.url, NAME))["shadow"]["requests"] >= 2
                  and n)
    shadow = live["shadow"]
    assert shadow["requests"] + shadow["dropped"] + live["mirror_pending"] <= 15
    assert shadow["requests"] >= 2 and shadow["p99_ms"] >= 300, live
    client.unload(fresh.url, NAME, "shadow")
    assert client.live_numbers(fresh.url, NAME)["shadow"] is None
    assert client.metadata(fresh.url, NAME)["versions"] == [main]


def test_a_canary_answers_its_share_and_is_promoted_in_one_step(
        fresh: Server, registry: Registry) -> None:
    main, other = registry.versions["trained"], registry.versions["retrained"]
    client.load(fresh.url, NAME, other, registry.uri("retrained"), role="canary", share=0.25)
    before = client.live_numbers(fresh.url, NAME)["main"]["requests"]
    answers = _ask(fresh, registry.rows[:3].tolist(), 40)
    versions = [a["model_version"] for a in answers]
    assert versions.count(other) == 10 and versions.count(main) == 30  # a counter, not a coin
    live = client.live_numbers(fresh.url, NAME)
    assert (live["canary"]["version"], live["canary"]["requests"]) == (other, 10)
    assert live["main"]["requests"] - before == 30 and live["canary"]["errors"] == 0
    # a request naming the canary's version reaches it
    named = client.infer_answer(fresh.url, NAME, registry.rows[:2].tolist(), version=other,
                                input_name="input")
    assert named["model_version"] == other
    promoted = client.promote(fresh.url, NAME)
    assert (promoted["version"], promoted["replaced_version"]) == (other, main)
    assert client.metadata(fresh.url, NAME)["versions"] == [other]
    after = client.live_numbers(fresh.url, NAME)
    assert after["canary"] is None and after["main"]["version"] == other
    assert {a["model_version"] for a in _ask(fresh, registry.rows[:3].tolist(), 5)} == {other}


def test_a_failing_canary_fails_only_its_share_and_is_unloaded(
        fresh: Server, registry: Registry) -> None:
    main, failing = registry.versions["trained"], registry.versions["failing"]
    client.load(fresh.url, NAME, failing, registry.uri("failing"), role="canary", share=0.5)
    answers = _ask(fresh, registry.rows[:3].tolist(), 10)
    errors = [a["error"] for a in answers if "error" in a]
    assert len(errors) == 5 and all("answered 500" in e for e in errors), errors
    assert {a["model_version"] for a in answers if "error" not in a} == {main}
    canary = client.live_numbers(fresh.url, NAME)["canary"]
    assert (canary["requests"], canary["errors"], canary["error_rate"]) == (5, 5, 1.0)
    with urllib.request.urlopen(f"{fresh.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert (f'mlkube_serve_slot_errors{{model="{NAME}",role="canary",version="{failing}"}} 5'
            in text), text[-2000:]
    client.unload(fresh.url, NAME, "canary")
    assert all("error" not in a for a in _ask(fresh, registry.rows[:3].tolist(), 10))


def test_slot_loads_are_checked(fresh: Server, registry: Registry) -> None:
    with pytest.raises(MlkubeError, match="answered 400: parameters.role is \"main2\""):
        client.load(fresh.url, NAME, "9", registry.uri("retrained"), role="main2")
    with pytest.raises(MlkubeError, match="parameters.share is 2"):
        client.load(fresh.url, NAME, "9", registry.uri("retrained"), role="canary", share=2)
    with pytest.raises(MlkubeError, match="answered 409: model other has no main version"):
        client.load(fresh.url, "other", "1", registry.uri("retrained"), role="shadow")
    # the "small" model labels its classes no/yes: not the main version's contract
    with pytest.raises(MlkubeError, match="cannot be the canary of version"):
        client.load(fresh.url, NAME, registry.versions["small"], registry.uri("small"),
                    role="canary", verify_batch=2)
    with pytest.raises(MlkubeError, match="answered 404: model serve-test has no canary"):
        client.promote(fresh.url, NAME)
    assert client.live_numbers(fresh.url, NAME)["canary"] is None
