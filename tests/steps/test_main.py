"""What every step program shares: the last line of a failure, on stderr and in the termination log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlkube import result as resultmod
from mlkube import spec
from mlkube.errors import MlkubeError
from mlkube.steps._main import Context, run_step


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable stand-in for /dev/termination-log, as in a container."""
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(resultmod, "TERMINATION_LOG", log)
    return log


def _failing(exc: BaseException) -> Any:
    def body(ctx: Context) -> dict[str, Any]:
        raise exc

    return body


def test_an_unexpected_exception_ends_in_one_line_with_its_traceback_above(
        termination_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_step(spec.TUNE, _failing(RuntimeError("Run with id=abc not found\nmore detail")),
                    ["--dataset", "/d"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[0] == "Traceback (most recent call last):"
    last = err[-1]
    assert last.startswith("mlkube tune: error: unexpected RuntimeError at test_main.py:")
    assert "Run with id=abc not found; the traceback is in the step's log" in last
    assert termination_log.read_text() == last  # the kubelet keeps this, not a cut traceback


def test_an_expected_error_is_one_line_also_in_the_termination_log(
        termination_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_step(spec.REGISTER, _failing(MlkubeError("model x not found: pass train's run_id")),
                    ["--dataset", "/d", "--run-id", "r"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["mlkube register: error: model x not found: pass train's run_id"]
    assert termination_log.read_text() == err[0]


def test_a_missing_extra_names_the_install_command(capsys: pytest.CaptureFixture[str]) -> None:
    missing = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    code = run_step(spec.PREPARE_DATA, _failing(missing), [])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "pip install 'mlkube[ml]'" in err[0] and "'sklearn' is not installed" in err[0]


def test_a_long_message_is_cut_to_the_termination_message_limit(
        termination_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_step(spec.TRAIN, _failing(MlkubeError("x" * 10_000)), ["--dataset", "/d"])
    assert len(termination_log.read_bytes()) == resultmod.TERMINATION_LOG_LIMIT


def test_no_git_warnings_where_git_is_missing(tmp_path: Path) -> None:
    """An image has no git: GitPython's and MLflow's warnings must not open every step's log."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_PYTHON", "MLFLOW_"))}
    env |= {"PATH": str(empty), "MLKUBE_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "mlkube.steps.prepare_data"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for warning in ("Failed to import Git", "git executable", "GIT_PYTHON_REFRESH"):
        assert warning not in output, output
