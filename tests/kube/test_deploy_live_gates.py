"""The deploy step's gates on live traffic on the Deployment target (issue 17, items 4 and 5):
the canary phase promoted or rolled back (error rate, p99) on the pods' live numbers, the
shadow gate, the pod proxy they go through, the deploy Role that allows it, and a deploy
SIGKILLed with its canary loaded, then run again.

Real parts, as in ``test_deploy_kills.py`` (whose registry, kube-proxy pattern and ``Cluster``
helpers this module reuses): the deploy step as its own process, the real ``kubernetes``
client against the fake API server (its Deployment, ReplicaSet and HPA controllers, RBAC from
the deploy Role ``mlkube argo render`` writes, and now the pod proxy), a real ``mlflow
server``, and behind every ready pod its *own* real ``mlkube serve model`` process
(``KubeProxy(per_pod=True)``), so a canary loaded into one pod's runtime is that pod's alone.
The deploy step reaches each pod's runtime through the fake's pod proxy; clients reach the
Service through a NodePort-like front (``KubeProxy.front``), round-robin over the ready pods,
while the step runs.

The registry: ``test_deploy_kills``'s versions 1-4 of ``kill-test`` (1 and 2 the same good
model), and here version 5: the same model, except that a prediction of exactly 3 rows (what
the clients send) raises, so it passes its verification and smoke test and fails live
requests; version 6: the same model, 0.1 s slower on every prediction. The HPA keeps two
replicas.
"""

from __future__ import annotations

import dataclasses
import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_apiserver import FakeApiServer
from serving_pods import KubeProxy
from test_deploy_kills import (  # noqa: F401  (registry: a fixture, used by name)
    ENDPOINT,
    LEASE,
    NAME,
    REPLICAS,
    SERVICE,
    TICK,
    Cluster,
    Done,
    Registry,
    _log_model,
    _pod_template,
    deploy_role,
    recorded,
    registry,
)

from mlkube.kube import serving
from mlkube.steps.deploy import SERVING_ALIAS
from mlkube_testing import Load

pytestmark = pytest.mark.slow

FAILS_LIVE = "5"  # fails every live request of 3 rows
SLOW = "6"  # answers every request after 0.1 s
LIVE = f"/v2/models/{NAME}/live"


@pytest.fixture(scope="module")
def versions(registry: Registry) -> Registry:  # noqa: F811  (the imported fixture)
    """The registry with versions 5 and 6 added (see the module doc)."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(registry.tracking_uri)
    rows = pd.read_parquet(Path(registry.dataset) / "test.parquet").drop(columns="target")
    experiment = mlflow.get_experiment_by_name("kill-test")
    assert experiment is not None
    gate = registry.workdir / "open-gate"
    uri = _log_model(experiment.experiment_id, rows.to_numpy(dtype="float32")[:5],
                     {"kind": "gated", "gate": str(gate), "fail_rows": 3})
    assert str(mlflow.register_model(uri, NAME).version) == FAILS_LIVE
    uri = _log_model(experiment.experiment_id, rows.to_numpy(dtype="float32")[:5],
                     {"kind": "gated", "gate": str(gate), "delay": 0.1})
    assert str(mlflow.register_model(uri, NAME).version) == SLOW
    return registry


def _spares(proxy: KubeProxy, base: Registry, version: str, count: int) -> None:
    """``count`` processes of ``version``'s pod template started ahead (the pods take them)."""
    uri = f"models:/{NAME}/{version}"
    waiting = [r for spares in proxy.runtimes.spares.values() for r in spares
               if uri in map(str, r.process.args) and r.process.poll() is None]  # type: ignore[arg-type]
    for _ in range(count - len(waiting)):
        proxy.runtimes.start({"spec": _pod_template(base, version)["spec"]})


@pytest.fixture(scope="module")
def proxy(versions: Registry) -> Iterator[KubeProxy]:
    """A kube-proxy whose pods each run their own runtime process (per_pod)."""
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": versions.tracking_uri,
           "MLKUBE_STATE_DIR": str(versions.workdir / "runtime-state")}
    with KubeProxy(versions.workdir, env, per_pod=True) as started:
        _spares(started, versions, "1", REPLICAS)
        yield started


