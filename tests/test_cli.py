"""The ``mlkube`` command itself: --version, --help, and one line for a missing extra."""

from __future__ import annotations

import argparse
import importlib
import types
from pathlib import Path

import pytest

import mlkube
from mlkube import cli
from mlkube.local import cli as local_cli


def _exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return exited.value.code


def _missing(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out == f"mlkube {mlkube.__version__}\n"


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mlkube")
    assert "``" not in out and "--version" in out
    assert all(command in out for command in ("step", "run", "serve", "argo"))


def test_a_missing_extra_in_a_handler_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def run(args: argparse.Namespace) -> int:
        raise _missing("sklearn")

    monkeypatch.setattr(local_cli, "_run", run)
    assert cli.main(["run"]) != 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.err.endswith("\n")
    assert lines[0].startswith("mlkube run: error: ")
    assert "'sklearn'" in lines[0] and "pip install 'mlkube[ml]'" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_missing_extra_in_a_step_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if name.startswith("mlkube.steps."):
            raise _missing("torch.nn")
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.main(["step", "train", "--help"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlkube step: error: ")
    assert "'torch'" in lines[0] and "mlkube[ml]" in lines[0]


def test_a_group_with_a_missing_extra_is_listed_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if name == "mlkube.argo.cli":
            raise _missing("hera")
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert _exit_code(["--help"]) == 0
    assert "unavailable" in capsys.readouterr().out  # the rest of the command still works
    for argv in (["argo", "lint", "--schema", "x.json"], ["argo", "--help"], ["argo"]):
        assert cli.main(argv) == 1
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlkube argo: error: ")
        assert "'hera'" in lines[0] and "pip install 'mlkube[argo]'" in lines[0]


def test_an_unknown_missing_module_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args: argparse.Namespace) -> int:
        raise _missing("not_an_extra")

    monkeypatch.setattr(local_cli, "_run", run)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["run"])


@pytest.mark.parametrize("command", [["run"], ["step", "prepare-data"], ["serve", "status"]])
def test_a_config_that_is_a_directory_or_bad_yaml_is_one_line(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("model:\n\tepochs: 3\n")
    for config, says in ((tmp_path, f"config file {tmp_path} is a directory: pass the YAML file "
                                    f"itself, e.g. {tabbed}"),
                         (tabbed, f"config file {tabbed} is not valid YAML at line 2, column 1: "
                                  "found character '\\t' that cannot start any token")):
        assert cli.main([*command, "--config", str(config)]) == 1
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
        name = command[1] if command[0] == "step" else command[0]
        assert lines[0].startswith(f"mlkube {name}: error: {says}")
