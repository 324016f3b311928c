"""What every step program shares: the last line of a failure, on stderr and in the termination log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlkube import result as resultmod
from mlkube import spec
from mlkube.errors import MlkubeError, database_unusable
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


def test_a_stop_a_database_driver_wrapped_is_still_a_stop(
        termination_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM (KeyboardInterrupt) inside psycopg's commit came back as Optuna's
    StorageInternalError: still 'interrupted', exit 130, as a plain Ctrl-C is."""
    def body(ctx: Context) -> dict[str, Any]:
        try:
            try:
                raise KeyboardInterrupt("signal 15")
            except KeyboardInterrupt:
                raise ValueError("can't change 'autocommit' now: connection in transaction "
                                 "status ACTIVE") from None
        except ValueError as exc:  # as SQLAlchemy and Optuna wrap the driver's error
            raise RuntimeError("An exception is raised during the commit.") from exc

    code = run_step(spec.TUNE, body, ["--dataset", "/d"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err == ["mlkube tune: error: interrupted; run it again to resume"]
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


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux only)")
def test_a_full_disk_is_one_line_without_a_traceback(
        termination_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real ENOSPC (writing /dev/full), raised again the way libraries wrap it."""
    monkeypatch.setenv("MLKUBE_STATE_DIR", str(tmp_path / "state"))

    def body(ctx: Context) -> dict[str, Any]:
        try:
            with open("/dev/full", "w") as full:
                full.write("checkpoint")
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from exc
        return {}

    code = run_step(spec.TRAIN, body, ["--dataset", "/d"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("mlkube train: error: the disk is full (No space left on device) "
                             f"writing under the state directory {tmp_path / 'state'} (")
    assert err[0].endswith("free now): free space on that file system, or set MLKUBE_STATE_DIR "
                           "(and --artifact-root) to a directory on a larger one, then run the "
                           "step again")
    assert termination_log.read_text() == err[0]


def _full_sqlite(path: Path) -> BaseException:
    """SQLite's own "database or disk is full", as SQLAlchemy raises it from an autoflush."""
    import sqlalchemy
    from sqlalchemy import orm

    class Base(orm.DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = "rows"
        id = sqlalchemy.Column(sqlalchemy.Integer, primary_key=True)
        text = sqlalchemy.Column(sqlalchemy.Text)

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
    engine.dispose()  # new connections from here on
    sqlalchemy.event.listen(engine, "connect", lambda c, _: c.execute(
        f"PRAGMA max_page_count = {pages}"))  # the file may not grow: SQLITE_FULL
    try:
        with orm.Session(engine) as session:
            session.add(Row(text="x" * 100_000))
            session.query(Row).all()  # the autoflush writes, and fails
    except sqlalchemy.exc.OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("SQLite took the row")


def test_a_full_sqlite_database_wrapped_by_mlflow_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.exceptions import MlflowException

    full = _full_sqlite(tmp_path / "mlflow.db")
    assert "database or disk is full" in str(full) and "autoflush" in str(full)
    monkeypatch.setenv("MLKUBE_STATE_DIR", str(tmp_path))

    def body(ctx: Context) -> dict[str, Any]:
        raise MlflowException(message=full) from full  # how MLflow's store re-raises it

    assert run_step(spec.TUNE, body, ["--dataset", "/d"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "mlkube tune: error: the disk is full (database or disk is full) writing under the "
        f"state directory {tmp_path} ("), err
    found = database_unusable("Optuna storage", "sqlite:///x.db", full, "tune.storage")
    assert str(found) == ("Optuna storage sqlite:///x.db has no disk space left (database or "
                          "disk is full): free space on the disk that holds it, then run the "
                          "step again")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the disk-full test mounts a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the disk-full test "
                    "needs mount privileges")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_during_train_is_one_line_and_the_next_run_converges(
        small_disk: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLKUBE_STATE_DIR"] = str(small_disk / "state")

    def step(module: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
        result = tmp_path / f"{module}.json"
        result.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-m", f"mlkube.steps.{module}", *args,
                               "--result-file", str(result)], env=env, capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
        return done, json.loads(result.read_text()) if result.exists() else None

    done, prepared = step("prepare_data")
    assert done.returncode == 0, done.stderr
    train = ("--dataset", prepared["dataset_uri"], "--epochs", "4")
    fill = small_disk / "fill"
    fill.write_bytes(bytes(shutil.disk_usage(small_disk).free - 48 * 1024))
    done, result = step("train", *train)
    assert done.returncode == 1 and result is None
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, no MLflow database error log
    assert lines[0].startswith("mlkube train: error: the disk is full ("), lines[0]
    assert f"writing under the state directory {small_disk / 'state'} (" in lines[0] or \
        f"writing {small_disk}/" in lines[0]
    assert "free space on that file system" in lines[0]
    fill.unlink()  # the disk is healthy again: the same command converges
    done, result = step("train", *train)
    assert done.returncode == 0, done.stderr
    assert result is not None and result["model_uri"] and result["epochs"] == 4
