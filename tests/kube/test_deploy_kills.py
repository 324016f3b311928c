"""The deploy step on the Deployment target, SIGKILLed at each phase and run again; and two
deploys of one model at once (issue 16, the test half for cluster targets).

Real parts: the deploy step as its own process (``tests/killed_deploy.py``, which SIGKILLs it
at a phase: no ``finally``, no rollback, its Lease never given up), the real ``kubernetes``
client against the fake API server (``fake_apiserver.py``: server-side apply, the Deployment,
ReplicaSet and HPA controllers and a kubelet on their own clock, every request checked against
the deploy Role ``mlkube argo render`` writes, Leases), a real ``mlflow server`` over HTTP on
loopback holding the registered models, and the smoke test reaching the Service's URL
``http://kill-test.ml.svc.cluster.local/...`` through a kube-proxy for the fake
(``serving_pods.py``, the deploy process's ``HTTP_PROXY``) that forwards each request to a
ready pod, served by a real ``mlkube serve model`` process running that pod's command.

The registry (one per module): versions 1 and 2 predict two class probabilities; version 3
is the same model, but the fake's kubelet crash-loops its pods (``CrashLoopBackOff``, never
ready); version 4 loads and answers three columns where its signature says two, so its
smoke test fails. The HPA keeps two replicas, so a rollout has old and new pods serving
together until it ends. "v1 serves and is recorded" is set up in this process, as a finished
deploy leaves it: the Deployment target rolls v1 out as the step renders it, then the
``serving`` alias is set.

What is shortened, in every deploy process: ``MLKUBE_TEST_LEASE_SECONDS=1`` (killed_deploy.py)
makes the Lease 1 s (renewed every 1/3 s; a waiter polls every 0.2 s and waits 3 s), so a
rerun takes a killed holder's Lease over after 1 s unchanged instead of 30 s; the first
concurrency test uses 2 s (a 5 s wait), the second none (the step's own 30 s and 45 s). The
cluster target's status poll is 0.1 s instead of 2 s (:data:`BOOT`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from fake_apiserver import FakeApiServer, Outcome, version_of
from kubernetes.client import V1EnvVar
from serving_pods import PROXY_VARIABLES, KubeProxy

from mlkube.kube import serving
from mlkube.kube.rbac import DEPLOY_SERVICE_ACCOUNT, rbac_objects
from mlkube.spec import model_lock
from mlkube.steps.deploy import SERVING_ALIAS, TAG_REPLACED
from mlkube_testing import error_lines, free_port, run

pytestmark = pytest.mark.slow

NAME = "kill-test"
SERVICE = NAME  # the serving objects' name, from the model's
LEASE = model_lock(NAME)
URL = f"http://{SERVICE}.ml.svc.cluster.local"
ENDPOINT = f"{URL}/v2/models/{NAME}/infer"
KILLED_DEPLOY = Path(__file__).parents[1] / "killed_deploy.py"
STATUS_POLL = 0.1  # seconds between the target's status reads (the step's: 2)
#: ``python -c BOOT PHASE OPTIONS...``: tests/killed_deploy.py, the cluster target's status
#: poll shortened (it only makes the step notice a ready rollout sooner)
BOOT = (f"import sys; sys.path.insert(0, {str(KILLED_DEPLOY.parent)!r}); import killed_deploy; "
        "from mlkube import targets; "
        f"targets.choose.__kwdefaults__['poll'] = {STATUS_POLL}; sys.exit(killed_deploy.main())")
PYFUNC_MODELS = Path(__file__).parents[1] / "serve" / "pyfunc_models.py"
REPLICAS = 2  # what the HPA keeps
LEASE_SECONDS = "1"
TICK = 0.02  # seconds between two steps of the fake's controllers and kubelet
CRASH = ("loading models:/kill-test/3\nTraceback (most recent call last):\n"
         "RuntimeError: the model's weights do not match its architecture\n")


def fails_for(bad: str, outcome: Outcome) -> Callable[[dict[str, Any]], Outcome]:
    """Pods of version ``bad`` get ``outcome``; every other version is ready."""
    return lambda pod: outcome if version_of(pod) == bad else Outcome()


def deploy_role() -> list[dict[str, Any]]:
    """The deploy ServiceAccount, Role and RoleBinding (the deploy step runs as this account)."""
    return [serving.to_dict(o) for o in rbac_objects("ml")
            if o.metadata.name == DEPLOY_SERVICE_ACCOUNT]


# --- the module's registry, its kube-proxy and runtimes ---------------------------------------


@dataclass
class Registry:
    tracking_uri: str
    dataset: str
    config: Path
    workdir: Path


def _start_mlflow(workdir: Path, store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in PROXY_VARIABLES and not k.startswith("MLFLOW_")}
    log = (workdir / "mlflow-server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
         "--artifacts-destination", str(workdir / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def _wait_healthy(server: subprocess.Popen[bytes], url: str, workdir: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        log = (workdir / "mlflow-server.log").read_text(errors="replace")
        assert server.poll() is None, f"mlflow server exited: {log[-2000:]}"
        assert time.monotonic() < deadline, f"mlflow server never healthy: {log[-2000:]}"
        time.sleep(0.2)


def _log_model(experiment_id: str, example: Any, config: dict[str, Any]) -> str:
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 30))]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 2))]))
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_MODELS),
                                       model_config=config, signature=signature,
                                       input_example=example, pip_requirements=["mlflow"])
    return str(info.model_uri)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory,
             empty_mlflow_store: Path) -> Iterator[Registry]:
    """A real ``mlflow server`` (SQLite behind it, artifacts served) with versions 1-4 of
    ``kill-test``, and a prepared dataset."""
    import shutil

    workdir = tmp_path_factory.mktemp("kills")
    store = workdir / "mlflow.db"
    shutil.copyfile(empty_mlflow_store, store)  # its tables made already: a faster start
    server, url = _start_mlflow(workdir, store)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(workdir)
            patch.setenv("MLKUBE_STATE_DIR", str(workdir / "state"))
            patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'prepare.db'}")
            import mlflow
            import pandas as pd

            from mlkube import tracking

            # while the server starts: the dataset (its MLflow record is thrown away)
            code, prepared, _ = run("prepare-data", tmp=workdir)
            assert code == 0 and prepared is not None
            dataset = str(prepared["dataset_uri"])
            _wait_healthy(server, url, workdir)
            patch.setenv("MLFLOW_TRACKING_URI", url)
            mlflow.set_tracking_uri(url)
            rows = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
            example = rows.to_numpy(dtype="float32")[:5]
            experiment = tracking.configure(workdir / "state", "kill-test")
            gate = workdir / "open-gate"  # a gated model whose gate is open: loads at once
            gate.touch()
            good = _log_model(experiment, example, {"kind": "gated", "gate": str(gate)})
            wide = _log_model(experiment, example, {"kind": "wide"})
            for model_uri in (good, good, good, wide):  # versions 1, 2, 3 (crashes), 4
                mlflow.register_model(model_uri, NAME)
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump({
            "experiment": "kill-test", "registry": {"model_name": NAME},
            # one pod start; a rollout of REPLICAS pods waits that many
            "serving": {"pod_start_timeout": 60}}))
        yield Registry(tracking_uri=url, dataset=dataset, config=config, workdir=workdir)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=2)  # uvicorn waits for its clients' idle connections
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def proxy(registry: Registry) -> Iterator[KubeProxy]:
    """The kube-proxy every test's fake cluster is reached through; its runtimes are kept for
    the module (one per version)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri,
           "MLKUBE_STATE_DIR": str(registry.workdir / "runtime-state")}
    with KubeProxy(registry.workdir, env) as started:
        for version in ("1", "2", "4"):  # the runtimes the tests' pods run, loading meanwhile
            started.runtimes.start({"spec": _pod_template(registry, version)["spec"]})
        yield started
        # every pod ran a command the start above had foreseen: one runtime a version
        assert len(started.runtimes.started) == 3, list(started.runtimes.started)