def _config(base: Registry, tmp: Path, **sections: dict[str, Any]) -> Registry:
    """The registry with its own config: the canary phase on, and ``sections`` merged in."""
    data = yaml.safe_load(base.config.read_text())
    data["serving"].update({"canary_share": 0.5, "canary_requests": 20, "canary_seconds": 90,
                            "canary_max_error_rate": 0.0, "canary_max_p99_ms": 5000})
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return dataclasses.replace(base, config=path)


@contextmanager
def _open(versions: Registry, proxy: KubeProxy, tmp_path: Path, rbac: list[dict[str, Any]],
          **sections: dict[str, Any]) -> Iterator[Cluster]:
    """A fresh fake cluster (``rbac``; the HPA at two replicas) reached through ``proxy``, the
    registry's aliases cleared; its pods' processes stopped at the end."""
    import mlflow

    mlflow.set_tracking_uri(versions.tracking_uri)
    client = mlflow.MlflowClient()
    for alias in (SERVING_ALIAS, "champion", "challenger"):
        try:
            client.delete_registered_model_alias(NAME, alias)
        except mlflow.exceptions.MlflowException:
            pass
    with FakeApiServer(rbac=rbac, hpa_wants={SERVICE: REPLICAS}, tick=TICK) as fake:
        proxy.fake = fake
        proxy.routes.clear()
        proxy.pod_routes.clear()
        try:
            yield Cluster(fake=fake, proxy=proxy, registry=_config(versions, tmp_path,
                                                                   **sections), tmp=tmp_path)
        finally:
            proxy.fake = None
            proxy.runtimes.stop_pods()
        assert fake.schema_errors() == []


