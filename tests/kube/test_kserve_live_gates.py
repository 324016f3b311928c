"""The deploy step's canary phase on the KServe target (issue 17, item 5): the new version a
revision of its own taking ``canaryTrafficPercent`` of the traffic, judged on its pods' live
numbers (read through the API server's pod proxy), then promoted (all traffic to it) or rolled
back (the previous revision at 100 %, then the previous version applied again in place of the
canary's spec).

Real parts, as in ``test_deploy_live_gates.py`` (whose registry, versions 5 and 6 and helpers
this module reuses): the deploy step as its own process, the real ``kubernetes`` client against
the fake API server (its KServe controller, RBAC from the deploy Role ``mlkube argo render``
writes, the pod proxy), a real ``mlflow server``, and behind every revision's pod its *own*
real ``mlkube serve model`` process (``KubeProxy(per_pod=True)``). Clients reach the
InferenceService's address through a NodePort-like front, split between the revisions by the
predictor's ``traffic`` status as Knative splits it (``serving_pods``); the canary's smoke test
goes to its tag route ``latest-kill-test-predictor``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fake_apiserver import FakeApiServer, version_of
from serving_pods import KubeProxy
from test_deploy_kills import (  # noqa: F401  (registry: a fixture, used by name)
    ENDPOINT,
    LEASE,
    NAME,
    TICK,
    Cluster,
    Registry,
    Running,
    _serving_env,
    _verify_batch,
    deploy_role,
    recorded,
    registry,
)
from test_deploy_live_gates import (  # noqa: F401  (versions: a fixture, used by name)
    FAILS_LIVE,
    SLOW,
    _config,
    _rows,
    versions,
)

from mlkube.kube import serving
from mlkube.steps.deploy import SERVING_ALIAS
from mlkube_testing import Load

pytestmark = pytest.mark.slow

ISVC = NAME  # the InferenceService's name, from the model's
PREDICTOR = f"{ISVC}-predictor"


def _predictor_spec(base: Registry, version: str) -> dict[str, Any]:
    """The predictor pod spec the step renders for ``version`` (what the revision's pod runs)."""
    from mlkube.spec import SERVER_IMAGE

    rendered = serving.ModelServing(
        name=ISVC, model_name=NAME, namespace="ml", env=_serving_env(base),
        image=SERVER_IMAGE, verify_batch=_verify_batch(base), version=version,
        model_uri=f"models:/{NAME}/{version}")
    return dict(serving.inference_service(rendered)["spec"]["predictor"])


def _spare(proxy: KubeProxy, base: Registry, version: str) -> None:
    """A process of ``version``'s predictor started ahead (the next pod of it takes it)."""
    proxy.runtimes.start({"spec": _predictor_spec(base, version)})


@pytest.fixture(scope="module")
def proxy(versions: Registry) -> Iterator[KubeProxy]:  # noqa: F811
    """A kube-proxy whose pods each run their own runtime process (per_pod)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": versions.tracking_uri,
           "MLKUBE_STATE_DIR": str(versions.workdir / "runtime-state-kserve")}
    with KubeProxy(versions.workdir, env, per_pod=True) as started:
        _spare(started, versions, "1")
        yield started


class KServeCluster(Cluster):
    """A fake cluster serving KServe's API; the deploy step runs with ``--target kserve``."""

    def start(self, version: str | None, phase: str = "none",
              lease_seconds: str | None = "1") -> Running:
        import subprocess
        import sys

        from test_deploy_kills import BOOT

        self.started += 1
        result = self.tmp / f"result-{self.started}.json"
        command = [sys.executable, "-c", BOOT, phase, "--config", str(self.registry.config),
                   "--dataset", self.registry.dataset,
                   *(["--version", version] if version is not None else []),
                   "--target", "kserve", "--namespace", "ml", "--result-file", str(result)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=self.env(lease_seconds), cwd=self.tmp)
        return Running(process, result)

    def isvc(self) -> dict[str, Any]:
        live = self.fake.get("InferenceService", ISVC)
        assert live is not None
        return live

    def traffic(self) -> list[tuple[str, int, str | None]]:
        """(revision, percent, the version its pod runs) of each traffic entry."""
        entries = self.isvc()["status"]["components"]["predictor"]["traffic"]
        found = []
        for entry in entries:
            pods = [p for p in self.pods() if p["metadata"]["labels"].get(
                "serving.knative.dev/revision") == entry["revisionName"]]
            found.append((entry["revisionName"], entry["percent"],
                          version_of(pods[0]["spec"]) if pods else None))
        return found

    def seed(self, version: str) -> None:
        """``version`` serves on the InferenceService and is recorded, as a finished deploy
        of it leaves them (rendered as the step renders it)."""
        import mlflow

        from mlkube import targets

        target = targets.choose("kserve", model_name=NAME, namespace="ml",
                                serving_env=lambda: _serving_env(self.registry),
                                verify_batch=_verify_batch(self.registry),
                                api_client=self.fake.api_client(), poll=TICK,
                                log=lambda line: None)
        target.roll_out(version, f"models:/{NAME}/{version}")
        assert target.live_version() == version
        mlflow.MlflowClient().set_registered_model_alias(NAME, SERVING_ALIAS, version)
        assert self.answered() == [version] * 4

    def assert_serves_only(self, version: str) -> None:
        """All the traffic to one revision, whose pod runs ``version``; the spec carries it
        with no canary; the published URL answers with it; the alias names it."""
        live = self.isvc()
        assert live["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION] == version
        assert "canaryTrafficPercent" not in live["spec"]["predictor"]
        assert [(percent, runs) for _, percent, runs in self.traffic()] == [(100, version)]
        assert self.answered() == [version] * 4
        assert self.lease_holder() is None, "the Lease is given up"
        assert recorded() == version


@contextmanager
def _open(versions: Registry, proxy: KubeProxy, tmp_path: Path,  # noqa: F811
          rbac: list[dict[str, Any]],
          **sections: dict[str, Any]) -> Iterator[KServeCluster]:
    """A fresh fake cluster serving KServe's API (``rbac``) reached through ``proxy``, the
    registry's aliases cleared; the canary phase on (half the traffic, 20 requests judged, no
    error allowed); its pods' processes stopped at the end; every stored object valid."""
    import mlflow

    mlflow.set_tracking_uri(versions.tracking_uri)
    client = mlflow.MlflowClient()
    for alias in (SERVING_ALIAS, "champion", "challenger"):
        try:
            client.delete_registered_model_alias(NAME, alias)
        except mlflow.exceptions.MlflowException:
            pass
    with FakeApiServer(kserve=True, rbac=rbac, tick=TICK) as fake:
        proxy.fake = fake
        proxy.routes.clear()
        proxy.pod_routes.clear()
        try:
            yield KServeCluster(fake=fake, proxy=proxy, registry=_config(versions, tmp_path,
                                                                         **sections),
                                tmp=tmp_path)
        finally:
            proxy.fake = None
            proxy.runtimes.stop_pods()
        assert fake.schema_errors() == []


@pytest.fixture
def cluster(versions: Registry, proxy: KubeProxy,  # noqa: F811
            tmp_path: Path) -> Iterator[KServeCluster]:
    """A fresh cluster with the deploy Role's RBAC; at its end: nothing was refused, the pod
    proxy was read."""
    with _open(versions, proxy, tmp_path, deploy_role()) as cluster:
        yield cluster
        assert cluster.fake.refusals == [], "the deploy Role allows all the step does"
        assert ("get", "pods/proxy") in cluster.fake.granted


def _live_reads(cluster: Cluster) -> set[str]:
    """The pods whose runtime the step asked for its live numbers."""
    return {r.pod for r in cluster.proxy.pod_routes
            if r.method == "GET" and r.path.endswith("/live") and r.status == 200}


def test_a_good_canary_revision_takes_its_share_then_all_the_traffic_under_load(
        cluster: KServeCluster) -> None:
    """v1 serves. The deploy of v2 applies it as a canary revision taking 50 % of the traffic
    (``canaryTrafficPercent``), smoke-tests it by its tag route, reads its pod's live numbers
    through the pod proxy until 20 requests passed the bounds, then gives it all the traffic:
    clients asking the InferenceService all along see no failure, answers from both versions,
    then only v2; the alias follows."""
    cluster.seed("1")
    _spare(cluster.proxy, cluster.registry, "2")
    (old_revision, _, _), = cluster.traffic()
    front = cluster.proxy.front(ISVC)
    rows = _rows(cluster.registry)
    with Load(front, NAME, rows, clients=3, pause=0.005) as load:
        done = cluster.deploy("2")
    assert done.code == 0, done.err
    assert done.result == {"model_name": NAME, "version": "2", "endpoint": ENDPOINT,
                           "replaced_version": "1"}
    assert load.failed == [], load.failed[:3]
    assert load.versions["1"] > 0 and load.versions["2"] >= 20, load.versions
    assert done.said("rolling out version 2 as a canary revision of InferenceService "
                     "ml/kill-test taking 50% of its traffic (canaryTrafficPercent)")
    assert done.said(f"takes 50% of the traffic, revision {old_revision} the rest")
    assert done.said("canary v2 answers 50% of the live requests: waiting for 20 of them")
    (promoted,) = [line for line in done.out.splitlines() if "within the bounds" in line]
    assert promoted.startswith("[deploy] canary v2: error rate 0.0%, p99 ") and \
        promoted.endswith(" requests, within the bounds: promoted"), promoted
    new_revision = cluster.isvc()["status"]["components"]["predictor"]["latestReadyRevision"]
    assert new_revision != old_revision
    assert {r.pod.split("-deployment-")[0] for r in cluster.proxy.pod_routes
            if r.path.endswith("/live")} >= {new_revision}, "the canary's pod was read"
    smoke = [r for r in cluster.proxy.routes if r.service == f"latest-{PREDICTOR}"]
    assert smoke and {r.version for r in smoke} == {"2"}, "smoke-tested by its tag route"
    assert cluster.isvc()["metadata"]["annotations"][
        "serving.kserve.io/enable-tag-routing"] == "true"
    cluster.assert_serves_only("2")
    with Load(front, NAME, rows, clients=2, pause=0.005) as after:
        cluster.fake.wait_for(lambda: after.ok >= 20, timeout=60)
    assert after.failed == [] and set(after.versions) == {"2"}


@pytest.mark.parametrize(("version", "serving_config", "bound"), [
    (FAILS_LIVE, {}, "error rate "),
    (SLOW, {"canary_max_p99_ms": 50, "canary_requests": 10}, "p99 "),
])
def test_a_canary_revision_over_a_bound_is_rolled_back_in_one_line(
        cluster: KServeCluster, version: str, serving_config: dict[str, Any],
        bound: str) -> None:
    """v5 fails live requests of 3 rows (what the clients send); v6 answers in 0.1 s where the
    bound is 50 ms. Its revision takes half the traffic; v5's first failures break the error
    bound (none allowed), v6's p99 the latency bound: it takes no traffic at once
    (``canaryTrafficPercent: 0``), v1 is applied again in place of its spec and takes all the
    traffic; the step fails in one line naming the bound; the alias stays; the only failures
    the clients saw were the canary's own answers."""
    cluster.registry = _config(cluster.registry, cluster.tmp, serving=serving_config)
    cluster.seed("1")
    _spare(cluster.proxy, cluster.registry, version)
    _spare(cluster.proxy, cluster.registry, "1")  # the revision the rollback makes of v1
    front = cluster.proxy.front(ISVC)
    with Load(front, NAME, _rows(cluster.registry), clients=3, pause=0.005) as load:
        done = cluster.deploy(version)
    assert done.code == 1 and done.result is None, done.err
    (line,) = done.lines
    assert line.startswith(f"mlkube deploy: error: version {version} failed its rollout "
                           f"(canary v{version}: {bound}"), line
    named = ("requests failed) over the bound 0.0% (serving.canary_max_error_rate)); "
             if version == FAILS_LIVE else
             " ms over the bound 50 ms (serving.canary_max_p99_ms) over ")
    assert named in line and line.endswith(f"rolled back: version 1 serves at {ENDPOINT}"), line
    if version == FAILS_LIVE:  # the canary's own answers, and only those
        assert load.failed and all("answered 500" in f for f in load.failed), load.failed[:3]
        assert set(load.versions) == {"1"} and load.versions["1"] > 0
    else:  # slow, but it answered
        assert load.failed == [], load.failed[:3]
        assert load.versions["1"] > 0 and load.versions[SLOW] > 0
    assert done.said("takes no traffic (canaryTrafficPercent: 0)")
    assert _live_reads(cluster), "judged on its pod's numbers"
    cluster.assert_serves_only("1")
    with Load(front, NAME, _rows(cluster.registry), clients=2, pause=0.005) as after:
        cluster.fake.wait_for(lambda: after.ok >= 20, timeout=60)
    assert after.failed == [] and set(after.versions) == {"1"}


def test_a_role_without_pods_proxy_rolls_the_canary_revision_back_in_one_line(
        versions: Registry, proxy: KubeProxy, tmp_path: Path) -> None:  # noqa: F811
    """Without the deploy Role's ``pods/proxy`` rule the API server refuses the live numbers'
    read (403): the canary revision (which took its share) is rolled back, the step fails in
    one line quoting the refusal and naming the rule, v1 serves on, the alias stays."""
    role = deploy_role()
    for obj in role:
        if obj["kind"] == "Role":
            obj["rules"] = [r for r in obj["rules"] if r["resources"] != ["pods/proxy"]]
    with _open(versions, proxy, tmp_path, role) as cluster:
        cluster.seed("1")
        _spare(proxy, versions, "2")
        _spare(proxy, versions, "1")
        done = cluster.deploy("2")
        assert done.code == 1 and done.result is None, done.err
        (line,) = done.lines
        assert line.startswith("mlkube deploy: error: version 2 failed its rollout (the API "
                               "server at "), line
        assert ('cannot get resource "pods/proxy" in API group "" in the namespace "ml"; give '
                "the deploy step's service account mlkube's deploy Role, which allows get and "
                "create on pods/proxy") in line, line
        assert line.endswith(f"rolled back: version 1 serves at {ENDPOINT}"), line
        assert {(v, r) for v, r, *_ in cluster.fake.refusals} == {("get", "pods/proxy")}
        assert proxy.pod_routes == [], "nothing reached a pod through the API server"
        cluster.assert_serves_only("1")


def test_a_deploy_killed_with_its_canary_revision_split_is_judged_again_by_its_retry(
        cluster: KServeCluster) -> None:
    """The deploy of v2 is SIGKILLed right after its canary revision took half the traffic (its
    Lease held). What serves is still v1 (the rolled-out revision's pods), so the retry takes
    the Lease over, finds the canary revision of v2 in place (not applied again), judges it on
    live numbers and gives it all the traffic; clients asking meanwhile see no failure."""
    cluster.seed("1")
    _spare(cluster.proxy, cluster.registry, "2")
    killed = cluster.deploy("2", "after_slot")
    assert killed.code == -signal.SIGKILL and killed.lines == []
    assert [(percent, runs) for _, percent, runs in cluster.traffic()] == [(50, "1"), (50, "2")]
    applies = len(cluster.fake.applies("InferenceService"))
    with Load(cluster.proxy.front(ISVC), NAME, _rows(cluster.registry), clients=3,
              pause=0.005) as load:
        again = cluster.deploy("2")
    assert again.code == 0, again.err
    assert again.result == {"model_name": NAME, "version": "2", "endpoint": ENDPOINT,
                            "replaced_version": "1"}
    assert again.said(f"taking over Lease ml/{LEASE} from {killed.holder}")
    assert not again.said("as a canary revision"), "the split the kill left, judged on"
    assert again.said("(v2) an earlier deploy left takes 50% of the traffic")
    assert again.said("canary v2 answers 50% of the live requests")
    assert any("within the bounds: promoted" in line for line in again.out.splitlines())
    assert load.failed == [], load.failed[:3]
    assert len(cluster.fake.applies("InferenceService")) == applies + 1, "only the promotion"
    cluster.assert_serves_only("2")
