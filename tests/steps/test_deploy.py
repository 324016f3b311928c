"""deploy on the local target: mlkube's V2 runtime on loopback, swapped in place, rolled back.

Real parts: models trained and registered by the steps, the real server process, real HTTP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from mlkube.serve import client
from mlkube.targets import local
from mlkube_testing import Load, error_lines, free_port, run, write_config

NAME = "mlkube-demo"


@pytest.fixture
def config(tmp_path: Path) -> str:
    return str(write_config(tmp_path / "c.yaml", serving={"max_body_bytes": 65536}))


def _rows(dataset: str, n: int = 3) -> list[list[float]]:
    frame = pd.read_parquet(Path(dataset) / "test.parquet").drop(columns="target")
    return frame.head(n).to_numpy(dtype=float).tolist()


def _champion(dataset: str, run_id: str, tmp_path: Path) -> str:
    code, result, _ = run("register", "--dataset", dataset, "--run-id", run_id, tmp=tmp_path)
    assert code == 0 and result is not None
    return str(result["champion_version"])


def _base(result: dict[str, str]) -> str:
    return result["endpoint"].split("/v2/")[0]


def _serving() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "serving").version)


def test_serves_then_swaps_the_next_version_in_place_under_load(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path, config: str) -> None:
    _champion(dataset, train(epochs=2, learning_rate=1e-4), tmp_path)
    code, first, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and first is not None and first["version"] == "1"
    assert first["endpoint"].endswith(f"/v2/models/{NAME}/infer") and first["replaced_version"] == ""
    assert _serving() == "1"
    (server,) = local.servers(state)
    # the config's serving limits reach the server: a body over max_body_bytes is refused unread
    big = urllib.request.Request(first["endpoint"], data=b"[" + b"0," * 40_000 + b"0]",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(big, timeout=30)
    assert refused.value.code == 413

    again, same, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert again == 0 and same == first  # nothing changes, the same result

    assert _champion(dataset, train(epochs=6, learning_rate=0.01), tmp_path) == "2"
    with Load(_base(first), NAME, _rows(dataset)) as load:
        time.sleep(1.0)
        code, second, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
        time.sleep(1.0)
    assert code == 0 and second is not None
    assert (second["version"], second["replaced_version"]) == ("2", "1")
    assert second["endpoint"] == first["endpoint"]  # the published URL never moves
    assert load.failed == [] and load.ok > 20, load.failed[:3]
    assert local.servers(state) == [server]  # the same process, the model swapped inside it
    assert client.metadata(_base(second), NAME)["versions"] == ["2"]
    assert _serving() == "2"

    again, same, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert again == 0 and same == second


def test_a_version_that_cannot_load_is_rolled_back(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path, config: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    _champion(dataset, train(epochs=2), tmp_path)
    code, good, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and good is not None
    broken = train(epochs=3, seed=5)
    version = mlflow.register_model(f"runs:/{broken}/model", NAME).version
    mlflow_client = mlflow.MlflowClient()
    artifacts = Path(mlflow_client.get_model_version_download_uri(NAME, str(version))
                     .removeprefix("file://"))
    for file in (artifacts / "data").rglob("*"):
        if file.is_file():
            file.write_bytes(b"not a model")
    mlflow_client.set_registered_model_alias(NAME, "champion", str(version))
    capsys.readouterr()

    code, result, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                            capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1, err
    assert f"version {version} failed its rollout" in lines[0]
    assert f"rolled back: version 1 serves at {good['endpoint']}" in lines[0]
    assert client.metadata(_base(good), NAME)["versions"] == ["1"]
    assert len(client.infer(_base(good), NAME, _rows(dataset))["label"]) == 3
    assert _serving() == "1"  # the registry still says what is live


def test_any_failure_after_the_swap_rolls_back_then_keeps_its_traceback(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path, config: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Only MlkubeError and KeyboardInterrupt rolled back; any other failure (a bug, an OSError
    of the target) left the new version half rolled out. Now: rolled back, then re-raised."""
    from mlkube.steps import deploy

    _champion(dataset, train(epochs=2), tmp_path)
    code, good, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and good is not None
    assert _champion(dataset, train(epochs=6, learning_rate=0.01), tmp_path) == "2"

    class PromoteFails(local.LocalTarget):
        def promote(self) -> None:  # after the real swap and smoke test: the new one serves
            raise OSError("the promote of this target broke")

    chosen = deploy.choose_target
    monkeypatch.setattr(deploy, "choose_target", lambda ctx, name, **_: PromoteFails(
        **{k: getattr(chosen(ctx, name), k) for k in ("state_dir", "host", "port",
                                                         "ready_timeout", "log")},
        model_name=name))
    capsys.readouterr()
    code, result, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                            capsys=capsys)
    assert code == 1 and result is None
    assert "Traceback" in err and error_lines(err)[-1].startswith(
        "mlkube deploy: error: unexpected OSError")
    assert client.metadata(_base(good), NAME)["versions"] == ["1"]  # the old one serves again
    assert _serving() == "1"