@pytest.fixture
def cluster(versions: Registry, proxy: KubeProxy, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh fake cluster with the deploy Role's RBAC (the HPA at two replicas), the
    canary phase on (half of each pod's requests, 20 of them judged, no error allowed); the
    aliases cleared. At its end: nothing was refused, the pod proxy was used."""
    with _open(versions, proxy, tmp_path, deploy_role()) as cluster:
        yield cluster
        assert cluster.fake.refusals == [], "the deploy Role allows all the step does"
        assert {("get", "pods/proxy"), ("create", "pods/proxy")} <= cluster.fake.granted


def _slots(cluster: Cluster) -> list[tuple[str, Any, Any]]:
    """Each pod's (main version, canary, shadow), asked through the pod proxy as the step
    asks (the test's own requests are not checked by RBAC: it reads as the fake's user)."""
    found = []
    for pod in cluster.pods():
        code, _, body = cluster.fake.proxy_to_pod("ml", f"{pod['metadata']['name']}:8080", "GET",
                                                  LIVE, None, {})
        assert code == 200, body
        live = json.loads(body)
        found.append((live["main"]["version"], live["canary"], live["shadow"]))
    return found


def _loads(cluster: Cluster, since: int = 0) -> set[str]:
    """The pods whose runtime got a slot load through the pod proxy."""
    return {r.pod for r in cluster.proxy.pod_routes[since:]
            if r.method == "POST" and r.path.endswith("/load") and r.status == 200}


def test_a_good_canary_takes_its_share_in_every_pod_then_is_rolled_out_under_load(
        cluster: Cluster) -> None:
    """v1 serves on two pods. The deploy of v2 loads it as the canary into both pods' runtimes
    (through the pod proxy), each pod answers half of its requests with it, 20 canary requests
    pass the bounds, and the Deployment rolls to v2 a pod at a time: clients asking the Service
    all along see no failure, answers from both versions, then only v2; the alias follows."""
    cluster.seed("1")
    _spares(cluster.proxy, cluster.registry, "2", REPLICAS)
    v1_pods = {p["metadata"]["name"] for p in cluster.pods()}
    front = cluster.proxy.front(SERVICE)
    rows = _rows(cluster.registry)
    with Load(front, NAME, rows, clients=3, pause=0.005) as load:
        done = cluster.deploy("2")
    assert done.code == 0, done.err
    assert done.result == {"model_name": NAME, "version": "2", "endpoint": ENDPOINT,
                           "replaced_version": "1"}
    assert load.failed == [], load.failed[:3]
    assert load.versions["1"] > 0 and load.versions["2"] >= 20, load.versions
    assert _loads(cluster) == v1_pods, "the canary was loaded into each serving pod"
    assert done.said("loading version 2 as the canary (50% of each pod's live requests) into "
                     "the runtime of the 2 ready pods of Deployment ml/kill-test")
    assert done.said("canary v2 answers 50% of the live requests: waiting for 20 of them")
    (promoted,) = [line for line in done.out.splitlines() if "within the bounds" in line]
    assert promoted.startswith("[deploy] canary v2: error rate 0.0%, p99 ") and \
        promoted.endswith(" requests, within the bounds: promoted"), promoted
    assert done.said("promoting the canary v2: rolling Deployment ml/kill-test to it")
    cluster.assert_serves_only("2")
    assert [(main, canary, shadow) for main, canary, shadow in _slots(cluster)] == \
        [("2", None, None)] * REPLICAS, "new pods, started on v2, hold no slot"
    with Load(front, NAME, rows, clients=2, pause=0.005) as after:
        cluster.fake.wait_for(lambda: after.ok >= 20, timeout=60)
    assert after.failed == [] and set(after.versions) == {"2"}


def _rows(base: Registry, n: int = 3) -> list[list[float]]:
    import pandas as pd

    frame = pd.read_parquet(Path(base.dataset) / "test.parquet").drop(columns="target")
    return frame.head(n).to_numpy(dtype=float).tolist()


def canary_over_a_bound(cluster: Cluster, version: str, serving_config: dict[str, Any],
                        bound: str, *, service: str, unloaded: str,
                        before: Callable[[], None] = lambda: None) -> Done:
    """The canary-over-a-bound test on any cluster target (the target's own expectations
    given): v1 seeded; ``before()`` (spares, what the test reads first); clients ask
    ``service`` (a front) while ``version`` is deployed with ``serving_config``; the step fails
    in one line naming ``bound`` and ending with the rollback to v1; the clients saw the
    canary's own failures and only those (v5), or none (v6, slow but answering); the step
    said ``unloaded``; exactly v1 serves after it (the alias too), and only v1 answers clients
    then. The deploy, for the target's own checks."""
    cluster.registry = _config(cluster.registry, cluster.tmp, serving=serving_config)
    cluster.seed("1")
    before()
    front = cluster.proxy.front(service)
    rows = _rows(cluster.registry)
    with Load(front, NAME, rows, clients=3, pause=0.005) as load:
        done = cluster.deploy(version)
    assert done.code == 1 and done.result is None, done.err
    (line,) = done.lines
    assert line.startswith(f"mlkube deploy: error: version {version} failed its rollout "
                           f"(canary v{version}: {bound}"), line
    named = ("requests failed) over the bound 0.0% (serving.canary_max_error_rate)); "
             if version == FAILS_LIVE else
             " ms over the bound 50 ms (serving.canary_max_p99_ms) over ")
    assert named in line, line
    assert line.endswith(f"rolled back: version 1 serves at {cluster.endpoint}"), line
    if version == FAILS_LIVE:  # the canary's own answers, and only those
        assert load.failed and all("answered 500" in f for f in load.failed), load.failed[:3]
        assert set(load.versions) == {"1"} and load.versions["1"] > 0, load.versions
    else:  # slow, but it answered
        assert load.failed == [], load.failed[:3]
        assert load.versions["1"] > 0 and load.versions[SLOW] > 0, load.versions
    assert done.said(unloaded)
    cluster.assert_serves_only("1")
    with Load(front, NAME, rows, clients=2, pause=0.005) as after:
        cluster.fake.wait_for(lambda: after.ok >= 20, timeout=60)
    assert after.failed == [] and set(after.versions) == {"1"}
    return done


BOUNDS = pytest.mark.parametrize(("version", "serving_config", "bound"), [
    (FAILS_LIVE, {}, "error rate "),
    (SLOW, {"canary_max_p99_ms": 50, "canary_requests": 10}, "p99 "),
])


@BOUNDS
def test_a_canary_over_a_bound_is_unloaded_from_every_pod_in_one_line(
        cluster: Cluster, version: str, serving_config: dict[str, Any], bound: str) -> None:
    """v5 fails live requests of 3 rows; v6 answers in 0.1 s where the bound is 50 ms. The
    canary takes half of each pod's requests; v5's first failure breaks the error bound (none
    allowed), v6's p99 the latency bound (the largest pod's p99 is judged): it is unloaded
    from both pods, the Deployment is never changed, the step fails in one line naming the
    bound, the alias stays; the only failures the clients saw were the canary's answers."""
    seeded: dict[str, int] = {}
    canary_over_a_bound(
        cluster, version, serving_config, bound, service=SERVICE,
        unloaded="unloaded the canary from 2 pods of Deployment ml/kill-test",
        before=lambda: seeded.update(generation=cluster.deployment()["metadata"]["generation"]))
    assert _slots(cluster) == [("1", None, None)] * REPLICAS
    assert cluster.deployment()["metadata"]["generation"] == seeded["generation"], "never applied"
    applied = {r.body["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION]
               for r in cluster.fake.applies() if r.query["fieldManager"] == "mlkube"}
    assert applied == {"1"}, "only the seed's applies"


@pytest.fixture
def cluster_without_proxy(versions: Registry, proxy: KubeProxy,
                          tmp_path: Path) -> Iterator[Cluster]:
    """As :func:`cluster`, but the deploy Role lacks ``pods/proxy`` (an older Role)."""
    role = deploy_role()
    for obj in role:
        if obj["kind"] == "Role":
            obj["rules"] = [r for r in obj["rules"] if r["resources"] != ["pods/proxy"]]
            assert len(obj["rules"]) == len(deploy_role()[1]["rules"]) - 1
    with _open(versions, proxy, tmp_path, role) as cluster:
        yield cluster


def test_a_role_without_pods_proxy_fails_the_canary_in_one_line_and_changes_nothing(
        cluster_without_proxy: Cluster) -> None:
    """The API server refuses the pod proxy (403) without the Role's ``pods/proxy`` rule: the
    deploy of v2 fails in one line quoting the refusal and naming the rule, v1 serves on, the
    alias stays."""
    cluster = cluster_without_proxy
    cluster.seed("1")
    done = cluster.deploy("2")
    assert done.code == 1 and done.result is None, done.err
    (line,) = done.lines
    assert line.startswith("mlkube deploy: error: version 2 failed its rollout (the canary v2 "
                           "did not load in 2 of 2 ready pods of Deployment ml/kill-test"), line
    assert ('cannot create resource "pods/proxy" in API group "" in the namespace "ml"; give '
            "the deploy step's service account mlkube's deploy Role, which allows get and "
            "create on pods/proxy") in line, line
    assert line.endswith(f"rolled back: version 1 serves at {ENDPOINT}"), line
    assert {v for v, r, *_ in cluster.fake.refusals} == {"create", "get"}
    assert {r for _, r, *_ in cluster.fake.refusals} == {"pods/proxy"}
    assert cluster.proxy.pod_routes == [], "nothing reached a pod"
    cluster.assert_serves_only("1")


def test_a_challenger_shadowed_in_every_pod_takes_champion_on_live_agreement(
        versions: Registry, proxy: KubeProxy, tmp_path: Path) -> None:
    """The shadow gate on a Deployment: v1 is champion and serves; v2 (the same model) is the
    challenger awaiting live evidence. The deploy of the champion loads v2 as the shadow in
    both pods, the pods mirror the clients' requests to it (pooled: at least 20), it predicts
    what v1 predicts on every row (the models answer values, no class labels: the mean
    absolute difference is judged), so it takes ``champion``, and is rolled out (no canary
    phase here); no client request failed."""
    import mlflow

    from mlkube import live_gates
    from mlkube.config import RegistryConfig

    gate = {"min_live_requests": 20, "max_mean_abs_diff": 0.01}  # its outputs: values
    with _open(versions, proxy, tmp_path, deploy_role(), registry=gate,
               serving={"canary_share": 0.0, "shadow_seconds": 90}) as cluster:
        cluster.seed("1")
        _spares(proxy, versions, "2", REPLICAS)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(NAME, "champion", "1")
        client.set_registered_model_alias(NAME, "challenger", "2")
        client.set_model_version_tag(NAME, "2", live_gates.TAG_GATE, live_gates.awaiting(
            "accuracy 0.99 vs 0.9", RegistryConfig(min_live_requests=20)))
        v1_pods = {p["metadata"]["name"] for p in cluster.pods()}
        with Load(cluster.proxy.front(SERVICE), NAME, _rows(versions), clients=3,
                  pause=0.005) as load:
            done = cluster.deploy(None)
        assert done.code == 0, done.err
        assert done.result is not None and done.result["version"] == "2"
        assert load.failed == [], load.failed[:3]
        assert _loads(cluster) == v1_pods, "the shadow was loaded into each serving pod"
        (judged,) = [x for x in done.out.splitlines() if "takes the champion alias" in x]
        assert judged.startswith("[deploy] shadow v2: mean |difference| 0 <= 0.01 over "), \
            judged
        assert int(judged.split(" over ")[1].split()[0]) >= 20, "pooled over the pods"
        tag = client.get_model_version(NAME, "2").tags[live_gates.TAG_GATE]
        assert tag.startswith("live: mean |difference| 0 <= 0.01 over ") and tag.endswith(
            " beside v1"), tag
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
        cluster.assert_serves_only("2")
        assert cluster.fake.refusals == []


def _canaries(cluster: Cluster) -> list[tuple[str, str | None]]:
    """Each pod's (main version, canary version)."""
    return [(main, canary and canary["version"]) for main, canary, _ in _slots(cluster)]


def canary_killed_then_retried(cluster: Cluster, *, service: str,
                               before: Callable[[], None], left: Callable[[], None]) -> Done:
    """The killed-canary test on any cluster target (the target's own expectations given): v1
    seeded; ``before()`` (the spares); the deploy of v2 SIGKILLed right after its canary took
    its share (no unload, its Lease held); ``left()`` checks what the kill left; clients ask
    ``service`` (a front) while the retry takes the Lease over, judges the canary at 50% and
    rolls v2 out: no client failure, and exactly v2 serves after. The retry, for the
    target's own checks."""
    cluster.seed("1")
    before()
    killed = cluster.deploy("2", "after_slot")
    assert killed.code == -signal.SIGKILL and killed.lines == []
    left()
    with Load(cluster.proxy.front(service), NAME, _rows(cluster.registry), clients=3,
              pause=0.005) as load:
        again = cluster.deploy("2")
    assert again.code == 0, again.err
    assert again.result == {"model_name": NAME, "version": "2", "endpoint": cluster.endpoint,
                            "replaced_version": "1"}
    assert again.said(f"taking over Lease ml/{LEASE} from {killed.holder}")
    assert again.said("canary v2 answers 50% of the live requests")
    assert load.failed == [], load.failed[:3]
    cluster.assert_serves_only("2")
    return again


def test_a_deploy_killed_with_its_canary_loaded_is_finished_by_its_retry(
        cluster: Cluster) -> None:
    """The deploy of v2 is SIGKILLed right after the canary was loaded into both pods (no
    unload, its Lease held): the canary keeps its share. Its retry takes the Lease over, finds
    the canary loaded (the same version: kept, its numbers counted on), judges it and rolls
    v2 out; clients asking meanwhile see no failure (``canary_killed_then_retried``)."""
    def left() -> None:
        assert _canaries(cluster) == [("1", "2")] * REPLICAS, "what the kill left"

    canary_killed_then_retried(
        cluster, service=SERVICE,
        before=lambda: _spares(cluster.proxy, cluster.registry, "2", REPLICAS), left=left)


def test_a_canary_a_killed_deploy_left_is_unloaded_when_the_serving_version_is_deployed(
        cluster: Cluster) -> None:
    """The same kill, then the serving version (v1, what the ``serving`` alias records) is
    deployed instead: it already serves, its smoke test passes, and the canary the killed
    deploy left in both pods is unloaded before v1 is recorded again."""
    cluster.seed("1")
    killed = cluster.deploy("2", "after_slot")
    assert killed.code == -signal.SIGKILL
    assert _canaries(cluster) == [("1", "2")] * REPLICAS
    again = cluster.deploy("1")
    assert again.code == 0, again.err
    assert again.said(f"version 1 already serves at {ENDPOINT}")
    assert again.said("unloaded the canary from 2 pods of Deployment ml/kill-test")
    assert _canaries(cluster) == [("1", None)] * REPLICAS
    cluster.assert_serves_only("1")