def _verify_batch(registry: Registry) -> int:
    """What the step passes its target: the test split's rows, at most VERIFY_ROWS_MAX."""
    from mlkube import data
    from mlkube.steps import deploy

    x_test, _ = data.load_arrays(registry.dataset, "test")
    return max(1, min(len(x_test), deploy.VERIFY_ROWS_MAX))


def _serving_env(registry: Registry) -> tuple[V1EnvVar, ...]:
    """The serving pods' env as the step renders it (its MLFLOW_TRACKING_URI, no Secrets)."""
    return (V1EnvVar(name="MLFLOW_TRACKING_URI", value=registry.tracking_uri),)


def _pod_template(registry: Registry, version: str) -> dict[str, Any]:
    """The Deployment's pod template the step renders for ``version``."""
    from mlkube.spec import SERVER_IMAGE

    rendered = serving.ModelServing(
        name=SERVICE, model_name=NAME, namespace="ml", env=_serving_env(registry),
        image=SERVER_IMAGE, verify_batch=_verify_batch(registry), version=version,
        model_uri=f"models:/{NAME}/{version}")
    template: dict[str, Any] = serving.to_dict(serving.deployment(rendered))["spec"]["template"]
    return template


# --- one fake cluster a test ------------------------------------------------------------------


@dataclass
class Done:
    """A finished deploy process."""

    code: int
    result: dict[str, Any] | None
    out: str
    err: str
    pid: int

    @property
    def lines(self) -> list[str]:
        """The step's own error lines."""
        return error_lines(self.err)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.out.splitlines())


    @property
    def holder(self) -> str:
        """The Lease holder this process was (:func:`mlkube.kube.lease.identity`)."""
        return f"{socket.gethostname()} pid {self.pid}"


