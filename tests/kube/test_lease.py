"""The deploy step's model lock on a cluster: a Lease, on the fake API server with the deploy
Role's RBAC (every request is checked as the RBAC authorizer would)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_apiserver import FakeApiServer

from mlkube.errors import Busy, MlkubeError
from mlkube.kube import serving
from mlkube.kube.lease import Lease
from mlkube.kube.rbac import DEPLOY_SERVICE_ACCOUNT, rbac_objects
from mlkube.spec import model_lock

NAME = model_lock("churn")


def deploy_role() -> list[dict[str, Any]]:
    return [serving.to_dict(o) for o in rbac_objects("ml")
            if o.metadata.name == DEPLOY_SERVICE_ACCOUNT]


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(rbac=deploy_role()) as server:  # requests as the deploy account
        yield server
        assert server.refusals == []
        assert server.schema_errors() == []


def lease(fake: FakeApiServer, holder: str, lines: list[str] | None = None,
          **kwargs: Any) -> Lease:
    kwargs.setdefault("poll", 0.05)
    log = lines.append if lines is not None else (lambda line: None)
    return Lease(fake.api_client(), "ml", NAME, holder=holder, log=log, **kwargs)


def spec_of(fake: FakeApiServer) -> dict[str, Any]:
    stored = fake.get("Lease", NAME)
    assert stored is not None
    return dict(stored["spec"])


def test_a_second_deploy_waits_then_fails_naming_the_holder(fake: FakeApiServer) -> None:
    first = lease(fake, "deploy-a pid 1", seconds=1)
    with first.held():
        assert spec_of(fake)["holderIdentity"] == "deploy-a pid 1"
        started = time.monotonic()
        with pytest.raises(Busy) as failed:
            lease(fake, "deploy-b pid 2", wait=2.5).acquire()  # a renewed lease: never expired
        assert time.monotonic() - started >= 2.5
        assert failed.value.exit_code == 75
        message = str(failed.value)
        assert "\n" not in message
        assert message.startswith(f"another deploy holds Lease ml/{NAME}: deploy-a pid 1 ")
        assert message.endswith("run it again once that deploy has finished")
        first.check()  # still ours
    assert spec_of(fake).get("holderIdentity") is None  # given up at the end


def test_a_released_lease_is_taken_at_once(fake: FakeApiServer) -> None:
    with lease(fake, "a").held():
        pass
    lines: list[str] = []
    with lease(fake, "b", lines, wait=5).held():
        assert spec_of(fake)["holderIdentity"] == "b"
        assert spec_of(fake)["leaseTransitions"] == 1
    # taken without waiting for anyone nor taking over from anyone: no line of either
    assert not [x for x in lines if "waiting" in x or "taking over" in x], lines


def test_a_killed_holders_lease_is_taken_over_once_it_stops_changing(
        fake: FakeApiServer) -> None:
    lease(fake, "killed pid 1", seconds=1).acquire()  # acquired, never renewed nor released
    lines: list[str] = []
    started = time.monotonic()
    with lease(fake, "retry pid 2", lines, wait=10).held():
        assert spec_of(fake)["holderIdentity"] == "retry pid 2"
    # taken only after the holder's 1 s lease, as this process observed it (and before its own
    # 10 s wait ran out: else Busy)
    assert time.monotonic() - started >= 1
    assert lines == [f"another deploy holds Lease ml/{NAME} (killed pid 1): waiting up to 10 s "
                     "for it",
                     f"taking over Lease ml/{NAME} from killed pid 1: not renewed for 1 s"]


def test_of_two_takers_at_once_exactly_one_holds(fake: FakeApiServer) -> None:
    outcomes: dict[str, str] = {}
    go = threading.Barrier(2)
    release = threading.Event()

    def take(holder: str) -> None:
        go.wait()
        try:
            with lease(fake, holder, wait=0.5).held():
                outcomes[holder] = "held"
                release.wait(5)
        except Busy as exc:
            outcomes[holder] = str(exc)

    threads = [threading.Thread(target=take, args=(h,)) for h in ("a", "b")]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["a", "b"]
    assert sorted(v == "held" for v in outcomes.values()) == [False, True]
    loser = next(v for v in outcomes.values() if v != "held")
    winner = next(h for h, v in outcomes.items() if v == "held")
    assert f": {winner} " in loser


def test_a_holder_whose_lease_was_taken_stops_before_changing_more(fake: FakeApiServer) -> None:
    lines: list[str] = []
    first = lease(fake, "slow", lines, seconds=1)
    with pytest.raises(MlkubeError, match="was taken by thief while this deploy held it"):
        with first.held():
            stored = fake.get("Lease", NAME)
            assert stored is not None
            stored["spec"]["holderIdentity"] = "thief"
            fake.put(stored)  # as a taker would after our renewals failed for a lease
            deadline = time.monotonic() + 5
            while first.lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
    assert f"lost Lease ml/{NAME} to thief" in lines
    assert spec_of(fake)["holderIdentity"] == "thief"  # not released: it is not ours


def test_without_the_lease_verbs_the_deploy_fails_in_one_line() -> None:
    role = deploy_role()
    for obj in role:
        if obj["kind"] == "Role":
            obj["rules"] = [r for r in obj["rules"] if "leases" not in r["resources"]]
    with FakeApiServer(rbac=role) as api:
        with pytest.raises(MlkubeError) as failed:
            lease(api, "a").acquire()
    message = str(failed.value)
    assert message.startswith(f"could not create Lease ml/{NAME} in http://127.0.0.1:")
    assert "is forbidden" in message and message.endswith(
        "give the deploy step's service account mlkube's deploy Role "
        "(mlkube.kube.serving.deploy_rbac)")
