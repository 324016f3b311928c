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

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

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
    _serving_env,
    _verify_batch,
    deploy_role,
    recorded,
    registry,
)
from test_deploy_live_gates import (  # noqa: F401  (versions: a fixture, used by name)
    BOUNDS,
    FAILS_LIVE,
    LIVE,
    _config,
    _loads,
    _rows,
    canary_killed_then_retried,
    canary_over_a_bound,
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
    """A fake cluster serving KServe's API (serverless mode); the deploy step runs with
    ``--target kserve``."""

    TARGET: ClassVar[str] = "kserve"

    def seeded(self, target: Any, version: str) -> bool:
        """The InferenceService serves ``version`` with all the traffic."""
        return bool(target.live_version() == version)

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


class RawKServeCluster(KServeCluster):
    """A fake cluster whose KServe serves in raw-deployment mode (its default mode): the
    predictor a Deployment ``kill-test-predictor`` and a Service of that name, which is the
    InferenceService's address."""

    url: ClassVar[str] = f"http://{PREDICTOR}.ml.svc.cluster.local"

    def assert_serves_only(self, version: str) -> None:
        """The InferenceService carries ``version`` with no canary, in raw mode; its
        predictor Deployment rolled out to it, every pod of it ready and running it, no slot
        loaded; the published URL answers with it; the alias names it."""
        live = self.isvc()
        assert live["status"]["deploymentMode"] == "RawDeployment"
        assert live["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION] == version
        assert "canaryTrafficPercent" not in live["spec"]["predictor"]
        deployment = self.fake.get("Deployment", PREDICTOR)
        assert deployment is not None
        status = deployment["status"]
        assert status["observedGeneration"] == deployment["metadata"]["generation"]
        assert status["updatedReplicas"] == status["replicas"] == status["availableReplicas"]
        pods = self.pods()
        assert pods and {version_of(p["spec"]) for p in pods} == {version}
        assert [slots[1:] for slots in _pod_slots(self)] == [(None, None)] * len(pods)
        assert self.answered() == [version] * 4
        assert self.lease_holder() is None, "the Lease is given up"
        assert recorded() == version


@contextmanager
def _open(versions: Registry, proxy: KubeProxy, tmp_path: Path,  # noqa: F811
          rbac: list[dict[str, Any]], mode: str = "Serverless",
          **sections: dict[str, Any]) -> Iterator[KServeCluster]:
    """A fresh fake cluster serving KServe's API (``rbac``; KServe's default deployment
    ``mode``) reached through ``proxy``, the registry's aliases cleared; the canary phase on
    (half the traffic, 20 requests judged, no error allowed) and ``sections`` merged in; its
    pods' processes stopped at the end; every stored object valid."""
    import mlflow

    mlflow.set_tracking_uri(versions.tracking_uri)
    client = mlflow.MlflowClient()
    for alias in (SERVING_ALIAS, "champion", "challenger"):
        try:
            client.delete_registered_model_alias(NAME, alias)
        except mlflow.exceptions.MlflowException:
            pass
    kind = RawKServeCluster if mode == "RawDeployment" else KServeCluster
    with FakeApiServer(kserve=True, kserve_mode=mode, rbac=rbac, tick=TICK) as fake:
        proxy.fake = fake
        proxy.routes.clear()
        proxy.pod_routes.clear()
        try:
            yield kind(fake=fake, proxy=proxy, registry=_config(versions, tmp_path, **sections),
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


@BOUNDS
def test_a_canary_revision_over_a_bound_is_rolled_back_in_one_line(
        cluster: KServeCluster, version: str, serving_config: dict[str, Any],
        bound: str) -> None:
    """v5 fails live requests of 3 rows (what the clients send); v6 answers in 0.1 s where the
    bound is 50 ms. Its revision takes half the traffic; v5's first failures break the error
    bound (none allowed), v6's p99 the latency bound: it takes no traffic at once
    (``canaryTrafficPercent: 0``), v1 is applied again in place of its spec and takes all the
    traffic; the step fails in one line naming the bound; the alias stays; the only failures
    the clients saw were the canary's own answers (``canary_over_a_bound``)."""

    def spares() -> None:
        _spare(cluster.proxy, cluster.registry, version)
        _spare(cluster.proxy, cluster.registry, "1")  # the revision the rollback makes of v1

    canary_over_a_bound(cluster, version, serving_config, bound, service=ISVC,
                        unloaded="takes no traffic (canaryTrafficPercent: 0)", before=spares)
    assert _live_reads(cluster), "judged on its pod's numbers"


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
    applies: list[int] = []

    def left() -> None:
        assert [(percent, runs) for _, percent, runs in cluster.traffic()] == [
            (50, "1"), (50, "2")]
        applies.append(len(cluster.fake.applies("InferenceService")))

    again = canary_killed_then_retried(
        cluster, service=ISVC, before=lambda: _spare(cluster.proxy, cluster.registry, "2"),
        left=left)
    assert not again.said("as a canary revision"), "the split the kill left, judged on"
    assert again.said("(v2) an earlier deploy left takes 50% of the traffic")
    assert any("within the bounds: promoted" in line for line in again.out.splitlines())
    assert len(cluster.fake.applies("InferenceService")) == applies[0] + 1, "only the promotion"


# --- the shadow gate on KServe: the challenger in the serving revision's pods ------------------


GATE = {"min_live_requests": 20, "max_mean_abs_diff": 0.01}  # the models answer values
SHADOWING = {"canary_share": 0.0, "shadow_seconds": 90}
DISAGREES = "7"  # the second class for every row (kind "yes"): not what v1 predicts


@pytest.fixture(scope="module")
def disagreeing(versions: Registry) -> Registry:  # noqa: F811
    """The registry with version 7 added: it answers [0, 1] for every row, where v1 answers
    [1 - p, p] (p: a logistic of the first feature)."""
    import mlflow
    import pandas as pd
    from test_deploy_kills import _log_model

    rows = pd.read_parquet(Path(versions.dataset) / "test.parquet").drop(columns="target")
    experiment = mlflow.get_experiment_by_name("kill-test")
    assert experiment is not None
    uri = _log_model(experiment.experiment_id, rows.to_numpy(dtype="float32")[:5],
                     {"kind": "yes"})
    assert str(mlflow.register_model(uri, NAME).version) == DISAGREES
    return versions


def _awaiting(challenger: str) -> None:
    """v1 is champion; ``challenger`` awaits live evidence, as register leaves it."""
    import mlflow

    from mlkube import live_gates
    from mlkube.config import RegistryConfig

    client = mlflow.MlflowClient()
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", challenger)
    client.set_model_version_tag(NAME, challenger, live_gates.TAG_GATE, live_gates.awaiting(
        "accuracy 0.99 vs 0.9", RegistryConfig(min_live_requests=GATE["min_live_requests"])))


def _champion() -> str:
    import mlflow

    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def _gate_tag(version: str) -> str:
    import mlflow

    from mlkube import live_gates

    return str(mlflow.MlflowClient().get_model_version(NAME, version).tags[live_gates.TAG_GATE])


def _pod_slots(cluster: KServeCluster) -> list[tuple[str, str | None, str | None]]:
    """Each ready predictor pod's (main, canary, shadow) versions, asked through the pod proxy
    as the step asks (the test's own requests are not checked by RBAC)."""
    from mlkube.targets.cluster import pod_ready, runtime_port

    found = []
    for pod in sorted(cluster.pods(), key=lambda p: p["metadata"]["name"]):
        if not pod_ready(pod):
            continue
        code, _, body = cluster.fake.proxy_to_pod(
            "ml", f"{pod['metadata']['name']}:{runtime_port(pod)}", "GET", LIVE, None, {})
        assert code == 200, body
        live = json.loads(body)
        found.append((live["main"]["version"], (live["canary"] or {}).get("version"),
                      (live["shadow"] or {}).get("version")))
    return found


def test_a_challenger_shadowed_in_the_serving_revision_takes_champion_on_live_agreement(
        versions: Registry, proxy: KubeProxy, tmp_path: Path) -> None:  # noqa: F811
    """v1 is champion and serves on its revision; v2 (the same model) awaits live evidence.
    The deploy of the champion loads v2 as the shadow into the serving revision's pod through
    the pod proxy; the pod mirrors the clients' requests to it; after 20 of them it predicted
    what v1 predicts (the mean absolute difference is judged: the models answer values), so
    it is unloaded, takes ``champion`` and is rolled out as a revision; no client request
    failed."""
    with _open(versions, proxy, tmp_path, deploy_role(), registry=GATE,
               serving=SHADOWING) as cluster:
        cluster.seed("1")
        _spare(proxy, versions, "2")
        _awaiting("2")
        ((revision, _, _),) = cluster.traffic()
        serving_pods = {p["metadata"]["name"] for p in cluster.pods()}
        with Load(proxy.front(ISVC), NAME, _rows(versions), clients=3, pause=0.005) as load:
            done = cluster.deploy(None)
        assert done.code == 0, done.err
        assert done.result == {"model_name": NAME, "version": "2", "endpoint": ENDPOINT,
                               "replaced_version": "1"}
        assert load.failed == [], load.failed[:3]
        assert _loads(cluster) == serving_pods, "loaded into the serving revision's pod"
        assert done.said(f"loading version 2 as the shadow (100% of each pod's live requests) "
                         f"into the runtime of the 1 ready pod of revision {revision} of "
                         "InferenceService ml/kill-test")
        (judged,) = [x for x in done.out.splitlines() if "takes the champion alias" in x]
        assert judged.startswith("[deploy] shadow v2: mean |difference| 0 <= 0.01 over "), \
            judged
        assert int(judged.split(" over ")[1].split()[0]) >= 20
        assert done.said(f"unloaded the shadow from 1 pod of revision {revision} of "
                         "InferenceService ml/kill-test")
        assert _gate_tag("2").startswith("live: mean |difference| 0 <= 0.01 over ")
        assert _champion() == "2"
        cluster.assert_serves_only("2")
        assert [shadow for *_, shadow in _pod_slots(cluster)] == [None] * len(cluster.pods())


def test_a_shadow_that_disagrees_keeps_the_champion_in_one_line(
        disagreeing: Registry, proxy: KubeProxy, tmp_path: Path) -> None:
    """v7 answers the second class for every row: over 20 mirrored requests its mean absolute
    difference from v1 is over the bound (0.01), so one line says the champion stays; the
    shadow is unloaded, the tag records the verdict, v1 serves on and keeps ``champion``."""
    import numpy as np

    rows = np.asarray(_rows(disagreeing))
    differs = float(np.mean(1.0 - 1.0 / (1.0 + np.exp(-(rows[:, 0] - 15.0)))))
    assert differs > GATE["max_mean_abs_diff"], "the clients' rows tell v7 from v1"
    with _open(disagreeing, proxy, tmp_path, deploy_role(), registry=GATE,
               serving=SHADOWING) as cluster:
        cluster.seed("1")
        _awaiting(DISAGREES)
        with Load(proxy.front(ISVC), NAME, _rows(disagreeing), clients=3,
                  pause=0.005) as load:
            done = cluster.deploy(None)
        assert done.code == 0, done.err
        assert done.result is not None and done.result["version"] == "1"
        assert load.failed == [], load.failed[:3]
        (kept,) = [x for x in done.out.splitlines() if f"shadow v{DISAGREES}:" in x]
        assert kept.startswith(f"[deploy] shadow v{DISAGREES}: mean |difference| ") and \
            " over 0.01 over " in kept and kept.endswith(
                "live requests beside champion v1: champion v1 stays"), kept
        assert done.said("unloaded the shadow from 1 pod of revision ")
        assert _gate_tag(DISAGREES).endswith(" beside v1; not promoted")
        assert _champion() == "1"
        cluster.assert_serves_only("1")
        assert _pod_slots(cluster) == [("1", None, None)]


def test_a_deploy_killed_with_its_shadow_loaded_is_judged_again_by_its_retry(
        versions: Registry, proxy: KubeProxy, tmp_path: Path) -> None:  # noqa: F811
    """The deploy of the champion is SIGKILLed right after it loaded the challenger v2 as the
    shadow (its Lease held): the shadow stays in the pod, mirroring. The retry takes the Lease
    over, finds the same shadow loaded (kept, its numbers counted on), judges it, and v2 takes
    ``champion`` and is rolled out; clients asking meanwhile see no failure."""
    with _open(versions, proxy, tmp_path, deploy_role(), registry=GATE,
               serving=SHADOWING) as cluster:
        cluster.seed("1")
        _spare(proxy, versions, "2")
        _awaiting("2")
        killed = cluster.deploy(None, "after_slot")
        assert killed.code == -signal.SIGKILL and killed.lines == []
        assert _pod_slots(cluster) == [("1", None, "2")], "what the kill left"
        with Load(proxy.front(ISVC), NAME, _rows(versions), clients=3, pause=0.005) as load:
            again = cluster.deploy(None)
        assert again.code == 0, again.err
        assert again.result is not None and again.result["version"] == "2"
        assert again.said(f"taking over Lease ml/{LEASE} from {killed.holder}")
        assert again.said("shadow v2: mean |difference| 0 <= 0.01 over ")
        assert load.failed == [], load.failed[:3]
        assert _champion() == "2"
        cluster.assert_serves_only("2")


# --- KServe's raw-deployment mode: the canary a slot in every predictor pod -------------------


@pytest.fixture
def raw_cluster(versions: Registry, proxy: KubeProxy,  # noqa: F811
                tmp_path: Path) -> Iterator[KServeCluster]:
    """A fresh cluster whose KServe serves in raw-deployment mode, the deploy Role's RBAC; at
    its end: nothing was refused, the pod proxy was read and written."""
    with _open(versions, proxy, tmp_path, deploy_role(), mode="RawDeployment") as cluster:
        yield cluster
        assert cluster.fake.refusals == [], "the deploy Role allows all the step does"
        assert {("get", "pods/proxy"), ("create", "pods/proxy")} <= cluster.fake.granted


def test_a_raw_mode_canary_takes_its_share_in_every_pod_then_is_rolled_out_under_load(
        raw_cluster: KServeCluster) -> None:
    """Raw mode: no revisions to split. v1 serves; the deploy of v2 loads it as the canary
    into the predictor pod's runtime (half its requests), judges 20 of them, then applies the
    InferenceService with v2, and KServe rolls its Deployment: clients asking the
    InferenceService's address all along see no failure, answers from both versions, then
    only v2; the alias follows."""
    cluster = raw_cluster
    cluster.seed("1")
    _spare(cluster.proxy, cluster.registry, "2")
    v1_pods = {p["metadata"]["name"] for p in cluster.pods()}
    front = cluster.proxy.front(PREDICTOR)
    rows = _rows(cluster.registry)
    with Load(front, NAME, rows, clients=3, pause=0.005) as load:
        done = cluster.deploy("2")
    assert done.code == 0, done.err
    assert done.result == {"model_name": NAME, "version": "2", "endpoint": cluster.endpoint,
                           "replaced_version": "1"}
    assert load.failed == [], load.failed[:3]
    assert load.versions["1"] > 0 and load.versions["2"] >= 20, load.versions
    assert _loads(cluster) == v1_pods, "the canary was loaded into each predictor pod"
    assert done.said("loading version 2 as the canary (50% of each pod's live requests) into "
                     "the runtime of the 1 ready pod of the predictor of InferenceService "
                     "ml/kill-test (raw deployment)")
    (promoted,) = [line for line in done.out.splitlines() if "within the bounds" in line]
    assert promoted.endswith(" requests, within the bounds: promoted"), promoted
    assert done.said("promoting the canary v2: applying InferenceService ml/kill-test with it")
    assert not done.said("canary revision") and not done.said("canaryTrafficPercent")
    cluster.assert_serves_only("2")
    with Load(front, NAME, rows, clients=2, pause=0.005) as after:
        cluster.fake.wait_for(lambda: after.ok >= 20, timeout=60)
    assert after.failed == [] and set(after.versions) == {"2"}


def test_a_raw_mode_canary_over_a_bound_is_unloaded_in_one_line(
        raw_cluster: KServeCluster) -> None:
    """Raw mode, v5 (fails live requests of 3 rows) as the canary: its first failure breaks
    the error bound; it is unloaded from the pod, the InferenceService is never applied with
    it, the step fails in one line (``canary_over_a_bound``)."""
    cluster = raw_cluster
    canary_over_a_bound(cluster, FAILS_LIVE, {}, "error rate ", service=PREDICTOR,
                        unloaded="unloaded the canary from 1 pod of the predictor of "
                                 "InferenceService ml/kill-test (raw deployment)")
    applied = {r.body["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION]
               for r in cluster.fake.applies("InferenceService")
               if r.query["fieldManager"] == "mlkube"}
    assert applied == {"1"}, "only the seed's applies"


def test_a_slot_the_kserve_target_does_not_hold_is_one_line(tmp_path: Path) -> None:
    """Bad input, no runtime needed: a role other than canary or shadow, and a shadow where
    nothing serves, each fail in one line naming what is wrong."""
    from mlkube import targets
    from mlkube.errors import MlkubeError

    with FakeApiServer(kserve=True, tick=TICK) as fake:
        target = targets.choose("kserve", model_name=NAME, namespace="ml",
                                serving_env=lambda: (), verify_batch=5,
                                api_client=fake.api_client(), log=lambda line: None)
        with pytest.raises(MlkubeError) as unknown:
            target.load_slot("mirror", "2", f"models:/{NAME}/2", 0.5)
        assert str(unknown.value) == "the kserve target has no mirror slot (only canary and " \
                                     "shadow)"
        with pytest.raises(MlkubeError) as nothing:
            target.load_slot("shadow", "2", f"models:/{NAME}/2", 1.0)
        assert str(nothing.value) == ("a shadow needs a version serving on InferenceService "
                                      "ml/kill-test beside it")