@dataclass
class Running:
    """A deploy process, and where its result goes."""

    process: subprocess.Popen[str]
    result: Path


@dataclass
class Cluster:
    """One fake cluster, the module's kube-proxy routing to it, and deploys run against it
    (``--target`` :attr:`TARGET`; a subclass for another target gives its name, its
    :attr:`url` and what :meth:`seeded` waits for)."""

    fake: FakeApiServer
    proxy: KubeProxy
    registry: Registry
    tmp: Path
    started: int = 0
    #: the deploy step's --target
    TARGET: ClassVar[str] = "deployment"
    #: the published URL (the serving objects' address)
    url: ClassVar[str] = URL

    @property
    def endpoint(self) -> str:
        """The inference endpoint the step reports."""
        return f"{self.url}/v2/models/{NAME}/infer"

    def env(self, lease_seconds: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in PROXY_VARIABLES and not k.startswith(("MLFLOW_", "KUBE"))}
        kubeconfig = self.tmp / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(self.fake.kubeconfig()))
        env.update(KUBECONFIG=str(kubeconfig), MLFLOW_TRACKING_URI=self.registry.tracking_uri,
                   HTTP_PROXY=self.proxy.url, http_proxy=self.proxy.url,
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   MLKUBE_STATE_DIR=str(self.tmp / "state"), PYTHONUNBUFFERED="1")
        if lease_seconds:
            env["MLKUBE_TEST_LEASE_SECONDS"] = lease_seconds
        return env

    def start(self, version: str | None, phase: str = "none",
              lease_seconds: str | None = LEASE_SECONDS) -> Running:
        """``mlkube.steps.deploy --version VERSION --target TARGET --namespace ml`` as its own
        process, SIGKILLed at ``phase`` (``none``: not killed); ``version`` None: without
        ``--version`` (the step deploys the ``champion`` alias's)."""
        self.started += 1
        result = self.tmp / f"result-{self.started}.json"
        command = [sys.executable, "-c", BOOT, phase, "--config",
                   str(self.registry.config), "--dataset", self.registry.dataset,
                   *(["--version", version] if version is not None else []),
                   "--target", self.TARGET, "--namespace", "ml", "--result-file",
                   str(result)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=self.env(lease_seconds), cwd=self.tmp)
        return Running(process, result)

    def finish(self, running: Running) -> Done:
        out, err = running.process.communicate(timeout=300)
        result = running.result
        done = Done(running.process.returncode,
                    json.loads(result.read_text()) if result.exists() else None,
                    out, err, running.process.pid)
        # shown when a test fails: what each deploy said
        print(f"--- deploy pid {done.pid}: exit {done.code}\n{out}{err}")
        return done

    def deploy(self, version: str | None, phase: str = "none", **kwargs: Any) -> Done:
        return self.finish(self.start(version, phase, **kwargs))

    # -- what the cluster and the registry say --

    def deployment(self) -> dict[str, Any]:
        live = self.fake.get("Deployment", SERVICE)
        assert live is not None
        return live

    def rolled_out(self, version: str) -> bool:
        """The Deployment's current generation is all ``version``, every pod ready."""
        live = self.fake.get("Deployment", SERVICE)
        if live is None:
            return False
        status, want = live.get("status") or {}, live["spec"]["replicas"]
        return (version_of(live["spec"]["template"]["spec"]) == version
                and status.get("observedGeneration") == live["metadata"]["generation"]
                and status.get("updatedReplicas") == status.get("replicas")
                == status.get("availableReplicas") == want == REPLICAS)

    def pods(self) -> list[dict[str, Any]]:
        return self.fake.objects("Pod")

    def answered(self, times: int = 2 * REPLICAS) -> list[str]:
        """The versions the published URL answers with, asked ``times`` times (round-robin
        over the ready pods)."""
        versions = []
        for _ in range(times):
            code, body = self.proxy.get(f"{self.url}/v2/models/{NAME}")
            assert code == 200, body
            versions += json.loads(body)["versions"]
        return versions

    def routed(self, since: int, path_end: str = "/infer") -> list[tuple[str, int]]:
        """(pod version, status) of the requests the Service got after the ``since``-th."""
        return [(r.version, r.status) for r in self.proxy.routes[since:]
                if r.path.endswith(path_end)]

    def lease_holder(self) -> str | None:
        lease = self.fake.get("Lease", LEASE)
        return None if lease is None else (lease.get("spec") or {}).get("holderIdentity")

    def seed(self, version: str) -> None:
        """``version`` serves and is recorded, as a finished deploy of it leaves them: rolled
        out by the step's target rendered as the step renders it (its env, its verify batch:
        the test split's rows), until :meth:`seeded`, then the ``serving`` alias; the
        published URL answers with it."""
        import mlflow

        from mlkube import targets

        target = targets.choose(self.TARGET, model_name=NAME, namespace="ml",
                                serving_env=lambda: _serving_env(self.registry),
                                verify_batch=_verify_batch(self.registry),
                                api_client=self.fake.api_client(), poll=TICK,
                                log=lambda line: None)
        target.roll_out(version, f"models:/{NAME}/{version}")
        self.fake.wait_for(lambda: self.seeded(target, version), timeout=30)
        mlflow.MlflowClient().set_registered_model_alias(NAME, SERVING_ALIAS, version)
        assert self.answered() == [version] * 2 * REPLICAS

    def seeded(self, target: Any, version: str) -> bool:
        """Whether the seed's ``version`` serves: the Deployment rolled out, every pod ready
        (the HPA's replicas)."""
        return self.rolled_out(version)

    def assert_serves_only(self, version: str) -> None:
        """Exactly ``version`` serves: the Deployment's generation rolled out, every pod of it
        ready, no other ReplicaSet with a pod, the published URL answering with it from every
        pod; the Lease given up; the ``serving`` alias names it."""
        assert self.rolled_out(version), self.deployment().get("status")
        live = self.deployment()
        assert live["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION] == version
        pods = self.pods()
        assert len(pods) == REPLICAS
        assert [version_of(p["spec"]) for p in pods] == [version] * REPLICAS
        assert all({c["type"]: c["status"] for c in p["status"]["conditions"]}["Ready"]
                   == "True" for p in pods)
        for rs in self.fake.objects("ReplicaSet"):
            if version_of(rs["spec"]["template"]["spec"]) != version:
                assert (rs["spec"]["replicas"], rs["status"]["replicas"]) == (0, 0), rs["status"]
        since = len(self.proxy.routes)
        assert self.answered() == [version] * 2 * REPLICAS
        assert {r.pod for r in self.proxy.routes[since:]} == {p["metadata"]["name"] for p in pods}
        assert self.lease_holder() is None, "the Lease is given up"
        assert recorded() == version


def recorded() -> str | None:
    """The version the ``serving`` alias names."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, SERVING_ALIAS).version)
    except MlflowException:
        return None


def replaced_tag(version: str) -> str | None:
    import mlflow

    return mlflow.MlflowClient().get_model_version(NAME, version).tags.get(TAG_REPLACED)


@pytest.fixture
def cluster(registry: Registry, proxy: KubeProxy, tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A fresh fake cluster (the deploy Role's RBAC, version 3's pods crash-looping, the HPA
    at two replicas; parametrized indirectly: the ticks its controllers wait before acting on
    a new generation) reached through the module's kube-proxy; the registry's ``serving``
    alias and replaced-version tags cleared. At its end: nothing was refused, the Lease verbs
    were used, every stored object is valid."""
    import mlflow

    mlflow.set_tracking_uri(registry.tracking_uri)
    client = mlflow.MlflowClient()
    try:
        client.delete_registered_model_alias(NAME, SERVING_ALIAS)
    except mlflow.exceptions.MlflowException:
        pass
    for version in ("1", "2", "3", "4"):
        if TAG_REPLACED in client.get_model_version(NAME, version).tags:
            client.delete_model_version_tag(NAME, version, TAG_REPLACED)
    with FakeApiServer(rbac=deploy_role(), outcome=fails_for("3", Outcome("crash", CRASH)),
                       hpa_wants={SERVICE: REPLICAS}, tick=TICK,
                       ready_after=getattr(request, "param", 1)) as fake:
        proxy.fake = fake
        proxy.routes.clear()
        try:
            yield Cluster(fake=fake, proxy=proxy, registry=registry, tmp=tmp_path)
        finally:
            proxy.fake = None
        assert fake.refusals == [], "the deploy Role allows all the step does"
        assert {("create", "leases"), ("get", "leases"), ("update", "leases")} <= fake.granted
        assert fake.schema_errors() == []


# --- killed at each phase, run again ----------------------------------------------------------


PHASES = ("after_apply", "after_ready", "after_smoke", "after_promote", "before_alias")


@pytest.mark.parametrize("phase", PHASES)
def test_a_deploy_killed_at_any_phase_serves_exactly_its_version_after_its_rerun(
        cluster: Cluster, phase: str) -> None:
    """v1 serves and is recorded; the deploy of v2 is SIGKILLed at ``phase``; Kubernetes
    finishes the rollout by itself; the step run again takes the dead deploy's Lease over,
    applies v2 again (nothing changes), smoke-tests it where it serves and records it:
    exactly v2 serves, the alias names it, replacing v1."""
    cluster.seed("1")
    since = len(cluster.proxy.routes)
    killed = cluster.deploy("2", phase)
    assert killed.code == -signal.SIGKILL and killed.result is None and killed.lines == []
    said = killed.out.strip().splitlines()
    if phase == "after_apply":  # the Deployment applied, nothing after it
        assert said[-1] == "[deploy] applying Deployment ml/kill-test"
    else:  # rolled out; from after_smoke on, the smoke test reached v2's pods
        assert "[deploy] Deployment ml/kill-test serves kill-test v2" in said
    smoked = cluster.routed(since)
    assert smoked == ([] if phase in ("after_apply", "after_ready") else [("2", 200)])
    assert cluster.lease_holder() == killed.holder, "still held by the dead deploy"
    assert recorded() == "1" and replaced_tag("2") is None

    cluster.fake.wait_for(lambda: cluster.rolled_out("2"), timeout=60)  # Kubernetes finishes
    generation = cluster.deployment()["metadata"]["generation"]
    replica_sets = {rs["metadata"]["name"] for rs in cluster.fake.objects("ReplicaSet")}
    since = len(cluster.proxy.routes)
    again = cluster.deploy("2")
    assert again.code == 0, again.err
    assert again.result == {"model_name": NAME, "version": "2", "endpoint": ENDPOINT,
                            "replaced_version": "1"}
    assert again.said(f"taking over Lease ml/{LEASE} from {killed.holder}: not renewed for 1 s")
    assert again.said(f"version 2 already serves at {ENDPOINT} (deployment); smoke-testing it "
                      "before it is recorded")
    assert again.said("applying Deployment ml/kill-test")
    assert cluster.deployment()["metadata"]["generation"] == generation, "applied: no change"
    assert {rs["metadata"]["name"] for rs in cluster.fake.objects("ReplicaSet")} == replica_sets
    assert cluster.routed(since) == [("2", 200)]
    cluster.assert_serves_only("2")
    assert replaced_tag("2") == "1"


def test_a_first_deploy_killed_after_its_deployment_apply_serves_after_its_rerun(
        cluster: Cluster) -> None:
    """Nothing served yet; the first deploy, of v1, is killed right after the Deployment's
    apply, before its Service and HPA exist. The Deployment gets ready by itself, but the
    published URL leads nowhere. The rerun applies what is missing and serves v1 (it used to
    skip the apply of a version whose Deployment was ready: its smoke test found no Service,
    and it deleted the Deployment: "nothing was serving before, and nothing serves now")."""
    killed = cluster.deploy("1", "after_apply")
    assert killed.code == -signal.SIGKILL and recorded() is None
    assert cluster.fake.get("Service", SERVICE) is None
    assert cluster.fake.get("HorizontalPodAutoscaler", SERVICE) is None

    def ready() -> bool:
        return bool((cluster.deployment().get("status") or {}).get("availableReplicas"))

    cluster.fake.wait_for(ready, timeout=30)
    code, body = cluster.proxy.get(f"{URL}/v2/models/{NAME}")
    assert code == 502 and b"no Service ml/kill-test" in body
    again = cluster.deploy("1")
    assert again.code == 0, again.err
    assert again.result == {"model_name": NAME, "version": "1", "endpoint": ENDPOINT,
                            "replaced_version": ""}
    assert again.said("applying Service ml/kill-test")
    assert again.said("applying HorizontalPodAutoscaler ml/kill-test")
    cluster.fake.wait_for(lambda: cluster.rolled_out("1"), timeout=30)  # the HPA's 2 replicas
    cluster.assert_serves_only("1")


def test_a_killed_deploy_of_a_version_that_never_gets_ready_is_rolled_back_by_its_rerun(
        cluster: Cluster) -> None:
    """v3's pods crash-loop. Its deploy is killed right after the apply: the old ReplicaSet
    keeps serving v1 (maxUnavailable 0) while v3's pod crash-loops. The rerun finds nothing
    ready (the new generation is v3's), rolls v3 out, fails on the crash, and rolls back to
    the recorded v1, rendered again (it used to re-apply what it had found, the broken v3
    template, as the "rollback"); one error line; v1 serves, the alias still names it."""
    cluster.seed("1")
    (first_rs,) = cluster.fake.objects("ReplicaSet")
    killed = cluster.deploy("3", "after_apply")
    assert killed.code == -signal.SIGKILL and recorded() == "1"

    def crash_looping() -> bool:
        return any(version_of(p["spec"]) == "3" and "CrashLoopBackOff" in json.dumps(p["status"])
                   for p in cluster.pods())

    cluster.fake.wait_for(crash_looping, timeout=30)
    assert version_of(cluster.deployment()["spec"]["template"]["spec"]) == "3"
    assert set(cluster.answered()) == {"1"}, "meanwhile the old pods serve"

    again = cluster.deploy("3")
    assert again.code == 1 and again.result is None
    (line,) = again.lines
    assert line.startswith("mlkube deploy: error: version 3 failed its rollout (Deployment "
                           "ml/kill-test could not roll out kill-test v3: "), line
    assert ("container server: CrashLoopBackOff, exited with code 1 (Error): RuntimeError: "
            "the model's weights do not match its architecture; the deploy step rolls back to "
            "what its record says served); ") in line
    assert line.endswith(f"; rolled back: version 1 serves at {ENDPOINT}"), line
    assert again.said("rolling out kill-test version 3 on the deployment target, replacing "
                      "version 1 (the serving record's version: the objects hold no other "
                      "ready one)")
    assert again.said("rolling Deployment ml/kill-test back to v1, rendered again")
    cluster.assert_serves_only("1")
    # rendered again as the step renders it: the first ReplicaSet's template, taken back
    by_name = {rs["metadata"]["name"]: rs for rs in cluster.fake.objects("ReplicaSet")}
    assert by_name[first_rs["metadata"]["name"]]["spec"]["replicas"] == REPLICAS
    assert len(by_name) == 2 and replaced_tag("3") is None


def test_a_killed_deploy_whose_smoke_test_fails_is_rolled_back_by_its_rerun(
        cluster: Cluster) -> None:
    """v4 loads but answers three columns where its signature says two. Its deploy is killed
    once v4 is ready (all pods v4, unrecorded); the rerun smoke-tests v4 where it serves,
    fails, and rolls back to the recorded v1, rendered again."""
    cluster.seed("1")
    killed = cluster.deploy("4", "after_ready")
    assert killed.code == -signal.SIGKILL and recorded() == "1"
    cluster.fake.wait_for(lambda: cluster.rolled_out("4"), timeout=60)
    assert set(cluster.answered()) == {"4"}
    since = len(cluster.proxy.routes)
    again = cluster.deploy("4")
    assert again.code == 1 and again.result is None
    (line,) = again.lines
    assert line == (f"mlkube deploy: error: version 4 failed its rollout ({ENDPOINT} answered "
                    "outside the model's own contract: output 'predictions' has shape [5, 3] "
                    "for 5 rows, its metadata says [-1, 2]); rolled back: version 1 serves at "
                    f"{ENDPOINT}")
    assert again.said(f"version 4 already serves at {ENDPOINT}")
    assert again.said("rolling Deployment ml/kill-test back to v1, rendered again")
    assert cluster.routed(since) == [("4", 200)], "the smoke test reached v4's pods"
    cluster.assert_serves_only("1")
    assert replaced_tag("4") is None


# --- two deploys of one model at once -------------------------------------------------------


@pytest.mark.parametrize("cluster", [round(8 / TICK)], indirect=True)  # each rollout 8 s
def test_two_deploys_at_once_one_wins_and_the_other_fails_in_one_line(cluster: Cluster) -> None:
    """Deploys of v1 and v2 started 0.2 s apart, the Lease shortened (2 s, a 5 s wait) and a
    rollout slower than that wait: one takes the Lease and serves its version; the other
    waits, then fails with exit 75 and one line naming the holder, having changed nothing."""
    first = cluster.start("1", lease_seconds="2")
    time.sleep(0.2)
    second = cluster.start("2", lease_seconds="2")
    done = [cluster.finish(first), cluster.finish(second)]
    assert sorted(d.code for d in done) == [0, 75], [d.err for d in done]
    winner, loser = sorted(done, key=lambda d: d.code)
    assert winner.result is not None and loser.result is None
    version = str(winner.result["version"])
    (line,) = loser.lines
    assert line.startswith(f"mlkube deploy: error: another deploy holds Lease ml/{LEASE}: "
                           f"{winner.holder} (renewed "), line
    assert line.endswith("it was still renewing after 5 s of waiting; this one changed "
                         "nothing: run it again once that deploy has finished"), line
    assert not loser.said("rolling out") and not loser.said("applying")
    applied = {r.body["metadata"]["annotations"][serving.MODEL_VERSION_ANNOTATION]
               for r in cluster.fake.applies() if r.query["fieldManager"] == "mlkube"}
    assert applied == {version}, "only the winner applied"
    cluster.assert_serves_only(version)
    assert winner.result["replaced_version"] == "" and replaced_tag(version) == ""


@pytest.mark.parametrize("cluster", [round(3 / TICK)], indirect=True)  # each rollout 3 s
def test_two_deploys_at_once_with_the_default_lease_take_turns(cluster: Cluster) -> None:
    """The same two deploys with the step's own Lease (30 s, a 45 s wait), a rollout slow
    enough that the first still holds the Lease when the second asks: the second waits until
    the first gives the Lease up, then rolls its own version out over the first's."""
    first = cluster.start("1", lease_seconds=None)
    time.sleep(0.2)
    second = cluster.start("2", lease_seconds=None)
    done = [cluster.finish(first), cluster.finish(second)]
    assert [d.code for d in done] == [0, 0], [d.err for d in done]
    finished = [(d, d.result) for d in done if d.result is not None]
    assert len(finished) == 2
    (earlier, earlier_result), (later, later_result) = sorted(
        finished, key=lambda pair: pair[1]["replaced_version"] != "")
    assert earlier_result["replaced_version"] == ""
    assert later_result["replaced_version"] == earlier_result["version"]
    assert later.said(f"another deploy holds Lease ml/{LEASE} ({earlier.holder})")
    assert later.said(f"rolling out {NAME} version {later_result['version']} on the "
                      f"deployment target, replacing version {earlier_result['version']}")
    cluster.assert_serves_only(str(later_result["version"]))
    assert replaced_tag(str(later_result["version"])) == earlier_result["version"]