def test_the_serving_record_is_retried_then_a_retryable_failure(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow unreachable after the rollout: the idempotent write is tried RECORD_ATTEMPTS
    times, then the step fails with an exit status Argo's retry rule retries (not 1)."""
    from mlkube.steps import deploy

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri(closed)
    monkeypatch.setattr(deploy, "RECORD_ATTEMPTS", 3)
    monkeypatch.setattr(deploy, "RECORD_FIRST_DELAY", 0.05)
    with pytest.raises(deploy.NotRecorded) as failed:
        deploy._record_serving(NAME, "2", "1")
    assert failed.value.exit_code not in (0, 1)
    assert str(failed.value).startswith("version 2 serves, but MLflow did not take the 'serving' "
                                        "alias in 3 tries (")


def test_a_model_that_answers_outside_its_own_contract_does_not_deploy(
        dataset: str, state: Path, tmp_path: Path, config: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It answered [n, 3] while its own V2 metadata said [-1, 2]; deploy took it (only the row
    count and finiteness were checked). Now every output is held to the metadata."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    x = np.asarray(_rows(dataset, 5), dtype=np.float32)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 30))]),
                               outputs=Schema([TensorSpec(np.dtype("float32"), (-1, 2))]))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).parents[1] / "serve" /
                                           "pyfunc_models.py"),
            model_config={"kind": "wide"}, signature=signature, input_example=x[:2],
            pip_requirements=["mlflow", "numpy"])
    version = mlflow.register_model(info.model_uri, NAME).version
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", str(version))
    capsys.readouterr()
    code, result, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                            capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1, err
    assert ("answered outside the model's own contract: output 'predictions' has shape [5, 3] "
            "for 5 rows, its metadata says [-1, 2]") in lines[0]
    assert lines[0].endswith("nothing was serving before, and nothing serves now")
    assert local.servers(state) == []
    with pytest.raises(mlflow.exceptions.MlflowException):
        mlflow.MlflowClient().get_model_version_by_alias(NAME, "serving")


def test_a_first_deploy_that_fails_leaves_nothing_running(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path, config: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    version = _champion(dataset, train(epochs=2), tmp_path)
    artifacts = Path(mlflow.MlflowClient().get_model_version_download_uri(NAME, version)
                     .removeprefix("file://"))
    for file in (artifacts / "data").rglob("*"):
        if file.is_file():
            file.write_bytes(b"not a model")
    code, result, err = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path,
                            capsys=capsys)
    (line,) = error_lines(err)
    assert code == 1 and result is None
    assert "nothing was serving before, and nothing serves now" in line
    assert local.servers(state) == []


