"""mlkube platform render: the cluster platform's manifests, strictly valid, fresh, secret-free;
and the MLflow server command they run, run here against a real PostgreSQL."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlkube import spec
from mlkube.argo.options import RenderOptions
from mlkube.argo.render import render as argo_render
from mlkube.kube import platform
from mlkube.kube.serving import to_dict
from mlkube_testing import free_port
from postgres_server import PASSWORD, Postgres

K8S_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parents[2]
MLKUBE = str(Path(sys.executable).parent / "mlkube")


def _all(options: platform.PlatformOptions | None = None) -> list[dict[str, Any]]:
    return [to_dict(o) for objs in platform.objects(options).values() for o in objs]


def _kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"]))


@pytest.mark.parametrize("options", [platform.PlatformOptions(),
                                     platform.PlatformOptions(namespace="team-a",
                                                              storage_class="nfs-client",
                                                              gpu_product="NVIDIA-H100-80GB-HBM3")])
def test_every_object_is_strictly_valid(options: platform.PlatformOptions) -> None:
    docs = _all(options)
    assert {d["kind"] for d in docs} >= {"Namespace", "ResourceQuota", "LimitRange",
                                         "PersistentVolumeClaim", "StatefulSet", "Deployment",
                                         "Service", "ServiceAccount", "Role", "RoleBinding"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == options.namespace


def test_committed_render_is_fresh() -> None:
    out = ROOT / platform.DEFAULT_OUT
    for name, text in platform.render().items():
        assert (out / name).read_text() == text, f"{out / name} is stale: run `mlkube platform render`"


def test_namespace_enforces_restricted_and_its_pods_meet_it() -> None:
    docs = _all()
    labels = _kind(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind in ("StatefulSet", "Deployment"):
        pod = _kind(docs, kind)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert "requests" in container["resources"]
    quota = _kind(docs, "ResourceQuota")["spec"]["hard"]
    assert not any(k.startswith("limits.") for k in quota)  # pods without limits still fit
    assert quota["requests.nvidia.com/gpu"] == "8"


def test_no_secret_in_the_manifests_only_references() -> None:
    docs = _all()
    assert all(d["kind"] != "Secret" for d in docs)
    text = yaml.safe_dump_all(docs)
    env = [e for kind in ("StatefulSet", "Deployment")
           for c in _kind(docs, kind)["spec"]["template"]["spec"]["containers"] for e in c["env"]]
    for name in ("POSTGRES_PASSWORD", "PGPASSWORD"):
        for var in (e for e in env if e["name"] == name):
            assert var == {"name": name, "valueFrom": {"secretKeyRef": {
                "name": platform.DB_SECRET, "key": platform.DB_SECRET_KEY}}}
    assert "password=" not in text and ":***@" not in text


def test_names_match_what_the_steps_expect() -> None:
    docs = _all()
    options = RenderOptions()
    service = _kind(docs, "Service", "mlflow")
    assert options.mlflow_tracking_uri == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert _kind(docs, "PersistentVolumeClaim")["metadata"]["name"] == options.artifact_pvc
    assert _kind(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    database = _kind(docs, "StatefulSet")
    env = {e["name"]: e.get("value") for e in database["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert spec.CLUSTER_DATABASE == (f"postgresql://{env['POSTGRES_USER']}@"
                                     f"{database['spec']['serviceName']}:5432")
    argo_rbac = list(yaml.safe_load_all(argo_render(RenderOptions(namespace="ml"))["mlkube-rbac.yaml"]))
    assert [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")] == argo_rbac


def test_bad_option_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([MLKUBE, "platform", "render", "--namespace", "Team_A", "--out",
                           str(tmp_path)], capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and "--namespace is 'Team_A'" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_check_fails_on_a_stale_folder(tmp_path: Path) -> None:
    command = [MLKUBE, "platform", "render", "--out", str(tmp_path)]
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert subprocess.run([*command, "--check"], capture_output=True).returncode == 0
    (tmp_path / "30-mlflow.yaml").write_text("# edited\n")
    stale = subprocess.run([*command, "--check"], capture_output=True, text=True)
    assert stale.returncode != 0 and "30-mlflow.yaml" in stale.stderr


@dataclass(frozen=True)
class MlflowServer:
    url: str
    claim: Path


@pytest.fixture(scope="module")
def mlflow_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[MlflowServer]:
    """The Deployment's command, as rendered, pointed at this machine's PostgreSQL, a loopback
    port and a temp dir for the claim; every other argument (allowed hosts included) unchanged."""
    container = _kind(_all(), "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    database = postgres.database("mlflow")
    claim = tmp_path_factory.mktemp("claim")
    port = free_port()
    command = [str(Path(sys.executable).parent / a) if a == "mlflow" else a
               for a in container["command"]]
    swap = {platform.PlatformOptions().database_url("mlflow"): postgres.url(database, None),
            str(spec.MLFLOW_PORT): str(port), "0.0.0.0": "127.0.0.1",
            f"{platform.ARTIFACTS_MOUNT}/mlflow-artifacts": str(claim)}
    command = [swap.get(a, a) for a in command]
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_SERVER_ALLOWED_HOSTS", None)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {server.stderr.read(2000) if server.stderr else ''}")
        yield MlflowServer(url=url, claim=claim)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _api_status(url: str, host: str) -> int:
    """The status of one REST API call to the server at ``url``, sent with Host: ``host``."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default",
                           headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_the_mlflow_server_answers_its_service_by_every_name(mlflow_server: MlflowServer) -> None:
    """A pod calls MLflow by the Service's short, namespaced or full name, with or without the
    port (MLflow 3's default host check refused them all with a 403 on a real cluster)."""
    options = platform.PlatformOptions()
    names = [f"mlflow{suffix}" for suffix in ("", ".ml", ".ml.svc", ".ml.svc.cluster.local")]
    for name in names:
        for host in (name, f"{name}:5000"):
            assert _api_status(mlflow_server.url, host) == 200, host
    assert spec.CLUSTER_MLFLOW_URI == "http://mlflow:5000"
    assert {*names, *(f"{n}:5000" for n in names)} <= set(platform.mlflow_hosts(options))
    # the host check is on: a name that is not the Service's is still refused
    assert _api_status(mlflow_server.url, "mlflow.attacker.example:5000") == 403
    assert _api_status(mlflow_server.url, "mlflow.other-ns:5000") == 403


def test_the_mlflow_server_it_runs_stores_on_postgresql_and_serves_models(
        mlflow_server: MlflowServer, postgres: Postgres, tmp_path: Path) -> None:
    """A model logged through it downloads with nothing but MLFLOW_TRACKING_URI."""
    url = mlflow_server.url
    script = (
        "import mlflow, sys\n"
        "class M(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input): return model_input\n"
        "with mlflow.start_run():\n"
        "    info = mlflow.pyfunc.log_model(name='model', python_model=M(), "
        "pip_requirements=['mlflow'], registered_model_name='platform-check')\n"
        "print(info.model_uri)\n")
    client_env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    subprocess.run([sys.executable, "-c", script], env=client_env, check=True,
                   capture_output=True)
    # the claim holds the artifacts; the database holds the registry
    assert list(mlflow_server.claim.rglob("MLmodel"))
    assert postgres.query("SELECT 1")
    fetch = ("import mlflow; m = mlflow.pyfunc.load_model('models:/platform-check/1');"
             "print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", fetch], env=client_env, check=True,
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip() == "PyFuncModel"