@pytest.mark.parametrize(("args", "message"), [
    ([], "has no version with alias 'champion'"),
    (["--version", "9"], "has no version 9"),
    (["--canary-percent", "150"], "--canary-percent is 150; give 0-100"),
    # a cluster target with the embedded store: its serving pods could never load the model
    (["--target", "deployment"], "a store on this pod's disk, which the serving pods"),
    (["--target", "kserve"], "set it to the tracking server (the platform's is "
                             "http://mlflow:5000)"),
])
def test_bad_input_is_one_line_and_serves_nothing(
        dataset: str, state: Path, tmp_path: Path, config: str,
        capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, result, err = run("deploy", "--config", config, "--dataset", dataset, *args,
                            tmp=tmp_path, capsys=capsys)
    lines = error_lines(err)
    assert code == 1 and result is None and len(lines) == 1 and message in lines[0], err
    assert local.servers(state) == []


def test_the_contract_check_reads_names_datatypes_shapes_and_labels() -> None:
    from mlkube.steps.deploy import contract_problems

    declared = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2],
                 "parameters": {"labels": ["no", "yes"]}},
                {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    good = [{"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.1] * 4},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["no", "yes"]}]
    assert contract_problems(good, declared, 2) == []
    bad = [{"name": "probabilities", "datatype": "FP64", "shape": [1, 2], "data": [0.1] * 2},
           {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["no", "maybe"]},
           {"name": "extra", "datatype": "FP32", "shape": [2], "data": [1, 2]}]
    assert contract_problems(bad, declared, 2) == [
        "output 'probabilities' is FP64, its metadata says FP32",
        "output 'probabilities' has shape [1, 2] for 2 rows, its metadata says [-1, 2]",
        "output 'label' holds ['maybe'], not among the model's class labels ['no', 'yes']",
        "output 'extra', which its metadata does not list"]
    assert contract_problems(good[:1], declared, 2) == ["no output 'label'"]


KILLED_DEPLOY = Path(__file__).parents[1] / "killed_deploy.py"


def _deploy_process(phase: str, *options: str, tmp: Path) -> tuple[int, dict[str, Any] | None,
                                                                      str]:
    """The deploy step as its own process, SIGKILLed at ``phase`` (``none``: not killed)."""
    result = tmp / f"deploy-{phase}.json"
    result.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, str(KILLED_DEPLOY), phase, *options,
                           "--result-file", str(result)], capture_output=True, text=True,
                          timeout=300)
    return (done.returncode, json.loads(result.read_text()) if result.exists() else None,
            done.stderr)


@pytest.mark.parametrize("phase", ["after_ready", "after_smoke", "after_promote",
                                   "before_alias"])
def test_a_deploy_killed_at_any_phase_converges_on_its_rerun_with_no_failed_request(
        phase: str, dataset: str, train: Callable[..., str], state: Path, tmp_path: Path,
        config: str) -> None:
    """v1 serves; the deploy of v2 is SIGKILLed at ``phase`` while clients keep asking; the
    step run again serves v2, records it, and no request failed at any point."""
    _champion(dataset, train(epochs=2), tmp_path)
    code, first, _ = run("deploy", "--config", config, "--dataset", dataset, tmp=tmp_path)
    assert code == 0 and first is not None
    assert _champion(dataset, train(epochs=6, learning_rate=0.01), tmp_path) == "2"
    options = ("--config", config, "--dataset", dataset)
    with Load(_base(first), NAME, _rows(dataset)) as load:
        killed, none, _ = _deploy_process(phase, *options, tmp=tmp_path)
        assert killed == -signal.SIGKILL and none is None
        assert _serving() == "1", "the record moves only at the very end"
        time.sleep(0.5)
        code, result, err = _deploy_process("none", *options, tmp=tmp_path)
        time.sleep(0.5)
    assert code == 0 and result is not None, err
    assert (result["version"], result["replaced_version"]) == ("2", "1")
    assert client.metadata(_base(first), NAME)["versions"] == ["2"]
    assert _serving() == "2"
    assert load.failed == [] and load.ok > 20, load.failed[:3]
    assert len(local.servers(state)) == 1


def test_two_deploys_of_one_model_at_once_take_turns(
        dataset: str, train: Callable[..., str], state: Path, tmp_path: Path,
        config: str) -> None:
    """Two deploys of one model started together: the second waits for the first's lock, then
    does its own, so each one's smoke test and record are of its own version."""
    _champion(dataset, train(epochs=2), tmp_path)
    assert _champion(dataset, train(epochs=6, learning_rate=0.01), tmp_path) == "2"
    options = ["--config", config, "--dataset", dataset]
    processes = []
    for version in ("1", "2"):
        result = tmp_path / f"deploy-{version}.json"
        processes.append((result, subprocess.Popen(
            [sys.executable, str(KILLED_DEPLOY), "none", *options, "--version", version,
             "--result-file", str(result)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)))
        time.sleep(0.2)
    logs = [process.communicate(timeout=300)[0] for _, process in processes]
    assert [process.returncode for _, process in processes] == [0, 0], logs
    assert sum("another deploy of mlkube-demo holds" in log for log in logs) == 1, logs
    results = [json.loads(result.read_text()) for result, _ in processes]
    earlier, later = sorted(results, key=lambda r: r["replaced_version"] != "")
    assert earlier["replaced_version"] == "" and later["replaced_version"] == earlier["version"]
    assert {earlier["version"], later["version"]} == {"1", "2"}
    assert client.metadata(_base(later), NAME)["versions"] == [later["version"]]
    assert _serving() == later["version"]


@pytest.mark.parametrize(("percent", "share", "wanted"), [
    (None, 0.25, 0.25), (0, 0.25, 0.25), (20, 0.0, 0.2), (20, 0.2, 0.2), (100, 0.0, 0.0)])
def test_the_canary_share_has_one_description(percent: int | None, share: float,
                                              wanted: float) -> None:
    """``--canary-percent P`` is ``serving.canary_share`` P/100 (0: the config's; 100: no
    canary phase), written back to the config the step reads."""
    import argparse
    import dataclasses

    from mlkube.config import Config
    from mlkube.steps import deploy

    base = Config()
    ctx = argparse.Namespace(args=argparse.Namespace(canary_percent=percent), config=dataclasses.
                             replace(base, serving=dataclasses.replace(base.serving,
                                                                       canary_share=share)))
    assert deploy.canary_share(ctx) == wanted  # type: ignore[arg-type]
    assert ctx.config.serving.canary_share == wanted


def test_a_canary_percent_the_config_contradicts_is_one_line(
        dataset: str, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path / "c.yaml", serving={"canary_share": 0.1}))
    code, result, err = run("deploy", "--config", config, "--dataset", dataset,
                            "--canary-percent", "20", tmp=tmp_path, capsys=capsys)
    assert code == 1 and result is None
    assert error_lines(err) == ["mlkube deploy: error: --canary-percent 20 and "
                                "serving.canary_share 0.1 disagree: they are the same share of "
                                "live requests; give one, or the same"], err
    assert local.servers(state) == []
